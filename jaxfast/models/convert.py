"""Import PyTorch weights (torchvision, timm, akamaster's CIFAR ResNets) into Flax variables.

Files: `.safetensors` (read with numpy only, via `safetensors.numpy`) or a pickled torch
checkpoint (`.pth`, `.pt`, `.th`, `.bin`, `.ckpt`; needs torch, loaded with
`weights_only=True`). A checkpoint dict holding 'state_dict' or 'model' is unwrapped and
its other plain values (e.g. `best_prec1`) are kept as `extras`; 'module.' prefixes
(nn.DataParallel) are stripped.

Layout rules: a torch key `a.0.b.weight` names the Flax module path `a_0/b` (numeric
parts joined to the name before them); conv weights OIHW -> HWIO 'kernel', linear
(out, in) -> (in, out) 'kernel', BatchNorm weight/bias -> 'scale'/'bias' in params and
running_mean/running_var -> 'mean'/'var' in batch_stats; `num_batches_tracked` is dropped.
Missing and unexpected keys and shape mismatches are reported by name.

`python -m jaxfast.models.convert --arch cifar_resnet20 --pretrained FILE_OR_NAME [--export DIR]`
loads a file into a registered architecture, prints what happened, and can write an export.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxfast.errors import InputError, JaxfastError

TORCH_SUFFIXES = (".pth", ".pt", ".th", ".bin", ".ckpt")
BN_STATS = {"running_mean": "mean", "running_var": "var"}


class WeightMismatch(InputError):
    """The file's tensors do not fit the model (names every key at fault)."""


@dataclasses.dataclass
class ConversionReport:
    """What an import did: tensors loaded, keys missing/unexpected/ignored, file extras."""

    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)  # Flax leaves left untouched
    unexpected: list[str] = dataclasses.field(default_factory=list)  # torch keys with no target
    ignored: list[str] = dataclasses.field(default_factory=list)  # torch keys skipped on purpose
    extras: dict = dataclasses.field(default_factory=dict)

    def message(self, arch: str) -> str:
        text = f"{arch}: loaded {len(self.loaded)} pretrained tensors from {self.source}"
        if self.extras:
            values = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.extras.items())
            text += f" ({values} stored in the file)"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unused (no such param): {', '.join(self.unexpected)}"
        if self.ignored:
            text += f"; ignored {len(self.ignored)}: {', '.join(self.ignored)}"
        if self.missing:
            text += f"; {len(self.missing)} params keep their random init: {', '.join(self.missing)}"
        return text


def random_init_message(arch: str) -> str:
    """What to print when no `--pretrained` file is given."""
    return f"{arch}: no --pretrained weights given; parameters are randomly initialised (training from scratch)"


# ----------------------------------------------------------------------------- reading


def read_state_dict(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors as numpy by key without 'module.', extras such as best_prec1) from a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise ImportError(f"reading {path} needs the safetensors package: pip install safetensors") from None
        tensors, extras = load_file(str(path)), {}
    elif path.suffix in TORCH_SUFFIXES:
        tensors, extras = _read_torch(path)
    else:
        raise ValueError(f"{path}: unknown weights format {path.suffix!r}; use .safetensors or one of {TORCH_SUFFIXES}")
    return {_strip(k): np.asarray(v) for k, v in tensors.items()}, extras


