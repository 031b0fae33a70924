"""fastai's learning-rate range test, on a copy of the learner's state.

The lr grows exponentially from start_lr to end_lr over num_it steps (one optimizer
built for the ramp); the test stops once the smoothed loss exceeds 4x its minimum.
Being pure, it needs no weight save/restore: the steps run on a copy of the state.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxfast.errors import TrainingDiverged  # noqa: E402
from jaxfast.state import copy_tree  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LRFindResult:
    """The ramp's learning rates, smoothed losses and fastai v1's two suggestions."""

    lrs: list
    losses: list  # smoothed
    lr_min: float  # lr at the minimum smoothed loss, divided by 10
    lr_steep: float  # lr where the smoothed loss falls fastest


def lr_find(learner, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100, stop_div: bool = True) -> LRFindResult:
    """Run the range test with `learner`'s model, data, optimizer settings and frozen groups."""
    if num_it < 2 or not 0 < start_lr < end_lr:
        raise ValueError(f"lr_find needs num_it >= 2 and 0 < start_lr < end_lr, got {num_it}, {start_lr}, {end_lr}")
    ratio = end_lr / start_lr

    def schedule(count):
        return start_lr * ratio ** (jnp.minimum(count, num_it - 1) / (num_it - 1))

    tx = learner._optimizer([schedule] * learner.n_groups, 0.9)
    dstate = learner.runner.put_state(copy_tree(learner.state.with_optimizer(tx)))
    lrs, smoothed, avg, best = [], [], 0.0, math.inf
    epoch = 0
    while len(lrs) < num_it:
        for batch in learner.runner.host_batches(learner.data.train, epoch):
            dstate, metrics = learner.runner.train_step(dstate, learner.runner.put_batch(batch))
            metrics = learner.runner.get_metrics(metrics)
            loss = float(metrics["loss"]["sum"] / max(metrics["loss"]["count"], 1.0))
            i = len(lrs)
            lrs.append(float(schedule(i)))
            avg = 0.98 * avg + 0.02 * loss
            smooth = avg / (1 - 0.98 ** (i + 1))
            smoothed.append(smooth)
            best = min(best, smooth)
            if len(lrs) >= num_it or (stop_div and (not math.isfinite(smooth) or smooth > 4 * best)):
                break
        else:
            epoch += 1
            continue
        break
    return _lr_suggestions(lrs, smoothed)


def _lr_suggestions(lrs: list, smoothed: list) -> LRFindResult:
    """fastai v1's suggestions: the minimum loss lr / 10, and the steepest descent."""
    finite = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
    if not finite:
        raise TrainingDiverged("lr_find: the loss was not finite at any learning rate")
    i_min = min(finite, key=lambda i: smoothed[i])
    lo, hi = (10, len(smoothed) - 5) if len(smoothed) > 20 else (0, len(smoothed))
    window = [i for i in range(lo, hi) if i in set(finite)]
    if len(window) >= 2:
        logs = np.log([lrs[i] for i in window])
        slopes = np.gradient(np.array([smoothed[i] for i in window]), logs)
        i_steep = window[int(np.argmin(slopes))]
    else:
        i_steep = i_min
    return LRFindResult(list(lrs), list(smoothed), lrs[i_min] / 10, lrs[i_steep])


def plot_lr_find(result: LRFindResult, path) -> None:
    """Smoothed loss against lr (log scale) with both suggestions marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.axvline(result.lr_min, color="C1", ls="--", label=f"min/10 {result.lr_min:.1e}")
    ax.axvline(result.lr_steep, color="C2", ls=":", label=f"steepest {result.lr_steep:.1e}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
