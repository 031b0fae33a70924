"""Lesson 7 (wgan): a DCGAN-style generator and critic trained as a Wasserstein GAN.

fastai: `basic_generator(64, 3, n_extra_layers=1)`, `basic_critic(64, 3, n_extra_layers=1,
...)`, `GANLearner.wgan(data, generator, critic, switch_eval=False, ...)` (weight clipping at
0.01, FixedGANSwitcher(n_crit=5, n_gen=1)), `learn.fit(30, 2e-4)` on LSUN bedrooms at 64 px,
normalised to [-1, 1]. Here: the same models and objective as pure steps (jaxfast.gan.steps)
run by `GANTrainer` (checkpoints of both states + the switch state, exact resume, SIGTERM,
NaN stop); RMSprop 2e-4 (the WGAN paper's optimizer; `--opt adam` gives the notebook's Adam
with betas (0, 0.99)); `--loss wgan_gp` swaps clipping for the gradient penalty (Gulrajani et
al.: `--opt adam --lr 1e-4 --betas 0 0.9`).

Outputs: samples/epoch_NNN.png (the generator on the same fixed noise every epoch),
gan_losses.png (per-step losses and the critic's Wasserstein estimate E[D(real)] - E[D(fake)]),
history.csv (one row per epoch), TensorBoard events, metrics.json.

--data-dir: any folder of images, searched recursively (folders named like `--exclude-dirs`,
label maps such as CamVid's *annot/ and fastai's labels/, are skipped): ../shared/data/camvid,
camvid_tiny, mnist_tiny. Without it, tfds `lsun/<category>` (the first --lsun-images images),
which fails within seconds offline naming --data-dir.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxfast import experiment
from jaxfast.experiment import Run, RunConfig
from jaxfast.gan.data import DEFAULT_EXCLUDE, folder_source, gan_loader, lsun_source, real_images_batch, save_grid
from jaxfast.gan.steps import jit_gan_steps, wgan_gp_loss, wgan_loss
from jaxfast.gan.switcher import FixedSwitcher
from jaxfast.gan.training import GANTrainer, sample_images
from jaxfast.learner import TrainConfig
from jaxfast.losses import binary_cross_entropy, mse
from jaxfast.models.gan import basic_critic, basic_generator
from jaxfast.state import Task, create_train_state


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 7: WGAN (weight clipping, or --loss wgan_gp) with fastai's basic generator and critic.

    --data-dir: any image folder (recursive); without it, tfds lsun/bedroom (needs the network)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=0.0)
    """The loop's options (seed, checkpoint_every_steps, progress, tensorboard; wd: decoupled weight decay)."""
    size: int = 64
    noise_size: int = 100
    n_features: int = 64
    n_extra_layers: int = 1
    loss: Literal["wgan", "wgan_gp"] = "wgan"
    clip: float = 0.01
    """wgan: every critic weight clipped to [-clip, clip]."""
    gp_lambda: float = 10.0
    """wgan_gp: the gradient penalty's weight."""
    opt: Literal["rmsprop", "adam"] = "rmsprop"
    lr: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    """adam's betas (the notebook's (0, 0.99)); rmsprop uses torch's alpha 0.99, eps 1e-8."""
    n_crit: int = 5
    """Critic steps per generator step (FixedGANSwitcher(n_crit=5))."""
    batch_size: int = 64
    epochs: int = 30
    max_images: int | None = None
    """Use only the first N images found (the tiny variant)."""
    exclude_dirs: tuple[str, ...] = DEFAULT_EXCLUDE
    lsun_category: str = "bedroom"
    lsun_images: int = 100_000
    n_samples: int = 36
    """Images in each epoch's sample grid (from the same fixed noise)."""
    conv_lowering: Literal["auto", "xla", "im2col"] = "auto"


TINY = Config(train=TrainConfig(wd=0.0, progress=False), size=16, noise_size=16, n_features=16, n_extra_layers=1,
              lr=5e-4, batch_size=16, epochs=6, max_images=96, n_samples=16)


def load_source(config: Config):
    if config.run.data_dir is not None:
        return folder_source(config.run.data_dir, config.exclude_dirs, config.max_images)
    return lsun_source(config.lsun_category, config.max_images or config.lsun_images)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """RMSprop as torch's (alpha 0.99, eps outside the root) or Adam(betas), decoupled wd, lr."""
    if config.opt == "rmsprop":
        scale = optax.scale_by_rms(decay=0.99, eps=1e-8, eps_in_sqrt=False)
    else:
        scale = optax.scale_by_adam(b1=config.betas[0], b2=config.betas[1], eps=1e-8)
    return optax.chain(scale, optax.add_decayed_weights(config.train.wd), optax.scale(-config.lr))


def build_states(config: Config):
    gen_model = basic_generator(config.size, 3, config.noise_size, config.n_features, config.n_extra_layers,
                                config.conv_lowering)
    critic_model = basic_critic(config.size, 3, config.n_features, config.n_extra_layers, config.conv_lowering)
    bs, seed = config.batch_size, config.train.seed
    gen = create_train_state(gen_model, jnp.zeros((bs, 1, 1, config.noise_size)), optax.identity(), Task(mse), seed)
    critic = create_train_state(critic_model, jnp.zeros((bs, config.size, config.size, 3)), optax.identity(),
                                Task(binary_cross_entropy), seed + 1)
    return gen, critic


def main(config: Config, workdir: Path) -> dict:
    source = load_source(config)
    loader = gan_loader(source, config.size, config.batch_size, config.train.seed)
    print(f"{len(source)} images from {source.name} at {config.size} px, {len(loader)} steps per epoch")
    gen, critic = build_states(config)
    trainer = GANTrainer(gen, critic, workdir, config.train)
    if config.loss == "wgan":
        loss = wgan_loss(config.clip, switch_eval=False, noise_size=config.noise_size)
    else:
        loss = wgan_gp_loss(config.gp_lambda, switch_eval=False, noise_size=config.noise_size)
    fixed_noise = jax.random.normal(jax.random.key(config.train.seed + 7), (config.n_samples, 1, 1, config.noise_size))

    def write_samples(epoch: int, trainer: GANTrainer) -> None:
        path = save_grid(sample_images(trainer.gen_state, fixed_noise), workdir / "samples" / f"epoch_{epoch:03d}.png")
        if trainer.tensorboard is not None:
            trainer.tensorboard.image_png("samples", path, trainer.history.n_steps)

    tx = make_optimizer(config)
    settings = {"opt": config.opt, "lr": config.lr, "betas": config.betas, "wd": config.train.wd,
                "clip": config.clip, "gp_lambda": config.gp_lambda}
    trainer.fit(config.loss, config.epochs, loader, jit_gan_steps(loss), FixedSwitcher(config.n_crit, 1), tx, tx,
                settings, real_images_batch, on_epoch=write_samples)

    history = trainer.history
    estimates = history.epoch_values("critic_wasserstein")
    final = {"epochs": history.n_epochs, "steps": history.n_steps,
             "critic_steps": int(jax.device_get(trainer.critic_state.step)),
             "generator_steps": int(jax.device_get(trainer.gen_state.step)),
             "wasserstein_first": estimates[0], "wasserstein_peak": max(estimates),
             "wasserstein_last": estimates[-1],
             "generator_loss_last": history.epochs[-1].get("generator_loss", float("nan"))}
    print(f"samples: {workdir / 'samples'}, curves: {workdir / 'gan_losses.png'}")
    return final


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
