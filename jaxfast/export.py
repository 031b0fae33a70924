"""Export a trained model for inference, and load it back with one call. Never pickle.

An export folder holds:
- `variables/`: the Orbax checkpoint of params (and batch_stats when the model has them);
- `export.json`: what prediction needs: the architecture name and config (rebuilt via
  `jaxfast.models.registry`), the task (loss, classes, vocab, procs), preprocessing.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxfast.errors import InputError
from jaxfast.models.registry import build_model, module_of

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """A model ready for inference: module, variables, and the exported metadata."""

    model: nn.Module
    variables: dict
    meta: dict
    path: Path | None = None

    def predict(self, inputs) -> np.ndarray:
        """Raw model outputs (logits / values) for a batch of inputs (compiled once per shape)."""
        try:
            return np.asarray(_apply(self.model, self.variables, inputs))
        except (flax.errors.ScopeParamShapeError, flax.errors.ScopeParamNotFoundError,
                flax.errors.ScopeCollectionNotFound) as error:  # weights that do not fit export.json's architecture
            raise InputError(f"{self._where()}the weights in variables/ do not fit the architecture "
                             f"{self.meta.get('arch')!r} of export.json: {str(error).split(' (https://')[0]}") from None
        except (TypeError, ValueError, ZeroDivisionError, IndexError, KeyError) as error:
            # Raised while tracing the model: an arch_config that cannot run (e.g. a size of 0 or a string).
            raise InputError(f"{self._where()}export.json's arch_config {self.meta.get('arch_config')} for "
                             f"{self.meta.get('arch')!r} does not run on its weights and inputs "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})") from None

    def _where(self) -> str:
        return f"{self.path}: " if self.path is not None else ""


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: nn.Module, variables: dict, inputs):
    return model.apply(variables, inputs, train=False)


def export_model(path: str | Path, arch: str, arch_config: dict, variables: dict, meta: dict[str, Any]) -> Path:
    """Write `variables` and the JSON description to `path` (replacing an older export)."""
    build_model(arch, arch_config)  # fail now, not at load time, if it cannot be rebuilt
    path = Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    variables = {k: v for k, v in variables.items() if v}
    me = jax.process_index()  # under several processes only process 0 exports: Orbax must not wait for the others
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    with ocp.StandardCheckpointer(multiprocessing_options=alone) as checkpointer:
        checkpointer.save(path / "variables", jax.device_get(variables))
    description = {"format_version": FORMAT_VERSION, "arch": arch, "arch_module": module_of(arch),
                   "arch_config": arch_config, **meta, "variables_sha256": variables_digest(variables)}
    (path / "export.json").write_text(json.dumps(description, indent=2))
    return path


def variables_digest(variables: dict) -> str:
    """SHA-256 over every array's path, dtype, shape and bytes: export.json records it so that
    weights damaged on disk are refused instead of predicting silently wrong values."""
    digest = hashlib.sha256()
    for key, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(key)}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_description(path: str | Path) -> dict:
    """The export.json of export folder `path`, checked: a JSON object with the format version,
    the architecture name and its config (InputError naming the file and key otherwise)."""
    path = Path(path).absolute()
    description_file = path / "export.json"
    if not description_file.is_file():
        raise InputError(f"{path} is not a jaxfast export: {description_file.name} is missing")
    try:
        meta = json.loads(description_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{description_file} is not valid JSON ({error}); the export is damaged: export it again") from None
    if not isinstance(meta, dict):
        raise InputError(f"{description_file} holds a JSON {type(meta).__name__}, not the object an export writes")
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{description_file}: format_version {meta.get('format_version')!r} is not {FORMAT_VERSION}")
    for key, kind in (("arch", str), ("arch_config", dict)):
        if not isinstance(meta.get(key), kind):
            raise InputError(f"{description_file}: {key!r} must be a {kind.__name__}, got {meta.get(key)!r}")
    return meta


def load_export(path: str | Path) -> ExportedModel:
    """Rebuild the model of an export folder and restore its variables (InputError naming the
    file when export.json or the weights are damaged or do not fit each other)."""
    path = Path(path).absolute()
    meta = read_description(path)
    try:
        model = build_model(meta["arch"], meta["arch_config"], meta.get("arch_module"))
    except (ValueError, TypeError, KeyError, ImportError) as error:
        raise InputError(f"{path / 'export.json'}: the architecture cannot be rebuilt: {error}") from None
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            variables = checkpointer.restore(path / "variables")
    except Exception as error:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for a damaged folder
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise InputError(f"{path / 'variables'} cannot be read ({reason}); the export is missing or damaged: "
                         "export it again") from None
    expected = meta.get("variables_sha256")
    if expected is not None and variables_digest(variables) != expected:
        raise InputError(f"{path / 'variables'}: the weights do not match the checksum in export.json; "
                         "the files are damaged: export it again")
    return ExportedModel(model, variables, meta, path)
