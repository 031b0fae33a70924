"""Train steps on an accelerator, jaxfast vs PyTorch eager on the same device: ResNet-50 in
bf16 and fp32 (images/s), and the CPU suite's workloads. One markdown table (the prepared
script for a lent GPU machine).

On the device machine (no internet; its image has jax with CUDA, flax, optax and a CUDA
PyTorch, no TensorFlow, which these steps do not need):
    python benchmarks/device_bench.py --out $OUT/device.md
Every jaxfast row is the Learner's jitted, donating train step (AdamW); the PyTorch row is
the same model (benchmarks/torch_reference.py) in eager mode with AdamW, channels-last
for images, cuDNN's algorithm search on (cudnn.benchmark), and torch.autocast(bfloat16)
where jaxfast computes in bf16 (both keep fp32 params and BatchNorm statistics). Steps
alternate between the two; each ends with a device sync (jax.block_until_ready,
loss.item()); medians of `--steps`, after warm-up. TFLOP/s counts the jaxfast step's
flops for both columns (XLA's cost analysis, on the CPU backend where the device's has
none; by hand for the LSTM, whose scan body XLA counts once).
fp32 rows run as TF32 on NVIDIA GPUs since Ampere in both: XLA's default precision does so
for dots and convolutions, torch for convolutions by default (cudnn.allow_tf32) and for
matmuls here (cuda.matmul.allow_tf32, off by default). torch's AdamW is its default
(foreach) implementation; no torch.compile or CUDA graphs: eager, as fastai runs.
Without a GPU the same code runs on the CPU; `--tiny` shrinks the shapes to check it.
"""

from __future__ import annotations

import argparse
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import (build_jaxfast_step, flops, import_torch, jaxfast_step, markdown_table, medians_and_best,
                    ratio, timed_first)


@dataclass(frozen=True)
class Workload:
    """One train step, built alike for both frameworks."""

    jax_model: Callable[[], object]
    torch_model: Callable[[], object]
    make_batch: Callable[[np.random.Generator], tuple[tuple, np.ndarray]]  # -> (inputs, targets), jax layout
    batch: int
    loss: str = "cross_entropy"  # jaxfast.losses name: cross_entropy (also per token) or mse
    dtype: str = "float32"  # jaxfast compute dtype; torch autocast for bfloat16
    lr: float = 1e-3
    wd: float = 1e-2
    eps: float = 1e-5
    flops: float | None = None  # counted by hand where XLA's cost analysis cannot (a scan's body)


def images(batch: int, px: int, channels: int, n_classes: int):
    def make(rng):
        x = rng.standard_normal((batch, px, px, channels)).astype(np.float32)
        return (x,), rng.integers(0, n_classes, batch).astype(np.int32)

    return make


