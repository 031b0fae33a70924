"""VGG16 with batch norm in torchvision's `vgg16_bn` layout (NHWC), and its weights.

Module names are the torchvision state_dict's (`features.7.weight` -> `features_7/kernel`,
`classifier.3.weight` -> `classifier_3/kernel`), so `jaxfast.models.convert` imports a
torchvision `.pth` as it is. `features` is a Sequential of conv3x3-BN-ReLU blocks
[64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M]; `hooked_layers` lists the
`features` indices whose outputs are returned (the model stops after the last one), which is
how lesson 7's FeatureLoss reads the ReLUs just before the last three max-pools:
`blocks = [i-1 for i,o in enumerate(children(vgg_m)) if isinstance(o, nn.MaxPool2d)]`,
`layer_ids = blocks[2:5]` = (22, 32, 42).

Weights: `vgg16_bn_weights(path)` returns a local `.pth` given with `--vgg-weights`, or
downloads torchvision's file into a cache dir (sha256 checked) when its host is reachable;
offline it fails within seconds naming `--vgg-weights`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfast.data.download import check_reachable
from jaxfast.errors import JaxfastError
from jaxfast.models.conv import Conv, max_pool
from jaxfast.models.layers import KAIMING_FAN_OUT, batch_norm
from jaxfast.models.registry import register

# torchvision's cfg 'D' with batch norm: widths of the 3x3 convs, 'M' a 2x2/2 max-pool.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
FEATURE_LOSS_LAYERS = (22, 32, 42)  # the ReLUs before max-pools 3, 4 and 5 (fastai's blocks[2:5])

VGG16_BN_URL = "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth"
VGG16_BN_SHA256_PREFIX = "6c64b313"


def feature_kinds(layout: Sequence = VGG16_LAYOUT) -> list[tuple[str, int]]:
    """('conv'|'bn'|'relu'|'pool', width) for every index of torchvision's `features`."""
    kinds: list[tuple[str, int]] = []
    for item in layout:
        if item == "M":
            kinds.append(("pool", 0))
        else:
            kinds += [("conv", int(item)), ("bn", int(item)), ("relu", int(item))]
    return kinds


def max_pool_inputs(layout: Sequence = VGG16_LAYOUT) -> tuple[int, ...]:
    """fastai's `blocks`: the index just before each max-pool ((5, 12, 22, 32, 42) for VGG16)."""
    return tuple(i - 1 for i, (kind, _) in enumerate(feature_kinds(layout)) if kind == "pool")


