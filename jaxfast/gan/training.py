"""GAN phases with the Learner's guarantees: checkpoints, exact resume, SIGTERM, NaN stop.

`GANTrainer` runs phases of `fit_gan` (jaxfast.gan.switcher) over a loader, one batch per step
(a step trains the critic or the generator, as the switcher decides: fastai's GANTrainer).
It reuses the one checkpoint format (jaxfast.checkpoint.Checkpointer): both TrainStates go
into one checkpoint as `PairArrays` (params/batch_stats/opt_state/rng as {'generator',
'critic'} dicts) whose meta holds the plan (jaxfast.phases signatures), the position (phase,
epoch, batch), the switch state and the history. A rerun of the same script replays its
phases: finished ones are skipped, the one in progress is restored and continues at the exact
batch with the same switch state and keys (step i's key is fold_in(seed key, i), i counting
both models' steps), so it ends with the parameters of an uninterrupted run.

SIGTERM saves after the current step and raises `Preempted`; a NaN/inf loss raises
`TrainingDiverged` naming the last good checkpoint (the trainer keeps those weights).

Devices: `config.parallel` as every experiment's (jaxfast.parallel): 'single', or 'mesh' (the
states replicated, each batch split over the devices: the result of one device up to the order
of float sums); 'pmap' is refused (`gan_runner`): the GAN steps are written for a sharded jit, not
for pmap's named axis. Under several processes, process 0 alone writes the history, plots and
TensorBoard events; every process saves checkpoints (Orbax synchronises them).
Per epoch: history.csv (one row per epoch: each model's mean loss and metrics, step counts),
`gan_losses.png` (per-step curves), TensorBoard scalars, and the caller's `on_epoch` hook
(e.g. a sample grid).
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from tqdm.auto import tqdm

from jaxfast import distributed
from jaxfast.checkpoint import Checkpointer
from jaxfast.errors import InputError, TrainingDiverged
from jaxfast.gan.history import GANHistory
from jaxfast.gan.steps import GANSteps, jit_gan_steps
from jaxfast.parallel import ParallelConfig, Runner, make_runner
from jaxfast.gan.switcher import SwitchState, fit_gan, initial_switch_state
from jaxfast.phases import PhaseMismatch, check_phase, signature
from jaxfast.preemption import Preempted, stop_requests
from jaxfast.state import TrainState, copy_tree
from jaxfast.train_config import TrainConfig

ROLES = ("generator", "critic")


class PairArrays(struct.PyTreeNode):
    """The arrays of both states in the Checkpointer's fields (one checkpoint holds both)."""

    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Any
    carry: Any


def pair_arrays(gen: TrainState, critic: TrainState) -> PairArrays:
    """Both states as one savable pytree; its step counts both models' steps."""
    states = dict(zip(ROLES, (gen, critic)))
    field = lambda name: {role: getattr(s, name) for role, s in states.items()}
    return PairArrays(gen.step + critic.step, field("params"), field("batch_stats"), field("opt_state"),
                      field("rng"), field("carry") | {"steps": {role: s.step for role, s in states.items()}})


def split_pair(pair: PairArrays, gen: TrainState, critic: TrainState) -> tuple[TrainState, TrainState]:
    """The two TrainStates (static parts from `gen`/`critic`) holding `pair`'s arrays."""
    out = []
    for role, state in zip(ROLES, (gen, critic)):
        out.append(state.replace(step=pair.carry["steps"][role], params=pair.params[role],
                                 batch_stats=pair.batch_stats[role], opt_state=pair.opt_state[role],
                                 rng=pair.rng[role], carry=pair.carry[role]))
    return out[0], out[1]


class CriticOnly:
    """A switcher that always trains the critic (the superres lesson's critic pretraining)."""

    def __call__(self, state: SwitchState, last_metrics=None) -> tuple[SwitchState, bool]:
        return state.replace(n_crit=state.n_crit + 1, gen_mode=False), True

    def __repr__(self) -> str:
        return "CriticOnly()"


def gan_runner(parallel: ParallelConfig | str) -> Runner:
    """The devices of GAN training for `--parallel` (InputError for pmap, before any training:
    an experiment calls it first when a Learner stage comes before its GAN stages)."""
    runner = make_runner(parallel)
    if runner.mode == "pmap":
        raise InputError("GAN training runs under --parallel single or mesh (a sharded jit over the devices, the "
                         "result of one device); its steps are not written for pmap's named axis: use "
                         "--parallel mesh (or auto)")
    return runner


