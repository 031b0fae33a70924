"""Lesson 7's WGAN, jaxfast vs PyTorch eager: one critic step plus one generator step.

The lesson's models at 64 px: fastai's basic_generator(64, 3, n_extra_layers=1) (noise 100) and
basic_critic(64, 3, n_extra_layers=1), Adam betas (0, 0.99), lr 2e-4, no weight decay, the
critic's params clipped to 0.01, switch_eval=False (the model not trained runs in training mode),
bs 64. jaxfast: `jaxfast.gan.steps.jit_gan_steps(wgan_loss())`, noise drawn inside the step;
PyTorch: the same step written as fastai's GANTrainer runs it (clamp, critic on real and on
detached fakes, backward, step; then the generator through a frozen critic). A "step" in the table
is one critic step plus one generator step (FixedSwitcher(5, 1) runs 5 + 1).
Run: python benchmarks/wgan_bench.py [--steps 20] [--bs 64] [--conv-lowering auto]
"""

from __future__ import annotations

import argparse

import numpy as np

import common  # noqa: F401 - puts the repository on sys.path
from common import flops, import_torch, load_average, markdown_table, medians_and_best, row, timed_first

NOISE, SIZE, LR, CLIP = 100, 64, 2e-4, 0.01


def jaxfast_wgan_step(real: np.ndarray, conv_lowering: str = "auto"):
    """(zero-argument synchronous critic + generator step, compile seconds, flops of both)."""
    import time

    import jax
    import jax.numpy as jnp
    import optax

    from jaxfast.gan.steps import jit_gan_steps, wgan_loss
    from jaxfast.losses import binary_cross_entropy, mse
    from jaxfast.models.gan import basic_critic, basic_generator
    from jaxfast.state import Task, create_train_state

    bs = real.shape[0]
    tx = optax.adam(LR, b1=0.0, b2=0.99)
    gen = create_train_state(basic_generator(SIZE, 3, NOISE, n_extra_layers=1, conv_lowering=conv_lowering),
                             jnp.zeros((bs, 1, 1, NOISE)), tx, Task(mse), seed=0)
    critic = create_train_state(basic_critic(SIZE, 3, n_extra_layers=1, conv_lowering=conv_lowering),
                                jnp.asarray(real), tx, Task(binary_cross_entropy), seed=1)
    steps = jit_gan_steps(wgan_loss(clip=CLIP, noise_size=NOISE))
    batch = {"targets": jax.device_put(real)}
    key = jax.random.key(0)
    t0 = time.perf_counter()
    lowered_c = steps.critic.lower(gen, critic, batch, key)
    lowered_g = steps.generator.lower(gen, critic, batch, key)
    critic_fn, gen_fn = lowered_c.compile(), lowered_g.compile()
    compile_s = time.perf_counter() - t0
    n_flops = (flops(lowered_c) or 0) + (flops(lowered_g) or 0) or None
    box = {"gen": gen, "critic": critic, "i": 0}

    def step():
        i = box["i"] = box["i"] + 1
        box["critic"], m1 = critic_fn(box["gen"], box["critic"], batch, jax.random.fold_in(key, 2 * i))
        box["gen"], m2 = gen_fn(box["gen"], box["critic"], batch, jax.random.fold_in(key, 2 * i + 1))
        jax.block_until_ready((m1, m2))

    return step, compile_s, n_flops


def torch_models(torch):
    """fastai v1's basic_generator / basic_critic (64 px, one extra layer), as fastai builds them."""
    from torch import nn

    def conv_layer(ni, nf, ks, stride, padding, bn=True, leaky=None, transpose=False):
        conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(ni, nf, ks, stride, padding, bias=not bn)
        nn.init.kaiming_normal_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        layers = [conv, nn.ReLU() if leaky is None else nn.LeakyReLU(leaky)]
        return layers + ([nn.BatchNorm2d(nf)] if bn else [])

    gen = [*conv_layer(NOISE, 512, 4, 1, 0, transpose=True)]
    for ni in (512, 256, 128):
        gen += conv_layer(ni, ni // 2, 4, 2, 1, transpose=True)
    gen += conv_layer(64, 64, 3, 1, 1, transpose=True) + [nn.ConvTranspose2d(64, 3, 4, 2, 1, bias=False), nn.Tanh()]
    critic = conv_layer(3, 64, 4, 2, 1, bn=False, leaky=0.2) + conv_layer(64, 64, 3, 1, 1, leaky=0.2)
    for ni in (64, 128, 256):
        critic += conv_layer(ni, ni * 2, 4, 2, 1, leaky=0.2)
    final = nn.Conv2d(512, 1, 4, padding=0, bias=False)
    nn.init.kaiming_normal_(final.weight)
    critic += [final, nn.Flatten()]
    return nn.Sequential(*gen), nn.Sequential(*critic)


def torch_wgan_step(torch, real: np.ndarray):
    """fastai's WGAN critic step then generator step in PyTorch eager (both models in train mode)."""
    torch.manual_seed(0)
    gen, critic = torch_models(torch)
    opt_g = torch.optim.Adam(gen.parameters(), LR, betas=(0.0, 0.99))
    opt_c = torch.optim.Adam(critic.parameters(), LR, betas=(0.0, 0.99))
    real_t = torch.from_numpy(real.transpose(0, 3, 1, 2).copy())
    bs = real.shape[0]

    def set_trainable(model, flag):
        for p in model.parameters():
            p.requires_grad_(flag)

    def step():
        # critic (fastai: clamp at the batch's start, real through the critic, fakes detached)
        set_trainable(gen, False), set_trainable(critic, True)
        with torch.no_grad():
            for p in critic.parameters():
                p.clamp_(-CLIP, CLIP)
        real_pred = critic(real_t)
        with torch.no_grad():
            fake = gen(torch.randn(bs, NOISE, 1, 1))
        loss = critic(fake).mean() - real_pred.mean()
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()
        # generator through the frozen (clamped) critic
        set_trainable(gen, True), set_trainable(critic, False)
        with torch.no_grad():
            for p in critic.parameters():
                p.clamp_(-CLIP, CLIP)
        loss = -critic(gen(torch.randn(bs, NOISE, 1, 1))).mean()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()

    return step


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--conv-lowering", default="auto", choices=("auto", "xla", "im2col"),
                        help="jaxfast's conv lowering for both models ('auto': the measured rule)")
    args = parser.parse_args(argv)
    torch = import_torch()
    real = np.random.default_rng(0).uniform(-1, 1, (args.bs, SIZE, SIZE, 3)).astype(np.float32)
    jstep, compile_s, n_flops = jaxfast_wgan_step(real, args.conv_lowering)
    fns, tfirst = {"jax": jstep}, None
    if torch is not None:
        tstep = torch_wgan_step(torch, real)
        tfirst = timed_first(tstep)
        fns["torch"] = tstep
    med, best = medians_and_best(fns, args.steps, warmup=2)
    suffix = "" if args.conv_lowering == "auto" else f"_{args.conv_lowering}"
    rows = [row(f"wgan_{SIZE}px_bs{args.bs}_critic+generator{suffix}", med, best, compile_s, n_flops, tfirst)]
    print(f"WGAN critic + generator step, load {load_average()}")
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
