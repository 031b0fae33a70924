"""Pretrained weights by name: the official URL and checksum, one download into a cache,
one conversion to Flax layout, then loads from the converted file.

`--pretrained` takes a local file (.pth/.safetensors, read each time by
jaxfast.models.convert), a name of PRETRAINED_WEIGHTS (`resnet34`, `resnet50.a1_in1k`,
`cifar_resnet20`, ...), or True / 'default' for the architecture's DEFAULT_WEIGHTS.

A name is fetched once into `cache_dir()/weights/<name>/<file>`: streamed to a temporary
file beside it, checked against the published sha256 (torchvision and akamaster put its
first 8 hex digits in the file name, as torch.hub's check_hash verifies), and renamed
only then, so an interrupted or corrupt download leaves nothing under the final name.
timm's files on the Hugging Face hub have no hash published beside the URL: their sha256
is recorded on the first download and said so. The full sha256 is kept in `<file>.sha256`.
The arch's complete variables are then converted once into
`cache_dir()/converted/<arch>-<sha256[:16]>.safetensors` (numpy safetensors, no pickle),
which later runs load directly, with no network and no torch.

Offline, a missing file fails within seconds naming the URL, the cache path where a
copy can be placed by hand, and `--pretrained PATH`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from jaxfast.data.download import check_reachable
from jaxfast.errors import InputError, JaxfastError
from jaxfast.models.convert import (TORCH_SUFFIXES, ConversionReport, convert_state_dict, load_pretrained,
                                    place_flax_weights, pretrained_target, random_init_message,
                                    read_state_dict)

CHUNK = 1 << 20
READ_TIMEOUT = 60.0  # seconds a stalled download may go without a byte


class PretrainedUnavailable(JaxfastError, RuntimeError):
    """Named weights are neither cached nor downloadable from here (the message says what to do)."""


class WeightsDownloadError(JaxfastError, RuntimeError):
    """A download failed, was cut short or did not match its checksum; nothing was kept."""


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """One official weights file: the registered arch it fits, where it is, its sha256
    (full, or the published prefix; None when nothing is published) and what it is."""

    arch: str
    url: str
    sha256: str | None
    about: str


TORCHVISION = "https://download.pytorch.org/models/{}"
TIMM_HUB = "https://huggingface.co/timm/{}/resolve/main/model.safetensors"
AKAMASTER = ("https://github.com/akamaster/pytorch_resnet_cifar10/raw/"
             "d5489e8995e81e91ce6b1d69dcc98ad579b0b153/pretrained_models/{}")


def _timm(name: str, arch: str, about: str) -> tuple[str, PretrainedWeights]:
    return name, PretrainedWeights(arch, TIMM_HUB.format(name), None, f"timm {name}: {about}")


PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = dict([
    # torchvision's IMAGENET1K_V1 files (what fastai v1 loads); 8 hex digits of sha256 in the name
    ("resnet18", PretrainedWeights("resnet18", TORCHVISION.format("resnet18-f37072fd.pth"), "f37072fd",
                                   "torchvision ResNet-18 IMAGENET1K_V1")),
    ("resnet34", PretrainedWeights("resnet34", TORCHVISION.format("resnet34-b627a593.pth"), "b627a593",
                                   "torchvision ResNet-34 IMAGENET1K_V1")),
    ("resnet50", PretrainedWeights("resnet50", TORCHVISION.format("resnet50-0676ba61.pth"), "0676ba61",
                                   "torchvision ResNet-50 IMAGENET1K_V1")),
    # timm's plain ResNets (torchvision's module names, stride on the 3x3), ImageNet mean/std inputs
    _timm("resnet18.tv_in1k", "resnet18", "torchvision's IMAGENET1K_V1 weights as safetensors (no torch needed)"),
    _timm("resnet34.tv_in1k", "resnet34", "torchvision's IMAGENET1K_V1 weights as safetensors (no torch needed)"),
    _timm("resnet50.tv_in1k", "resnet50", "torchvision's IMAGENET1K_V1 weights as safetensors (no torch needed)"),
    _timm("resnet50.tv2_in1k", "resnet50", "torchvision's IMAGENET1K_V2 weights as safetensors"),
    _timm("resnet18.a1_in1k", "resnet18", "ResNet strikes back A1 recipe"),
    _timm("resnet34.a1_in1k", "resnet34", "ResNet strikes back A1 recipe"),
    _timm("resnet50.a1_in1k", "resnet50", "ResNet strikes back A1 recipe"),
    # akamaster/pytorch_resnet_cifar10 at a fixed commit; full sha256 of each file
    *((f"cifar_resnet{depth}", PretrainedWeights(
        f"cifar_resnet{depth}", AKAMASTER.format(f"resnet{depth}-{sha[:8]}.th"), sha,
        f"akamaster CIFAR-10 ResNet-{depth}"))
      for depth, sha in ((20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
                         (32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
                         (44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
                         (56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"))),
])

# What `--pretrained` True/'default' means for each arch (torchvision V1 for ImageNet ResNets).
DEFAULT_WEIGHTS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
                   "cifar_resnet20": "cifar_resnet20", "cifar_resnet32": "cifar_resnet32",
                   "cifar_resnet44": "cifar_resnet44", "cifar_resnet56": "cifar_resnet56"}
DEFAULT_SPELLINGS = ("default", "true")


def cache_dir(override: str | Path | None = None) -> Path:
    """`override`, else $JAXFAST_CACHE, else $XDG_CACHE_HOME/jaxfast, else ~/.cache/jaxfast."""
    if override is not None:
        return Path(override).expanduser()
    if os.environ.get("JAXFAST_CACHE"):
        return Path(os.environ["JAXFAST_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "jaxfast"
    return Path.home() / ".cache" / "jaxfast"


def weights_name(spec, arch: str, table: dict[str, PretrainedWeights] | None = None) -> str | None:
    """The table name `spec` stands for (True/'default': the arch's default), or None when
    `spec` is None/False or an existing local file. Unknown names and missing files raise
    InputError; so do weights made for another arch."""
    table = PRETRAINED_WEIGHTS if table is None else table
    if spec is None or spec is False:
        return None
    if spec is True or (isinstance(spec, str) and spec.lower() in DEFAULT_SPELLINGS and not Path(spec).exists()):
        if arch not in DEFAULT_WEIGHTS:
            raise InputError(f"no default pretrained weights for {arch!r} (defaults exist for "
                             f"{', '.join(sorted(DEFAULT_WEIGHTS))}); pass --pretrained PATH or a name")
        spec = DEFAULT_WEIGHTS[arch]
    elif Path(spec).expanduser().is_file():
        return None
    elif str(spec) not in table:
        if Path(spec).suffix in (*TORCH_SUFFIXES, ".safetensors") or os.sep in str(spec):
            raise InputError(f"pretrained weights file {spec} does not exist")
        raise InputError(f"--pretrained {spec!r} is neither a file nor a known weights name; "
                         f"names for {arch}: {', '.join(n for n, w in table.items() if w.arch == arch) or 'none'}")
    entry = table[spec]
    if entry.arch != arch:
        raise InputError(f"pretrained weights {spec!r} are made for {entry.arch}, not for {arch}")
    return spec


def source_path(name: str, cache: str | Path | None = None,
                table: dict[str, PretrainedWeights] | None = None) -> Path:
    """Where the downloaded file of `name` lives (or can be placed by hand)."""
    entry = (PRETRAINED_WEIGHTS if table is None else table)[name]
    return cache_dir(cache) / "weights" / name / entry.url.rsplit("/", 1)[-1]


def resolve_pretrained(spec, arch: str, *, cache: str | Path | None = None,
                       table: dict[str, PretrainedWeights] | None = None, timeout: float = 3.0) -> Path | None:
    """The local weights file for `spec` (a path, a table name, or True for `arch`'s
    default), downloading and verifying a named file once; None for no weights."""
    name = weights_name(spec, arch, table)
    if name is None:
        return None if spec is None or spec is False else Path(spec).expanduser()
    return fetch(name, cache=cache, table=table, timeout=timeout)[0]


def fetch(name: str, *, cache: str | Path | None = None, table: dict[str, PretrainedWeights] | None = None,
          timeout: float = 3.0) -> tuple[Path, str]:
    """(cached file, its full sha256) for table name `name`, downloaded when absent."""
    entry = (PRETRAINED_WEIGHTS if table is None else table)[name]
    target = source_path(name, cache, table)
    if target.is_file():
        return target, _recorded_sha256(target, entry)
    if not check_reachable(entry.url, timeout):
        raise PretrainedUnavailable(
            f"pretrained weights {name!r} are not cached and {entry.url} cannot be reached (no network?). "
            f"Download that file by hand and place it at {target}, or pass --pretrained PATH with a local "
            f"copy (.pth or .safetensors)."
        )
    print(f"downloading {name} weights from {entry.url} to {target}")
    digest = download(entry.url, target, entry.sha256)
    if entry.sha256 is None:
        print(f"{name}: no checksum is published for {entry.url}; recorded its sha256 {digest} "
              f"in {_sidecar(target)} (later runs use this file as is)")
    return target, digest


def download(url: str, target: Path, sha256: str | None) -> str:
    """Stream `url` to a temporary file beside `target`, check its length and `sha256`
    (full or prefix), then rename it to `target`; the full sha256. On any failure the
    temporary file is removed and nothing exists under `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    hasher, received = hashlib.sha256(), 0
    try:
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "jaxfast"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=READ_TIMEOUT) as response:
                length = response.headers.get("Content-Length")
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
        except (OSError, http.client.HTTPException) as err:
            raise WeightsDownloadError(f"download of {url} failed after {received} bytes ({err}); "
                                       f"nothing was kept, run again to retry") from err
        if length is not None and received != int(length):
            raise WeightsDownloadError(f"download of {url} was interrupted after {received} of {length} bytes; "
                                       f"nothing was kept, run again to retry")
        digest = hasher.hexdigest()
        if sha256 is not None and not digest.startswith(sha256):
            raise WeightsDownloadError(f"{url}: sha256 {digest} does not match the published {sha256}; "
                                       f"the download was discarded")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sidecar(target).write_text(digest + "\n")
    return digest


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_sha256(path: Path, entry: PretrainedWeights) -> str:
    """The sha256 recorded beside a cached file; for a file placed by hand, computed,
    checked against the published hash and recorded."""
    sidecar = _sidecar(path)
    if sidecar.is_file():
        return sidecar.read_text().strip()
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    digest = hasher.hexdigest()
    if entry.sha256 is not None and not digest.startswith(entry.sha256):
        raise InputError(f"{path}: sha256 {digest} does not match the published {entry.sha256} of "
                         f"{entry.url}; replace or delete the file")
    sidecar.write_text(digest + "\n")
    return digest


def converted_weights(name: str, *, cache: str | Path | None = None,
                      table: dict[str, PretrainedWeights] | None = None,
                      timeout: float = 3.0) -> tuple[dict[str, np.ndarray], dict, Path]:
    """(Flax-layout weights keyed 'params/conv1/kernel', extras stored in the source file,
    converted file) of `name`: converted from the fetched file on first use and cached
    under converted/<arch>-<sha256[:16]>.safetensors; later calls read only that file."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    entry = (PRETRAINED_WEIGHTS if table is None else table)[name]
    source, digest = fetch(name, cache=cache, table=table, timeout=timeout)
    converted = cache_dir(cache) / "converted" / f"{entry.arch}-{digest[:16]}.safetensors"
    if converted.is_file():
        with safe_open(str(converted), framework="numpy") as f:
            extras = json.loads((f.metadata() or {}).get("extras", "{}"))
        return load_file(str(converted)), extras, converted
    try:
        state_dict, extras = read_state_dict(source)
    except ImportError as err:
        torch_free = [n for n, w in PRETRAINED_WEIGHTS.items() if w.arch == entry.arch and w.url.endswith(".safetensors")]
        raise PretrainedUnavailable(f"{err}; or use a safetensors name: {', '.join(torch_free) or 'none'}") from err
    variables, _ = convert_state_dict(state_dict, _arch_template(entry.arch), source=str(source))
    weights = {"/".join((collection, *path)): np.ascontiguousarray(value)
               for collection in ("params", "batch_stats")
               for path, value in _flat(variables.get(collection, {})).items()}
    converted.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=converted.parent, prefix=f".{converted.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file(weights, tmp, metadata={"arch": entry.arch, "source_url": entry.url, "source_sha256": digest,
                                          "extras": json.dumps(extras)})
        os.replace(tmp, converted)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return weights, extras, converted


def _arch_template(arch: str) -> dict:
    """The registered arch's complete variables (default config, top included) as shapes only."""
    import jax
    import jax.numpy as jnp

    from jaxfast.models.registry import build_model

    model = build_model(arch, {})
    sample = jnp.zeros((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), sample, train=False))


def _flat(tree: dict, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, path + (key,)))
        else:
            out[path + (key,)] = np.asarray(value)
    return out


def load_named(variables: dict, name: str, *, cache: str | Path | None = None,
               table: dict[str, PretrainedWeights] | None = None, timeout: float = 3.0,
               **target) -> tuple[dict, ConversionReport]:
    """`variables` with the named weights put in place (`target`: prefix/ignore/strict as in
    jaxfast.models.convert.place_flax_weights)."""
    entry = (PRETRAINED_WEIGHTS if table is None else table)[name]
    weights, extras, converted = converted_weights(name, cache=cache, table=table, timeout=timeout)
    variables, report = place_flax_weights(weights, variables, source=f"{name} ({entry.url}, cached as {converted})",
                                           **target)
    report.extras = extras
    return variables, report


def load_pretrained_body(variables: dict, spec, arch: str, model, *, cache: str | Path | None = None,
                         table: dict[str, PretrainedWeights] | None = None,
                         target: dict | None = None) -> tuple[dict, str]:
    """(variables, message) for `model` whose weights come from `spec` (None/False: random
    init, a file path, a weights name, or True for `arch`'s default). A cnn gets them in its
    body (its top ignored) and keeps its random head; `arch` is the body's arch. `target`
    (prefix/ignore) replaces what convert.pretrained_target(model) says."""
    if spec is None or spec is False:
        return variables, random_init_message(arch)
    target = pretrained_target(model) if target is None else target
    name = weights_name(spec, arch, table)
    if name is None:
        variables, report = load_pretrained(variables, Path(spec).expanduser(), **target)
    else:
        variables, report = load_named(variables, name, cache=cache, table=table, **target)
    message = report.message(arch)
    if target.get("prefix"):
        message += f"; the params outside '{'/'.join(target['prefix'])}' (the head) are randomly initialised"
    return variables, message
