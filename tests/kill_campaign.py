"""kill -9 campaign: SIGKILL lessons at random moments (and at a few chosen ones), rerun the
same command until it finishes, and check that it ends exactly where an uninterrupted run does.

For each lesson, one uninterrupted reference run is traced (tests/traced_run.py) to learn how
long it takes and when it trains, saves, evaluates and exports. Then each trial starts the
same command in a fresh workdir, kills it with SIGKILL after a seeded random delay (1 to 3
times in a row: a resumed run is killed again), reruns it to the end, and compares with the
reference: the export's weights and export.json, the latest checkpoint's arrays (params,
batch stats, optimizer state, step, rng) bitwise, metrics.json's final metrics; and, counted
apart as "output" mismatches, history.csv (without timings) and the set of files written.
The trace's last line says where each kill landed (startup, training step, mid-save, eval,
export...). Targeted trials kill the run from inside at a chosen event (the middle of a
checkpoint save, an eval, just after the last save, the middle of the export).

    python -m tests.kill_campaign --kills 20            # 20 random kills per lesson (+ targeted)
    python -m tests.kill_campaign --kills 3 --lessons tabular --keep runs/kills

Exit status 1 when any trial mismatched. tests/test_kill_campaign.py runs a small version.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TRACED = Path(__file__).with_name("traced_run.py")
PHASES = {  # the trace's last event -> where the kill landed
    None: "startup (imports)", "main": "startup (data, model, compile)", "restore": "resume (reading checkpoint)",
    "step": "training step", "save": "mid-save", "finalize": "mid-save", "saved": "just after a save",
    "eval": "eval", "evaluated": "epoch end (after eval)", "export": "export", "exported": "after export",
    "end": "exiting",
}
IGNORED_OUTPUTS = ("tensorboard", "checkpoints", ".lock")


@dataclasses.dataclass(frozen=True)
class Lesson:
    """An experiment command (without --workdir) and its export folders (relative to the workdir)."""

    name: str
    module: str
    args: tuple[str, ...]
    exports: tuple[str, ...]


def adult_dummy_dir() -> Path:
    from jaxfast.datasets import adult

    return Path(adult.__file__).parent / "dummy_data" / "adult"


def fake_mnist(folder: Path) -> Path:
    """The test suite's 800 learnable fake MNIST digits (tests/conftest.py), written once."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_idx

    if not (folder / "t10k-labels-idx1-ubyte.gz").exists():
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 10, size=800)
        images = rng.integers(0, 60, size=(800, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 4 + 2 * label, :] = 255
        folder.mkdir(parents=True, exist_ok=True)
        write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
        write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return folder


def lessons(data_root: Path, fast: bool = False) -> dict[str, Lesson]:
    """The campaign's three lessons; `fast`: fewer steps (the normal test suite's version)."""
    collab_models = ("embedding_dot_bias",) if fast else ("embedding_dot_bias", "embedding_nn")
    return {
        "tabular": Lesson("tabular", "experiments.lesson4_tabular",
                          ("--tiny", "--data-dir", str(adult_dummy_dir()), "--epochs", "3",
                           "--train.checkpoint-every-steps", "2"), ("export",)),
        "collab": Lesson("collab", "experiments.lesson4_collab",
                         ("--tiny", "--models", *collab_models, "--epochs", "1" if fast else "2",
                          "--train.checkpoint-every-steps", "40"),
                         tuple(f"{m}/export" for m in collab_models)),
        "vision": Lesson("vision", "experiments.lesson7_resnet_mnist",
                         ("--tiny", "--data-dir", str(fake_mnist(data_root / "mnist")), "--epochs", "2",
                          "--max-train-rows", "96" if fast else "256", "--train.checkpoint-every-steps", "2"),
                         ("export",)),
    }


@dataclasses.dataclass
class Attempt:
    killed: bool
    phase: str | None  # where the kill landed (None when not killed)
    returncode: int
    resumed: bool  # the run said it resumed from a checkpoint
    fell_back: bool  # the run found an unreadable checkpoint and used the previous one


@dataclasses.dataclass
class Trial:
    lesson: str
    kind: str  # "random" or "targeted EVENT:N"
    attempts: list[Attempt]
    mismatches: list[str]
    output_mismatches: list[str]


@dataclasses.dataclass(frozen=True)
class Reference:
    workdir: Path
    seconds: float
    main_at: float  # seconds from launch to the module starting
    first_saved_at: float  # seconds from the module starting to the end of the first checkpoint save
    counts: dict[str, int]  # how many times each traced event happened


def environment(cache: Path, kill_at: str | None = None, trace: Path | None = None) -> dict:
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "TF_CPP_MIN_LOG_LEVEL": "3",
           "KILL_TRACE": str(trace or os.devnull)}
    env.pop("KILL_AT", None)
    if kill_at:
        env["KILL_AT"] = kill_at
    return env