def workloads(tiny: bool) -> dict[str, Workload]:
    from jaxfast.models.collab import embedding_dot_bias
    from jaxfast.models.resnet import resnet18, resnet50
    from jaxfast.models.simple_cnn import mnist_resnet
    from jaxfast.models.tabular import emb_sz_rule, tabular

    import lstm_bench as lb
    import tabular_collab_bench as tb
    import torch_reference as tr

    big, big_px, small = (4, 32, 8) if tiny else (256, 224, 32)
    emb_szs = [(n, emb_sz_rule(n)) for n in tb.ADULT_CATS]

    def lm_batch(rng):
        tokens = rng.integers(0, lb.VOCAB, (lb.BS, lb.T)).astype(np.int32)
        return (tokens,), rng.integers(0, lb.VOCAB, (lb.BS, lb.T)).astype(np.int32)

    def tabular_batch(rng):
        x_cat = np.stack([rng.integers(0, n, tb.BS) for n in tb.ADULT_CATS], 1).astype(np.int32)
        x_cont = rng.standard_normal((tb.BS, tb.N_CONT)).astype(np.float32)
        return (x_cat, x_cont), rng.integers(0, 2, tb.BS).astype(np.int32)

    def collab_batch(rng):
        users = rng.integers(0, tb.N_USERS, tb.BS).astype(np.int32)
        items = rng.integers(0, tb.N_ITEMS, tb.BS).astype(np.int32)
        return (users, items), rng.uniform(0.5, 5.0, tb.BS).astype(np.float32)

    resnet50_1k = lambda: resnet50(1000)  # noqa: E731
    torch_resnet50_1k = lambda: tr.resnet50(1000)  # noqa: E731
    return {
        f"resnet50_bf16_{big_px}px": Workload(resnet50_1k, torch_resnet50_1k, images(big, big_px, 3, 1000), big,
                                             dtype="bfloat16"),
        "resnet18_fp32_64px": Workload(lambda: resnet18(10), lambda: tr.resnet18(10), images(small, 64, 3, 10), small),
        "mnist_resnet_fp32": Workload(mnist_resnet, tr.mnist_resnet, images(4 * small, 28, 1, 10), 4 * small),
        "awd_lstm_lm_tied": Workload(lambda: lb.LstmLM("fused", 1, True, None), lambda: tr.LstmLM(tied=True),
                                     lm_batch, lb.BS, flops=lb.model_flops(classifier=False)),
        "tabular_adult": Workload(lambda: tabular(emb_szs, tb.N_CONT, 2, (200, 100)),
                                  lambda: tr.TabularModel(emb_szs, tb.N_CONT, 2), tabular_batch, tb.BS, lr=1e-2),
        "collab_embedding_dot_bias": Workload(
            lambda: embedding_dot_bias(tb.N_USERS, tb.N_ITEMS, tb.N_FACTORS, (0.0, 5.5)),
            lambda: tr.EmbeddingDotBias(tb.N_USERS, tb.N_ITEMS, tb.N_FACTORS), collab_batch, tb.BS, loss="mse",
            lr=5e-3, wd=0.1, eps=1e-8),
        f"resnet50_fp32_{big_px}px": Workload(resnet50_1k, torch_resnet50_1k, images(big, big_px, 3, 1000), big),
        f"resnet18_bf16_{big_px}px": Workload(lambda: resnet18(1000), lambda: tr.resnet18(1000),
                                             images(big, big_px, 3, 1000), big, dtype="bfloat16"),
    }


def torch_step(torch, work: Workload, inputs: tuple, targets: np.ndarray, device: str):
    """PyTorch's eager step of the same model and batch (NCHW tensors, channels-last)."""
    import torch_reference as tr

    torch.manual_seed(0)
    is_image = lambda x: x.ndim == 4  # noqa: E731
    tensors = tuple(torch.from_numpy(x.transpose(0, 3, 1, 2).copy() if is_image(x) else
                                     (x.astype(np.int64) if x.dtype.kind == "i" else x)) for x in inputs)
    target = torch.from_numpy(targets.astype(np.int64) if targets.dtype.kind == "i" else targets)
    loss = {"cross_entropy": tr.lm_loss, "mse": torch.nn.functional.mse_loss}[work.loss]
    return tr.train_step(work.torch_model(), loss, tensors, target, device=device,
                         autocast_dtype=torch.bfloat16 if work.dtype == "bfloat16" else None,
                         channels_last=any(is_image(x) for x in inputs), lr=work.lr, wd=work.wd, eps=work.eps)


def cpu_flops(work: Workload, inputs, targets) -> float | None:
    """Flops of the jaxfast step from XLA's CPU cost analysis, traced with the plain XLA
    convolutions an accelerator runs (None, with the reason, if that fails). XLA's GPU backend
    gave no count before compiling, and the compiled program's analysis does not see the
    convolutions it hands to cuDNN."""
    model = work.jax_model()
    if hasattr(model, "conv_lowering"):  # every conv and max-pool as XLA's own (jaxfast.models.conv)
        model = model.clone(conv_lowering="xla")
    try:
        train_step, state, batch = build_jaxfast_step(
            model, inputs, targets, work.loss, lr=work.lr, wd=work.wd, eps=work.eps,
            compute_dtype=work.dtype, device=jax.devices("cpu")[0])
        return flops(train_step.lower(state, batch))
    except Exception as error:  # noqa: BLE001 - a missing count must not lose the row's timings
        print(f"no flop count on the CPU backend ({type(error).__name__}: {error})", flush=True)
        return None


