"""Page faults of fresh per-step buffers: both train steps with glibc's default malloc vs
GLIBC_TUNABLES=glibc.malloc.hugetlb=1, each setting in fresh processes (it is read at start).

Why: XLA:CPU allocates one scratch buffer per execution (320 MB for the AWD-LSTM LM step) and
frees it at the end; glibc serves anything over 32 MB with mmap/munmap, so every step faults
every page of it in again (~79k minor faults per LM step). PyTorch's eager ops fault as well.
`hugetlb=1` (glibc >= 2.35, with the kernel's transparent huge pages set to `madvise` or
`always`; the header prints both) makes glibc back such blocks with 2 MB pages: 56-78x fewer
faults measured here. The table gives each framework's median step, minor page faults and
kernel (system) CPU time per step under both settings.
Run: python benchmarks/allocator_bench.py [--steps 9] [--rounds 2] [--only resnet18_64px]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import import_torch, jaxfast_step, load_average, markdown_table

SETTINGS = {"glibc default": None, "hugetlb=1": "glibc.malloc.hugetlb=1"}
WORKLOADS = ("resnet18_64px", "awd_lstm_lm_tied")


def build_steps(workload: str, torch) -> dict:
    """The jaxfast and PyTorch train steps of `workload`, as resnet_bench / lstm_bench build them."""
    import torch_reference as tr

    rng = np.random.default_rng(0)
    if workload == "awd_lstm_lm_tied":
        import lstm_bench as lb

        inputs = rng.integers(0, lb.VOCAB, (lb.BS, lb.T)).astype(np.int32)
        targets = rng.integers(0, lb.VOCAB, (lb.BS, lb.T)).astype(np.int32)
        jstep = jaxfast_step(lb.LstmLM("fused", 1, True, None), inputs, targets)[0]
        torch.manual_seed(0)
        tstep = tr.train_step(tr.LstmLM(tied=True), tr.lm_loss, (torch.from_numpy(inputs.astype(np.int64)),),
                              torch.from_numpy(targets.astype(np.int64)), lr=1e-3)
        return {"jaxfast": jstep, "torch": tstep}
    import resnet_bench

    jmodel, tfactory, px, ch, bs, n_classes, extra = resnet_bench.workloads()[workload]
    images = rng.standard_normal((bs, px, px, ch)).astype(np.float32)
    targets = rng.integers(0, n_classes, bs).astype(np.int32)
    jstep = jaxfast_step(jmodel, images, targets, **extra)[0]
    torch.manual_seed(0)
    tstep = tr.train_step(tfactory(), torch.nn.functional.cross_entropy,
                          (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),),
                          torch.from_numpy(targets.astype(np.int64)), lr=1e-3)
    return {"jaxfast": jstep, "torch": tstep}


def child(workload: str, n_steps: int) -> dict:
    """Step seconds, minor page faults and kernel CPU seconds of each framework; one step of
    each in turn, the order rotated every round (as common.interleaved_times does)."""
    steps = build_steps(workload, import_torch())
    for fn in steps.values():
        for _ in range(2):
            fn()
    names = list(steps)
    seconds = {name: [] for name in names}
    faults = {name: 0 for name in names}
    kernel_s = {name: 0.0 for name in names}
    for i in range(n_steps):
        for name in names[i % 2:] + names[:i % 2]:
            before = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[name] += after.ru_minflt - before.ru_minflt
            kernel_s[name] += after.ru_stime - before.ru_stime
    return {name: {"s": seconds[name], "faults": faults[name] / n_steps, "kernel_s": kernel_s[name] / n_steps}
            for name in names}


def host_memory_settings() -> str:
    """glibc's version and the kernel's transparent-huge-page mode (hugetlb=1 needs both)."""
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = "unknown"
    glibc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else "not glibc"
    return f"{glibc}, transparent huge pages: {thp}"


def run_child(workload: str, tunables: str | None, n_steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    cmd = [sys.executable, __file__, "--child", workload, "--steps", str(n_steps)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{workload} with GLIBC_TUNABLES={tunables} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=9, help="timed steps per framework and process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting, settings alternated")
    parser.add_argument("--only", nargs="*", choices=WORKLOADS, help="workloads (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return []
    if import_torch() is None:
        return []
    print(host_memory_settings(), flush=True)
    rows = []
    for workload in args.only or WORKLOADS:
        runs = {setting: [] for setting in SETTINGS}
        for _ in range(args.rounds):
            for setting, tunables in SETTINGS.items():
                runs[setting].append(run_child(workload, tunables, args.steps))
        for setting, results in runs.items():
            med = {fw: float(np.median([t for r in results for t in r[fw]["s"]])) for fw in ("jaxfast", "torch")}
            flt = {fw: float(np.mean([r[fw]["faults"] for r in results])) for fw in ("jaxfast", "torch")}
            sys_ms = {fw: float(np.mean([r[fw]["kernel_s"] for r in results])) * 1e3 for fw in ("jaxfast", "torch")}
            rows.append({"workload": workload, "malloc": setting, "jaxfast ms": med["jaxfast"] * 1e3,
                         "torch ms": med["torch"] * 1e3, "speed-up": med["torch"] / med["jaxfast"],
                         "jaxfast faults/step": flt["jaxfast"], "torch faults/step": flt["torch"],
                         "jaxfast kernel ms/step": sys_ms["jaxfast"], "torch kernel ms/step": sys_ms["torch"]})
            print(markdown_table(rows[-1:], list(rows[-1])).splitlines()[-1], f"(load {load_average()})", flush=True)
    print(f"\nStep times by malloc setting (fresh processes, alternated; kernel ms: CPU time of both cores "
          f"in the kernel), {host_memory_settings()}, load {load_average()}")
    print(markdown_table(rows, list(rows[0])))
    return rows


if __name__ == "__main__":
    main()
