"""fastai's Learner ideas on a pure JAX core: fit, fit_one_cycle, fine_tune, lr_find,
freeze/unfreeze with layer groups and discriminative rates.

The Learner only orchestrates: it builds an Optax optimizer for each `fit*` call (a
"phase"), moves the state to devices through a `Runner` (jaxfast.parallel), feeds
batches to the jitted pure `train_step`, and does the host-side work around it:
progress bar, epoch table, recorder, checkpoints, early stopping.

Resume: with a `workdir`, every epoch end (and optionally every N steps) writes a
checkpoint whose meta says which phase, epoch and batch it was taken at. A rerun of
the same script replays its `fit*` calls: phases that already finished are skipped,
the phase in progress is restored and continues at the exact batch. Data order and
dropout keys depend only on (seed, epoch) and (seed, step), so the result is the
same as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxfast import optim
from jaxfast.checkpoint import Checkpointer
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.data.prefetch import prefetch
from jaxfast.errors import TrainingDiverged
from jaxfast.layer_groups import SINGLE_GROUP, LayerGroups
from jaxfast.losses import get_loss
from jaxfast.lr_finder import LRFindResult, lr_find, plot_lr_find
from jaxfast.metrics import Metric, add_stats, finalize_all, get_metrics
from jaxfast.parallel import make_runner
from jaxfast.recorder import Recorder, format_header, format_row
from jaxfast.state import Task, copy_tree, create_train_state
from jaxfast.steps import loss_and_outputs_step, predict_step


# Train steps dispatched ahead of the host reading their metrics (see Learner._epochs).
STEPS_IN_FLIGHT = 4


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of the training loop (not of the experiment)."""

    opt: str = "adam"  # 'adam' (AdamW, decoupled wd) or 'sgd' (with momentum)
    wd: float = 1e-2
    beta2: float = 0.99
    eps: float = 1e-5
    clip: float | None = None  # global-norm gradient clipping
    mixed_precision: bool = False  # bf16 compute, fp32 master weights
    parallel: str = "auto"  # auto | single | mesh | pmap
    seed: int = 0
    monitor: str = "valid_loss"  # for keep-best checkpoints and early stopping
    monitor_mode: str = "min"
    keep_best: int = 1
    checkpoint_every_steps: int | None = None
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    progress: bool = True
    train_bn: bool = True
    # Batches prepared on a background thread (0: in the loop; None: 2 on accelerators, 0 on
    # CPU, where the host's work competes with XLA for the same cores: +45% per step on a
    # 2-core machine with the thread, +9% without, for a 0.6 ms tabular step).
    prefetch_batches: int | None = None


