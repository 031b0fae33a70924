"""Vision train steps, jaxfast vs PyTorch eager on the same model, batch and optimizer (AdamW).

Workloads: ResNet-18/34 (torchvision layout) at 64 and 32 px, bs 32, and ResNet-34 at
lesson 1's 224 px (bs 16); lesson 7's MNIST ResNet (28x28, bs 128); fastai's cnn head on a
frozen ResNet-34 body (64 px, bs 32); fastai's DynamicUnet on ResNet-34 (128 px, bs 8, 32
classes as CamVid, per-pixel cross entropy); and the tf.data pipeline's images/s with
augmentation beside ResNet-18's train step.
Run: python benchmarks/resnet_bench.py [--steps 25] [--conv-lowering xla] [--only resnet18_64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import import_torch, jaxfast_step, medians_and_best, load_average, markdown_table, row, timed_first

from jaxfast.models.conv import MODEL_LOWERINGS


def workloads(conv_lowering: str = "auto"):
    """name -> (jaxfast model, torch model factory, image size, channels, batch, n_classes, extra);
    every jaxfast model with `conv_lowering` ('auto': the rule; jaxfast.models.conv)."""
    from jaxfast.models.heads import cnn_layer_groups, create_cnn
    from jaxfast.models.resnet import resnet18, resnet34
    from jaxfast.models.simple_cnn import mnist_resnet
    from jaxfast.models.unet import dynamic_unet, unet_layer_groups

    import torch_reference as tr

    out = {}
    for depth, jmodel, tmodel in ((18, resnet18, tr.resnet18), (34, resnet34, tr.resnet34)):
        for px in (64, 32):
            out[f"resnet{depth}_{px}px"] = (jmodel(10, conv_lowering=conv_lowering), lambda t=tmodel: t(10),
                                            px, 3, 32, 10, {})
    out["resnet34_224px_bs16"] = (resnet34(10, conv_lowering=conv_lowering), lambda: tr.resnet34(10),
                                  224, 3, 16, 10, {})  # lesson 1's size
    out["mnist_resnet"] = (mnist_resnet(conv_lowering=conv_lowering), tr.mnist_resnet, 28, 1, 128, 10, {})
    head = create_cnn("resnet34", 37, conv_lowering=conv_lowering)
    groups = cnn_layer_groups(head)
    out["cnn_head_frozen_resnet34_64px"] = (
        head, lambda: tr.cnn(tr.resnet34(include_top=False), 512, 37, freeze_body=True), 64, 3, 32, 37,
        dict(group_of_path=groups.group_of_path, n_groups=groups.n_groups, n_frozen=groups.n_groups - 1),
    )
    unet = dynamic_unet("resnet34", 32, conv_lowering=conv_lowering)
    groups = unet_layer_groups(unet)
    out["unet_resnet34_128px"] = (unet, lambda: tr.unet("resnet34", 32), 128, 3, 8, 32,
                                  dict(group_of_path=groups.group_of_path, n_groups=groups.n_groups))
    return out


def make_batch(model, px: int, ch: int, bs: int, n_classes: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Random NHWC images and integer targets: one per image, or one per pixel for a U-Net."""
    from jaxfast.models.unet import DynamicUnet

    images = rng.standard_normal((bs, px, px, ch)).astype(np.float32)
    target_shape = (bs, px, px) if isinstance(model, DynamicUnet) else (bs,)
    return images, rng.integers(0, n_classes, target_shape).astype(np.int32)


def bench(name, spec, n_steps: int, torch, compute_dtype: str = "float32") -> dict:
    jmodel, tfactory, px, ch, bs, n_classes, extra = spec
    images, targets = make_batch(jmodel, px, ch, bs, n_classes, np.random.default_rng(0))
    jstep, compile_s, n_flops = jaxfast_step(jmodel, images, targets, compute_dtype=compute_dtype, **extra)
    fns = {"jax": jstep}
    tfirst = None
    if torch is not None:
        import torch_reference as tr

        torch.manual_seed(0)
        tstep = tr.train_step(tfactory(), torch.nn.functional.cross_entropy,
                              (torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),),
                              torch.from_numpy(targets.astype(np.int64)), lr=1e-3)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps)
    r = row(name, med, best, compile_s, n_flops, tfirst)
    r["images/s"] = bs / med["jax"]
    return r


def lowering_speedup(name: str, n_steps: int) -> dict:
    """jaxfast alone: the step with every conv and max-pool on XLA's lowering vs the rule."""
    xla_model = workloads("xla")[name][0]
    jmodel, _, px, ch, bs, n_classes, extra = workloads()[name]
    images, targets = make_batch(jmodel, px, ch, bs, n_classes, np.random.default_rng(0))
    xla_step = jaxfast_step(xla_model, images, targets, **extra)[0]
    rule_step = jaxfast_step(jmodel, images, targets, **extra)[0]
    med, _ = medians_and_best({"xla": xla_step, "rule": rule_step}, n_steps)
    return {"workload": name, "xla-only ms": med["xla"] * 1e3, "rule ms": med["rule"] * 1e3,
            "speed-up": med["xla"] / med["rule"]}


def pipeline_vs_step(step_row: dict, n_batches: int = 20, size: int = 64, bs: int = 32) -> dict:
    """images/s of the augmented tf.data pipeline (synthetic 500x375 JPEGs) beside the step's."""
    from pipeline_bench import synthetic_jpegs

    from jaxfast.vision import ImageLoader, ImageSource, TransformConfig, find_images, measure_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        found = find_images(synthetic_jpegs(Path(tmp), 320), valid_pct=0.2, verify=False)
        source = ImageSource.from_split(found.train, found.classes, "bench")
        loader = ImageLoader(source, bs, size=size, shuffle=True, drop_last=True, tfms=TransformConfig())
        per_s = measure_pipeline(loader, n_batches)
    return {"pipeline images/s": per_s, "train step images/s": step_row["images/s"],
            "pipeline / step": per_s / step_row["images/s"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25, help="timed steps per contender (median)")
    parser.add_argument("--only", nargs="*", help="workload names (default: all)")
    parser.add_argument("--conv-lowering", choices=MODEL_LOWERINGS, default="auto",
                        help="every jaxfast conv and max-pool on this lowering (default auto: the rule)")
    parser.add_argument("--bf16", action="store_true", help="jaxfast in bfloat16 compute (torch stays fp32)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the tf.data pipeline comparison")
    args = parser.parse_args(argv)
    torch = import_torch()
    rows = []
    for name, spec in workloads(args.conv_lowering).items():
        if args.only and name not in args.only:
            continue
        rows.append(bench(name, spec, args.steps, torch, "bfloat16" if args.bf16 else "float32"))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    lowering = "rule" if args.conv_lowering == "auto" else args.conv_lowering
    print(f"\nvision train steps, load {load_average()}, conv lowering {lowering}")
    print(markdown_table(rows))
    r18 = next((r for r in rows if r["workload"] == "resnet18_64px"), None)
    if r18 is not None and not args.no_pipeline:
        p = pipeline_vs_step(r18)
        print(f"\ntf.data pipeline with augmentation at 64 px, bs 32: {p['pipeline images/s']:.0f} images/s; "
              f"ResNet-18 train step: {p['train step images/s']:.0f} images/s; ratio {p['pipeline / step']:.2f}x")
        rows.append({"workload": "pipeline_vs_resnet18_64px", **p})
    return rows


if __name__ == "__main__":
    main()