class VGG(nn.Module):
    """torchvision's VGG with batch norm: `features`, adaptive 7x7 average pool, `classifier`.

    `hooked_layers` (indices into `features`): return those outputs, in order, instead of the
    logits; the layers after the last hooked one are not built. `include_top=False` without
    hooks returns the last `features` map (after the fifth max-pool)."""

    layout: Sequence = VGG16_LAYOUT
    n_classes: int = 1000
    include_top: bool = False
    hooked_layers: Sequence[int] = ()
    hidden: int = 4096  # torchvision: 4096 (smaller only to test the classifier cheaply)
    top_names: ClassVar[tuple[str, ...]] = ("classifier",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        kinds = feature_kinds(self.layout)
        hooked = tuple(int(i) for i in self.hooked_layers)
        if hooked and (sorted(set(hooked)) != list(hooked) or hooked[0] < 0 or hooked[-1] >= len(kinds)):
            raise ValueError(f"VGG: hooked_layers {hooked} must be increasing indices in [0, {len(kinds)})")
        if hooked and self.include_top:
            raise ValueError("VGG: hooked_layers returns feature maps; it cannot be combined with include_top=True")
        last = hooked[-1] if hooked else len(kinds) - 1
        outputs = []
        for i, (kind, width) in enumerate(kinds[: last + 1]):
            if kind == "conv":
                x = Conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=KAIMING_FAN_OUT, name=f"features_{i}")(x)
            elif kind == "bn":
                x = batch_norm(train, f"features_{i}")(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = max_pool(x, (2, 2), (2, 2), "VALID")
            if i in hooked:
                outputs.append(x)
        if hooked:
            return outputs
        if not self.include_top:
            return x
        x = adaptive_avg_pool(x, (7, 7))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch.flatten of NCHW
        for name in ("classifier_0", "classifier_3"):  # Linear, ReLU, Dropout twice
            x = nn.relu(nn.Dense(self.hidden, kernel_init=nn.initializers.normal(0.01), name=name)(x))
            x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(self.n_classes, kernel_init=nn.initializers.normal(0.01), name="classifier_6")(x)


def adaptive_avg_pool(x, out_hw: tuple[int, int]):
    """torch's AdaptiveAvgPool2d (NHWC): bin i spans [floor(i*H/n), ceil((i+1)*H/n))."""

    def bins(size: int, n: int):
        return [(i * size // n, -(-(i + 1) * size // n)) for i in range(n)]

    rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(x.shape[1], out_hw[0])]  # each [N, W, C]
    x = jnp.stack(rows, axis=1)
    cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(x.shape[2], out_hw[1])]
    return jnp.stack(cols, axis=2)


@register("vgg16_bn")
def vgg16_bn(include_top: bool = False, hooked_layers: Sequence[int] = FEATURE_LOSS_LAYERS,
             n_classes: int = 1000, hidden: int = 4096) -> VGG:
    """VGG16-bn; by default the three maps lesson 7's feature loss compares (pass
    `hooked_layers=[]` for the whole `features`, with `include_top=True` for the logits)."""
    return VGG(VGG16_LAYOUT, n_classes, include_top, tuple(hooked_layers), hidden)


# ----------------------------------------------------------------------------- weights


class WeightsUnavailable(JaxfastError, RuntimeError):
    """Pretrained weights are neither given locally nor downloadable from here."""


def default_cache_dir() -> Path:
    """$JAXFAST_CACHE, else $XDG_CACHE_HOME/jaxfast, else ~/.cache/jaxfast."""
    if os.environ.get("JAXFAST_CACHE"):
        return Path(os.environ["JAXFAST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxfast"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def vgg16_bn_weights(path: str | Path | None = None, cache_dir: str | Path | None = None,
                     url: str = VGG16_BN_URL, sha256_prefix: str = VGG16_BN_SHA256_PREFIX,
                     timeout: float = 3.0) -> Path:
    """The `.pth` file to load: `path` (from --vgg-weights) when given, else the cached copy of
    `url`, downloading it first when the host answers. The download's sha256 must start with
    `sha256_prefix` (torchvision's file-name convention); a bad one is deleted, not kept."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WeightsUnavailable(f"--vgg-weights {path}: no such file")
        return path
    target = Path(cache_dir or default_cache_dir()) / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if not check_reachable(url, timeout=timeout):
        raise WeightsUnavailable(
            f"VGG16-bn weights are not in the cache ({target}) and {url} cannot be reached "
            "(no network?). Download the file elsewhere and pass it with --vgg-weights PATH.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name, suffix=".part", delete=False) as part:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, part)
        except OSError as err:
            Path(part.name).unlink(missing_ok=True)
            raise WeightsUnavailable(f"downloading {url} failed ({err}); pass a local copy with --vgg-weights PATH") from err
    digest = sha256_of(Path(part.name))
    if not digest.startswith(sha256_prefix):
        Path(part.name).unlink(missing_ok=True)
        raise WeightsUnavailable(f"{url}: downloaded file has sha256 {digest}, expected it to start with "
                                 f"{sha256_prefix}; not kept. Pass a good copy with --vgg-weights PATH.")
    os.replace(part.name, target)
    return target


def load_vgg16_bn(path: str | Path, model: VGG | None = None) -> tuple[VGG, dict, str]:
    """(model, {'params', 'batch_stats'}, message) with torchvision-layout weights from `path`.
    Keys the model does not build (the classifier, the layers after the last hook) are
    ignored; every conv and BN the model has must be in the file."""
    from jaxfast.models.convert import convert_state_dict, read_state_dict

    model = model or vgg16_bn()
    # Shapes only: strict conversion fills every leaf from the file, so nothing is computed.
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    state_dict, _ = read_state_dict(path)
    built = {name.split("/")[0] for name in _leaf_names(variables)}
    unused = {k for k in state_dict if k.rpartition(".")[0].replace(".", "_") not in built}
    kept = {k: v for k, v in state_dict.items() if k not in unused}
    variables, report = convert_state_dict(kept, variables, source=str(path), strict=True)
    message = report.message("vgg16_bn")
    if unused:
        message += f"; {len(unused)} tensors of layers this model does not build left unused"
    return model, variables, message


def _leaf_names(variables: dict) -> list[str]:
    return ["/".join(str(getattr(k, "key", k)) for k in path[1:])
            for path, _ in jax.tree_util.tree_leaves_with_path(dict(variables))]
