"""Train-step throughput on an accelerator: ResNet-50 in bf16 and fp32, and the CPU suite's
jaxfast steps, one markdown table (the prepared script for a lent GPU machine).

On the device machine (no internet, a bare Python): install the wheels carried in `.whl`
(see /work/.library/device/README.md), then
    python benchmarks/device_bench.py --out $OUT/device.md
Every row is jaxfast's jitted, donating train step (AdamW) as the Learner runs it, timed
as the median of `--steps` steps after compilation; images/s = batch / median.
PyTorch is not compared here (no CUDA wheel can be installed offline there).
`--tiny` runs the same code on small shapes (checks the script on a CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import jaxfast_step, markdown_table


def workloads(tiny: bool):
    """name -> (model factory, input shape without batch, n_classes, batch, compute dtype)."""
    from jaxfast.models.resnet import resnet18, resnet50
    from jaxfast.models.simple_cnn import mnist_resnet

    if tiny:
        return {"resnet50_bf16_32px": (lambda: resnet50(10), (32, 32, 3), 10, 4, "bfloat16"),
                "mnist_resnet_fp32": (mnist_resnet, (28, 28, 1), 10, 8, "float32")}
    return {
        "resnet50_bf16_224px": (lambda: resnet50(1000), (224, 224, 3), 1000, 256, "bfloat16"),
        "resnet50_fp32_224px": (lambda: resnet50(1000), (224, 224, 3), 1000, 256, "float32"),
        "resnet18_bf16_224px": (lambda: resnet18(1000), (224, 224, 3), 1000, 256, "bfloat16"),
        "resnet18_fp32_64px": (lambda: resnet18(10), (64, 64, 3), 10, 32, "float32"),
        "mnist_resnet_fp32": (mnist_resnet, (28, 28, 1), 10, 128, "float32"),
    }


def measure(name, factory, shape, n_classes, batch, dtype, steps: int) -> dict:
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, *shape)).astype(np.float32)
    labels = rng.integers(0, n_classes, batch).astype(np.int32)
    step, compile_s, flops = jaxfast_step(factory(), images, labels, compute_dtype=dtype)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {"workload": name, "batch": str(batch), "step ms": median * 1e3, "images/s": batch / median,
            "compile s": compile_s, "TFLOP/s": flops / median / 1e12 if flops else None}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="small shapes (a CPU check of this script)")
    parser.add_argument("--only", nargs="*", help="workload names (default: all)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    header = f"device: {device.platform} {getattr(device, 'device_kind', '')}, jax {jax.__version__}"
    print(header, flush=True)
    rows = []
    for name, spec in workloads(args.tiny).items():
        if args.only and name not in args.only:
            continue
        rows.append(measure(name, *spec, args.steps))
        print(markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    table = markdown_table(rows, list(rows[0]))
    print("\n" + table)
    if args.out is not None:
        args.out.write_text(f"{header}\n\n{table}\n")
    return rows


if __name__ == "__main__":
    main()
