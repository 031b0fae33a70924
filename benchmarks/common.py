"""Timing helpers shared by the benchmarks: interleaved medians, compile time, GFLOP/s.

The machine is shared and noisy, so every comparison runs its contenders in the same
loop, one step each in turn (the order rotating every round), and reports medians.
PyTorch is a reference only: `import_torch()` returns None (and says so) when absent.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np

# Run from a checkout without installing: `python benchmarks/x.py` finds jaxfast and siblings.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in (_ROOT, os.path.join(_ROOT, "benchmarks")):
    if _p not in sys.path:
        sys.path.insert(0, _p)


def import_torch():
    """The torch module, or None with a note on stderr (PyTorch is benchmark-only)."""
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: the reference columns are left empty "
              "(pip install torch to compare; jaxfast never needs it)", file=sys.stderr)
        return None
    # torch keeps its default threads (one OpenMP thread per core). Its steps slow down
    # up to 10x whenever another process competes for the cores (threads spinning at the
    # OpenMP barriers), so compare on a quiet machine: every table prints the load average.
    # On a loaded one, OMP_WAIT_POLICY=PASSIVE (set before torch starts) removes most of it.
    if os.getloadavg()[0] > 1.5 * (os.cpu_count() or 1) and "OMP_WAIT_POLICY" not in os.environ:
        print(f"load {load_average()}: PyTorch's spinning OpenMP threads will slow its steps up to 10x; "
              "rerun with OMP_WAIT_POLICY=PASSIVE to compare on a loaded machine", file=sys.stderr)
    return torch


def omp_wait_policy() -> str:
    """OMP_WAIT_POLICY as the run sees it (PyTorch's OpenMP threads), for the table headers."""
    return os.environ.get("OMP_WAIT_POLICY", "(unset: active spinning)")


def load_average() -> str:
    """The 1-minute load average and the core count, e.g. '2.31 on 2 cores'."""
    return f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def interleaved_times(fns: dict[str, Callable[[], object]], n_steps: int = 25, warmup: int = 2) -> dict[str, list]:
    """Seconds of each call of each synchronous `fn`, called in alternation (the order
    rotating every round) so that load from other processes hits every contender alike."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times = {name: [] for name in names}
    for i in range(n_steps):
        for name in names[i % len(names):] + names[: i % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], n_steps: int = 25, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each `fn`, measured in alternation."""
    return {name: float(np.median(ts)) for name, ts in interleaved_times(fns, n_steps, warmup).items()}


def medians_and_best(fns: dict[str, Callable[[], object]], n_steps: int = 25, warmup: int = 2):
    """({name: median s}, {name: fastest s}) of interleaved calls; on a loaded machine the
    fastest call is the one least disturbed by other processes."""
    times = interleaved_times(fns, n_steps, warmup)
    return ({k: float(np.median(v)) for k, v in times.items()}, {k: float(np.min(v)) for k, v in times.items()})


def compile_step(fn, *args):
    """(compiled executable, seconds to trace + lower + compile, flops of one call or None)
    of jitted `fn` on `args`."""
    t0 = time.perf_counter()
    lowered = fn.lower(*args)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - t0, flops(lowered)


def flops(lowered) -> float | None:
    """Floating-point operations of one call, from XLA's cost analysis of the HLO before the
    backend's passes (None if unavailable: XLA's GPU backend gives none, see
    device_bench.cpu_flops). The compiled program's analysis would miss the convolutions
    that the GPU backend turns into cuDNN custom calls."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend has a cost model
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    value = (cost or {}).get("flops")
    return float(value) if value and value > 0 else None


def jax_stepper(compiled, state, batch) -> Callable[[], None]:
    """A zero-argument synchronous step of a compiled `(state, batch) -> (state, metrics)`;
    the state is carried (and donated) from call to call."""
    box = [state]

    def step():
        box[0], metrics = compiled(box[0], batch)
        jax.block_until_ready(metrics)

    return step


def ratio(torch_s: float | None, jax_s: float | None) -> float | None:
    """Speed of jaxfast relative to PyTorch (>1: jaxfast is faster)."""
    return None if not torch_s or not jax_s else torch_s / jax_s


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def row(name: str, med: dict, best: dict, compile_s: float | None, n_flops: float | None,
        torch_first_s: float | None = None) -> dict:
    """One table row from the interleaved medians and fastest steps of 'jax' (and 'torch').
    GFLOP/s uses the same flop count (of the jaxfast step) for both columns."""
    gf = lambda s: None if not n_flops or not s else n_flops / s / 1e9
    torch_s = med.get("torch")
    return {
        "workload": name, "jaxfast ms": med["jax"] * 1e3, "torch ms": None if torch_s is None else torch_s * 1e3,
        "speed-up": ratio(torch_s, med["jax"]), "speed-up (fastest steps)": ratio(best.get("torch"), best["jax"]),
        "compile s": compile_s, "torch 1st step s": torch_first_s, "jax GFLOP/s": gf(med["jax"]),
        "torch GFLOP/s": gf(torch_s),
    }


COLUMNS = ["workload", "jaxfast ms", "torch ms", "speed-up", "speed-up (fastest steps)", "compile s",
           "torch 1st step s", "jax GFLOP/s", "torch GFLOP/s"]
SPECS = {"jaxfast ms": ".1f", "torch ms": ".1f", "speed-up": ".2f", "speed-up (fastest steps)": ".2f",
         "compile s": ".1f", "torch 1st step s": ".2f", "jax GFLOP/s": ".1f", "torch GFLOP/s": ".1f",
         "jaxfast faults/step": ".0f", "torch faults/step": ".0f", "jaxfast kernel ms/step": ".0f",
         "torch kernel ms/step": ".0f", "jaxfast items/s": ".0f", "torch items/s": ".0f"}


def markdown_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for r in rows:
        cells = [r[c] if isinstance(r.get(c), str) else fmt(r.get(c), SPECS.get(c, ".2f")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timed_first(fn: Callable[[], object]) -> float:
    """Seconds of one call (a torch step's first run: allocation and kernel selection)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def build_jaxfast_step(model, inputs, targets, loss: str = "cross_entropy", *, lr: float = 1e-3,
                       wd: float = 1e-2, eps: float = 1e-5, group_of_path=None, n_groups: int = 1,
                       n_frozen: int = 0, compute_dtype: str = "float32", seed: int = 0, device=None):
    """jaxfast's jitted, donating train step for `model`, as Learner builds it, with its state
    and one batch placed on `device` (default: the first local device), not yet compiled.

    `loss`: a jaxfast.losses name or a per-example loss function (e.g. lesson 7's FeatureLoss);
    `inputs` and `targets` may be dicts (an LM's {'tokens', 'reset', 'token_mask'} and
    {'ids', 'weights'}), the batch size is their first leaf's leading size.

    Returns (jitted step, state, batch)."""
    from jaxfast.losses import get_loss
    from jaxfast.optim import label_layer_groups, make_optimizer
    from jaxfast.parallel import make_runner
    from jaxfast.state import Task, create_train_state

    import optax

    task = Task(loss if callable(loss) else get_loss(loss), (), compute_dtype)
    state = create_train_state(model, inputs, optax.identity(), task, seed)
    labels = label_layer_groups(state.params, group_of_path or (lambda path: 0), n_groups)
    tx = make_optimizer(state.params, state.batch_stats, labels, lrs=[lr] * n_groups, opt="adam", wd=wd, eps=eps,
                        n_frozen_groups=n_frozen)
    state = state.with_optimizer(tx)
    runner = make_runner("single", None if device is None else [device])
    n_rows = len(jax.tree.leaves(targets)[0])
    batch = runner.put_batch({"inputs": inputs, "targets": targets, "mask": np.ones(n_rows, np.float32)})
    return runner.train_step, runner.put_state(state), batch


def jaxfast_step(model, inputs, targets, loss: str = "cross_entropy", *, lr: float = 1e-3, wd: float = 1e-2,
                 eps: float = 1e-5, group_of_path=None, n_groups: int = 1, n_frozen: int = 0,
                 compute_dtype: str = "float32", seed: int = 0):
    """Compile jaxfast's jitted, donating train step for `model` on one batch, as Learner does.

    Returns (step callable, compile seconds, flops of one step or None)."""
    train_step, state, batch = build_jaxfast_step(
        model, inputs, targets, loss, lr=lr, wd=wd, eps=eps, group_of_path=group_of_path, n_groups=n_groups,
        n_frozen=n_frozen, compute_dtype=compute_dtype, seed=seed)
    compiled, seconds, n_flops = compile_step(train_step, state, batch)
    return jax_stepper(compiled, state, batch), seconds, n_flops
