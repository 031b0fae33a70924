"""The training loop's settings: one frozen dataclass, nested by every experiment's config
(`--train.wd`, `--train.seed`, ...), and taken by the Learner and its factories."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import tyro

from jaxfast.parallel import ParallelConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of the training loop (not of the experiment)."""

    opt: str = "adam"
    """'adam' (AdamW with decoupled weight decay, fastai's true_wd) or 'sgd' (with momentum)."""
    wd: float = 1e-2
    """Weight decay (BatchNorm and bias params are exempt, as in fastai)."""
    beta2: float = 0.99
    eps: float = 1e-5
    clip: float | None = None
    """Global-norm gradient clipping (none by default)."""
    mixed_precision: bool = False
    """bf16 forward/backward with fp32 master weights, optimizer state and loss."""
    parallel: Annotated[ParallelConfig, tyro.conf.OmitArgPrefixes] = ParallelConfig()
    """Devices: `--parallel auto|single|mesh|pmap`, `--mesh-data N` (unprefixed; see jaxfast.parallel). A bare
    mode name (`TrainConfig(parallel="mesh")`) is accepted too."""
    seed: int = 0
    """Seeds the init, the dropout keys and the data order: same seed, same result."""
    monitor: str = "valid_loss"
    """The epoch metric that ranks the kept best checkpoints and drives early stopping."""
    monitor_mode: str = "min"
    keep_best: int = 1
    checkpoint_every_steps: int | None = None
    """Also checkpoint every N steps (epoch ends always are)."""
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    progress: bool = True
    """A progress bar per epoch (the epoch table is printed either way)."""
    train_bn: bool = True
    """BatchNorm layers of frozen groups still train (fastai's train_bn)."""
    prefetch_batches: int | None = None
    """Batches prepared on a background thread (0: in the loop; None: 2 on accelerators, 0 on CPU, where the
    host's work competes with XLA for the same cores: +45% per step on a 2-core machine with the thread, +9%
    without, for a 0.6 ms tabular step)."""
    tensorboard: bool = True
    """TensorBoard event files in <workdir>/tensorboard (with a workdir)."""


def early_stop(config: TrainConfig, row: dict, best, bad_epochs: int) -> tuple:
    """(best, bad_epochs, stop now) after an epoch's `row`: early stopping on `config.monitor`
    once it has not improved by `early_stopping_min_delta` for `early_stopping_patience` epochs."""
    patience = config.early_stopping_patience
    value = row.get(config.monitor)
    if patience is None or value is None:
        return best, bad_epochs, False
    sign = 1.0 if config.monitor_mode == "min" else -1.0
    if best is None or sign * (best - value) > config.early_stopping_min_delta:
        return value, 0, False
    return best, bad_epochs + 1, bad_epochs + 1 >= patience
