"""GAN switchers as data, and the host loop that alternates the two pure steps.

A switcher is a pure function `(switch_state, last_metrics) -> (switch_state, train_critic)`
called after every step with that step's metrics; `train_critic` says which model the next
step trains. `SwitchState` (mode and counters) is a small pytree with a JSON form, saved
beside the two TrainStates: (gen_state, critic_state, switch_state, base rng, data position)
is everything a resumed run needs to continue exactly.

- `FixedSwitcher(n_crit, n_gen)`: fastai's FixedGANSwitcher: n_crit critic steps, then n_gen
  generator steps (GANLearner's default: 5 and 1).
- `AdaptiveSwitcher(gen_thresh, critic_thresh)`: fastai's AdaptiveGANSwitcher: after a
  generator step, switch to the critic if gen_thresh is None or the step's loss < gen_thresh;
  after a critic step, switch to the generator if critic_thresh is None or its loss <
  critic_thresh (the superres lesson: critic_thresh=0.65, so the critic trains until its loss
  falls below 0.65, then the generator takes one step).

fastai starts every `fit` in critic mode (`gen_first=False`) with fresh counters; here the state
carries over, so splitting a run into several calls changes nothing (start a new phase with
`initial_switch_state()` to get fastai's behaviour).
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, NamedTuple

import jax
import numpy as np
from flax import struct

from jaxfast.errors import InputError, TrainingDiverged
from jaxfast.gan.steps import GANSteps
from jaxfast.state import TrainState


@struct.dataclass
class SwitchState:
    """Which model trains next (gen_mode) and how many steps each has taken since the last switch."""

    gen_mode: bool = False
    n_crit: int = 0
    n_gen: int = 0

    def to_json(self) -> dict:
        return {"gen_mode": bool(self.gen_mode), "n_crit": int(self.n_crit), "n_gen": int(self.n_gen)}

    @classmethod
    def from_json(cls, data: dict) -> "SwitchState":
        try:
            return cls(bool(data["gen_mode"]), int(data["n_crit"]), int(data["n_gen"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"bad GAN switch state {data!r}: needs gen_mode, n_crit, n_gen ({err})") from None


def initial_switch_state(gen_first: bool = False) -> SwitchState:
    """fastai's start of training: the critic first unless `gen_first`."""
    return SwitchState(gen_mode=bool(gen_first))


def mean_loss(metrics: dict) -> float:
    """The step's mean loss from its {'loss': {'sum', 'count'}} metrics (or a plain float)."""
    if isinstance(metrics, (int, float)):
        return float(metrics)
    stat = metrics["loss"]
    return float(stat["sum"]) / max(float(stat["count"]), 1.0)


@dataclasses.dataclass(frozen=True)
class FixedSwitcher:
    """n_crit critic steps, then n_gen generator steps, and again."""

    n_crit: int = 5
    n_gen: int = 1

    def __post_init__(self):
        for name in ("n_crit", "n_gen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"FixedSwitcher: {name} must be a positive int, got {value!r}")

    def __call__(self, state: SwitchState, last_metrics=None) -> tuple[SwitchState, bool]:
        if state.gen_mode:
            state = state.replace(n_gen=state.n_gen + 1)
            done = state.n_gen >= self.n_gen
        else:
            state = state.replace(n_crit=state.n_crit + 1)
            done = state.n_crit >= self.n_crit
        if done:
            state = SwitchState(gen_mode=not state.gen_mode)
        return state, not state.gen_mode


@dataclasses.dataclass(frozen=True)
class AdaptiveSwitcher:
    """Switch away from a model once its last loss falls below its threshold (None: after one step)."""

    critic_thresh: float | None = None
    gen_thresh: float | None = None

    def __call__(self, state: SwitchState, last_metrics) -> tuple[SwitchState, bool]:
        thresh = self.gen_thresh if state.gen_mode else self.critic_thresh
        if state.gen_mode:
            state = state.replace(n_gen=state.n_gen + 1)
        else:
            state = state.replace(n_crit=state.n_crit + 1)
        if thresh is None or mean_loss(last_metrics) < thresh:
            state = SwitchState(gen_mode=not state.gen_mode)
        return state, not state.gen_mode


class GANRecord(NamedTuple):
    """One step of `fit_gan`: what was trained, its metrics (host floats: sums divided by counts),
    and the three states after it (save them to resume from here)."""

    iteration: int
    trained_critic: bool
    metrics: dict
    gen_state: TrainState
    critic_state: TrainState
    switch_state: SwitchState


def step_key(rng: jax.Array, iteration: int) -> jax.Array:
    """The key of step `iteration`: fold_in(base, iteration), so a resumed run draws the same keys."""
    if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.wrap_key_data(rng)
    return jax.random.fold_in(rng, iteration)


def fit_gan(gen_state: TrainState, critic_state: TrainState, switch_state: SwitchState, batches: Iterable[dict],
            rng: jax.Array, steps: GANSteps, switcher, n_steps: int | None = None) -> Iterator[GANRecord]:
    """Alternate the jitted steps over `batches` (one batch per step), the switcher choosing
    after each step; yields a `GANRecord` per step. Step i (i = generator steps + critic steps
    so far, read from the states) uses the key fold_in(rng, i). Stops after `n_steps` steps or
    when `batches` ends. Reading each step's loss (which the switcher needs) waits for the step."""
    iteration = int(jax.device_get(gen_state.step)) + int(jax.device_get(critic_state.step))
    for k, batch in enumerate(batches):
        if n_steps is not None and k >= n_steps:
            break
        key = step_key(rng, iteration)
        train_critic = not switch_state.gen_mode
        if train_critic:
            critic_state, metrics = steps.critic(gen_state, critic_state, batch, key)
        else:
            gen_state, metrics = steps.generator(gen_state, critic_state, batch, key)
        means = {name: float(s["sum"]) / max(float(s["count"]), 1.0)
                 for name, s in jax.device_get(metrics).items()}
        if not np.isfinite(means["loss"]):
            raise TrainingDiverged(f"GAN {'critic' if train_critic else 'generator'} loss is {means['loss']} "
                                     f"at step {iteration}")
        switch_state, _ = switcher(switch_state, {"loss": {"sum": means["loss"], "count": 1.0}})
        yield GANRecord(iteration, train_critic, means, gen_state, critic_state, switch_state)
        iteration += 1
