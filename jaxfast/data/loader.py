"""Batches from in-memory numpy arrays, deterministic per (seed, epoch).

Every batch is a dict `{'inputs', 'targets', 'mask'}` of fixed batch size: the last
partial batch is padded by repeating rows and masked out (`mask` 0), so a jitted
step never sees a new shape. Training loaders drop the last partial batch instead,
as fastai does. `batches(epoch, start=k)` skips the first k batches, which is how a
run resumed from a mid-epoch checkpoint continues exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Protocol

import jax
import numpy as np
from jaxfast.errors import InputError


def _leading_size(tree) -> int:
    sizes = {np.shape(x)[0] for x in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise InputError(f"inputs and targets disagree on the number of rows: {sorted(sizes)}")
    return sizes.pop()


class Loader(Protocol):
    """What the Learner needs from a data source (ArrayLoader, or a tf.data pipeline).

    `batches(epoch, start)` must be deterministic in (epoch, start) for exact resume,
    and every batch must have `batch_size` rows: {'inputs', 'targets', 'mask'}.
    """

    batch_size: int

    def __len__(self) -> int: ...

    @property
    def num_rows(self) -> int: ...

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]: ...

    def sample_inputs(self) -> Any: ...


@dataclasses.dataclass(frozen=True)
class ArrayLoader:
    """Fixed-size batches of (inputs pytree, targets) numpy arrays."""

    inputs: Any
    targets: Any
    batch_size: int
    shuffle: bool = False
    drop_last: bool = False
    seed: int = 0
    name: str = "data"

    def __post_init__(self):
        if self.batch_size < 1:
            raise InputError(f"{self.name}: batch_size must be >= 1, got {self.batch_size}")
        n = _leading_size((self.inputs, self.targets))
        if n == 0:
            raise InputError(f"{self.name}: the dataset is empty (0 rows)")
        if self.drop_last and n < self.batch_size:
            raise InputError(
                f"{self.name}: {n} rows is fewer than one batch of {self.batch_size} and drop_last is set; "
                "lower the batch size"
            )

    def __len__(self) -> int:
        """Number of batches per epoch."""
        n = self.num_rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_rows(self) -> int:
        return _leading_size(self.targets)

    def order(self, epoch: int) -> np.ndarray:
        """Row order of `epoch`: a permutation drawn from (seed, epoch) when shuffling."""
        n = self.num_rows
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, epoch]).permutation(n)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        """Yield the batches of `epoch`, beginning at batch index `start`."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            real = len(idx)
            if real < self.batch_size:
                idx = np.concatenate([idx, np.resize(idx, self.batch_size - real)])
            mask = np.zeros(self.batch_size, np.float32)
            mask[:real] = 1.0
            yield {
                "inputs": jax.tree.map(lambda x: x[idx], self.inputs),
                "targets": jax.tree.map(lambda x: x[idx], self.targets),
                "mask": mask,
            }

    def sample_inputs(self) -> Any:
        """The inputs of the first batch (for model initialisation)."""
        return next(self.batches(0))["inputs"]


@dataclasses.dataclass(frozen=True)
class DataBunch:
    """A training loader, a validation loader and any extra evaluated splits (e.g. test).

    `meta`: what a model of this data needs to be built and exported besides the arrays
    (JSON: the kind, classes, fitted procs, id maps); the learner factories read it."""

    train: Loader
    valid: Loader | None = None
    extra: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)

    def show_batch(self, path=None, rows: int = 3, split: str = "train"):
        """fastai's show_batch: a PNG of the first `rows` x `rows` items of a batch of `split`
        (images with their labels or masks, or a table of rows); returns its path."""
        from jaxfast.show import show_batch

        return show_batch(self, path, rows, split)

    def eval_splits(self) -> dict:
        """Every split evaluated at the end of training: valid first, then the extras."""
        splits = {"valid": self.valid} if self.valid is not None else {}
        splits.update(self.extra)
        return splits