def _read_torch(path: Path) -> tuple[dict, dict]:
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"{path} is a pickled PyTorch checkpoint and reading it needs torch, which is not installed: "
            "pip install torch (CPU is enough), or convert the file to .safetensors"
        ) from None
    obj = torch.load(path, map_location="cpu", weights_only=True)
    extras = {}
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            extras = {k: v for k, v in obj.items() if k != key and isinstance(v, (int, float, str))}
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    tensors = {k: v.detach().cpu().numpy() for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, extras


def _strip(key: str) -> str:
    return key.removeprefix("module.")


# ----------------------------------------------------------------------------- converting


def flax_module_path(torch_module: str) -> tuple[str, ...]:
    """`layer1.0.downsample.0` -> ('layer1_0', 'downsample_0')."""
    out: list[str] = []
    for part in torch_module.split(".") if torch_module else []:
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def convert_state_dict(
    state_dict: dict[str, np.ndarray], variables: dict, *, prefix: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (), source: str = "state_dict", strict: bool = True,
) -> tuple[dict, ConversionReport]:
    """New `variables` ({'params', 'batch_stats'}) with the torch tensors put in place.

    `prefix` is the Flax path the torch model lives under (('body',) for a cnn body);
    keys whose first torch module is in `ignore` (e.g. the cut 'fc') are skipped. Shape
    mismatches always raise WeightMismatch; with `strict`, so do missing/unexpected keys."""
    flat = _flat_variables(variables)
    report = ConversionReport(source)
    placements = []
    for key, value in state_dict.items():
        key = _strip(key)
        module, _, leaf = key.rpartition(".")
        if leaf == "num_batches_tracked":
            continue
        if module.split(".")[0] in ignore:
            report.ignored.append(key)
            continue
        target = _target(flat, prefix + flax_module_path(module), leaf)
        if target is None:
            report.unexpected.append(key)
            continue
        array = np.asarray(value, dtype=np.float32)
        if target[1][-1] == "kernel":  # OIHW -> HWIO, (out, in) -> (in, out)
            array = array.transpose((2, 3, 1, 0)) if array.ndim == 4 else array.T
        placements.append((key, tuple(np.shape(value)), target, array))
    return _place(variables, flat, placements, report, prefix, strict), report


def place_flax_weights(
    weights: dict[str, np.ndarray], variables: dict, *, prefix: tuple[str, ...] = (),
    ignore: tuple[str, ...] = (), source: str = "weights", strict: bool = True,
) -> tuple[dict, ConversionReport]:
    """Like convert_state_dict for weights already in Flax layout, keyed
    'collection/module/.../leaf' (e.g. 'params/layer1_0/conv1/kernel'): what the
    converted-weights cache of jaxfast.models.hub holds."""
    flat = _flat_variables(variables)
    report = ConversionReport(source)
    placements = []
    for key, value in weights.items():
        collection, *path = key.split("/")
        if path and path[0] in ignore:
            report.ignored.append(key)
            continue
        target = (collection, prefix + tuple(path))
        if target[1] not in flat.get(collection, {}):
            report.unexpected.append(key)
            continue
        placements.append((key, tuple(np.shape(value)), target, np.asarray(value)))
    return _place(variables, flat, placements, report, prefix, strict), report


def _flat_variables(variables: dict) -> dict[str, dict]:
    return {c: _flatten(variables.get(c, {})) for c in ("params", "batch_stats")}


def _place(variables: dict, flat: dict, placements: list, report: ConversionReport,
           prefix: tuple[str, ...], strict: bool) -> dict:
    """Put each (key, file shape, (collection, path), array) in `flat`; check shapes and,
    with `strict`, that nothing is missing or unexpected; the new variables."""
    mismatches, filled = [], set()
    for key, file_shape, (collection, path), array in placements:
        expected = flat[collection][path].shape
        if array.shape != tuple(expected):
            mismatches.append(f"{key} {file_shape} -> {collection}/{'/'.join(path)}: "
                              f"got {array.shape}, the model expects {tuple(expected)}")
            continue
        flat[collection][path] = array.astype(flat[collection][path].dtype)
        filled.add((collection, path))
        report.loaded.append(key)
    report.missing = [f"{c}/{'/'.join(p)}" for c in flat for p in flat[c]
                      if p[:len(prefix)] == prefix and (c, p) not in filled]
    if mismatches:
        raise WeightMismatch(f"{report.source}: shape mismatch for {len(mismatches)} tensors: " + "; ".join(mismatches))
    if strict and (report.missing or report.unexpected):
        raise WeightMismatch(
            f"{report.source}: missing in the file: {report.missing or 'none'}; "
            f"unexpected (no such param in the model): {report.unexpected or 'none'}"
        )
    out = dict(variables)
    for c in flat:
        if c in variables:
            out[c] = _unflatten(flat[c])
    return out


def _target(flat: dict, module: tuple[str, ...], leaf: str):
    """(collection, leaf path) a torch leaf goes to, or None when the model has no such param."""
    if leaf in BN_STATS:
        path = module + (BN_STATS[leaf],)
        return ("batch_stats", path) if path in flat["batch_stats"] else None
    names = {"bias": ("bias",), "weight": ("kernel", "scale")}.get(leaf, ())
    for name in names:
        if module + (name,) in flat["params"]:
            return "params", module + (name,)
    return None


def _flatten(tree) -> dict[tuple[str, ...], Any]:
    return {tuple(str(getattr(k, "key", k)) for k in kp): v for kp, v in jax.tree_util.tree_leaves_with_path(tree)}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def load_pretrained(variables: dict, path: str | Path, **kwargs) -> tuple[dict, ConversionReport]:
    """Read `path` and convert it into `variables` (see convert_state_dict for kwargs).
    `path` may also be a weights name of jaxfast.models.hub (e.g. 'resnet34'), fetched
    and converted once into the cache."""
    from jaxfast.models import hub

    if isinstance(path, str) and path in hub.PRETRAINED_WEIGHTS and not Path(path).is_file():
        return hub.load_named(variables, path, **kwargs)
    state_dict, extras = read_state_dict(path)
    variables, report = convert_state_dict(state_dict, variables, source=str(path), **kwargs)
    report.extras = extras
    return variables, report


def pretrained_target(model) -> dict:
    """convert_state_dict kwargs for `model`: a cnn's body sits under 'body', its top is ignored."""
    from jaxfast.models.heads import CNN

    if isinstance(model, CNN):
        return {"prefix": ("body",), "ignore": tuple(getattr(model.body, "top_names", ()))}
    return {}


def init_model(arch: str, config: dict, pretrained, sample_inputs, seed: int = 0):
    """(model, variables, message): the registered `arch`, randomly initialised from
    `sample_inputs`, then overwritten by `pretrained` when given: a file, a weights name
    of jaxfast.models.hub, or True for the default weights of the arch (of a cnn's body)."""
    from jaxfast.models.hub import load_pretrained_body, resolve_pretrained
    from jaxfast.models.registry import build_model
    from jaxfast.state import init_variables

    weights_arch = config.get("body_arch", arch)
    resolve_pretrained(pretrained, weights_arch)  # download now, or fail within seconds, before compiling
    model = build_model(arch, config)
    params, batch_stats = init_variables(model, sample_inputs, seed)
    variables = {"params": params, "batch_stats": batch_stats}
    variables, message = load_pretrained_body(variables, pretrained, weights_arch, model)
    return model, variables, message


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Load PyTorch weights into a jaxfast architecture.")
    parser.add_argument("--arch", required=True, help="registered architecture, e.g. cifar_resnet20")
    parser.add_argument("--pretrained", help=".safetensors or torch checkpoint, a weights name of "
                        "jaxfast.models.hub (e.g. resnet34, resnet50.a1_in1k), or 'default'; absent: random init")
    parser.add_argument("--config", default="{}", help='architecture config as JSON, e.g. \'{"n_classes": 5}\'')
    parser.add_argument("--size", type=int, default=32, help="image size of the initialising batch")
    parser.add_argument("--export", help="write an inference export (jaxfast.export) to this folder")
    args = parser.parse_args(argv)
    try:
        config = json.loads(args.config)
        sample = np.zeros((1, args.size, args.size, 3), np.float32)
        _, variables, message = init_model(args.arch, config, args.pretrained, sample)
        print(message)
        if args.export:
            from jaxfast.export import export_model

            print(f"export: {export_model(args.export, args.arch, config, variables, {'pretrained': message})}")
    except (ImportError, OSError, ValueError, JaxfastError) as err:  # WeightMismatch is a ValueError
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


if __name__ == "__main__":
    main()