def launch(lesson: Lesson, workdir: Path, log: Path, env: dict) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, str(TRACED), lesson.module, *lesson.args, "--workdir", str(workdir)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def read_trace(trace: Path) -> list[tuple[str, int, float]]:
    if not trace.exists():
        return []
    rows = [line.split() for line in trace.read_text().splitlines()]
    return [(name, int(n), float(t)) for name, n, t in rows]


def attempt_result(proc: subprocess.Popen, killed: bool, log: Path, trace: Path) -> Attempt:
    events = read_trace(trace)
    text = log.read_text(errors="replace")
    phase = phase_of(events) if killed else None
    return Attempt(killed, phase, proc.returncode, "resuming from checkpoint" in text, "is unreadable" in text)


def phase_of(events: list[tuple[str, int, float]]) -> str:
    """Where a run was when its trace ends (an Orbax commit inside the export is the export's)."""
    last = events[-1][0] if events else None
    if last == "finalize":
        opened = next((name for name, _, _ in reversed(events) if name in ("save", "export")), "save")
        return "mid-save" if opened == "save" else "export"
    return PHASES[last]


def reference_run(lesson: Lesson, root: Path, cache: Path, warm: bool = True) -> Reference:
    """The uninterrupted run (traced); with `warm`, after one untimed run that fills the
    compilation cache (so its timings are those of the reruns)."""
    if warm:
        subprocess.run([sys.executable, "-m", lesson.module, *lesson.args, "--workdir", str(root / "warm")], cwd=REPO,
                       env=environment(cache), capture_output=True, timeout=900, check=True)
        shutil.rmtree(root / "warm")
    workdir, trace, log = root / f"{lesson.name}_reference", root / f"{lesson.name}_reference.trace", \
        root / f"{lesson.name}_reference.log"
    start = time.time()
    proc = launch(lesson, workdir, log, environment(cache, trace=trace))
    if proc.wait(timeout=900) != 0:
        raise RuntimeError(f"the reference run of {lesson.name} failed:\n{log.read_text()[-3000:]}")
    seconds = time.time() - start
    events = read_trace(trace)
    counts = collections.Counter(name for name, _, _ in events)
    first_saved = next(t for name, _, t in events if name == "saved")
    return Reference(workdir, seconds, events[0][2] - start, first_saved - events[0][2], dict(counts))


def run_trial(lesson: Lesson, ref: Reference, root: Path, cache: Path, index: int, delays: list[tuple[float, str | None]],
              kill_at: str | None = None) -> Trial:
    """Kill the command at each of `delays` in turn (see `kill_after`; or from inside at `kill_at`),
    then rerun it to the end and compare with the reference."""
    workdir = root / f"{lesson.name}_{index}"
    if workdir.exists():  # a second trial with the same index would resume the first one's finished run
        raise ValueError(f"trial workdir {workdir} already exists: give each trial its own index")
    attempts = []
    plan: list = [None] if kill_at else list(delays)
    for n, delay in enumerate([*plan, "final"]):
        log, trace = root / f"{lesson.name}_{index}_{n}.log", root / f"{lesson.name}_{index}_{n}.trace"
        env = environment(cache, kill_at if (kill_at and n == 0) else None, trace)
        proc = launch(lesson, workdir, log, env)
        killed = False
        if isinstance(delay, tuple):
            killed = kill_after(proc, trace, *delay)
        else:
            proc.wait(timeout=900)
            killed = proc.returncode == -9 and kill_at is not None and n == 0
        attempts.append(attempt_result(proc, killed, log, trace))
        if delay == "final" and proc.returncode != 0:
            return Trial(lesson.name, kind(kill_at), attempts,
                         [f"the final rerun exited {proc.returncode}: {log.read_text()[-1500:]}"], [])
    mismatches, output_mismatches = compare(ref.workdir, workdir, lesson.exports)
    crashed = [f"run {n} exited {a.returncode} without being killed" for n, a in enumerate(attempts)
               if not a.killed and a.returncode != 0]  # e.g. a rerun that could not resume
    return Trial(lesson.name, kind(kill_at), attempts, crashed + mismatches, output_mismatches)


