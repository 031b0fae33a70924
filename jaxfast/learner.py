"""fastai's Learner ideas on a pure JAX core: fit, fit_one_cycle, fine_tune, lr_find,
freeze/unfreeze with layer groups and discriminative rates.

The Learner only orchestrates: it builds an Optax optimizer for each `fit*` call (a
"phase"), moves the state to devices through a `Runner` (jaxfast.parallel), feeds
batches to the jitted pure `train_step`, and does the host-side work around it:
progress bar, epoch table, recorder, checkpoints, early stopping.

Resume: with a `workdir`, every epoch end (and optionally every N steps) writes a
checkpoint whose meta holds the plan so far (each phase's signature, see
jaxfast.phases) and the phase, epoch and batch it was taken at. A rerun of the same
script replays its `fit*` calls: each phase must match the recorded one (else
PhaseMismatch says what changed), phases that already finished are skipped, the phase
in progress is restored and continues at the exact batch, and a recorded `lr_find`
returns its result without running. Data order and dropout keys depend only on (seed,
epoch) and (seed, step), so the result is the same as an uninterrupted run.

Several processes (jaxfast.distributed): every process runs the same loop and saves, process 0
alone logs and writes history, plots, TensorBoard events and exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxfast import distributed, optim
from jaxfast.checkpoint import Checkpointer
from jaxfast.data.loader import DataBunch, Loader
from jaxfast.data.prefetch import prefetch
from jaxfast.errors import TrainingDiverged
from jaxfast.layer_groups import SINGLE_GROUP, LayerGroups
from jaxfast.losses import get_loss
from jaxfast.lr_finder import LRFindResult, lr_find, plot_lr_find
from jaxfast.metrics import Metric, add_stats, finalize_all, get_metrics
from jaxfast.models.registry import ModelSpec
from jaxfast.parallel import make_runner
from jaxfast.pending import Pending, leading_size
from jaxfast.phases import PhaseMismatch, check_phase, signature
from jaxfast.preemption import Preempted, StopRequest, stop_requests
from jaxfast.recorder import Recorder, format_header, format_row
from jaxfast.state import Task, copy_tree, create_train_state
from jaxfast.train_config import TrainConfig, early_stop


class Learner:
    """Model + data + loss + metrics, trained by phases of pure jitted steps.

    `model` is a Flax module, or a `ModelSpec` (a registered architecture and its config),
    which also lets `export(path)` rebuild it; `export_meta` is what prediction needs besides
    the weights (kind, classes, preprocessing), or a function of the learner's current data
    that says it (so an export after `learn.data = ...` at a new size records that size).
    The learner factories (`cnn_learner`, `tabular_learner`, ...) fill both.
    `activation_reg` (alpha, beta): fastai's RNNTrainer AR/TAR (jaxfast.state.Task).
    """

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
        export_meta: dict | Callable[[DataBunch], dict | None] | None = None,
        activation_reg: tuple[float, float] = (0.0, 0.0),
    ):
        self.spec = model if isinstance(model, ModelSpec) else None
        self.model = self.spec.build() if self.spec is not None else model
        self.data, self.config, self.export_meta = data, config, export_meta
        self.primary = distributed.is_primary()  # process 0 logs and writes the run's files
        self.log = log if self.primary else _quiet
        self.workdir = Path(workdir) if workdir is not None else None
        loss_fn = get_loss(loss) if isinstance(loss, str) else loss
        task = Task(loss_fn, get_metrics(metrics), "bfloat16" if config.mixed_precision else "float32",
                    tuple(activation_reg))
        self.metric_names = [m.name for m in task.metrics]
        self.runner = make_runner(config.parallel)
        for split, loader in {"train": data.train, **data.eval_splits()}.items():
            self.runner.check_batch_size(loader.batch_size, f"{split} batch")
        self.state = create_train_state(self.model, data.train.sample_inputs(), optim_placeholder(), task, config.seed)
        self.layer_groups = layer_groups
        self.group_labels = optim.label_layer_groups(self.state.params, layer_groups.group_of_path, layer_groups.n_groups)
        self.n_frozen = 0
        self.recorder = Recorder()
        self._plan: list[dict] = []  # the signatures of this run's phases so far (jaxfast.phases)
        self.checkpointer = None
        self._resume_meta = None
        self.tensorboard = None
        if self.workdir is not None and config.tensorboard and self.primary:
            from jaxfast.tensorboard import TensorBoardWriter

            self.tensorboard = TensorBoardWriter(self.workdir)
        if self.workdir is not None:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.checkpointer = Checkpointer(
                self.workdir / "checkpoints", config.monitor, config.monitor_mode, config.keep_best
            )
            self._resume_meta = self.checkpointer.read_meta(self.checkpointer.latest_readable(self.log))
            if self._resume_meta is not None:
                if "plan" not in self._resume_meta:
                    raise PhaseMismatch(f"{self.checkpointer.directory} was written by an older jaxfast without "
                                        "phase records; use another workdir (or delete it) to start over")
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

    def _signature(self, kind: str, n_epochs: int, **settings) -> dict:
        """A phase's signature: its settings, the frozen groups and the data's size."""
        train = self.data.train
        if "wd" in settings and settings["wd"] is None:
            settings["wd"] = self.config.wd
        return signature(kind, epochs=n_epochs, **settings, frozen_groups=self.n_frozen, train_rows=train.num_rows,
                         batch_size=train.batch_size, batches_per_epoch=len(train))

    # ---- public training API ----------------------------------------------------------
    def fit(self, n_epochs: int, lr: float | slice = 3e-3, wd: float | None = None, mom: float = 0.9) -> None:
        """Train at a constant learning rate (per group when `lr` is a slice)."""
        lrs = optim.discriminative_lrs(lr, self.n_groups)
        self._run_phase(self._signature("fit", n_epochs, lrs=lrs, mom=mom, wd=wd), n_epochs, lrs, mom, wd)

    def fit_one_cycle(
        self, n_epochs: int, lr_max: float | slice = 3e-3, *, moms=(0.95, 0.85), div: float = 25.0,
        pct_start: float = 0.3, final_div: float = 1e4, wd: float | None = None,
    ) -> None:
        """fastai's one-cycle policy: lr warms up then anneals, momentum does the opposite."""
        total = n_epochs * len(self.data.train)
        lr_maxes = optim.discriminative_lrs(lr_max, self.n_groups)
        lrs = [optim.one_cycle_lr(lr, total, pct_start=pct_start, div=div, final_div=final_div) for lr in lr_maxes]
        sig = self._signature("fit_one_cycle", n_epochs, lrs=lr_maxes, moms=moms, div=div, pct_start=pct_start,
                              final_div=final_div, wd=wd)
        self._run_phase(sig, n_epochs, lrs, optim.one_cycle_momentum(total, pct_start, moms), wd)

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
        """fastai's LR range test (see jaxfast.lr_finder); the learner's state is untouched. On a
        rerun in the same workdir the recorded result is given back without running again."""
        index, meta = len(self._plan), self._resume_meta
        sig = self._signature("lr_find", 0, start_lr=start_lr, end_lr=end_lr, num_it=num_it, stop_div=stop_div)
        if meta is not None and index < len(meta["plan"]):
            check_phase(meta["plan"], index, sig, str(self.checkpointer.directory))
            result = LRFindResult(**meta["plan"][index]["result"])
        else:
            result = lr_find(self, start_lr, end_lr, num_it, stop_div)
        self._plan.append({**sig, "result": dataclasses.asdict(result)})
        path = plot_path or (self.workdir / "lr_find.png" if self.workdir is not None else None)
        if path is not None and self.primary:
            plot_lr_find(result, path)
        self.log(f"lr_find: min/10 {result.lr_min:.2e}, steepest {result.lr_steep:.2e}")
        return result

    # ---- evaluation and inference -------------------------------------------------------
    def validate(self, loader: Loader | None = None) -> dict:
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

    def get_preds(self, loader: Loader | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(outputs, targets, per-example losses) of every real row of `loader`, in order,
        computed through the runner (one device, a mesh or pmap)."""
        loader = loader if loader is not None else self.data.valid
        if loader is None:
            raise ValueError("get_preds: no loader given and the data has no validation split")
        dstate = self.runner.put_state(self.state)
        outputs, targets, losses = [], [], []

        def keep(host_batch, result) -> None:
            loss, out = result
            real = host_batch["mask"] > 0
            outputs.append(out[real])
            losses.append(loss[real])
            targets.append(jax.tree.map(lambda t: np.asarray(t)[real], host_batch["targets"]))

        pending = Pending(self.runner.fetch, keep, self.runner.sync_each_step)
        for batch in loader.batches(0):
            host = {"mask": np.asarray(batch["mask"]), "targets": batch["targets"]}
            pending.add(host, self.runner.outputs_step(dstate, self.runner.put_batch(batch)))
        pending.flush()
        return np.concatenate(outputs), jax.tree.map(lambda *t: np.concatenate(t), *targets), np.concatenate(losses)

    def predict(self, inputs) -> np.ndarray:
        """Model outputs for a batch of inputs (any leading size), through the runner."""
        n = leading_size(inputs, "predict")
        pad = -n % self.runner.data_shards
        if pad:
            inputs = jax.tree.map(lambda x: np.concatenate([x, np.repeat(np.asarray(x)[-1:], pad, 0)]), inputs)
        device_inputs = self.runner.put_batch({"inputs": inputs})["inputs"]
        return self.runner.fetch(self.runner.predict_step(self.runner.put_state(self.state), device_inputs))[:n]

    def show_results(self, path: str | Path | None = None, rows: int = 3, split: str = "valid") -> Path:
        """fastai's show_results: a PNG of items of `split` with their truth and prediction
        (default workdir/show_results.png); see jaxfast.show."""
        from jaxfast.show import show_results

        return show_results(self, path, rows, split)

    def prediction_meta(self) -> dict:
        """What prediction needs besides the weights (kind, classes, preprocessing), for the
        learner's current data."""
        meta = self.export_meta(self.data) if callable(self.export_meta) else self.export_meta
        return dict(meta or {})

    def export(self, path: str | Path, arch: str | None = None, arch_config: dict | None = None,
               meta: dict | None = None) -> Path:
        """Write an inference export (see jaxfast.export) of the current weights. The
        architecture and the prediction meta default to the learner's own (a learner built
        from a ModelSpec, e.g. by a factory)."""
        from jaxfast.export import export_model

        if arch is None:
            if self.spec is None:
                raise ValueError("export: this learner's model is a bare Flax module; pass arch and arch_config, "
                                 "or build the learner from a ModelSpec (the learner factories do)")
            arch, arch_config = self.spec.arch, self.spec.config
        meta = self.prediction_meta() if meta is None else meta
        if not self.primary:  # process 0 writes it; the others wait until it is there
            distributed.barrier(f"export {path}")
            return Path(path)
        written = export_model(path, arch, arch_config, self.state.variables(), meta)
        distributed.barrier(f"export {path}")
        return written

    # ---- the loop ----------------------------------------------------------------------
    def _run_phase(self, sig: dict, n_epochs: int, lrs: list, moms, wd: float | None) -> None:
        if n_epochs < 0:
            raise ValueError(f"n_epochs must be >= 0, got {n_epochs}")
        index, meta = len(self._plan), self._resume_meta
        if meta is not None:
            check_phase(meta["plan"], index, sig, str(self.checkpointer.directory))
        self._plan.append(sig)
        state = self.state.with_optimizer(self._optimizer(lrs, moms, wd))
        start_epoch, start_batch, partial = 0, 0, (0.0, 0.0)
        if meta is not None:
            if meta["phase"] > index:
                return  # finished in an earlier run; the checkpoint is restored in a later phase
            state, meta = self.checkpointer.restore(state)
            self.recorder = Recorder.from_dict(meta["recorder"])
            start_epoch, start_batch = meta["epoch"], meta["batch"]
            partial = tuple(meta["partial_loss"])
            self._resume_meta = None
        if start_epoch >= n_epochs:  # done before a kill that may have come before its outputs were written
            self.state = state
            self._write_outputs()
            return
        dstate = self.runner.put_state(copy_tree(state))
        try:
            with stop_requests() as stop:
                dstate = self._epochs(index, dstate, n_epochs, start_epoch, start_batch, partial, lrs, moms, stop)
        except TrainingDiverged:
            if self.checkpointer is not None and self.checkpointer.latest_step() is not None:
                # The last good weights, under this phase's optimizer with fresh statistics:
                # the checkpoint may come from an earlier phase whose optimizer differs.
                self.state = self.checkpointer.restore_weights(state)
            raise
        self.state = self.runner.get_state(dstate)
        self._write_outputs()

    def _write_outputs(self) -> None:
        """history.csv and the loss/schedule plots of the phases so far (process 0, with a workdir)."""
        if self.workdir is not None and self.primary:
            self.recorder.write_csv(self.workdir / "history.csv")
            self.recorder.plot_losses(self.workdir / "losses.png")
            self.recorder.plot_schedule(self.workdir / "schedule.png")
            self._log_tensorboard(None, plots=("losses.png", "schedule.png"))

    def _epochs(self, phase: int, dstate, n_epochs: int, start_epoch: int, start_batch: int, partial, lrs, moms,
                stop: StopRequest):
        """The epochs of one phase, from (start_epoch, start_batch); returns the device state.
        A stop request (SIGTERM) saves a checkpoint after the current step and raises Preempted."""
        train, runner = self.data.train, self.runner
        total = n_epochs * len(train)
        lr_log, mom_log = optim.schedule_values(lrs[-1], total), optim.schedule_values(moms, total)  # the last group's
        columns = ["epoch", "train_loss", "valid_loss", *self.metric_names, "time"]
        self.log(format_header(columns))
        best, bad_epochs = None, 0
        every = self.config.checkpoint_every_steps
        for epoch in range(start_epoch, n_epochs):
            t0 = time.time()
            data_epoch = self.recorder.n_epochs
            first = start_batch if epoch == start_epoch else 0
            sums = list(partial) if epoch == start_epoch else [0.0, 0.0]
            with tqdm(total=len(train), initial=first, disable=not (self.config.progress and self.primary), leave=False,
                      desc=f"epoch {data_epoch}", dynamic_ncols=True) as bar:

                def record(b: int, metrics: dict) -> None:
                    """Check and log one step's loss (host side, in dispatch order)."""
                    loss_sum, count = float(metrics["loss"]["sum"]), float(metrics["loss"]["count"])
                    loss = loss_sum / max(count, 1.0)
                    if not math.isfinite(loss):
                        raise TrainingDiverged(self._diverged_message(loss, data_epoch, b))
                    sums[0], sums[1] = sums[0] + loss_sum, sums[1] + count
                    step_in_phase = epoch * len(train) + b
                    self.recorder.add_step(loss, lr_log[step_in_phase], mom_log[step_in_phase])
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

                pending = Pending(runner.get_metrics, record, runner.sync_each_step)
                with contextlib.closing(self._device_batches(runner.host_batches(train, data_epoch, first))) as batches:
                    for b, dbatch in enumerate(batches, start=first):
                        dstate, device_metrics = runner.train_step(dstate, dbatch)
                        pending.add(b, device_metrics)
                        if stop.requested:
                            pending.flush()
                            self._save(dstate, phase, epoch, b + 1, tuple(sums))
                            raise Preempted(self._preempted_message(stop, data_epoch, b + 1))
                        if every and self.checkpointer and (len(self.recorder.losses) + len(pending)) % every == 0 \
                                and b + 1 < len(train):
                            pending.flush()
                            self._save(dstate, phase, epoch, b + 1, tuple(sums))
                pending.flush()
            row = {"epoch": data_epoch, "train_loss": sums[0] / max(sums[1], 1.0)}
            if self.data.valid is not None:
                results = self._evaluate(dstate, self.data.valid)
                row["valid_loss"] = results.pop("loss")
                row.update(results)
            row["time"] = time.time() - t0
            row["step"] = len(self.recorder.losses)
            self.recorder.add_epoch(row)
            self.log(format_row(row, columns))
            self._log_tensorboard(row)
            best, bad_epochs, stop_now = early_stop(self.config, row, best, bad_epochs)
            self._save(dstate, phase, n_epochs if stop_now else epoch + 1, 0, (0.0, 0.0), metrics=row)
            if self.workdir is not None and self.primary:
                self.recorder.write_csv(self.workdir / "history.csv")
            if stop_now:
                self.log(f"early stopping: {self.config.monitor} did not improve for {bad_epochs} epochs")
                break
        return dstate

    def _evaluate(self, dstate, loader: Loader) -> dict:
        """Loss and metrics of `loader` with the device state `dstate`."""
        total: list[Any] = [None]

        def add(_, metrics) -> None:  # summed on the host in float64 (exact counts)
            total[0] = add_stats(total[0], jax.tree.map(lambda x: np.asarray(x, np.float64), metrics))

        pending = Pending(self.runner.get_metrics, add, self.runner.sync_each_step)
        with contextlib.closing(self._device_batches(self.runner.host_batches(loader, 0))) as batches:
            for dbatch in batches:
                metrics, carry = self.runner.eval_step(dstate, dbatch)
                if carry:  # an LM's hidden state, carried to the next batch (never into training)
                    dstate = dstate.replace(carry=carry)
                pending.add(None, metrics)
        pending.flush()
        stats = total[0]
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

    def _log_tensorboard(self, row: dict | None, plots: Sequence[str] = ()) -> None:
        """The steps' loss/lr/momentum not logged yet, an epoch's row, and PNG plots, at the
        global step (a resumed run continues the same curves; see jaxfast.tensorboard)."""
        if self.tensorboard is None:
            return
        rec = self.recorder
        self.tensorboard.step_series({"loss": rec.losses, "lr": rec.lrs, "mom": rec.moms}, "train")
        if row is not None:
            self.tensorboard.epoch(row)
        for name in plots:
            self.tensorboard.image_png(f"plots/{Path(name).stem}", self.workdir / name, len(rec.losses))
        self.tensorboard.flush()

    def _save(self, dstate, phase: int, epoch: int, batch: int, partial: tuple, metrics: dict | None = None) -> None:
        if self.checkpointer is None:
            return
        meta = {
            "phase": phase, "plan": self._plan, "epoch": epoch, "batch": batch, "partial_loss": list(partial),
            "recorder": self.recorder.to_dict(),
        }
        self.checkpointer.save(self.runner.get_state(dstate), meta, metrics)

    def _preempted_message(self, stop: StopRequest, epoch: int, batch: int) -> str:
        where = f"stopped by {stop.name} after epoch {epoch}, batch {batch}"
        if self.checkpointer is None:
            return f"{where}; no workdir, so nothing was saved"
        return (f"{where}; checkpoint step {self.checkpointer.latest_step()} saved in {self.checkpointer.directory}: "
                "run the same command again to resume")

    def _diverged_message(self, loss: float, epoch: int, batch: int) -> str:
        where = f"loss became {loss} at epoch {epoch}, batch {batch}"
        if self.checkpointer is None or self.checkpointer.latest_step() is None:
            return f"{where}; no checkpoint was written (lower the learning rate?)"
        return (
            f"{where}; training stopped, the last good checkpoint (step {self.checkpointer.latest_step()}) "
            f"is kept in {self.checkpointer.directory} (lower the learning rate?)"
        )


def _quiet(_: str) -> None:
    """The log of every process but process 0."""


def optim_placeholder():
    """The optimizer of a state before its first phase: identity, no statistics."""
    import optax

    return optax.identity()

