"""Every jaxfast-vs-PyTorch benchmark in one run, ending with one table of every ratio.

Runs resnet_bench (ResNet-18/34 at 64 and 32 px, the MNIST ResNet, the cnn head on a
frozen body, the tf.data pipeline beside the ResNet-18 step), lstm_bench, tabular_collab_bench
and loop_overhead_bench in this process, the jaxfast step with XLA-only convolutions vs the
lowering rule, then lesson 7's MNIST ResNet epochs in fresh processes, alternating the
XLA-only convolution (JAXFAST_CONV_LOWERING=xla) and the rule. The machine is shared and
PyTorch's OpenMP steps slow down 10x when another process competes for the 2 cores, so
`--wait-load` waits (up to `--wait-max` s) for a quiet minute first.
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
from common import COLUMNS, import_torch, load_average, markdown_table

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def wait_for_quiet(threshold: float, max_wait: float) -> None:
    t0 = time.time()
    while os.getloadavg()[0] > threshold and time.time() - t0 < max_wait:
        time.sleep(15)
    print(f"starting at load {load_average()} (waited {time.time() - t0:.0f} s)", flush=True)


def lesson_epoch_times(lowering: str | None, epochs: int) -> list[float]:
    """Epoch seconds of lesson 7's experiment (or of loop_overhead_bench --lesson when the
    experiment or its data are absent) in a fresh process with `lowering` forced or not."""
    env = {**os.environ, "JAXFAST_CONV_LOWERING": lowering or ""}
    if (ROOT / "experiments" / "lesson7_resnet_mnist.py").exists() and MNIST_DIR.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "experiments.lesson7_resnet_mnist", "--data-dir", str(MNIST_DIR),
                   "--epochs", str(epochs), "--workdir", tmp, "--no-progress", "--top-losses", "1"]
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
            import pandas as pd

            return [float(t) for t in pd.read_csv(Path(tmp) / "history.csv")["time"]]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "loop_overhead_bench.py"), "--lesson", "--epochs", str(epochs)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["epoch_s"]


def lesson_before_after(epochs: int, rounds: int) -> dict:
    """Median first (compiling) and later epoch seconds with XLA-only convs vs the rule, alternated."""
    times = {"xla": [], "rule": []}
    for _ in range(rounds):
        for name, lowering in (("xla", "xla"), ("rule", None)):
            times[name].append(lesson_epoch_times(lowering, epochs))
    out = {}
    for name, runs in times.items():
        out[name] = {"first epoch s": float(np.median([r[0] for r in runs])),
                     "later epochs s": float(np.median([t for r in runs for t in r[1:]]))}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (a smoke run, noisier)")
    parser.add_argument("--wait-load", type=float, default=None, help="wait for a 1-minute load below this")
    parser.add_argument("--wait-max", type=float, default=1800)
    parser.add_argument("--out", type=Path, help="also write everything printed to this file")
    parser.add_argument("--skip-lesson", action="store_true", help="skip the lesson 7 epoch comparison")
    args = parser.parse_args(argv)
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.wait_max)
    import jax

    import loop_overhead_bench
    import lstm_bench
    import resnet_bench
    import tabular_collab_bench

    torch = import_torch()
    header = (f"jax {jax.__version__}, torch {torch.__version__ if torch else 'absent'}, {os.cpu_count()} CPU cores, "
              f"start load {load_average()}")
    print(header, flush=True)
    q = args.quick
    rows = resnet_bench.main(["--steps", "5" if q else "15", "--no-pipeline"])
    rows += lstm_bench.main(["--steps", "3" if q else "11"])
    rows += tabular_collab_bench.main(["--steps", "50" if q else "300"])
    overhead = loop_overhead_bench.main(["--epochs", "2" if q else "3"])
    lowering = [resnet_bench.lowering_speedup(name, 3 if q else 7) for name in ("resnet18_64px", "mnist_resnet")]
    # last: it imports TensorFlow, whose thread pools would disturb the timings above
    r18 = next(r for r in rows if r["workload"] == "resnet18_64px")
    pipeline = {"workload": "pipeline_vs_resnet18_64px", **resnet_bench.pipeline_vs_step(r18)}
    lesson = None if args.skip_lesson else lesson_before_after(2 if q else 3, 1 if q else 2)
    lines = ["", header, f"end load {load_average()}", "", "## Train steps, jaxfast vs PyTorch eager (speed-up > 1: jaxfast faster)",
             "", markdown_table(rows, COLUMNS)]
    if pipeline:  # noqa: SIM102
        lines += ["", "## tf.data pipeline (augmented, 64 px, bs 32) vs the ResNet-18 64 px train step", "",
                  markdown_table([pipeline], list(pipeline))]
    lines += ["", "## Learner loop vs the bare jitted step (per step)", "", markdown_table(overhead, list(overhead[0]))]
    lines += ["", "## jaxfast step: XLA-only convolution and max-pool vs the lowering rule", "",
              markdown_table(lowering, list(lowering[0]))]
    if lesson:
        table = [{"convolution": k, **v} for k, v in lesson.items()]
        table.append({"convolution": "xla / rule", **{k: lesson["xla"][k] / lesson["rule"][k] for k in lesson["rule"]}})
        lines += ["", "## Lesson 7 MNIST ResNet epoch (8,000 train + 2,000 valid images, bs 128)", "",
                  markdown_table(table, list(table[0]))]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