class Learner:
    """Model + data + loss + metrics, trained by phases of pure jitted steps."""

    def __init__(
        self,
        model,
        data: DataBunch,
        loss: str | Callable = "cross_entropy",
        metrics: Sequence[str | Metric] = (),
        *,
        layer_groups: LayerGroups = SINGLE_GROUP,
        config: TrainConfig = TrainConfig(),
        workdir: str | Path | None = None,
        log: Callable[[str], None] = print,
    ):
        self.model, self.data, self.config, self.log = model, data, config, log
        self.workdir = Path(workdir) if workdir is not None else None
        loss_fn = get_loss(loss) if isinstance(loss, str) else loss
        task = Task(loss_fn, get_metrics(metrics), "bfloat16" if config.mixed_precision else "float32")
        self.metric_names = [m.name for m in task.metrics]
        self.runner = make_runner(config.parallel)
        for loader in [data.train, *data.eval_splits().values()]:
            self.runner.check_batch_size(loader.batch_size)
        self.state = create_train_state(model, data.train.sample_inputs(), optim_placeholder(), task, config.seed)
        self.layer_groups = layer_groups
        self.group_labels = optim.label_layer_groups(self.state.params, layer_groups.group_of_path, layer_groups.n_groups)
        self.n_frozen = 0
        self.recorder = Recorder()
        self._phase = 0
        self.checkpointer = None
        self._resume_meta = None
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.checkpointer = Checkpointer(
                self.workdir / "checkpoints", config.monitor, config.monitor_mode, config.keep_best
            )
            self._resume_meta = self.checkpointer.read_meta()
            if self._resume_meta is not None:
                self.log(
                    f"resuming from checkpoint at step {self.checkpointer.latest_step()} "
                    f"(phase {self._resume_meta['phase']}, epoch {self._resume_meta['epoch']}, "
                    f"batch {self._resume_meta['batch']}) in {self.checkpointer.directory}"
                )

    # ---- freezing -----------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return self.layer_groups.n_groups

    def freeze_to(self, n: int) -> None:
        """Freeze groups [0, n) (negative n counts from the end), BatchNorm stays trainable."""
        n = n if n >= 0 else self.n_groups + n
        if not 0 <= n <= self.n_groups:
            raise ValueError(f"freeze_to({n}) is out of range for {self.n_groups} layer groups")
        self.n_frozen = n

    def freeze(self) -> None:
        """Train only the last group (the head)."""
        self.freeze_to(-1)

    def unfreeze(self) -> None:
        self.freeze_to(0)

    @property
    def resuming(self) -> bool:
        """True while a checkpoint from an earlier run is still to be picked up."""
        return self._resume_meta is not None

    # ---- optimizers -----------------------------------------------------------------
    def _optimizer(self, lrs: list, moms, wd: float | None = None):
        return optim.make_optimizer(
            self.state.params, self.state.batch_stats, self.group_labels,
            lrs=lrs, opt=self.config.opt, moms=moms, beta2=self.config.beta2, eps=self.config.eps,
            wd=self.config.wd if wd is None else wd, n_frozen_groups=self.n_frozen,
            train_bn=self.config.train_bn, clip_norm=self.config.clip,
        )

    # ---- public training API ----------------------------------------------------------
    def fit(self, n_epochs: int, lr: float | slice = 3e-3, wd: float | None = None, mom: float = 0.9) -> None:
        """Train at a constant learning rate (per group when `lr` is a slice)."""
        lrs = optim.discriminative_lrs(lr, self.n_groups)
        self._run_phase(n_epochs, lrs, mom, wd)

    def fit_one_cycle(
        self, n_epochs: int, lr_max: float | slice = 3e-3, *, moms=(0.95, 0.85), div: float = 25.0,
        pct_start: float = 0.3, final_div: float = 1e4, wd: float | None = None,
    ) -> None:
        """fastai's one-cycle policy: lr warms up then anneals, momentum does the opposite."""
        total = n_epochs * len(self.data.train)
        lrs = [
            optim.one_cycle_lr(lr, total, pct_start=pct_start, div=div, final_div=final_div)
            for lr in optim.discriminative_lrs(lr_max, self.n_groups)
        ]
        self._run_phase(n_epochs, lrs, optim.one_cycle_momentum(total, pct_start, moms), wd)

    def fine_tune(
        self, epochs: int, base_lr: float = 2e-3, freeze_epochs: int = 1, lr_mult: float = 100,
        pct_start: float = 0.3, div: float = 5.0,
    ) -> None:
        """fastai's transfer-learning recipe: train the head frozen, then all groups with
        discriminative rates from base_lr/lr_mult to base_lr."""
        self.freeze()
        self.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)
        base_lr /= 2
        self.unfreeze()
        self.fit_one_cycle(epochs, slice(base_lr / lr_mult, base_lr), pct_start=pct_start, div=div)

    def lr_find(
        self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True,
        plot_path: str | Path | None = None,
    ) -> LRFindResult:
        """fastai's LR range test (see jaxfast.lr_finder); the learner's state is untouched."""
        result = lr_find(self, start_lr, end_lr, num_it, stop_div)
        path = plot_path or (self.workdir / "lr_find.png" if self.workdir is not None else None)
        if path is not None:
            plot_lr_find(result, path)
        self.log(f"lr_find: min/10 {result.lr_min:.2e}, steepest {result.lr_steep:.2e}")
        return result

    # ---- evaluation and inference -------------------------------------------------------
    def validate(self, loader: ArrayLoader | None = None) -> dict:
        """Loss and metrics on `loader` (default: the validation split)."""
        loader = loader if loader is not None else self.data.valid
        if loader is None:
            raise ValueError("validate: no loader given and the data has no validation split")
        return self._evaluate(self.runner.put_state(self.state), loader)

    def evaluate_all(self) -> dict:
        """Every evaluation split (valid, test, ...) as {'<split>_<metric>': value}."""
        out = {}
        for split, loader in self.data.eval_splits().items():
            for name, value in self.validate(loader).items():
                out[f"{split}_{name}"] = value
        return out

    def get_preds(self, loader: ArrayLoader | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outputs, targets, per-example losses) of every real row of `loader`, in order."""
        loader = loader if loader is not None else self.data.valid
        step = jax.jit(loss_and_outputs_step)
        outputs, targets, losses = [], [], []
        for batch in loader.batches(0):
            real = batch["mask"] > 0
            loss, out = step(self.state, batch)
            outputs.append(np.asarray(out)[real])
            losses.append(np.asarray(loss)[real])
            targets.append(np.asarray(batch["targets"])[real])
        return np.concatenate(outputs), np.concatenate(targets), np.concatenate(losses)

    def predict(self, inputs) -> np.ndarray:
        """Model outputs for a batch of inputs (any leading size)."""
        return np.asarray(jax.jit(predict_step)(self.state, inputs))

    def export(self, path: str | Path, arch: str, arch_config: dict, meta: dict | None = None) -> Path:
        """Write an inference export (see jaxfast.export) of the current weights."""
        from jaxfast.export import export_model

        return export_model(path, arch, arch_config, self.state.variables(), meta or {})

    # ---- the loop ----------------------------------------------------------------------
    def _run_phase(self, n_epochs: int, lrs: list, moms, wd: float | None) -> None:
        if n_epochs < 0:
            raise ValueError(f"n_epochs must be >= 0, got {n_epochs}")
        phase, self._phase = self._phase, self._phase + 1
        state = self.state.with_optimizer(self._optimizer(lrs, moms, wd))
        start_epoch, start_batch, partial = 0, 0, (0.0, 0.0)
        meta = self._resume_meta
        if meta is not None:
            if meta["phase"] > phase:
                return  # finished in an earlier run; the checkpoint is restored in a later phase
            state, meta = self.checkpointer.restore(state)
            self.recorder = Recorder.from_dict(meta["recorder"])
            start_epoch, start_batch = meta["epoch"], meta["batch"]
            partial = tuple(meta["partial_loss"])
            self._resume_meta = None
        if start_epoch >= n_epochs:
            self.state = state
            return
        runner = self.runner
        dstate = runner.put_state(copy_tree(state))
        try:
            dstate = self._epochs(phase, state, dstate, n_epochs, start_epoch, start_batch, partial, lrs, moms)
        except TrainingDiverged:
            if self.checkpointer is not None and self.checkpointer.latest_step() is not None:
                self.state, _ = self.checkpointer.restore(state)
            raise
        self.state = runner.get_state(dstate)
        if self.workdir is not None:
            self.recorder.plot_losses(self.workdir / "losses.png")
            self.recorder.plot_schedule(self.workdir / "schedule.png")

    def _epochs(self, phase, state, dstate, n_epochs, start_epoch, start_batch, partial, lrs, moms):
        """The epochs of one phase, from (start_epoch, start_batch); returns the device state."""
        train, runner = self.data.train, self.runner
        lr_log, mom_log = self._schedule_log(lrs[-1], moms, n_epochs * len(train))
        columns = ["epoch", "train_loss", "valid_loss", *self.metric_names, "time"]
        self.log(format_header(columns))
        best, bad_epochs = None, 0
        for epoch in range(start_epoch, n_epochs):
            t0 = time.time()
            data_epoch = self.recorder.n_epochs
            loss_sum, loss_count = partial if epoch == start_epoch else (0.0, 0.0)
            first = start_batch if epoch == start_epoch else 0
            bar = tqdm(
                total=len(train), initial=first, disable=not self.config.progress, leave=False,
                desc=f"epoch {data_epoch}", dynamic_ncols=True,
            )
            sums = [loss_sum, loss_count]

            def record(pending: list, n: int | None = None) -> None:
                """Check and log the metrics of the oldest `n` (default all) pending steps,
                fetched in one transfer."""
                done = pending[:n] if n is not None else list(pending)
                del pending[:len(done)]
                fetched = runner.get_metrics([m for _, m in done])
                for (b, _), metrics in zip(done, fetched):
                    loss_sum_b, count_b = float(metrics["loss"]["sum"]), float(metrics["loss"]["count"])
                    loss = loss_sum_b / max(count_b, 1.0)
                    if not math.isfinite(loss):
                        bar.close()
                        raise TrainingDiverged(self._diverged_message(loss, data_epoch, b))
                    sums[0] += loss_sum_b
                    sums[1] += count_b
                    step_in_phase = epoch * len(train) + b
                    self.recorder.add_step(loss, lr_log[step_in_phase], mom_log[step_in_phase])
                bar.update(len(done))
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

            # Steps run ahead of their metrics: the loop reads the oldest `in_flight` steps'
            # metrics in one transfer once 2 * `in_flight` are unread, so the device always
            # has queued work and the host reads rarely. Where `runner.sync_each_step` (CPU
            # collectives, see jaxfast.parallel) every step is read before the next. On
            # accelerators the next batches are prepared on a thread (`_device_batches`).
            in_flight = 0 if runner.sync_each_step else STEPS_IN_FLIGHT
            every = self.config.checkpoint_every_steps
            pending: list = []
            with contextlib.closing(self._device_batches(train.batches(data_epoch, start=first))) as batches:
                for b, dbatch in enumerate(batches, start=first):
                    dstate, device_metrics = runner.train_step(dstate, dbatch)
                    pending.append((b, device_metrics))
                    if len(pending) > 2 * in_flight:
                        record(pending, max(in_flight, 1))
                    if every and self.checkpointer and (len(self.recorder.losses) + len(pending)) % every == 0 \
                            and b + 1 < len(train):
                        record(pending)
                        self._save(dstate, phase, epoch, b + 1, tuple(sums))
            if pending:
                record(pending)
            loss_sum, loss_count = sums
            bar.close()
            row = {"epoch": data_epoch, "train_loss": loss_sum / max(loss_count, 1.0)}
            if self.data.valid is not None:
                results = self._evaluate(dstate, self.data.valid)
                row["valid_loss"] = results.pop("loss")
                row.update(results)
            row["time"] = time.time() - t0
            row["step"] = len(self.recorder.losses)
            self.recorder.add_epoch(row)
            self.log(format_row(row, columns))
            stop = self._early_stop(row, best, bad_epochs)
            best, bad_epochs, stop_now = stop
            self._save(dstate, phase, n_epochs if stop_now else epoch + 1, 0, (0.0, 0.0), metrics=row)
            if self.workdir is not None:
                self.recorder.write_csv(self.workdir / "history.csv")
            if stop_now:
                self.log(f"early stopping: {self.config.monitor} did not improve for {bad_epochs} epochs")
                break
        return dstate

    def _evaluate(self, dstate, loader: ArrayLoader) -> dict:
        """Loss and metrics of `loader` with the device state `dstate`."""
        stats, pending = None, []

        def add_pending():  # one transfer; summed on the host in float64 (exact counts)
            nonlocal stats
            for metrics in self.runner.get_metrics(pending):
                stats = add_stats(stats, jax.tree.map(lambda x: np.asarray(x, np.float64), metrics))
            pending.clear()

        with contextlib.closing(self._device_batches(loader.batches(0))) as batches:
            for dbatch in batches:
                pending.append(self.runner.eval_step(dstate, dbatch))
                if self.runner.sync_each_step or len(pending) >= 2 * STEPS_IN_FLIGHT:
                    add_pending()
        add_pending()
        loss = stats.pop("loss")
        results = {"loss": float(loss["sum"] / max(float(loss["count"]), 1.0))}
        results.update(finalize_all(self.state.task.metrics, stats))
        return results

    def _device_batches(self, batches):
        """The batches on the device, prepared `config.prefetch_batches` ahead on a thread."""
        ahead = self.config.prefetch_batches
        if ahead is None:
            ahead = 0 if jax.default_backend() == "cpu" else 2
        if ahead > 0:
            return prefetch(batches, self.runner.put_batch, ahead)
        return (self.runner.put_batch(batch) for batch in batches)

    @staticmethod
    def _schedule_log(lr, mom, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The last group's lr and the momentum at every step of a phase, evaluated once
        (vectorised) instead of per step on the host."""
        steps = jnp.arange(max(total_steps, 1))

        def values(schedule):
            if callable(schedule):
                return np.asarray(schedule(steps), np.float64)
            return np.full(len(steps), float(schedule))

        return values(lr), values(mom)

    def _early_stop(self, row: dict, best, bad_epochs: int):
        patience = self.config.early_stopping_patience
        value = row.get(self.config.monitor)
        if patience is None or value is None:
            return best, bad_epochs, False
        sign = 1.0 if self.config.monitor_mode == "min" else -1.0
        if best is None or sign * (best - value) > self.config.early_stopping_min_delta:
            return value, 0, False
        return best, bad_epochs + 1, bad_epochs + 1 >= patience

    def _save(self, dstate, phase: int, epoch: int, batch: int, partial: tuple, metrics: dict | None = None) -> None:
        if self.checkpointer is None:
            return
        meta = {
            "phase": phase, "epoch": epoch, "batch": batch, "partial_loss": list(partial),
            "recorder": self.recorder.to_dict(),
        }
        self.checkpointer.save(self.runner.get_state(dstate), meta, metrics)

    def _diverged_message(self, loss: float, epoch: int, batch: int) -> str:
        where = f"loss became {loss} at epoch {epoch}, batch {batch}"
        if self.checkpointer is None or self.checkpointer.latest_step() is None:
            return f"{where}; no checkpoint was written (lower the learning rate?)"
        return (
            f"{where}; training stopped, the last good checkpoint (step {self.checkpointer.latest_step()}) "
            f"is kept in {self.checkpointer.directory} (lower the learning rate?)"
        )


def optim_placeholder():
    """The optimizer of a state before its first phase: identity, no statistics."""
    import optax

    return optax.identity()

