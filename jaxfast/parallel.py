"""Where data parallelism is decided: one place that jits the pure steps.

Three modes run the same `train_step`/`eval_step`:
- 'single': `jit` on the default device.
- 'mesh':   `jit` over a 1-D `Mesh` of all local devices; the batch is sharded on
            its leading axis, the state replicated; XLA inserts the all-reduces.
- 'pmap':   `jax.pmap` with the named axis 'batch'; the step sums gradients and
            averages BatchNorm statistics with `lax.psum`/`lax.pmean`.
'auto' picks 'mesh' when there is more than one device, else 'single'.

The state is donated to the train step in every mode (its buffers are reused).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfast import steps

PMAP_AXIS = "batch"
MODES = ("auto", "single", "mesh", "pmap")

# XLA:CPU maps a fresh scratch block for every call of a step and faults its pages in
# (benchmarks/allocator_bench.py); the memory-optimised scheduler shrinks that block and the
# step with it, more so the larger the images (ResNet-18, bs 32, in one-process A/B runs: 64
# px 133 -> 83 MB, 219 -> 213 ms; 128 px 481 -> 285 MB, 889 -> 849 ms; ResNet-34 64 px 218
# -> 118 MB, 415 -> 402 ms). Small steps lose a little: the MNIST ResNet's 19 MB block is
# under glibc's 32 MB mmap limit, so it is reused (0 faults per step) and its step is 4-5%
# slower for nothing; the LSTM LM is within noise and ResNet-18 at 32 px mixed (median +6%,
# fastest steps -5%; unchanged in a second run). Only the single-device CPU train step uses
# it: GPU/TPU compilers do not take CPU options, and the multi-device CPU steps keep XLA's
# default order.
CPU_TRAIN_STEP_OPTIONS = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


@dataclasses.dataclass(frozen=True)
class Runner:
    """The compiled steps of one mode, and how to move state and batches to devices."""

    mode: str
    n_devices: int
    train_step: Callable  # (device_state, device_batch) -> (device_state, metrics)
    eval_step: Callable  # (device_state, device_batch) -> metrics
    predict_step: Callable  # (device_state, device_inputs) -> outputs (leading axis: the batch)
    outputs_step: Callable  # (device_state, device_batch) -> (per-example losses, outputs)
    put_state: Callable[[Any], Any]
    put_batch: Callable[[dict], Any]
    get_state: Callable[[Any], Any]  # device state -> plain (single-copy) state
    get_metrics: Callable[[Any], Any]  # device metrics -> numpy tree
    sync_each_step: bool  # block on every step's metrics (see `make_runner`)

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.n_devices:
            raise ValueError(
                f"batch size {batch_size} is not divisible by the {self.n_devices} devices of mode "
                f"'{self.mode}'; use a multiple of {self.n_devices}"
            )


def _to_numpy(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def make_runner(mode: str = "auto", devices: list | None = None) -> Runner:
    """Jit (or pmap) the pure steps once for `mode` on `devices` (default: all local)."""
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; choose one of {MODES}")
    devices = list(devices or jax.local_devices())
    if mode == "auto":
        mode = "mesh" if len(devices) > 1 else "single"
    # XLA's in-process CPU all-reduce can deadlock on a small machine when several
    # collective steps are in flight, so with several CPU devices the loop waits on
    # each step's metrics. One device, or accelerators, run ahead of the host.
    sync = devices[0].platform == "cpu" and mode != "single" and len(devices) > 1
    if mode == "single":
        device = devices[0]
        put = functools.partial(jax.device_put, device=device)
        # On a CPU device a jitted call takes numpy arguments in ~3 us; an explicit
        # device_put costs ~40 us per array, as much as a small model's whole step.
        put_batch = (lambda batch: batch) if device.platform == "cpu" else put
        return Runner(
            mode, 1,
            train_step=jax.jit(steps.train_step, donate_argnums=0,
                               compiler_options=CPU_TRAIN_STEP_OPTIONS if device.platform == "cpu" else None),
            eval_step=jax.jit(steps.eval_step),
            predict_step=jax.jit(steps.predict_step),
            outputs_step=jax.jit(steps.loss_and_outputs_step),
            put_state=put, put_batch=put_batch, get_state=lambda s: s, get_metrics=_to_numpy,
            sync_each_step=sync,
        )
    if mode == "mesh":
        mesh = Mesh(np.array(devices), ("data",))
        replicated = NamedSharding(mesh, PartitionSpec())
        sharded = NamedSharding(mesh, PartitionSpec("data"))
        return Runner(
            mode, len(devices),
            train_step=jax.jit(steps.train_step, donate_argnums=0, out_shardings=(replicated, replicated)),
            eval_step=jax.jit(steps.eval_step, out_shardings=replicated),
            predict_step=jax.jit(steps.predict_step, out_shardings=sharded),
            outputs_step=jax.jit(steps.loss_and_outputs_step, out_shardings=(sharded, sharded)),
            put_state=lambda s: jax.device_put(s, replicated),
            put_batch=lambda b: jax.device_put(b, sharded),
            get_state=lambda s: s, get_metrics=_to_numpy,
            sync_each_step=sync,
        )
    n = len(devices)
    # pmap takes arrays with a leading device axis; placing them with a sharding
    # over that axis replaces the deprecated device_put_sharded/replicated.
    stacked = NamedSharding(Mesh(np.array(devices), (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))

    def put_batch(batch):
        return jax.device_put(
            jax.tree.map(lambda x: np.asarray(x).reshape((n, x.shape[0] // n) + x.shape[1:]), batch), stacked
        )

    def put_state(state):
        return jax.device_put(jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state), stacked)

    def unstack(tree):  # [devices, per-device batch, ...] -> [batch, ...]
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)

    pmapped_predict = jax.pmap(steps.predict_step, axis_name=PMAP_AXIS, devices=devices)
    pmapped_outputs = jax.pmap(steps.loss_and_outputs_step, axis_name=PMAP_AXIS, devices=devices)
    return Runner(
        mode, n,
        train_step=jax.pmap(
            functools.partial(steps.train_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
            donate_argnums=0, devices=devices,
        ),
        eval_step=jax.pmap(functools.partial(steps.eval_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, devices=devices),
        predict_step=lambda state, inputs: unstack(pmapped_predict(state, inputs)),
        outputs_step=lambda state, batch: unstack(pmapped_outputs(state, batch)),
        put_state=put_state,
        put_batch=put_batch,
        get_state=lambda s: jax.tree.map(lambda x: x[0], s),
        get_metrics=lambda m: _to_numpy(jax.tree.map(lambda x: x[0], m)),
        sync_each_step=sync,
    )

