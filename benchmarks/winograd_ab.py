"""jaxfast alone: train steps with the Winograd conv lowering left out of the rule vs in it.

Everything else of the rule (im2col for tiny maps, XLA's conv elsewhere) stays the same, so
the ratio is what `jaxfast.models.winograd` adds to a whole train step; compile times are
printed too. Workloads: the vision steps of resnet_bench.py plus lesson 1's resnet18 + head
at 28 px, bs 64.
Run: python benchmarks/winograd_ab.py [--steps 15] [--only resnet18_64px lesson1_resnet18_28px]
"""

from __future__ import annotations

import argparse
import contextlib

import jax
import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import jaxfast_step, load_average, markdown_table, medians_and_best
from resnet_bench import make_batch

COLUMNS = ["workload", "without winograd ms", "with winograd ms", "speed-up", "compile s without", "compile s with"]


@contextlib.contextmanager
def winograd_left_out():
    """The rule without its Winograd branch (no conv has a billion channels)."""
    from jaxfast.models import conv

    previous = conv.CPU_WINOGRAD_MIN_CHANNELS
    conv.CPU_WINOGRAD_MIN_CHANNELS = 10**9
    jax.clear_caches()
    try:
        yield
    finally:
        conv.CPU_WINOGRAD_MIN_CHANNELS = previous
        jax.clear_caches()


def workloads():
    from jaxfast.models.heads import create_cnn
    from resnet_bench import workloads as vision

    out = {name: (spec[0], spec[2], spec[3], spec[4], spec[5], spec[6]) for name, spec in vision().items()}
    out["lesson1_resnet18_28px"] = (create_cnn("resnet18", 2), 28, 3, 64, 2, {})
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--only", nargs="*", help="workload names (default: all)")
    args = parser.parse_args(argv)
    rows = []
    for name, (model, px, ch, bs, n_classes, extra) in workloads().items():
        if args.only and name not in args.only:
            continue
        images, targets = make_batch(model, px, ch, bs, n_classes, np.random.default_rng(0))
        with winograd_left_out():
            without, compile_without, _ = jaxfast_step(model, images, targets, **extra)
        with_, compile_with, _ = jaxfast_step(model, images, targets, **extra)
        med, _ = medians_and_best({"without": without, "with": with_}, args.steps)
        rows.append({"workload": name, "without winograd ms": med["without"] * 1e3, "with winograd ms": med["with"] * 1e3,
                     "speed-up": med["without"] / med["with"], "compile s without": compile_without,
                     "compile s with": compile_with})
        print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], f"(load {load_average()})", flush=True)
    print(f"\nWinograd left out vs in the rule, load {load_average()}")
    print(markdown_table(rows, COLUMNS))
    return rows


if __name__ == "__main__":
    main()
