"""Fail-fast access to downloadable datasets.

Offline, tfds retries a download for minutes before it gives up. These helpers
probe the source URL first (a few seconds at most) and raise DatasetUnavailable
with a message that says how to point the loader at a local copy instead.
"""

from __future__ import annotations

import http.client
import threading
import urllib.error
import urllib.request

import numpy as np

from jaxfast.errors import JaxfastError


class DatasetUnavailable(JaxfastError, RuntimeError):
    """The dataset is neither prepared locally nor downloadable from here."""


def check_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when the host of `url` answers a HEAD request within `timeout` seconds.

    Any HTTP answer (even 403/404/405) counts as reachable: the server is there.
    Network errors (DNS failure, refused connection, timeout) give False. No retries.
    The probe runs in a daemon thread so that a slow DNS lookup, which the socket
    timeout does not cover, cannot hold the caller longer than about `timeout`.
    """
    outcome: dict[str, bool] = {}

    def probe() -> None:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                outcome["reachable"] = True
        except urllib.error.HTTPError:
            outcome["reachable"] = True
        except (OSError, http.client.HTTPException, ValueError):
            outcome["reachable"] = False

    thread = threading.Thread(target=probe, name=f"probe {url}", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome.get("reachable", False)


def require_download(dataset: str, url: str, data_dir_hint: str) -> None:
    """Raise DatasetUnavailable within seconds when `url` cannot be reached.

    `data_dir_hint` says what a local folder passed with --data-dir must hold.
    """
    if not check_reachable(url):
        raise DatasetUnavailable(
            f"Dataset {dataset!r} is not prepared locally and its source {url} cannot be "
            f"reached (no network?). Pass --data-dir with {data_dir_hint}."
        )


def load_tfds_as_numpy(
    name: str,
    split: str,
    url: str,
    data_dir_hint: str,
    tfds_data_dir: str | None = None,
) -> dict[str, np.ndarray]:
    """Load one split of tfds dataset `name` as a dict of numpy arrays (whole split in memory).

    Uses the prepared copy in tfds' data dir when there is one; otherwise checks that
    `url` is reachable (failing fast via require_download) before letting tfds download.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=tfds_data_dir)
    if builder.is_prepared():
        dataset = builder.as_dataset(split=split, batch_size=-1)
    else:
        require_download(name, url, data_dir_hint)
        dataset = tfds.load(name, split=split, batch_size=-1, data_dir=tfds_data_dir)
    return {key: np.asarray(value) for key, value in tfds.as_numpy(dataset).items()}
