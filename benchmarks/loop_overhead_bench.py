"""What Learner.fit adds to the jitted step, and lesson 7's MNIST ResNet epoch time.

Overhead: per-step time of `Learner.fit` / `fit_one_cycle` (steady epochs, no validation)
against the bare compiled step on a device batch and a minimal loop (loader + put_batch +
step + reading the loss), for the TabularModel (tiny step: overhead shows most) and the
MNIST ResNet. `--lesson`: wall time of Learner epochs of `mnist_resnet` on 8,000 28x28
images (bs 128, fit_one_cycle), the first epoch including compilation; `--conv-lowering xla`
times the XLA-only convolution (run_all.py does both).
Run: python benchmarks/loop_overhead_bench.py [--lesson] [--epochs 3] [--conv-lowering xla]
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import load_average, markdown_table


def _learner(model, inputs, targets, bs: int, loss: str = "cross_entropy", progress: bool = False):
    from jaxfast.data.loader import ArrayLoader, DataBunch
    from jaxfast.learner import Learner, TrainConfig

    train = ArrayLoader(inputs, targets, bs, shuffle=True, drop_last=True)
    return Learner(model, DataBunch(train), loss, config=TrainConfig(parallel="single", progress=progress),
                   log=lambda _: None)


def mnist_like(n: int = 8000):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def workloads():
    from jaxfast.models.simple_cnn import mnist_resnet
    from jaxfast.models.tabular import emb_sz_rule, tabular
    from tabular_collab_bench import ADULT_CATS, N_CONT

    rng = np.random.default_rng(0)
    n = 6400
    x_cat = np.stack([rng.integers(0, c, n) for c in ADULT_CATS], 1).astype(np.int32)
    x_cont = rng.standard_normal((n, N_CONT)).astype(np.float32)
    tab = tabular([(c, emb_sz_rule(c)) for c in ADULT_CATS], N_CONT, 2, (200, 100))
    return {"tabular_adult_bs64": (tab, (x_cat, x_cont), rng.integers(0, 2, n).astype(np.int32), 64),
            "mnist_resnet_bs128": (mnist_resnet(), *mnist_like(), 128)}


def step_times(learn, n_rep: int = 3) -> dict:
    """Bare compiled step on one device batch, and a minimal loop over the loader (s/step)."""
    from jaxfast.state import copy_tree

    runner, loader = learn.runner, learn.data.train
    state = runner.put_state(copy_tree(learn.state.with_optimizer(learn._optimizer([1e-3], 0.9))))
    batches = list(loader.batches(0))
    dbatch = runner.put_batch(batches[0])
    state, m = runner.train_step(state, dbatch)  # compile
    jax.block_until_ready(m)
    bare, loop = [], []
    for _ in range(n_rep):
        t0 = time.perf_counter()
        for _ in batches:
            state, m = runner.train_step(state, dbatch)
            jax.block_until_ready(m)
        bare.append((time.perf_counter() - t0) / len(batches))
        t0 = time.perf_counter()
        for batch in loader.batches(1):
            state, m = runner.train_step(state, runner.put_batch(batch))
            float(runner.get_metrics(m)["loss"]["sum"])
        loop.append((time.perf_counter() - t0) / len(batches))
    return {"bare": float(np.median(bare)), "loop": float(np.median(loop))}


def fit_step_time(learn, method: str, epochs: int) -> float:
    """Median per-step seconds of the epochs after the first (which compiles)."""
    start = len(learn.recorder.epochs)
    getattr(learn, method)(epochs, 1e-3)
    rows = learn.recorder.epochs[start + 1:]
    return float(np.median([r["time"] for r in rows])) / len(learn.data.train)


def overhead(epochs: int) -> list[dict]:
    rows = []
    for name, (model, x, y, bs) in workloads().items():
        learn = _learner(model, x, y, bs)
        t = step_times(learn)
        fit_s = fit_step_time(learn, "fit", epochs)
        one_cycle_s = fit_step_time(learn, "fit_one_cycle", epochs)
        t2 = step_times(learn)
        bare, loop = min(t["bare"], t2["bare"]), min(t["loop"], t2["loop"])
        rows.append({"workload": name, "bare step ms": bare * 1e3, "loader loop ms": loop * 1e3,
                     "fit ms/step": fit_s * 1e3, "fit_one_cycle ms/step": one_cycle_s * 1e3,
                     "fit overhead %": 100 * (fit_s / bare - 1), "one_cycle overhead %": 100 * (one_cycle_s / bare - 1)})
        print(markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], f"(load {load_average()})", flush=True)
    return rows


def lesson_epochs(epochs: int, conv_lowering: str = "auto") -> dict:
    """Wall seconds of each Learner epoch of lesson 7's MNIST ResNet (fit_one_cycle), every conv
    on `conv_lowering` ('auto': the rule)."""
    from jaxfast.models.simple_cnn import mnist_resnet

    learn = _learner(mnist_resnet(conv_lowering=conv_lowering), *mnist_like(), 128)
    learn.fit_one_cycle(epochs, 0.05)
    times = [r["time"] for r in learn.recorder.epochs]
    return {"lowering": "rule" if conv_lowering == "auto" else conv_lowering, "epoch_s": times, "load": load_average()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lesson", action="store_true", help="time lesson 7's MNIST ResNet epochs (prints JSON)")
    parser.add_argument("--conv-lowering", choices=("auto", "xla", "im2col"), default="auto",
                        help="--lesson: every conv of the model on this lowering (default auto: the rule)")
    args = parser.parse_args(argv)
    if args.lesson:
        result = lesson_epochs(args.epochs, args.conv_lowering)
        print(json.dumps(result))
        return result
    rows = overhead(args.epochs)
    print(f"\nLearner loop overhead vs the bare jitted step, load {load_average()}")
    print(markdown_table(rows, list(rows[0])))
    return rows


if __name__ == "__main__":
    main()
