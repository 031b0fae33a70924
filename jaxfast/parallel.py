"""Where data parallelism is decided: one place that jits the pure steps.

Three modes run the same `train_step`/`eval_step`:
- 'single': `jit` on one device.
- 'mesh':   `jit` over a `Mesh` with axes ('data', 'model') of all devices (of every process
            under `jax.distributed`); the batch is split on its leading axis over 'data', the
            state replicated (a carried state, e.g. an LM's hidden rows, is split like the
            batch); XLA inserts the all-reduces.
- 'pmap':   `jax.pmap` over the local devices with the named axis 'batch'; the step sums
            gradients and averages BatchNorm statistics with `lax.psum`/`lax.pmean`.
'auto' picks 'mesh' when there is more than one device, else 'single'.

Batch sizes are GLOBAL: a loader's `batch_size` rows are split over the data axis (per-device
batch = batch size / data shards, an InputError when it does not divide). Under several
processes every process iterates the same seeded global batches and `put_batch` keeps the rows
of its own devices (`jax.make_array_from_callback`): the steps see exactly the global batch of a
one-process run. `host_batches` asks a loader that can (the image loaders' `local_batches`) to
read and decode only those rows (`local_rows`), so each process reads its own share of every
split; in-memory arrays (tabular, collab, text, MNIST) are sliced, which costs nothing.

The state is donated to the train step in every mode (its buffers are reused).

Other pure steps (a GAN's critic and generator steps, jaxfast.gan.training) run under 'single'
and 'mesh' with the same placement: `put_state`, `put_batch`, jitted with `Runner.replicated` as
their out_shardings on a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxfast import steps
from jaxfast.errors import InputError

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
class ParallelConfig:
    """How a run spreads over devices (every experiment's `--parallel`, `--mesh-data`)."""

    parallel: Literal["auto", "single", "mesh", "pmap"] = "auto"
    """auto: mesh over all devices (of all processes) when there are several, else single. pmap: the
    local devices of one process. Batch sizes are global: split evenly over the data axis."""
    mesh_data: int | None = None
    """The mesh's data axis size (mesh only; default: every device). It must divide the device count;
    the remaining factor is the mesh's 'model' axis, over which the state and each batch shard are
    replicated (the same work repeated: a run takes the batch split of a smaller machine)."""


def as_parallel_config(config: ParallelConfig | str) -> ParallelConfig:
    """A ParallelConfig from itself or a bare mode name ('mesh', ...)."""
    return ParallelConfig(parallel=config) if isinstance(config, str) else config


@dataclasses.dataclass(frozen=True)
class Runner:
    """The compiled steps of one mode, and how to move state and batches to devices."""

    mode: str
    n_devices: int  # devices the steps run on
    train_step: Callable  # (device_state, device_batch) -> (device_state, metrics)
    eval_step: Callable  # (device_state, device_batch) -> (metrics, the carried state after the batch)
    predict_step: Callable  # (device_state, device_inputs) -> outputs (leading axis: the batch)
    outputs_step: Callable  # (device_state, device_batch) -> (per-example losses, outputs)
    put_state: Callable[[Any], Any]
    put_batch: Callable[[dict], Any]  # a GLOBAL host batch -> device batch (this process's rows)
    get_state: Callable[[Any], Any]  # device state -> plain (single-copy, host-usable) state
    get_metrics: Callable[[Any], Any]  # device metrics -> numpy tree
    sync_each_step: bool  # block on every step's metrics (see `make_runner`)
    data_shards: int = 1  # the data axis: a batch is split into this many per-device parts
    fetch: Callable[[Any], Any] = None  # device outputs (split like a batch) -> global numpy tree
    replicated: Any = None  # mesh: the sharding of a replicated state (out_shardings of other pure steps)
    local_rows: Callable[[int], np.ndarray | None] = lambda batch_size: None  # rows this process's devices hold

    def host_batches(self, loader, epoch: int = 0, start: int = 0):
        """`loader.batches(epoch, start)`; under several processes, a loader with `local_batches`
        (the image loaders) reads and decodes only the rows of each batch this process's devices hold."""
        if getattr(loader, "process_count", 1) != 1:
            raise InputError(f"a loader that reads a strided share of the files (process_count "
                             f"{loader.process_count}) cannot feed the steps, which take global batches: "
                             "build it with process_count=1 (each process then decodes its own rows)")
        rows = self.local_rows(loader.batch_size)
        if rows is not None and hasattr(loader, "local_batches"):
            return loader.local_batches(epoch, start, rows)
        return loader.batches(epoch, start=start)

    def check_batch_size(self, batch_size: int, what: str = "batch") -> None:
        """InputError unless the global `batch_size` splits evenly over the data shards."""
        if batch_size % self.data_shards:
            per = batch_size / self.data_shards
            fit = -(-batch_size // self.data_shards) * self.data_shards
            raise InputError(
                f"the {what} size {batch_size} (global) does not split over the {self.data_shards} data shards of "
                f"--parallel {self.mode} ({self.n_devices} devices, {jax.process_count()} process(es)): the per-device "
                f"batch would be {per:g}; use a multiple of {self.data_shards} (e.g. {fit}), or --parallel single"
            )


def _to_numpy(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _gather_numpy(tree):
    """Arrays split over the devices of several processes -> whole numpy arrays on every process."""
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def make_runner(config: ParallelConfig | str = "auto", devices: list | None = None) -> Runner:
    """Jit (or pmap) the pure steps as `config` says on `devices` (default: every device of
    every process for mesh, the local ones otherwise)."""
    config = as_parallel_config(config)
    mode, multi = config.parallel, jax.process_count() > 1
    if mode not in MODES:
        raise InputError(f"unknown --parallel {mode!r}; choose one of {', '.join(MODES)}")
    if devices is None:
        devices = jax.devices() if multi and mode in ("auto", "mesh") else jax.local_devices()
    devices = list(devices)
    if mode == "auto":
        mode = "mesh" if len(devices) > 1 else "single"
    if multi and mode != "mesh":
        raise InputError(f"--parallel {mode} runs in one process; under jax.distributed ({jax.process_count()} "
                         "processes) use --parallel mesh (or auto)")
    if config.mesh_data is not None and mode != "mesh":
        raise InputError(f"--mesh-data {config.mesh_data} sets the data axis of --parallel mesh, not of {mode}")
    # XLA's in-process CPU all-reduce can deadlock on a small machine when several
    # collective steps are in flight, so with several CPU devices the loop waits on
    # each step's metrics. One device, or accelerators, run ahead of the host.
    sync = devices[0].platform == "cpu" and mode != "single" and len(devices) > 1
    if mode == "single":
        return _single_runner(devices[0], sync)
    if mode == "mesh":
        return _mesh_runner(devices, config.mesh_data or len(devices), sync)
    return _pmap_runner(devices, sync)


def _single_runner(device, sync: bool) -> Runner:
    put = functools.partial(jax.device_put, device=device)
    # On a CPU device a jitted call takes numpy arguments in ~3 us; an explicit
    # device_put costs ~40 us per array, as much as a small model's whole step.
    put_batch = (lambda batch: batch) if device.platform == "cpu" else put
    return Runner(
        "single", 1,
        train_step=jax.jit(steps.train_step, donate_argnums=0,
                           compiler_options=CPU_TRAIN_STEP_OPTIONS if device.platform == "cpu" else None),
        eval_step=jax.jit(steps.eval_step),
        predict_step=jax.jit(steps.predict_step),
        outputs_step=jax.jit(steps.loss_and_outputs_step),
        put_state=put, put_batch=put_batch, get_state=lambda s: s, get_metrics=_to_numpy,
        sync_each_step=sync, data_shards=1, fetch=_to_numpy,
    )


def _mesh_runner(devices: list, n_data: int, sync: bool) -> Runner:
    n = len(devices)
    if n_data < 1 or n % n_data:
        raise InputError(f"--mesh-data {n_data} must divide the {n} devices (e.g. "
                         f"{', '.join(str(d) for d in range(1, n + 1) if n % d == 0)})")
    mesh = Mesh(np.array(devices).reshape(n_data, n // n_data), ("data", "model"))
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    multi = jax.process_count() > 1

    def place(x, sharding):
        if not multi:
            return jax.device_put(x, sharding)
        # Every process holds the whole (global) value; each device takes its own slice of it.
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    def state_shardings(state):
        """A sharding prefix tree of the state: everything replicated but the carried rows."""
        return state.replace(step=replicated, params=replicated, batch_stats=replicated, opt_state=replicated,
                             rng=replicated, carry=jax.tree.map(lambda _: sharded, state.carry))

    compiled: dict = {}

    def train_step(state, batch):  # one jit per carry structure (its out_shardings)
        key = ("train", jax.tree.structure(state.carry))
        if key not in compiled:
            compiled[key] = jax.jit(steps.train_step, donate_argnums=0,
                                    out_shardings=(state_shardings(state), replicated))
        return compiled[key](state, batch)

    def eval_step(state, batch):  # metrics replicated, the carried rows split like the batch
        key = ("eval", jax.tree.structure(state.carry))
        if key not in compiled:
            compiled[key] = jax.jit(steps.eval_step, out_shardings=(replicated, state_shardings(state).carry))
        return compiled[key](state, batch)

    def put_state(state):
        return jax.tree.map(lambda sharding, subtree: jax.tree.map(lambda x: place(x, sharding), subtree),
                            state_shardings(state), state)

    def local_rows(batch_size: int) -> np.ndarray:
        """The rows of a global batch that this process's devices hold (sorted)."""
        index_map = sharded.addressable_devices_indices_map((batch_size,))
        return np.unique(np.concatenate([np.arange(batch_size)[index[0]] for index in index_map.values()]))

    def get_state(state):
        if not multi:
            return state
        # Replicated leaves: this process's copy; carried rows: gathered from every process.
        host = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.replace(carry={}))
        return host.replace(carry=_gather_numpy(state.carry))

    return Runner(
        "mesh", n,
        train_step=train_step,
        eval_step=eval_step,
        predict_step=jax.jit(steps.predict_step, out_shardings=sharded),
        outputs_step=jax.jit(steps.loss_and_outputs_step, out_shardings=(sharded, sharded)),
        put_state=put_state,
        put_batch=lambda batch: jax.tree.map(lambda x: place(x, sharded), batch),
        get_state=get_state, get_metrics=_to_numpy,
        sync_each_step=sync, data_shards=n_data, fetch=_gather_numpy if multi else _to_numpy,
        replicated=replicated, local_rows=local_rows if multi else (lambda batch_size: None),
    )


def _pmap_runner(devices: list, sync: bool) -> Runner:
    n = len(devices)
    # pmap takes arrays with a leading device axis; placing them with a sharding
    # over that axis replaces the deprecated device_put_sharded/replicated.
    stacked = NamedSharding(Mesh(np.array(devices), (PMAP_AXIS,)), PartitionSpec(PMAP_AXIS))

    def split(tree):  # [batch, ...] -> [devices, per-device batch, ...]
        return jax.tree.map(lambda x: np.asarray(x).reshape((n, x.shape[0] // n) + x.shape[1:]), tree)

    def unstack(tree):  # [devices, per-device batch, ...] -> [batch, ...]
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)

    def put_state(state):
        # Replicated on every device, but the carried rows (an LM's hidden state), split like the batch.
        rest = jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), state.replace(carry={}))
        return jax.device_put(rest.replace(carry=split(state.carry)), stacked)

    def get_state(state):
        return jax.tree.map(lambda x: x[0], state.replace(carry={})).replace(carry=unstack(state.carry))

    pmapped_predict = jax.pmap(steps.predict_step, axis_name=PMAP_AXIS, devices=devices)
    pmapped_outputs = jax.pmap(steps.loss_and_outputs_step, axis_name=PMAP_AXIS, devices=devices)
    return Runner(
        "pmap", n,
        train_step=jax.pmap(
            functools.partial(steps.train_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS,
            donate_argnums=0, devices=devices,
        ),
        eval_step=jax.pmap(functools.partial(steps.eval_step, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, devices=devices),
        predict_step=lambda state, inputs: unstack(pmapped_predict(state, inputs)),
        outputs_step=lambda state, batch: unstack(pmapped_outputs(state, batch)),
        put_state=put_state,
        put_batch=lambda batch: jax.device_put(split(batch), stacked),
        get_state=get_state,
        get_metrics=lambda m: _to_numpy(jax.tree.map(lambda x: x[0], m)),
        sync_each_step=sync, data_shards=n, fetch=_to_numpy,
    )
