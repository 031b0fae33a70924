"""The experiment contract shared by every `experiments/` module.

- settings come from one frozen dataclass per experiment, shown by `--help` with
  their defaults; it nests the shared `RunConfig` (`--workdir`, `--data-dir`) and the
  loop's `TrainConfig` (`--train.wd`, `--train.seed`, ...); `--tiny` starts from the
  experiment's tiny variant (for tests);
- `--workdir DIR` receives checkpoints, history.csv, PNG plots, `config.json` and
  `metrics.json` (`{"final": ..., "config": ..., "seconds": ...}`); rerunning the same
  command resumes; a different config in a workdir holding trained work is refused, and so
  is a second run while another one holds the workdir (`workdir_lock`);
- the last line printed sums up the final metrics;
- devices and processes: `--parallel`/`--mesh-data` (jaxfast.parallel, nested in TrainConfig) and
  `--coordinator`/`--num-processes`/`--process-id` (jaxfast.distributed, here) are shared by every
  experiment; they may change between a run and its resume (a checkpoint restores onto another
  device or process count), so the workdir check ignores them. With several processes, process 0
  alone prints, locks the workdir and writes config.json and metrics.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Callable, Sequence, TypeVar

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

import tyro

from jaxfast import distributed
from jaxfast.errors import JaxfastError
from jaxfast.preemption import Preempted

ConfigT = TypeVar("ConfigT")

TINY_FLAG = "--tiny"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run reads its data and writes its outputs (every experiment's first settings)."""

    workdir: str | None = None
    """Outputs: checkpoints, history.csv, TensorBoard events, PNG plots, config.json, metrics.json, export/
    (default runs/<experiment>); rerunning the same command there resumes."""
    data_dir: str | None = None
    """A local copy of the data (the experiment's help says which layouts); without it, the download path."""
    coordinator: str | None = None
    """Several processes (hosts): process 0's HOST:PORT, the same on every process (or JAXFAST_COORDINATOR).
    Unset on a TPU VM slice or in a SLURM job: JAX finds them itself. The workdir must be shared by all."""
    num_processes: int | None = None
    """The number of processes of a multi-process run (or JAXFAST_NUM_PROCESSES)."""
    process_id: int | None = None
    """This process's index, 0 .. num_processes - 1 (or JAXFAST_PROCESS_ID); process 0 writes the outputs."""


# Nested in every experiment's config without a prefix: `--workdir`, `--data-dir`.
Run = Annotated[RunConfig, tyro.conf.OmitArgPrefixes]


class ConfigMismatch(JaxfastError, RuntimeError):
    """The workdir holds a run made with other settings."""


class WorkdirInUse(JaxfastError, RuntimeError):
    """Another run holds the workdir."""


def parse_config(default: ConfigT, tiny: ConfigT, args: Sequence[str] | None = None, description: str = "") -> ConfigT:
    """Parse the command line over `default` (or over `tiny` when --tiny is given)."""
    args = list(sys.argv[1:] if args is None else args)
    base = default
    if TINY_FLAG in args:
        args.remove(TINY_FLAG)
        base = tiny
    description = (description or (type(default).__doc__ or "")).strip()
    description += f"\n\n{TINY_FLAG}: start from the tiny variant (seconds on a CPU; used by the tests)."
    return tyro.cli(type(default), default=base, args=args, description=description)


def config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _flat(config: dict, prefix: str = "") -> dict:
    """{'train': {'wd': 0.1}} -> {'train.wd': 0.1}."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@contextlib.contextmanager
def workdir_lock(workdir: Path):
    """Hold an exclusive lock on `workdir/.lock` while a run uses the folder, so a second run
    there (which would write the same checkpoints) is refused at once. The kernel releases
    it when the process ends, killed or not, so a crashed run never leaves it held."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise WorkdirInUse(f"{workdir} is in use by another run; wait for it to end or use another --workdir") from err
        yield