def kill_after(proc: subprocess.Popen, trace: Path, seconds: float, anchor: str | None) -> bool:
    """SIGKILL `proc` `seconds` after its launch, or after the first `anchor` event of its
    trace (e.g. 'main': the module started, 'saved': its first checkpoint is written);
    False when it ended first."""
    start = time.time()
    while anchor and proc.poll() is None and not any(name == anchor for name, _, _ in read_trace(trace)):
        time.sleep(0.02)
    try:
        proc.wait(timeout=max(0.0, seconds - (0.0 if anchor else time.time() - start)))
        return False
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL
        proc.wait()
        return True


def kind(kill_at: str | None) -> str:
    return f"targeted {kill_at}" if kill_at else "random"


def compare(reference: Path, workdir: Path, exports: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(mismatches of weights, checkpoints and final metrics; mismatches of the other outputs)."""
    bad, outputs = [], []
    final = lambda w: json.loads((w / "metrics.json").read_text())["final"]  # noqa: E731
    if final(reference) != final(workdir):
        bad.append(f"metrics.json: {final(reference)} != {final(workdir)}")
    for export in exports:
        if (reference / export / "export.json").read_text() != (workdir / export / "export.json").read_text():
            bad.append(f"{export}/export.json differs")
        bad += [f"{export}/variables: {m}" for m in differing_arrays(reference / export / "variables",
                                                                      workdir / export / "variables")]
    for folder in sorted(p.relative_to(reference) for p in reference.rglob("checkpoints") if p.is_dir()):
        steps = lambda w: sorted(int(p.name) for p in (w / folder).iterdir() if p.name.isdigit())  # noqa: E731
        if steps(reference) != steps(workdir):
            bad.append(f"{folder}: steps {steps(reference)} != {steps(workdir)}")
        elif steps(reference):
            last = folder / str(steps(reference)[-1]) / "state"
            bad += [f"{last}: {m}" for m in differing_arrays(reference / last, workdir / last)]
    for history in sorted(p.relative_to(reference) for p in reference.rglob("history.csv")):
        if not (workdir / history).exists() or epoch_table(reference / history) != epoch_table(workdir / history):
            outputs.append(f"{history} differs (timings aside)")
    files = lambda w: {output_name(p.relative_to(w)) for p in w.rglob("*") if p.is_file()  # noqa: E731
                       and not any(part in IGNORED_OUTPUTS for part in p.relative_to(w).parts)}
    if files(reference) != files(workdir):
        outputs.append(f"files only in the reference run: {sorted(files(reference) - files(workdir))}, "
                       f"only in the killed one: {sorted(files(workdir) - files(reference))}")
    return bad, outputs


def output_name(relative: Path) -> str:
    """A written file's name for comparison: inside an Orbax folder (`variables/`) the file
    names are random, so only the folder counts."""
    parts = relative.parts
    return "/".join(parts[: parts.index("variables") + 1]) if "variables" in parts else str(relative)


def differing_arrays(a: Path, b: Path) -> list[str]:
    import jax
    import orbax.checkpoint as ocp

    if not b.exists():
        return ["missing"]
    with ocp.StandardCheckpointer() as checkpointer:
        left, right = checkpointer.restore(a), checkpointer.restore(b)
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(left)[0], jax.tree_util.tree_flatten_with_path(right)[0]
    if [k for k, _ in flat_a] != [k for k, _ in flat_b]:
        return ["different tree structure"]
    return [jax.tree_util.keystr(k) for (k, x), (_, y) in zip(flat_a, flat_b)
            if np.asarray(x).dtype != np.asarray(y).dtype or np.asarray(x).tobytes() != np.asarray(y).tobytes()]


def epoch_table(path: Path) -> list[list[str]]:
    rows = [line.split(",") for line in path.read_text().splitlines()]
    drop = rows[0].index("time") if rows and "time" in rows[0] else None
    return [[v for i, v in enumerate(r) if i != drop] for r in rows]


def random_delays(ref: Reference, rng: np.random.Generator, n: int | None = None) -> list[tuple[float, str | None]]:
    """1 to 3 (or n) kills in a row, each (seconds, anchor) for `kill_after`: a uniform time
    over the reference run's remaining span after its launch (1 in 5), after the module
    started (2 in 5), or after the first checkpoint was written (2 in 5)."""
    n = int(rng.integers(1, 4)) if n is None else n
    spans = {None: (0.2, ref.seconds), "main": (0.0, ref.seconds - ref.main_at),
             "saved": (0.0, ref.seconds - ref.main_at - ref.first_saved_at)}
    anchors = [None, "main", "main", "saved", "saved"]
    return [(float(rng.uniform(*spans[anchor])), anchor) for anchor in (anchors[rng.integers(5)] for _ in range(n))]


def targeted_kills(ref: Reference) -> list[str]:
    """Kills from inside: mid-save (the 2nd checkpoint's commit), the 2nd eval, just after the
    last checkpoint save, and the export's commit (the last Orbax commit of the run)."""
    counts = ref.counts
    return [f"finalize:{min(5, counts['finalize'])}", f"eval:{min(2, counts['eval'])}", f"saved:{counts['saved']}",
            f"finalize:{counts['finalize']}"]


def campaign(names, kills: int, seed: int, root: Path, fast: bool = False, targeted: bool = True, log=print,
             on_trial=lambda trials: None) -> list[Trial]:
    """Run the campaign over lessons `names`: about `kills` random kills each, plus the targeted
    ones; `on_trial(trials so far)` after each trial."""
    cache = root / "jax_cache"
    table = lessons(root, fast)
    rng = np.random.default_rng(seed)
    trials = []
    for name in names:
        lesson = table[name]
        ref = reference_run(lesson, root, cache)
        log(f"{name}: reference run {ref.seconds:.1f} s, {ref.counts.get('step', 0)} steps, "
            f"{ref.counts.get('saved', 0)} saves, {ref.counts.get('eval', 0)} evals")
        plans: list[tuple[list[float], str | None]] = []
        planned = 0
        while planned < kills:
            delays = random_delays(ref, rng)[: kills - planned]
            plans.append((delays, None))
            planned += len(delays)
        plans += [([], target) for target in (targeted_kills(ref) if targeted else [])]
        for index, (delays, target) in enumerate(plans):
            trial = run_trial(lesson, ref, root, cache, index, delays, target)
            trials.append(trial)
            on_trial(trials)
            log(f"  {trial.kind}: " + ", ".join(a.phase or ("finished" if a.returncode == 0 else f"exit {a.returncode}")
                                                 for a in trial.attempts)
                + (f"  MISMATCH {trial.mismatches}" if trial.mismatches else "")
                + (f"  OUTPUT MISMATCH {trial.output_mismatches}" if trial.output_mismatches else ""))
    return trials


def summarize(trials: list[Trial]) -> dict:
    """Per lesson: kills, where they landed, resumes, fallbacks, mismatches."""
    out = {}
    for name in dict.fromkeys(t.lesson for t in trials):
        mine = [t for t in trials if t.lesson == name]
        attempts = [a for t in mine for a in t.attempts]
        out[name] = {
            "trials": len(mine),
            "kills": sum(a.killed for a in attempts),
            "kills_by_phase": dict(collections.Counter(a.phase for a in attempts if a.killed).most_common()),
            "targeted_kills": sum(a.killed for t in mine if t.kind != "random" for a in t.attempts),
            "runs_finished_before_their_kill": sum(1 for t in mine for a in t.attempts[:-1] if not a.killed),
            "resumes": sum(a.resumed for a in attempts),
            "checkpoint_fallbacks": sum(a.fell_back for a in attempts),
            "mismatches": sum(bool(t.mismatches) for t in mine),
            "output_mismatches": sum(bool(t.output_mismatches) for t in mine),
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="random kills per lesson (plus 4 targeted ones)")
    parser.add_argument("--lessons", nargs="+", default=["tabular", "collab", "vision"], choices=["tabular", "collab", "vision"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-targeted", action="store_true")
    parser.add_argument("--keep", help="keep the workdirs, logs and traces in this folder (default: a temp dir, deleted)")
    parser.add_argument("--json", help="write the summary and every trial here")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kill_campaign_"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.time()

    def save(trials: list[Trial]) -> None:  # after every trial, so an interrupted campaign still reports
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summarize(trials), "seed": args.seed, "kills": args.kills,
                                                   "seconds": time.time() - start,
                                                   "trials": [dataclasses.asdict(t) for t in trials]}, indent=1))

    try:
        trials = campaign(args.lessons, args.kills, args.seed, root, targeted=not args.no_targeted, on_trial=save)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summary = summarize(trials)
    print(json.dumps(summary, indent=1))
    print(f"{len(trials)} trials, {sum(s['kills'] for s in summary.values())} kills, "
          f"{sum(s['mismatches'] for s in summary.values())} mismatches, "
          f"{sum(s['output_mismatches'] for s in summary.values())} output mismatches, {time.time() - start:.0f} s")
    return 1 if any(s["mismatches"] or s["output_mismatches"] for s in summary.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
