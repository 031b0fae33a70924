"""The lessons' U-Net train steps at their own shapes, jaxfast vs PyTorch eager.

- `unet_camvid_half`: lesson 3's CamVid step at fastai's half size as lesson3_camvid runs it
  (`--small-size 192 240`: SegNet's 360x480 halved to 180x240, padded to 192 rows with
  void, width 240 kept: the U-Net resizes its unequal maps), ResNet-34 encoder, 12 codes (the
  SegNet version's 11 classes + void 11, ignored by the loss: each image's mean cross entropy
  over its non-void pixels, `jaxfast.losses.cross_entropy_ignore`), bs 8 (the lesson's and
  the experiment's), fastai's layer groups, AdamW wd 1e-2.
- `unet_superres_feature_loss`: lesson7-superres's generator step: DynamicUnet on ResNet-34
  with blur and y_range (-3, 3), 3 output channels, trained on lesson 7's feature loss
  (pixel L1 + VGG16-bn features 22/32/42 weighted [5, 15, 2] + gram terms x w^2 x 5e3;
  `jaxfast.gan.feature_loss.FeatureLoss`), wd 1e-3 as the lesson; 128 px (the lesson's first
  size) at bs 8 (the lesson's 32 scaled to this CPU). The VGG is random (the same weights on
  both sides: jaxfast's is converted from the torch one), which costs the same as ImageNet's.
  jaxfast's U-Net has no self-attention or weight norm yet (lesson 7 uses both): both
  sides run the default U-Net (norm_type None, no self-attention).
PyTorch: benchmarks/torch_reference.py's DynamicUnet (checked equal to jaxfast's in
tests/test_unet.py) and benchmarks/torch_feature_loss.py. Optimizer both sides: AdamW
lr 1e-3, no decay on BatchNorm and biases, betas (0.9, 0.99), eps 1e-5.
Run: python benchmarks/unet_lessons_bench.py [--steps 5] [--only camvid superres] [--superres-bs 8]
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import import_torch, jaxfast_step, load_average, markdown_table, medians_and_best, row, timed_first

CAMVID_HALF, CAMVID_CODES, CAMVID_VOID, CAMVID_BS = (192, 240), 12, 11, 8
SUPERRES_PX, SUPERRES_BS, Y_RANGE = 128, 8, (-3.0, 3.0)


def torch_cross_entropy_ignore(torch, ignore_index: int):
    """jaxfast's cross_entropy_ignore in torch: per image, the mean over its non-void pixels; then the batch mean."""
    def loss(logits, targets):
        per_pixel = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        keep = (targets != ignore_index).float()
        return ((per_pixel * keep).sum((1, 2)) / keep.sum((1, 2)).clamp(min=1.0)).mean()
    return loss


def nchw(torch, images: np.ndarray):
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


def bench_camvid(n_steps: int, torch) -> dict:
    from jaxfast.losses import cross_entropy_ignore
    from jaxfast.models.unet import dynamic_unet, unet_layer_groups

    rng = np.random.default_rng(0)
    images = rng.standard_normal((CAMVID_BS, *CAMVID_HALF, 3)).astype(np.float32)
    targets = rng.integers(0, CAMVID_CODES, (CAMVID_BS, *CAMVID_HALF)).astype(np.int32)
    targets[:, :6], targets[:, -6:] = CAMVID_VOID, CAMVID_VOID  # the padded rows (eval's 6 + 6 at half size)
    model = dynamic_unet("resnet34", CAMVID_CODES)
    groups = unet_layer_groups(model)
    loss = functools.partial(cross_entropy_ignore, ignore_index=CAMVID_VOID)
    jstep, compile_s, n_flops = jaxfast_step(model, images, targets, loss, group_of_path=groups.group_of_path,
                                             n_groups=groups.n_groups)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_reference as tr

        torch.manual_seed(0)
        tstep = tr.train_step(tr.unet("resnet34", CAMVID_CODES), torch_cross_entropy_ignore(torch, CAMVID_VOID),
                              (nchw(torch, images),), torch.from_numpy(targets.astype(np.int64)), lr=1e-3)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps, warmup=1)
    h, w = CAMVID_HALF
    return row(f"unet_camvid_half_{h}x{w}_resnet34_bs{CAMVID_BS}", med, best, compile_s, n_flops, tfirst)


def jaxfast_vgg_variables(torch_features) -> dict:
    """jaxfast's VGG16-bn variables (hooks 22/32/42) with the torch features' weights."""
    import jax
    import jax.numpy as jnp

    from jaxfast.models.convert import convert_state_dict
    from jaxfast.models.vgg import vgg16_bn

    template = jax.eval_shape(vgg16_bn().init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    state = {f"features.{k}": v.numpy() for k, v in torch_features.state_dict().items()}
    variables, _ = convert_state_dict(state, template, source="torch_feature_loss.vgg16_bn_features", strict=True)
    return variables


def bench_superres(n_steps: int, torch, bs: int = SUPERRES_BS, px: int = SUPERRES_PX) -> dict:
    from jaxfast.gan.feature_loss import FeatureLoss
    from jaxfast.models.unet import dynamic_unet, unet_layer_groups

    rng = np.random.default_rng(0)
    crappy = rng.standard_normal((bs, px, px, 3)).astype(np.float32)
    targets = rng.standard_normal((bs, px, px, 3)).astype(np.float32)
    if torch is None:  # the VGG's weights come from the torch twin; without torch, jaxfast's own init
        import jax

        from jaxfast.models.vgg import vgg16_bn

        variables = vgg16_bn().init(jax.random.PRNGKey(0), crappy[:1])
    else:
        import torch_feature_loss as tfl

        torch.manual_seed(0)
        features = tfl.vgg16_bn_features()
        variables = jaxfast_vgg_variables(features)
    model = dynamic_unet("resnet34", 3, blur=True, y_range=Y_RANGE)
    groups = unet_layer_groups(model)
    jstep, compile_s, n_flops = jaxfast_step(model, crappy, targets, FeatureLoss(variables), wd=1e-3,
                                             group_of_path=groups.group_of_path, n_groups=groups.n_groups)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        import torch_reference as tr

        unet = tfl.SigmoidRange(tr.unet("resnet34", 3, blur=True), *Y_RANGE)
        tstep = tr.train_step(unet, tfl.FeatureLoss(features), (nchw(torch, crappy),), nchw(torch, targets),
                              lr=1e-3, wd=1e-3)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, n_steps, warmup=1)
    return row(f"unet_superres_feature_loss_{px}px_bs{bs}", med, best, compile_s, n_flops, tfirst)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender (median)")
    parser.add_argument("--only", nargs="*", choices=["camvid", "superres"], help="default: both")
    parser.add_argument("--superres-bs", type=int, default=SUPERRES_BS)
    parser.add_argument("--superres-px", type=int, default=SUPERRES_PX)
    args = parser.parse_args(argv)
    torch = import_torch()
    rows = []
    if not args.only or "camvid" in args.only:
        rows.append(bench_camvid(args.steps, torch))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    if not args.only or "superres" in args.only:
        rows.append(bench_superres(args.steps, torch, args.superres_bs, args.superres_px))
        print(markdown_table(rows[-1:]).splitlines()[-1], f"(load {load_average()})", flush=True)
    print(f"\nlesson U-Net train steps, load {load_average()}")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
