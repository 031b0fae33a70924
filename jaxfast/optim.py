"""Optimizers and schedules in the fastai v1 style, built from Optax pieces.

* `one_cycle_lr` / `one_cycle_momentum`: fastai's OneCycleScheduler (cosine annealing).
* `discriminative_lrs`: fastai's `Learner.lr_range` (one learning rate per layer group).
* `label_layer_groups`: integer layer-group labels on a param tree.
* `batchnorm_mask` / `no_decay_mask`: which params are BatchNorm / exempt from weight decay.
* `make_optimizer`: AdamW (decoupled weight decay, fastai's `true_wd`) or SGD with
  momentum, per-group learning rates, frozen groups (with trainable BatchNorm, fastai's
  `train_bn`) and optional global-norm clipping, as one `optax.multi_transform`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfast.errors import InputError

FROZEN = "frozen"


# ----------------------------------------------------------------------------- schedules


def _annealing_cos(start: float, end: float, n_steps: int) -> optax.Schedule:
    """fastai's `annealing_cos(start, end, pct)` with pct = step / n_steps, clipped to [0, 1]
    so the value holds at `end` past the phase (jit-safe: pure jnp on the step).

    Computed as start*cos^2(pi*pct/2) + end*sin^2(pi*pct/2), the same value as
    end + (start-end)/2*(cos(pi*pct)+1) without its float32 cancellation near pct=1
    (where the tiny final learning rates live)."""
    n = max(int(n_steps), 1)

    def schedule(step):
        half_angle = jnp.pi / 2 * jnp.clip(jnp.asarray(step, jnp.float32) / n, 0.0, 1.0)
        return start * jnp.cos(half_angle) ** 2 + end * jnp.sin(half_angle) ** 2

    return schedule


def _two_phase_cos(v0: float, v1: float, v2: float, total_steps: int, pct_start: float) -> optax.Schedule:
    """Cosine v0 -> v1 over the first int(total*pct_start) steps, then v1 -> v2 over the
    rest; the phase-2 piece sees the step count since its boundary (optax.join_schedules)."""
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise InputError(f"total_steps must be a positive int, got {total_steps!r}")
    if not 0.0 <= pct_start <= 1.0:
        raise InputError(f"pct_start must be in [0, 1], got {pct_start!r}")
    n1 = int(total_steps * pct_start)
    n2 = total_steps - n1
    phase1 = _annealing_cos(v0, v1, n1)
    phase2 = _annealing_cos(v1, v2, n2)
    if n1 == 0:  # no warm-up phase: start at v1 and anneal over all the steps
        return phase2
    return optax.join_schedules([phase1, phase2], [n1])


def one_cycle_lr(lr_max: float, total_steps: int, pct_start=0.3, div=25.0, final_div=1e4) -> optax.Schedule:
    """fastai v1 one-cycle learning rate: cosine lr_max/div -> lr_max over the first
    int(total_steps*pct_start) steps, then lr_max -> lr_max/(div*final_div)."""
    if not lr_max > 0:
        raise InputError(f"lr_max must be positive, got {lr_max!r}")
    if not (div > 0 and final_div > 0):
        raise InputError(f"div and final_div must be positive, got div={div!r}, final_div={final_div!r}")
    return _two_phase_cos(lr_max / div, lr_max, lr_max / (div * final_div), total_steps, pct_start)


def one_cycle_momentum(total_steps: int, pct_start=0.3, moms=(0.95, 0.85)) -> optax.Schedule:
    """fastai v1 one-cycle momentum: cosine moms[0] -> moms[1] -> moms[0] with the same
    phases as `one_cycle_lr` (momentum is low while the learning rate is high)."""
    hi, lo = moms
    return _two_phase_cos(hi, lo, hi, total_steps, pct_start)


def schedule_values(schedule, total_steps: int) -> np.ndarray:
    """A schedule (or a constant) at steps 0..total_steps-1, evaluated once, vectorised: what
    the recorder logs for a phase, without calling the schedule on the host every step."""
    steps = jnp.arange(max(total_steps, 1))
    if callable(schedule):
        return np.asarray(schedule(steps), np.float64)
    return np.full(len(steps), float(schedule))


def discriminative_lrs(lr: float | slice, n_groups: int) -> list[float]:
    """fastai v1 `lr_range`: one learning rate per layer group.

    float -> [lr]*n; slice(None, hi) -> [hi/10]*(n-1) + [hi];
    slice(lo, hi) -> lo*(hi/lo)**(i/(n-1)) (fastai's `even_mults`, geometric spacing)."""
    if not isinstance(n_groups, int) or isinstance(n_groups, bool) or n_groups < 1:
        raise InputError(f"n_groups must be a positive int, got {n_groups!r}")
    if not isinstance(lr, slice):
        lr = _positive_lr(lr, "lr")
        return [lr] * n_groups
    if lr.step is not None:
        raise InputError(f"lr slice must not have a step, got {lr!r}")
    if lr.stop is None:
        raise InputError(f"lr slice needs a stop (the top group's rate), got {lr!r}")
    hi = _positive_lr(lr.stop, "lr slice stop")
    if lr.start is None:
        return [hi / 10] * (n_groups - 1) + [hi]
    lo = _positive_lr(lr.start, "lr slice start")
    if lo > hi:
        raise InputError(f"lr slice start must be <= stop, got {lr!r}")
    if n_groups == 1:
        return [hi]
    return [lo * (hi / lo) ** (i / (n_groups - 1)) for i in range(n_groups)]


def _positive_lr(value: Any, what: str) -> float:
    """`value` as a finite positive float, or a ValueError naming it."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise InputError(f"{what} must be positive and finite, got {value!r}")
    return out


def current_lrs(lrs: Sequence[optax.ScalarOrSchedule], step: int) -> list[float]:
    """Each group's learning rate (float or schedule) at host step `step`, for logging."""
    return [float(lr(step)) if callable(lr) else float(lr) for lr in lrs]


# ----------------------------------------------------------------------------- param labels


def _key_str(key: Any) -> str:
    """One path entry as a string (dict key, attribute name or sequence index)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def _path(keypath) -> tuple[str, ...]:
    return tuple(_key_str(k) for k in keypath)


def label_layer_groups(params, group_of_path: Callable[[tuple[str, ...]], int], n_groups: int):
    """Integer layer-group label for every param leaf, from `group_of_path(path)`.

    Raises ValueError naming the path when a param gets no group (the callable raises or
    returns a non-int) or one outside range(n_groups), and naming the groups left empty:
    a silently unlabeled or empty group would train with the wrong learning rate."""
    if not isinstance(n_groups, int) or n_groups < 1:
        raise InputError(f"n_groups must be a positive int, got {n_groups!r}")

    def label(keypath, _leaf):
        path = _path(keypath)
        try:
            group = group_of_path(path)
        except Exception as e:  # noqa: BLE001 - re-raised with the path attached
            raise InputError(f"no layer group for param {'/'.join(path)}: {e!r}") from e
        if isinstance(group, bool) or not isinstance(group, (int, np.integer)):
            raise InputError(f"no layer group for param {'/'.join(path)}: got {group!r}")
        group = int(group)
        if not 0 <= group < n_groups:
            raise InputError(f"layer group {group} of param {'/'.join(path)} is not in range({n_groups})")
        return group

    labels = jax.tree_util.tree_map_with_path(label, params)
    empty = sorted(set(range(n_groups)) - set(jax.tree_util.tree_leaves(labels)))
    if empty:
        raise InputError(f"layer groups {empty} have no parameters (n_groups={n_groups})")
    return labels


def batchnorm_mask(params, batch_stats):
    """True for params of BatchNorm modules: those whose module path (the path minus the
    leaf name) also holds statistics in `batch_stats`, as Flax BatchNorm stores mean/var
    under the same module path. Needs no guessing from module names."""
    bn_modules = {_path(kp)[:-1] for kp, _ in jax.tree_util.tree_leaves_with_path(batch_stats or {})}
    return jax.tree_util.tree_map_with_path(lambda kp, _: _path(kp)[:-1] in bn_modules, params)


def no_decay_mask(params, batch_stats):
    """True where weight decay must not apply: BatchNorm params and every leaf named 'bias'."""
    bn = batchnorm_mask(params, batch_stats)
    is_bias = jax.tree_util.tree_map_with_path(lambda kp, _: _path(kp)[-1:] == ("bias",), params)
    return jax.tree_util.tree_map(lambda a, b: a or b, bn, is_bias)


# ----------------------------------------------------------------------------- optimizer


def _momentum_transform(opt: str, moms: optax.ScalarOrSchedule, beta2: float, eps: float):
    """Adam moments (b1 = moms) or SGD momentum trace (decay = moms); a schedule for
    moms goes through inject_hyperparams, which evaluates it at its own step count."""
    if opt == "adam":
        factory, kwargs = optax.scale_by_adam, dict(b1=moms, b2=beta2, eps=eps)
    else:
        factory, kwargs = optax.trace, dict(decay=moms)
    if callable(moms):
        return optax.inject_hyperparams(factory)(**kwargs)
    return factory(**kwargs)


def make_optimizer(
    params,
    batch_stats,
    group_labels,
    *,
    lrs: Sequence[optax.ScalarOrSchedule],
    opt: str = "adam",
    moms: optax.ScalarOrSchedule = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-5,
    wd: float = 1e-2,
    n_frozen_groups: int = 0,
    train_bn: bool = True,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """fastai v1 optimizer: AdamW ("adam", decoupled wd: -lr*(adam_step + wd*param)) or
    SGD with momentum ("sgd", also decoupled wd), one learning rate per layer group.

    Each param is labelled f"g{group}_decay", f"g{group}_nodecay" (BatchNorm params and
    biases) or "frozen" (groups below `n_frozen_groups`, except BatchNorm params when
    `train_bn`), and `optax.multi_transform` routes it to its chain. With `clip_norm`
    the gradients are clipped to that global norm first; frozen gradients are zeroed
    before the norm is taken, as fastai clips only trainable params."""
    if opt not in ("adam", "sgd"):
        raise InputError(f"opt must be 'adam' or 'sgd', got {opt!r}")
    lrs = list(lrs)
    n_groups = len(lrs)
    if n_groups < 1:
        raise InputError("lrs must give one learning rate per layer group, got none")
    if not 0 <= n_frozen_groups <= n_groups:
        raise InputError(f"n_frozen_groups must be in [0, {n_groups}], got {n_frozen_groups!r}")
    if clip_norm is not None and not clip_norm > 0:
        raise InputError(f"clip_norm must be positive or None, got {clip_norm!r}")

    bn = batchnorm_mask(params, batch_stats)
    no_decay = no_decay_mask(params, batch_stats)

    def label(keypath, group, is_bn, is_no_decay):
        group = int(group)
        if not 0 <= group < n_groups:
            raise InputError(f"layer group {group} of param {'/'.join(_path(keypath))} has no lr (len(lrs)={n_groups})")
        if group < n_frozen_groups and not (train_bn and is_bn):
            return FROZEN
        return f"g{group}_{'nodecay' if is_no_decay else 'decay'}"

    labels = jax.tree_util.tree_map_with_path(label, group_labels, bn, no_decay)

    # multi_transform needs a transform for every label present; build only those.
    transforms = {}
    for name in sorted(set(jax.tree_util.tree_leaves(labels))):
        if name == FROZEN:
            transforms[name] = optax.set_to_zero()
            continue
        group_str, kind = name[1:].split("_")
        steps = [_momentum_transform(opt, moms, beta2, eps)]
        if kind == "decay" and wd:
            steps.append(optax.add_decayed_weights(wd))
        steps.append(optax.scale_by_learning_rate(lrs[int(group_str)]))
        transforms[name] = optax.chain(*steps)
    tx = optax.multi_transform(transforms, labels)

    if clip_norm is None:
        return tx
    frozen = jax.tree_util.tree_map(lambda name: name == FROZEN, labels)
    pre = [optax.masked(optax.set_to_zero(), frozen)] if any(jax.tree_util.tree_leaves(frozen)) else []
    return optax.chain(*pre, optax.clip_by_global_norm(clip_norm), tx)
