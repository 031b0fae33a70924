"""Export a trained model for inference, and load it back with one call. Never pickle.

An export folder holds:
- `variables/`: the Orbax checkpoint of params (and batch_stats when the model has them);
- `export.json`: what prediction needs: the architecture name and config (rebuilt via
  `jaxfast.models.registry`), the task (loss, classes, vocab, procs), preprocessing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path
from typing import Any

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

    def predict(self, inputs) -> np.ndarray:
        """Raw model outputs (logits / values) for a batch of inputs (compiled once per shape)."""
        return np.asarray(_apply(self.model, self.variables, inputs))


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
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / "variables", jax.device_get(variables))
    description = {"format_version": FORMAT_VERSION, "arch": arch, "arch_module": module_of(arch),
                   "arch_config": arch_config, **meta}
    (path / "export.json").write_text(json.dumps(description, indent=2))
    return path


def load_export(path: str | Path) -> ExportedModel:
    """Rebuild the model of an export folder and restore its variables."""
    path = Path(path).absolute()
    description_file = path / "export.json"
    if not description_file.is_file():
        raise InputError(f"{path} is not a jaxfast export: {description_file.name} is missing")
    meta = json.loads(description_file.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{description_file}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    model = build_model(meta["arch"], meta["arch_config"], meta.get("arch_module"))
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(path / "variables")
    return ExportedModel(model, variables, meta)
