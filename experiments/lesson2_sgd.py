"""Lesson 2 (lesson2-sgd): linear regression fitted by hand with `jax.grad`.

y = x @ (3, 2) + uniform noise on 100 points; start at a = (-1, 1); 100 steps of
a -= lr * grad(mse), lr 0.1. fastai's notebook: MSE 7.94 at the start, 0.078 after
100 steps (its own random draw). The whole run takes well under a second, so a rerun
recomputes it (same seed, same numbers) instead of resuming.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from jaxfast import experiment  # noqa: E402
from jaxfast.experiment import Run, RunConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 2: SGD by hand on a straight line.

    The workdir receives history.csv, fit.png, loss.png and metrics.json; --data-dir is unused (the data are
    generated). No Learner here: the lesson writes the loop by hand, so there are no --train.* settings."""

    run: Run = RunConfig()
    n: int = 100
    true_a: tuple[float, float] = (3.0, 2.0)
    start_a: tuple[float, float] = (-1.0, 1.0)
    lr: float = 0.1
    steps: int = 100
    seed: int = 42


TINY = Config(steps=20)


def make_data(config: Config) -> tuple[jax.Array, jax.Array]:
    """x = [uniform(-1, 1), 1] (the 1 column gives the intercept), y = x @ a + uniform(0, 1) noise."""
    key_x, key_noise = jax.random.split(jax.random.key(config.seed))
    x = jnp.stack([jax.random.uniform(key_x, (config.n,), minval=-1.0, maxval=1.0), jnp.ones(config.n)], axis=1)
    y = x @ jnp.asarray(config.true_a) + jax.random.uniform(key_noise, (config.n,))
    return x, y


def mse(a: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((x @ a - y) ** 2)


@jax.jit
def sgd_update(a, x, y, lr):
    """One step of plain gradient descent: a - lr * d(mse)/da."""
    loss, grad = jax.value_and_grad(mse)(a, x, y)
    return a - lr * grad, loss


def fit(config: Config, x, y) -> tuple[jax.Array, list[float]]:
    a = jnp.asarray(config.start_a)
    losses = []
    for _ in range(config.steps):
        a, loss = sgd_update(a, x, y, config.lr)
        losses.append(float(loss))
    return a, losses


def plot(config: Config, x, y, a, losses, workdir: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x[:, 0], y, s=10, label="data")
    xs = jnp.linspace(-1, 1, 2)
    ax.plot(xs, a[0] * xs + a[1], "C1", label=f"fit a=({a[0]:.2f}, {a[1]:.2f})")
    ax.plot(xs, config.start_a[0] * xs + config.start_a[1], "C2--", label="start")
    ax.legend()
    fig.tight_layout()
    fig.savefig(workdir / "fit.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    fig.tight_layout()
    fig.savefig(workdir / "loss.png", dpi=90)
    plt.close(fig)


def main(config: Config, workdir: Path) -> dict:
    x, y = make_data(config)
    a, losses = fit(config, x, y)
    final_loss = float(mse(a, x, y))
    pd.DataFrame({"step": range(len(losses)), "mse": losses}).to_csv(workdir / "history.csv", index=False)
    plot(config, x, y, a, losses, workdir)
    for step in sorted({0, 10, 50, config.steps - 1} & set(range(config.steps))):
        print(f"step {step:3d}  mse {losses[step]:.4f}")
    return {"initial_mse": losses[0], "final_mse": final_loss, "a0": float(a[0]), "a1": float(a[1])}


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
