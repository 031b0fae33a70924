"""Several processes (hosts) on one run: `jax.distributed` set up from flags or the environment,
and the few helpers the loop needs to act once (process 0) or together (barriers).

`initialize` runs once, before any device is used (`jaxfast.experiment.run` calls it). It
connects the processes when told how: `--coordinator HOST:PORT --num-processes N --process-id I`
(or the same in JAXFAST_COORDINATOR / JAXFAST_NUM_PROCESSES / JAXFAST_PROCESS_ID), or, with no
setting, when the environment is a multi-process job that JAX detects itself (a SLURM job of
several tasks, a TPU VM slice of several hosts). Otherwise the run stays one process.

What runs where (see jaxfast.parallel for the batch split): every process builds the same
learner, iterates the same seeded global batches and calls every step and every checkpoint save
(Orbax writes the arrays once, from their primary replica, and process 0 the metadata); process 0
alone prints, takes the workdir lock and writes config.json, history, plots, TensorBoard events,
exports and metrics.json.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jaxfast.errors import InputError, JaxfastError

ENV = {"coordinator": "JAXFAST_COORDINATOR", "num_processes": "JAXFAST_NUM_PROCESSES",
       "process_id": "JAXFAST_PROCESS_ID"}


class DistributedSetupError(JaxfastError, RuntimeError):
    """jax.distributed could not be set up (a late call, an unreachable coordinator)."""


@dataclass(frozen=True)
class ProcessSettings:
    """Where this process stands in a multi-process run (None: one process, or JAX detects it)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


_initialized: list = []  # the settings jax.distributed was set up with, once it is


def settings_from(coordinator: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None, environ=os.environ) -> ProcessSettings:
    """The flags, each falling back to its JAXFAST_* variable; checked for consistency."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for name, var in ENV.items():
        if given[name] is None and environ.get(var):
            value = environ[var]
            if name != "coordinator":
                try:
                    value = int(value)
                except ValueError:
                    raise InputError(f"{var}={value!r} is not an integer") from None
            given[name] = value
    settings = ProcessSettings(**given)
    n, i = settings.num_processes, settings.process_id
    if n is not None and n < 1:
        raise InputError(f"--num-processes must be >= 1, got {n}")
    if n is not None and n > 1 and settings.coordinator is None:
        raise InputError(f"--num-processes {n} needs --coordinator HOST:PORT (process 0's address, the same for all)")
    if i is not None and n is not None and not 0 <= i < n:
        raise InputError(f"--process-id {i} is out of range for --num-processes {n} (0 .. {n - 1})")
    if settings.coordinator is not None and (n is None or i is None):
        raise InputError("--coordinator needs --num-processes and --process-id too (or JAX's own detection: "
                         "leave all three unset on a TPU VM slice or in a SLURM job)")
    return settings


def detected_cluster(environ=os.environ) -> str | None:
    """The multi-process job JAX would set itself up from, when this is one: 'slurm' or 'tpu'."""
    if int(environ.get("SLURM_NTASKS", environ.get("SLURM_NPROCS", "1")) or 1) > 1 and "SLURM_JOB_ID" in environ:
        return "slurm"
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu"
    return None


def initialize(settings: ProcessSettings = ProcessSettings(), environ=os.environ) -> bool:
    """Set up jax.distributed when the settings (or the environment) say this is one of several
    processes; returns whether the run is multi-process. Call before any device use; a second
    call with the same settings does nothing."""
    import jax

    if _initialized:
        if _initialized[0] != settings:
            raise DistributedSetupError(f"jax.distributed was set up with {_initialized[0]}, not {settings}")
        return jax.process_count() > 1
    explicit = settings.num_processes is not None and settings.num_processes > 1
    if not explicit and detected_cluster(environ) is None:
        return False  # one process: nothing to set up (nor to remember)
    try:
        if explicit:
            jax.distributed.initialize(settings.coordinator, settings.num_processes, settings.process_id)
        else:
            jax.distributed.initialize()  # JAX's own cluster detection (SLURM, TPU VM)
    except RuntimeError as error:
        raise DistributedSetupError(
            f"jax.distributed.initialize failed ({str(error).splitlines()[0][:300]}); it must run before any "
            f"device use, and every process must reach the coordinator {settings.coordinator or '(detected)'}"
        ) from error
    _initialized.append(settings)
    return jax.process_count() > 1


def process_index() -> int:
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """Whether this process writes the run's files and prints (process 0; always, in one process)."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing in one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
