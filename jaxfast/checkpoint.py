"""Orbax checkpoints of the training state: atomic saves, latest + best N, exact resume.

A checkpoint holds the state's arrays (step, params, batch_stats, opt_state, rng)
and a small JSON `meta` (where in the training plan it was taken, the history so
far). Orbax writes each checkpoint to a temporary folder and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
The arrays are saved as host (numpy) copies: a checkpoint holds no device layout, so one
saved on any device or process count restores onto any other; restoring takes the shapes,
dtypes and shardings from a freshly built state. Under several processes (jax.distributed)
every process calls `save` and `restore` (Orbax synchronises them), the state is replicated,
and process 0 alone writes the arrays and the meta (Orbax's primary host); an unreadable
checkpoint is moved aside by process 0 alone. The directory must be one that every process sees.
"""

from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from jaxfast import distributed
from jaxfast.errors import JaxfastError
from jaxfast.state import TrainState

ARRAY_FIELDS = ("step", "params", "batch_stats", "opt_state", "rng", "carry")


def state_arrays(state: TrainState) -> dict:
    """The savable part of a state (its pytree leaves, grouped by field)."""
    return {name: getattr(state, name) for name in ARRAY_FIELDS}


def host_arrays(state: TrainState) -> dict:
    """The savable part of a state as numpy copies (one copy of a replicated array): no device
    layout is saved, so any device or process count restores it."""
    return jax.device_get(state_arrays(state))


class CheckpointWriteError(JaxfastError):
    """A checkpoint could not be written (e.g. a full disk); the earlier ones are intact."""


def _disk_full(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from, says the disk is full."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "ENOSPC" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class Checkpointer:
    """Saves every call to `save`, keeps the `keep_latest` latest ones (the one before the
    latest is the fallback when the latest cannot be read) plus the best `keep_best` by
    `monitor`.

    `mode` is 'min' (e.g. valid_loss) or 'max' (e.g. accuracy). Checkpoints saved without
    metrics (mid-epoch saves) are kept only while they are among the latest.
    """

    def __init__(self, directory: str | Path, monitor: str | None = None, mode: str = "min", keep_best: int = 1,
                 keep_latest: int = 2):
        if mode not in ("min", "max"):
            raise ValueError(f"checkpoint mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.mode = monitor, mode
        keep = [policies.LatestN(n=keep_latest)]
        if monitor is not None and keep_best > 0:
            keep.append(
                policies.BestN(
                    get_metric_fn=lambda metrics: metrics[monitor],
                    reverse=(mode == "min"),
                    n=keep_best,
                    keep_checkpoints_without_metrics=False,
                )
            )
        ranked = monitor is not None and keep_best > 0
        # best_fn also makes Orbax write each step's metrics to disk, so a resumed run
        # still knows which old checkpoints are the best ones.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep),
            best_fn=(lambda metrics: metrics[monitor]) if ranked else None,
            best_mode=mode,
            enable_async_checkpointing=False,
            create=True,
        )
        self.directory = Path(directory).absolute()
        self._options = options
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_readable(self, log=print) -> int | None:
        """The latest step whose arrays and meta read back whole. An unreadable one (truncated
        or corrupted on disk) is said, moved aside to `<directory>.unreadable/` (never
        deleted), and the previous one is tried; None when no checkpoint is left."""
        for step in sorted(self.all_steps(), reverse=True):
            try:
                self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                                      meta=ocp.args.JsonRestore()))
                return step
            except Exception as error:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for a damaged file
                aside = self.directory.with_name(self.directory.name + ".unreadable") / str(step)
                if distributed.is_primary():
                    aside.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(self.directory / str(step)), str(aside))
                distributed.barrier(f"checkpoint step {step} moved aside")
                reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
                log(f"checkpoint step {step} in {self.directory} is unreadable ({reason}); moved it to {aside} "
                    "and falling back to the previous checkpoint")
                self._manager.close()
                self._manager = ocp.CheckpointManager(self.directory, options=self._options, item_names=("state", "meta"))
        return None

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The kept step with the best `monitor` value (None without ranked checkpoints)."""
        if self.monitor is None:
            return None
        ranked = [(m[self.monitor], step) for step in self.all_steps() if (m := self._manager.metrics(step))]
        return (min if self.mode == "min" else max)(ranked)[1] if ranked else None

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState, meta: dict, metrics: dict | None = None) -> int:
        """Write a checkpoint at the state's step; returns the step."""
        step = int(jax.device_get(state.step))
        if metrics is not None and self.monitor is not None:
            value = metrics.get(self.monitor)
            if value is None or not math.isfinite(value):
                metrics = None  # unrankable: keep it only as the latest
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(host_arrays(state)), meta=ocp.args.JsonSave(meta)),
                metrics=metrics if self.monitor is not None else None,
                force=True,
            )
            self._manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - a full disk surfaces from Orbax/TensorStore in several forms
            if not _disk_full(error):
                raise
            previous = [s for s in self.all_steps() if s != step]
            raise CheckpointWriteError(
                f"the disk holding {self.directory} is full: checkpoint step {step} could not be written"
                + (f"; the previous checkpoint (step {max(previous)}) is intact" if previous else "")
                + ". Free some space and run the same command again to resume"
            ) from error
        return step

    def read_meta(self, step: int | None = None) -> dict | None:
        """The JSON meta of checkpoint `step` (default latest), or None when there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore(self, target: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restore checkpoint `step` (default latest) into the structure and shardings of `target`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_arrays(target))
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return target.replace(**restored["state"]), restored["meta"]

    def restore_weights(self, target: TrainState, step: int | None = None) -> TrainState:
        """`target` with the params, batch stats, step and rng of checkpoint `step` (default
        latest), its own optimizer state kept: for a checkpoint written under another
        optimizer (an earlier phase, other frozen groups), whose statistics do not fit."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
        weights = {name: restored[name] for name in ("step", "params", "batch_stats", "rng")}
        if jax.tree.structure(weights["params"]) != jax.tree.structure(target.params):
            raise ValueError(f"checkpoint {step} in {self.directory} holds params of another model")
        placed = jax.tree.map(lambda new, old: jax.device_put(new, old.sharding) if hasattr(old, "sharding") else new,
                              weights, {name: getattr(target, name) for name in weights})
        return target.replace(**placed)

    def close(self) -> None:
        self._manager.close()
