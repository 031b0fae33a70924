"""Every jaxfast-vs-PyTorch benchmark in one run, ending with one table of every ratio.

Runs resnet_bench (ResNet-18/34 at 64 and 32 px, ResNet-34 at 224 px, the MNIST ResNet, the
cnn head on a frozen body, a DynamicUnet at 128 px, the tf.data pipeline beside the ResNet-18
step), lstm_bench, tabular_collab_bench, the lessons' own shapes (awd_lstm_full_bench: the
full-size AWD-LSTM LM and classifier; unet_lessons_bench: the CamVid U-Net at half size and
lesson 7's U-Net + feature loss; wgan_bench; `--skip-lesson-shapes` leaves them out,
`--only-lesson-shapes` runs only them) and loop_overhead_bench in this process, the jaxfast
step with XLA-only convolutions vs the lowering rule, then lesson epochs (lesson 7's MNIST
ResNet; `--lessons` adds lesson 1's resnet18 on MNIST_SAMPLE) in fresh processes, alternating
the XLA-only convolution (`--conv-lowering xla`) and the rule. The machine is shared and
PyTorch's OpenMP steps slow down 10x when another process competes for the 2 cores, so
`--wait-load` waits (up to `--wait-max` s) for a quiet minute first; on a machine that stays
loaded, run with OMP_WAIT_POLICY=PASSIVE (PyTorch's threads then sleep at barriers instead
of spinning: its steps no longer slow 10x; the header records it). Last, allocator_bench
times ResNet-18 64 px and the LM step in fresh processes under glibc's default malloc and
with huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1).
Run: python benchmarks/run_all.py [--quick] [--wait-load 1.0] [--out results.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import COLUMNS, import_torch, load_average, markdown_table, omp_wait_policy

ROOT = Path(__file__).resolve().parent.parent


def wait_for_quiet(threshold: float, max_wait: float) -> None:
    t0 = time.time()
    while os.getloadavg()[0] > threshold and time.time() - t0 < max_wait:
        time.sleep(15)
    print(f"starting at load {load_average()} (waited {time.time() - t0:.0f} s)", flush=True)


LESSONS = {  # experiment -> its data folder beside the repository
    "lesson7_resnet_mnist": ROOT.parent / "shared" / "data" / "mnist",
    "lesson1_mnist_sample": ROOT.parent / "shared" / "data" / "mnist_sample",
}


def lesson_epoch_times(lesson: str, lowering: str, epochs: int) -> list[float]:
    """Epoch seconds of `python -m experiments.<lesson> [--conv-lowering <lowering>]` in a fresh
    process ('auto': the rule, the default); for lesson 7 without the experiment or its data,
    loop_overhead_bench --lesson."""
    data = LESSONS[lesson]
    if (ROOT / "experiments" / f"{lesson}.py").exists() and data.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", f"experiments.{lesson}", "--data-dir", str(data), "--epochs", str(epochs),
                   "--workdir", tmp, "--train.no-progress", "--top-losses", "1"]
            cmd += [] if lowering == "auto" else ["--conv-lowering", lowering]  # the experiment's config field
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
            import pandas as pd

            return [float(t) for t in pd.read_csv(Path(tmp) / "history.csv")["time"]]
    if lesson != "lesson7_resnet_mnist":
        raise FileNotFoundError(f"experiments/{lesson}.py or its data {data} is missing")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "loop_overhead_bench.py"), "--lesson", "--epochs", str(epochs),
           "--conv-lowering", lowering]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["epoch_s"]


def lesson_before_after(lesson: str, epochs: int, rounds: int) -> list[dict]:
    """Median first (compiling) and later epoch seconds, XLA-only convs vs the rule, alternated."""
    times = {"xla": [], "rule": []}
    for _ in range(rounds):
        for name, lowering in (("xla", "xla"), ("rule", "auto")):
            times[name].append(lesson_epoch_times(lesson, lowering, epochs))
    table = []
    for name, runs in times.items():
        later = [t for r in runs for t in r[1:]]
        table.append({"lesson": lesson, "convolution": name, "first epoch s": float(np.median([r[0] for r in runs])),
                      "later epochs s": float(np.median(later)) if later else None})
    ratio = {k: None if not table[1][k] else table[0][k] / table[1][k] for k in ("first epoch s", "later epochs s")}
    return table + [{"lesson": lesson, "convolution": "xla / rule", **ratio}]


def lesson_shape_rows(quick: bool) -> list[dict]:
    """The full-size AWD-LSTM LM and classifier, the CamVid half-size U-Net, lesson 7's U-Net +
    feature loss and the WGAN step (seconds per step on 2 cores: few timed steps)."""
    import awd_lstm_full_bench
    import unet_lessons_bench
    import wgan_bench

    steps = "2" if quick else "5"
    return (awd_lstm_full_bench.main(["--steps", steps]) + unet_lessons_bench.main(["--steps", steps])
            + wgan_bench.main(["--steps", "5" if quick else "15"]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (a smoke run, noisier)")
    parser.add_argument("--wait-load", type=float, default=None, help="wait for a 1-minute load below this")
    parser.add_argument("--wait-max", type=float, default=1800)
    parser.add_argument("--out", type=Path, help="also write everything printed to this file")
    parser.add_argument("--lessons", nargs="*", default=["lesson7_resnet_mnist"], choices=sorted(LESSONS),
                        help="lessons whose epochs to time with XLA-only convs vs the rule (none: skip)")
    parser.add_argument("--only-lessons", action="store_true", help="time only the lesson epochs")
    parser.add_argument("--lesson-epochs", type=int, default=None, help="epochs per lesson run (default 3, quick 2)")
    shapes = parser.add_mutually_exclusive_group()
    shapes.add_argument("--skip-lesson-shapes", action="store_true",
                        help="leave out the full-size AWD-LSTM, lesson U-Net and WGAN rows (the longest)")
    shapes.add_argument("--only-lesson-shapes", action="store_true", help="time only those rows")
    args = parser.parse_args(argv)
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.wait_max)
    if args.only_lessons:
        epochs = args.lesson_epochs or 2
        lesson = [r for name in args.lessons for r in lesson_before_after(name, epochs, 1 if epochs == 1 else 2)]
        text = f"load {load_average()} at the end\n\n" + markdown_table(lesson, list(lesson[0]))
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
    import jax

    import allocator_bench
    import loop_overhead_bench
    import lstm_bench
    import resnet_bench
    import tabular_collab_bench

    torch = import_torch()
    # glibc's malloc settings change both frameworks' step times (benchmarks/allocator_bench.py)
    header = (f"jax {jax.__version__}, torch {torch.__version__ if torch else 'absent'}, {os.cpu_count()} CPU cores, "
              f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}, OMP_WAIT_POLICY={omp_wait_policy()}, "
              f"start load {load_average()}")
    print(header, flush=True)
    q = args.quick
    if args.only_lesson_shapes:
        rows = lesson_shape_rows(q)
        text = "\n".join(["", header, f"end load {load_average()}", "", "## Train steps at the lessons' shapes, "
                           "jaxfast vs PyTorch eager (speed-up > 1: jaxfast faster)", "", markdown_table(rows, COLUMNS)])
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
    rows = resnet_bench.main(["--steps", "5" if q else "15", "--no-pipeline"])
    rows += lstm_bench.main(["--steps", "3" if q else "11"])
    rows += tabular_collab_bench.main(["--steps", "50" if q else "300"])
    if not args.skip_lesson_shapes:
        rows += lesson_shape_rows(q)
    overhead = loop_overhead_bench.main(["--epochs", "2" if q else "3"])
    lowering = [resnet_bench.lowering_speedup(name, 3 if q else 7) for name in ("resnet18_64px", "mnist_resnet")]
    # last: it imports TensorFlow, whose thread pools would disturb the timings above
    r18 = next(r for r in rows if r["workload"] == "resnet18_64px")
    pipeline = {"workload": "pipeline_vs_resnet18_64px", **resnet_bench.pipeline_vs_step(r18)}
    epochs = args.lesson_epochs or (2 if q else 3)
    lesson = [r for name in args.lessons for r in lesson_before_after(name, epochs, 1 if q or epochs == 1 else 2)]
    malloc = allocator_bench.main(["--steps", "3", "--rounds", "1"] if q else []) if torch else []
    lines = ["", header, f"end load {load_average()}", "", "## Train steps, jaxfast vs PyTorch eager (speed-up > 1: jaxfast faster)",
             "", markdown_table(rows, COLUMNS)]
    if pipeline:  # noqa: SIM102
        lines += ["", "## tf.data pipeline (augmented, 64 px, bs 32) vs the ResNet-18 64 px train step", "",
                  markdown_table([pipeline], list(pipeline))]
    lines += ["", "## Learner loop vs the bare jitted step (per step)", "", markdown_table(overhead, list(overhead[0]))]
    lines += ["", "## jaxfast step: XLA-only convolution and max-pool vs the lowering rule", "",
              markdown_table(lowering, list(lowering[0]))]
    if lesson:
        lines += ["", "## Lesson epochs (python -m experiments.<lesson>; first epoch compiles), XLA-only vs rule", "",
                  markdown_table(lesson, list(lesson[0]))]
    if malloc:
        lines += ["", "## Both steps under glibc's default malloc and with huge pages (fresh processes)", "",
                  markdown_table(malloc, list(malloc[0]))]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