# Settings a run may change when it resumes: where it writes, the progress bar, its devices and processes.
RESUME_MAY_CHANGE = ("run.workdir", "train.progress", "train.parallel", "train.parallel.", "run.coordinator",
                     "run.num_processes", "run.process_id")


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == name or (name.endswith(".") and key.startswith(name)) for name in ignore)


def check_workdir(workdir: Path, config: dict, ignore: Sequence[str] = RESUME_MAY_CHANGE, write: bool = True) -> None:
    """Write config.json (when `write`), or refuse when the workdir already holds work (checkpoints,
    history, metrics) of a run with a different config. A config.json alone, left by a run
    that stopped before training (say, on a missing dataset), is replaced: rerunning with
    the right --data-dir must not be refused. `ignore`: keys, or prefixes ending in '.'."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    holds_work = any(p.is_file() and p != path and not p.name.startswith(".") and not p.name.endswith(".tmp")
                     for p in workdir.rglob("*"))
    if path.exists() and holds_work:
        old, config = _flat(json.loads(path.read_text())), _flat(config)
        diff = {
            key: (old.get(key), config.get(key))
            for key in sorted(set(old) | set(config))
            if not _ignored(key, ignore) and old.get(key) != config.get(key)
        }
        if diff:
            details = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
            raise ConfigMismatch(
                f"{workdir} holds a run with a different config ({details}); "
                "use another --workdir, or delete that folder to start over"
            )
        return
    if write:
        write_json_atomic(path, config)


def write_json_atomic(path: Path, data) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        json.dump(data, tmp, indent=2, default=float)
    os.replace(tmp.name, path)


def print_results(results: dict) -> None:
    """Print evaluate_all's results, one line per split."""
    for split in dict.fromkeys(k.split("_", 1)[0] for k in results):
        values = ", ".join(f"{k.split('_', 1)[1]} {v:.4f}" for k, v in results.items() if k.startswith(split + "_"))
        print(f"{split}: {values}")


def summary_line(final: dict, seconds: float) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in final.items()]
    return f"final: {' '.join(parts)} ({seconds:.1f} s)"


def run(main: Callable[[ConfigT, Path], dict], default: ConfigT, tiny: ConfigT, args: Sequence[str] | None = None) -> dict:
    """Parse the config, prepare the workdir, call `main(config, workdir)`, record and print the final metrics.

    `main` returns the final metrics (a flat dict of numbers). Expected failures (a
    `JaxfastError`: dataset unavailable, diverged loss, bad input or config, workdir in use)
    end with a one-line message and exit 2; anything else keeps its traceback. A SIGTERM
    saves a checkpoint at the next step and exits 0 (rerun to resume).
    """
    config = parse_config(default, tiny, args)
    run_config = config.run
    workdir = Path(run_config.workdir or Path("runs") / type(config).__module__.split(".")[-1])
    start = time.time()
    try:
        settings = distributed.settings_from(run_config.coordinator, run_config.num_processes, run_config.process_id)
        distributed.initialize(settings)
        primary = distributed.is_primary()
        with workdir_lock(workdir) if primary else contextlib.nullcontext(), quiet_unless(primary):
            check_workdir(workdir, config_dict(config), write=primary)
            final = main(config, workdir)
            seconds = time.time() - start
            if primary:
                write_json_atomic(workdir / "metrics.json",
                                  {"final": final, "config": config_dict(config), "seconds": seconds})
    except Preempted as stop:
        print(f"preempted: {stop}", flush=True)
        raise SystemExit(0) from stop
    except JaxfastError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    if primary:
        print(summary_line(final, seconds), flush=True)
    return final


@contextlib.contextmanager
def quiet_unless(primary: bool):
    """Standard output silenced on every process but process 0 (its errors still reach stderr);
    JAXFAST_ALL_PROCESSES_PRINT=1 keeps it."""
    if primary or os.environ.get("JAXFAST_ALL_PROCESSES_PRINT") == "1":
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        yield