class GANTrainer:
    """A generator and a critic trained by phases of pure GAN steps (see the module docstring).

    `gen_state` / `critic_state` are the starting states (their optimizers are replaced by each
    phase's); after `fit`, `self.gen_state` / `self.critic_state` are the trained ones.
    `runner`: the devices (default `gan_runner(config.parallel)`)."""

    def __init__(self, gen_state: TrainState, critic_state: TrainState, workdir: str | Path | None,
                 config: TrainConfig = TrainConfig(), log: Callable[[str], None] = print,
                 checkpoint_dir: str = "gan_checkpoints", history_name: str = "history.csv",
                 runner: Runner | None = None):
        self.gen_state, self.critic_state, self.config, self.log = gen_state, critic_state, config, log
        self.runner = gan_runner(config.parallel) if runner is None else runner
        self.primary = distributed.is_primary()  # process 0 writes the history, plots and events
        self.workdir = Path(workdir) if workdir is not None else None
        self.history_name = history_name  # beside a Learner's history.csv: another name
        self.rng = jax.random.fold_in(jax.random.key(config.seed), 0x6A4)
        self.history = GANHistory()
        self.switch_state = initial_switch_state()
        self._plan: list[dict] = []
        self.checkpointer, self._resume_meta, self.tensorboard = None, None, None
        if self.workdir is None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if config.tensorboard and self.primary:
            from jaxfast.tensorboard import TensorBoardWriter

            self.tensorboard = TensorBoardWriter(self.workdir)
        self.checkpointer = Checkpointer(self.workdir / checkpoint_dir, monitor=None)
        self._resume_meta = self.checkpointer.read_meta(self.checkpointer.latest_readable(self.log))
        if self._resume_meta is not None:
            if "plan" not in self._resume_meta or "switch" not in self._resume_meta:
                raise PhaseMismatch(f"{self.checkpointer.directory} does not hold GAN checkpoints; use another "
                                    "workdir (or delete it) to start over")
            m = self._resume_meta
            self.log(f"resuming GAN training from checkpoint at step {self.checkpointer.latest_step()} "
                     f"(phase {m['phase']}, epoch {m['epoch']}, batch {m['batch']}) in {self.checkpointer.directory}")

    @property
    def resuming(self) -> bool:
        return self._resume_meta is not None

    def fit(self, name: str, n_epochs: int, loader, steps: GANSteps, switcher, gen_tx, critic_tx,
            settings: dict, to_batch: Callable[[dict], dict], on_epoch: Callable[[int, "GANTrainer"], None] | None = None,
            switch_state: SwitchState | None = None) -> None:
        """Phase `name`: `n_epochs` passes over `loader` (one step per batch; `to_batch` maps a
        loader batch to the GAN steps' dict), the optimizers `gen_tx` / `critic_tx` with fresh
        statistics (fastai builds new ones per fit), `settings` (lrs, betas, ...) recorded in
        the phase signature. `switch_state` (default: carried on from the previous phase)
        starts the switcher; `on_epoch(epoch, trainer)` runs at each epoch's end, before its checkpoint."""
        if n_epochs < 0:
            raise ValueError(f"n_epochs must be >= 0, got {n_epochs}")
        self.runner.check_batch_size(loader.batch_size, "GAN batch")
        if self.runner.replicated is not None:  # a mesh: the steps' outputs stay replicated
            steps = jit_gan_steps(steps.loss, out_shardings=self.runner.replicated)
        index, meta = len(self._plan), self._resume_meta
        sig = signature("gan_fit", name=name, epochs=n_epochs, loss=steps.loss.kind, switcher=repr(switcher),
                        **settings, train_rows=loader.num_rows, batch_size=loader.batch_size,
                        batches_per_epoch=len(loader))
        if meta is not None:
            check_phase(meta["plan"], index, sig, str(self.checkpointer.directory))
        self._plan.append(sig)
        gen = self.gen_state.with_optimizer(gen_tx)
        critic = self.critic_state.with_optimizer(critic_tx)
        switch = self.switch_state if switch_state is None else switch_state
        start_epoch, start_batch = 0, 0
        if meta is not None:
            if meta["phase"] > index:
                return  # finished in an earlier run; a later phase restores its checkpoint
            restored, meta = self.checkpointer.restore(pair_arrays(gen, critic))
            gen, critic = split_pair(restored, gen, critic)
            switch = SwitchState.from_json(meta["switch"])
            self.history = GANHistory.from_dict(meta["history"])
            start_epoch, start_batch = meta["epoch"], meta["batch"]
            self._resume_meta = None
        self.gen_state, self.critic_state, self.switch_state = gen, critic, switch
        if start_epoch >= n_epochs:
            return
        self.log(f"== GAN phase {index} ({name}): {n_epochs} epochs of {len(loader)} steps, {switcher!r}")
        with stop_requests() as stop:
            for epoch in range(start_epoch, n_epochs):
                self._epoch(index, epoch, loader, steps, switcher, to_batch,
                            start_batch if epoch == start_epoch else 0, stop, on_epoch)

    def _epoch(self, phase: int, epoch: int, loader, steps, switcher, to_batch, first: int, stop,
               on_epoch) -> None:
        """One pass over `loader` from batch `first`; the epoch's outputs are written before its
        checkpoint, so a run killed in between rewrites them (identically) on the rerun."""
        t0, data_epoch = time.time(), self.history.n_epochs
        every = self.config.checkpoint_every_steps
        runner = self.runner
        # the steps donate their inputs: copies, placed on the devices
        gen, critic = runner.put_state(copy_tree(self.gen_state)), runner.put_state(copy_tree(self.critic_state))
        batches = (runner.put_batch(to_batch(b)) for b in loader.batches(data_epoch, start=first))
        with tqdm(total=len(loader), initial=first, disable=not self.config.progress, leave=False,
                  desc=f"epoch {data_epoch}", dynamic_ncols=True) as bar, contextlib.closing(batches):
            b = first
            try:
                for record in fit_gan(gen, critic, self.switch_state, batches, self.rng, steps, switcher):
                    gen, critic, self.switch_state = record.gen_state, record.critic_state, record.switch_state
                    self.gen_state, self.critic_state = gen, critic
                    self.history.add_step(data_epoch, record.trained_critic, record.metrics)
                    b += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{record.metrics['loss']:.4f}", refresh=False)
                    if stop.requested:
                        self._save(phase, epoch, b)
                        raise Preempted(self._where(f"stopped by {stop.name} after epoch {data_epoch}, batch {b}"))
                    if every and b < len(loader) and self.history.n_steps % every == 0:
                        self._save(phase, epoch, b)
            except TrainingDiverged as err:
                self._restore_last_good()
                raise TrainingDiverged(self._where(f"{err}; training stopped")) from None
        self.gen_state, self.critic_state = runner.get_state(gen), runner.get_state(critic)
        row = self.history.end_epoch(data_epoch, time.time() - t0)
        self.log(self.history.format_row(row))
        if self.workdir is not None and self.primary:
            self.history.write_csv(self.workdir / self.history_name)
            self.history.plot(self.workdir / "gan_losses.png")
        if on_epoch is not None:
            on_epoch(data_epoch, self)
        self._log_tensorboard(row)
        self._save(phase, epoch + 1, 0)

    def _restore_last_good(self) -> None:
        """After a NaN: keep the weights of the latest checkpoint (the donated states are gone)."""
        if self.checkpointer is None or self.checkpointer.latest_step() is None:
            return
        # the failed step's input was donated: restore into zeros of the same shapes
        zeros = lambda state: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), state)
        template = pair_arrays(zeros(self.gen_state), zeros(self.critic_state))
        try:
            restored, _ = self.checkpointer.restore(template)
            self.gen_state, self.critic_state = split_pair(restored, self.gen_state, self.critic_state)
        except Exception:  # noqa: BLE001 - saved by an earlier phase whose optimizer state has another shape
            pass  # the run ends with the error; the checkpoint stays on disk

    def _save(self, phase: int, epoch: int, batch: int) -> None:
        if self.checkpointer is None:
            return
        meta = {"phase": phase, "plan": self._plan, "epoch": epoch, "batch": batch,
                "switch": self.switch_state.to_json(), "history": self.history.to_dict()}
        states = self.runner.get_state(self.gen_state), self.runner.get_state(self.critic_state)
        self.checkpointer.save(pair_arrays(*states), meta)

    def _where(self, what: str) -> str:
        if self.checkpointer is None or self.checkpointer.latest_step() is None:
            return f"{what}; no checkpoint was written"
        return (f"{what}; the last checkpoint (step {self.checkpointer.latest_step()}) is in "
                f"{self.checkpointer.directory}: run the same command again to resume from it")

    def _log_tensorboard(self, row: dict) -> None:
        if self.tensorboard is None:
            return
        for iteration, role, values in self.history.step_scalars():
            self.tensorboard.scalars(iteration, values, role)  # steps logged before (a resumed run) are skipped
        self.tensorboard.epoch(row, prefix="gan_epoch")  # apart from a Learner's 'epoch' rows
        self.tensorboard.image_png("plots/gan_losses", self.workdir / "gan_losses.png", row["step"])
        self.tensorboard.flush()


@functools.lru_cache(maxsize=8)
def _inference(apply_fn):
    return jax.jit(lambda variables, x: apply_fn(variables, x, train=False))


def sample_images(gen_state: TrainState, inputs) -> np.ndarray:
    """The generator's outputs for `inputs` in inference mode (fixed noise -> the epoch's samples);
    compiled once per model."""
    return np.asarray(_inference(gen_state.apply_fn)(gen_state.variables(), inputs))
