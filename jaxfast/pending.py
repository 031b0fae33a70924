"""Steps dispatched ahead of the host reading their metrics: one helper for training,
evaluation and inference.

JAX dispatches a jitted step asynchronously; reading its result blocks the host until
the device is done. `Pending` keeps up to 2 * `in_flight` steps queued and reads the
oldest `in_flight` of them in one transfer, so the device always has queued work and
the host reads rarely. Where the runner must wait on every step (CPU collectives, see
`jaxfast.parallel.Runner.sync_each_step`) every step is read before the next one.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from jaxfast.errors import InputError

# Steps dispatched ahead of the host reading their results.
STEPS_IN_FLIGHT = 4


class Pending:
    """A queue of (key, device result) read in batches through `fetch`, each fetched
    result handed to `on_result(key, result)` in dispatch order."""

    def __init__(self, fetch: Callable[[list], list], on_result: Callable[[Any, Any], None], sync_each_step: bool,
                 in_flight: int | None = None):
        self._fetch, self._on_result = fetch, on_result
        self._in_flight = 0 if sync_each_step else (STEPS_IN_FLIGHT if in_flight is None else in_flight)
        self._queue: list = []

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key, device_result) -> None:
        """Queue one step's result; read the oldest ones when too many are unread."""
        self._queue.append((key, device_result))
        if len(self._queue) > 2 * self._in_flight:
            self._read(max(self._in_flight, 1))

    def flush(self) -> None:
        """Read every queued result."""
        self._read(len(self._queue))

    def _read(self, n: int) -> None:
        done, self._queue = self._queue[:n], self._queue[n:]
        if not done:
            return
        for (key, _), result in zip(done, self._fetch([r for _, r in done])):
            self._on_result(key, result)


def leading_size(tree, what: str) -> int:
    """The number of rows every leaf of `tree` has (InputError naming `what` when they differ)."""
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise InputError(f"{what}: the inputs disagree on the number of rows: {sorted(sizes)}")
    return sizes.pop()