def measure(name: str, work: Workload, steps: int, torch, torch_device: str) -> dict:
    inputs, targets = work.make_batch(np.random.default_rng(0))
    jax_inputs = inputs if len(inputs) > 1 else inputs[0]
    jstep, compile_s, n_flops = jaxfast_step(work.jax_model(), jax_inputs, targets, work.loss, lr=work.lr,
                                             wd=work.wd, eps=work.eps, compute_dtype=work.dtype)
    fns, torch_first = {"jax": jstep}, None
    if torch is not None:
        tstep = torch_step(torch, work, inputs, targets, torch_device)
        torch_first = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, steps, warmup=3)
    del fns, jstep  # free the device before the flop count re-initialises the model
    n_flops = work.flops or n_flops or cpu_flops(work, jax_inputs, targets)
    tflops = lambda s: None if not n_flops or not s else n_flops / s / 1e12  # noqa: E731
    t = med.get("torch")
    return {"workload": name, "batch": str(work.batch), "jaxfast ms": med["jax"] * 1e3,
            "torch ms": None if t is None else t * 1e3, "speed-up": ratio(t, med["jax"]),
            "speed-up (fastest steps)": ratio(best.get("torch"), best["jax"]),
            "jaxfast items/s": work.batch / med["jax"], "torch items/s": None if t is None else work.batch / t,
            "compile s": compile_s, "torch 1st step s": torch_first,
            "jaxfast TFLOP/s": tflops(med["jax"]), "torch TFLOP/s": tflops(t)}


COLUMNS = ["workload", "batch", "jaxfast ms", "torch ms", "speed-up", "speed-up (fastest steps)",
           "jaxfast items/s", "torch items/s", "compile s", "torch 1st step s", "jaxfast TFLOP/s", "torch TFLOP/s"]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="small shapes (a CPU check of this script)")
    parser.add_argument("--only", nargs="*", help="workload names (default: all)")
    parser.add_argument("--out", type=Path, help="also write the table here (rewritten after every row)")
    args = parser.parse_args(argv)
    # Both frameworks share the device: XLA takes half its memory instead of 75% (its default
    # preallocation), torch's caching allocator the rest. Read when jax starts its backends.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    device = jax.devices()[0]
    torch = import_torch()
    torch_device = "cuda" if torch is not None and torch.cuda.is_available() else "cpu"
    if torch_device == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN's algorithm search; its cost shows in "torch 1st step s"
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls as TF32, as XLA's default precision does
    header = (f"device: {device.platform} {getattr(device, 'device_kind', '')}, jax {jax.__version__}"
              + (f", torch {torch.__version__} on {torch_device}"
                 + (f" ({torch.cuda.get_device_name()})" if torch_device == "cuda" else "") if torch else ""))
    print(header, flush=True)
    known = workloads(args.tiny)
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; known{' with --tiny' if args.tiny else ''}: "
                     f"{', '.join(known)}")
    rows, failed = [], []
    for name, work in known.items():
        if args.only and name not in args.only:
            continue
        try:
            rows.append(measure(name, work, args.steps, torch, torch_device))
        except Exception:  # noqa: BLE001 - one failed row must not lose the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        finally:
            if torch is not None and torch_device == "cuda":
                torch.cuda.empty_cache()
        print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
        if args.out is not None:
            args.out.write_text(f"{header}\n\n{markdown_table(rows, COLUMNS)}\n")
    print("\n" + header + "\n" + markdown_table(rows, COLUMNS))
    if failed:
        raise SystemExit(f"failed workloads: {', '.join(failed)}")
    return rows


if __name__ == "__main__":
    main()
