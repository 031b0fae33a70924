"""XLA's convolution vs the im2col and Winograd lowerings on this machine, per layer shape.

For every conv shape of ResNet-18/34 (64 px and 32 px, bs 32), lesson 1's resnet18 at
28 px (bs 64), ResNets at 128 px, lesson 7's MNIST ResNet (bs 128) and the decoder of a
DynamicUnet (ResNet-34, 128 px, bs 8), prints the fwd+bwd
median time of each lowering that applies (measured in alternation; Winograd only for
3x3 stride-1 convs), their GFLOP/s, which one was faster, and which one
`jaxfast.models.conv.choose_lowering` picks; the rule in conv.py comes from this table.
A first layer's conv is timed without the input gradient, as in a train step.
Run: python benchmarks/conv_bench.py [--repeats 9] [--set resnet mnist]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import common  # noqa: F401 - puts the repository on sys.path
from common import interleaved_medians, load_average
from jaxfast.models.conv import choose_lowering, conv2d, max_pool, winograd_applies

# (batch, spatial, channels_in, channels_out, kernel, stride, input gradient needed)
RESNET = [
    (32, 64, 3, 64, 7, 2, False), (32, 32, 3, 64, 7, 2, False),
    (32, 16, 64, 64, 3, 1, True), (32, 8, 64, 64, 3, 1, True),
    (32, 16, 64, 128, 3, 2, True), (32, 8, 64, 128, 3, 2, True),
    (32, 16, 64, 128, 1, 2, True), (32, 8, 64, 128, 1, 2, True),
    (32, 8, 128, 128, 3, 1, True), (32, 4, 128, 128, 3, 1, True),
    (32, 8, 128, 256, 3, 2, True), (32, 4, 128, 256, 3, 2, True),
    (32, 4, 256, 256, 3, 1, True), (32, 2, 256, 256, 3, 1, True),
    (32, 4, 256, 512, 3, 2, True), (32, 2, 256, 512, 3, 2, True),
    (32, 2, 512, 512, 3, 1, True), (32, 1, 512, 512, 3, 1, True),
]
MNIST = [
    (128, 28, 1, 8, 3, 2, False), (128, 14, 8, 8, 3, 1, True), (128, 14, 8, 16, 3, 2, True),
    (128, 7, 16, 16, 3, 1, True), (128, 7, 16, 32, 3, 2, True), (128, 4, 32, 32, 3, 1, True),
    (128, 4, 32, 16, 3, 2, True), (128, 2, 16, 16, 3, 1, True), (128, 2, 16, 10, 3, 2, True),
]
LESSON1 = [  # resnet18 on 28 px MNIST_SAMPLE, bs 64 (stage inputs 7, 4, 2, 1 px)
    (64, 7, 64, 64, 3, 1, True), (64, 4, 128, 128, 3, 1, True), (64, 2, 256, 256, 3, 1, True),
]
LARGE = [  # stages of ResNets at 128 and 224 px and of a U-Net's decoder, bs 32 / 16 / 8
    (32, 32, 64, 64, 3, 1, True), (32, 16, 128, 128, 3, 1, True), (16, 32, 64, 64, 3, 1, True),
    (16, 64, 32, 32, 3, 1, True), (32, 14, 64, 64, 3, 1, True), (32, 12, 64, 64, 3, 1, True),
    (32, 56, 64, 64, 3, 1, True), (16, 64, 64, 64, 3, 1, True), (8, 128, 64, 64, 3, 1, True),
]
SMALL_BATCH = [  # small maps in small batches (a U-Net's middle, inference on a few images)
    (4, 4, 512, 512, 3, 1, True), (16, 4, 256, 256, 3, 1, True), (8, 4, 256, 256, 3, 1, True),
    (2, 8, 256, 256, 3, 1, True), (8, 8, 256, 512, 3, 2, True), (8, 4, 64, 64, 3, 1, True),
    (32, 4, 256, 256, 3, 1, True),
]
UNET = [  # the decoder of fastai's DynamicUnet on ResNet-34 at 128 px, bs 8 (its 3x3 convs, widest first)
    (8, 128, 99, 99, 3, 1, True), (8, 64, 192, 96, 3, 1, True), (8, 64, 96, 96, 3, 1, True),
    (8, 32, 256, 256, 3, 1, True), (8, 16, 384, 384, 3, 1, True), (8, 8, 512, 512, 3, 1, True),
    (8, 4, 512, 1024, 3, 1, True), (8, 4, 1024, 512, 3, 1, True),
]
SETS = {"resnet": RESNET, "mnist": MNIST, "lesson1": LESSON1, "large": LARGE, "unet": UNET, "small_batch": SMALL_BATCH}


def conv_fwd_bwd(lowering: str, k: int, stride: int, need_dx: bool):
    pad = ((k // 2, k // 2), (k // 2, k // 2))

    def loss(x, kernel):
        return jnp.sum(conv2d(x, kernel, (stride, stride), pad, lowering) ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1) if need_dx else 1))


def synced(fn, *args):
    return lambda: jax.block_until_ready(fn(*args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--set", nargs="+", choices=sorted(SETS), default=sorted(SETS))
    args = parser.parse_args()
    print(f"backend {jax.default_backend()}, fwd+bwd, median of {args.repeats} in alternation, load {load_average()}")
    print("| batch | HxW | cin | cout | k | s | dx | xla ms | im2col ms | winograd ms | xla GF/s | i2c GF/s "
          "| wino GF/s | faster | rule |")
    print("|" + " --- |" * 15)
    for shape in (s for name in args.set for s in SETS[name]):
        bs, hw, cin, cout, k, s, need_dx = shape
        x = jax.random.normal(jax.random.key(0), (bs, hw, hw, cin))
        kernel = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.01
        out_hw = -(-hw // s)
        flops = (3 if need_dx else 2) * 2 * bs * out_hw * out_hw * k * k * cin * cout  # nominal, padding included
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        lowerings = ("xla", "im2col", "winograd") if winograd_applies(kernel.shape, (s, s), pad) else ("xla", "im2col")
        med = interleaved_medians({lw: synced(conv_fwd_bwd(lw, k, s, need_dx), x, kernel) for lw in lowerings},
                                  args.repeats, warmup=1)
        rule = choose_lowering(x.shape, kernel.shape, (s, s), pad)
        faster = min(med, key=med.get)
        ms = {lw: f"{med[lw] * 1e3:.1f}" if lw in med else "-" for lw in ("xla", "im2col", "winograd")}
        gfs = {lw: f"{flops / med[lw] / 1e9:.1f}" if lw in med else "-" for lw in ("xla", "im2col", "winograd")}
        print(f"| {bs} | {hw}x{hw} | {cin} | {cout} | {k} | {s} | {'y' if need_dx else 'n'} | {ms['xla']} | "
              f"{ms['im2col']} | {ms['winograd']} | {gfs['xla']} | {gfs['im2col']} | {gfs['winograd']} | "
              f"{faster} | {rule}{'' if rule == faster else ' (!)'} |", flush=True)
    x = jax.random.normal(jax.random.key(0), (32, 32, 32, 64))
    pool = {lw: synced(jax.jit(jax.grad(lambda x, lw=lw: jnp.sum(max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), lw) ** 2))), x)
            for lw in ("xla", "im2col")}
    med = interleaved_medians(pool, args.repeats, warmup=1)
    print(f"\nmax-pool 3x3/2 on 32x32x64, bs 32, fwd+bwd: xla {med['xla'] * 1e3:.1f} ms, "
          f"shifted-slice max {med['im2col'] * 1e3:.1f} ms (load {load_average()})")


if __name__ == "__main__":
    main()
