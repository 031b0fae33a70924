"""Lesson 7 (lesson7-superres-gan): a restoration U-Net fine-tuned as a GAN generator.

fastai: crappified pets; `unet_learner(data, resnet34, loss_func=MSELossFlat(), blur=True,
norm_type=NormType.Weight, self_attention=True, y_range=(-3, 3), wd=1e-3)` pretrained with
`fit_one_cycle(2, pct_start=0.8)` (+ 3 unfrozen epochs); the critic `gan_critic()` pretrained
on real vs generated images (`AdaptiveLoss(BCEWithLogits)`, `accuracy_thresh_expand`,
`fit_one_cycle(6, 1e-3)`); then `GANLearner.from_learners(learn_gen, learn_crit,
weights_gen=(1., 50.), switcher=AdaptiveGANSwitcher(critic_thresh=0.65), opt_func=Adam(betas=(0.,
0.99)), wd=1e-3)` with `GANDiscriminativeLR(mult_lr=5.)`, `fit(40, 1e-4)`.

Here, three stages, each resuming exactly from its own checkpoints (one format,
jaxfast.checkpoint): (1) the generator through the Learner (`unet_learner`, MSE or the feature
loss with --vgg-weights; one-cycle, every group: no pretrained encoder offline); (2) the critic
through `GANTrainer` with a critic-only switcher, its fakes made on the fly by the pretrained
generator (jaxfast.gan.steps' 'gan' critic step: BCE real -> 1, fake -> 0, accuracy at 0.5 on
the sigmoid = accuracy_thresh_expand); (3) the GAN: generator loss 1 x adversarial + 50 x the
pretraining loss, AdaptiveSwitcher(critic_thresh=0.65) as data in the checkpoints, Adam betas
(0, 0.99), the critic's lr 5x the generator's. Pairs: `jaxfast.vision.restoration_data`
(train/ trains, val/ is held out; never trained on).

Outputs: the Learner's history.csv/losses.png for stage 1; gan_history.csv (one row per epoch
of stages 2-3: critic loss and accuracy, generator adversarial and content losses),
gan_losses.png, samples/epoch_NNN.png (rows: input, generator, target on fixed held-out
images), compare.png (input | pretrained | GAN | target), TensorBoard, metrics.json with PSNR
and SSIM on the held-out images of the pretrained generator, the GAN's, and bicubic's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig
from jaxfast.gan.data import save_grid
from jaxfast.gan.feature_loss import feature_loss_from_file
from jaxfast.gan.image_metrics import bicubic_baseline, psnr, ssim
from jaxfast.gan.steps import gan_loss, jit_gan_steps
from jaxfast.gan.switcher import AdaptiveSwitcher, initial_switch_state
from jaxfast.gan.training import CriticOnly, GANTrainer, gan_runner, sample_images
from jaxfast.learner import TrainConfig
from jaxfast.losses import binary_cross_entropy
from jaxfast.models.gan import gan_critic
from jaxfast.optim import one_cycle_lr
from jaxfast.show import save_figure
from jaxfast.state import Task, create_train_state
from jaxfast.vision import unet_learner
from jaxfast.vision.restoration_data import restoration_data


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 7: superres GAN (pretrained U-Net generator + gan_critic, adaptive switcher).

    --data-dir: any folder of images (train/ + val/ folders: val/ is held out; else a seeded --valid-pct)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=1e-3)
    arch: str = "resnet18"
    """The U-Net's encoder (the lesson's resnet34 with ImageNet weights: --arch resnet34 --pretrained resnet34)."""
    pretrained: str | None = None
    gen_loss: Literal["mse", "feature"] = "mse"
    """The generator's pretraining loss, and the GAN's content term: MSE (the lesson's) or the feature loss."""
    vgg_weights: str | None = None
    """torchvision vgg16_bn weights for --gen-loss feature (absent: its pixel-L1 fallback)."""
    size: int = 64
    low_size: int | None = None
    batch_size: int = 8
    gen_epochs: int = 4
    gen_lr: float = 1e-3
    critic_epochs: int = 2
    critic_lr: float = 1e-3
    gan_epochs: int = 2
    gan_lr: float = 1e-4
    critic_lr_mult: float = 5.0
    """GANDiscriminativeLR: the critic's lr in the GAN stage is this times gan_lr."""
    weights_gen: tuple[float, float] = (1.0, 50.0)
    """(adversarial, content) weights of the generator's GAN loss."""
    critic_thresh: float = 0.65
    betas: tuple[float, float] = (0.0, 0.99)
    critic_nf: int = 32
    """gan_critic's nf (fastai's 128)."""
    critic_blocks: int = 3
    """gan_critic's n_blocks: the input must be at least 2 ** (n_blocks + 3) pixels (3 -> 64)."""
    norm_type: str | None = "weight"
    self_attention: bool = True
    blur: bool = True
    y_range: tuple[float, float] | None = (-3.0, 3.0)
    valid_pct: float = 0.2
    max_train: int | None = None
    max_valid: int | None = None
    sample_rows: int = 4


# The tiny variant's critic_thresh is 1.0 (its critic's loss stays near log 2 over so few steps,
# where 0.65 would never hand a step to the generator): both models train in its GAN stage.
TINY = Config(train=TrainConfig(wd=1e-3, progress=False), size=32, batch_size=4, gen_epochs=1, critic_epochs=1,
              gan_epochs=2, critic_thresh=1.0, critic_nf=8, critic_blocks=1, max_train=16, max_valid=8, sample_rows=2)


def adam(lr, betas, wd: float) -> optax.GradientTransformation:
    """Adam with fastai's decoupled weight decay (true_wd)."""
    return optax.chain(optax.scale_by_adam(b1=betas[0], b2=betas[1], eps=1e-5), optax.add_decayed_weights(wd),
                       optax.scale_by_learning_rate(lr))


def restore_images(gen_state, loader, inputs01: np.ndarray) -> np.ndarray:
    """The generator's restorations (inference mode) of [0, 1] inputs, back in [0, 1]."""
    bs, out = loader.batch_size, []
    for i in range(0, len(inputs01), bs):
        chunk = loader.normalize(inputs01[i:i + bs])
        n = len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, 0)]) if n < bs else chunk
        out.append(loader.denormalize(sample_images(gen_state, chunk))[:n])
    return np.clip(np.concatenate(out), 0.0, 1.0)


def image_scores(outputs: np.ndarray, targets: np.ndarray, prefix: str) -> dict:
    return {f"{prefix}_psnr": float(np.mean(psnr(outputs, targets))),
            f"{prefix}_ssim": float(np.mean(ssim(outputs, targets)))}


def save_compare(path: Path, pairs: dict, columns: dict, rows: int) -> Path:
    """A PNG: input | each column's restoration (titled with its PSNR) | target, per held-out image."""
    import matplotlib.pyplot as plt

    rows = min(rows, len(pairs["targets"]))
    images = {"input": pairs["inputs"], **columns, "target": pairs["targets"]}
    fig, axes = plt.subplots(rows, len(images), figsize=(2.4 * len(images), 2.5 * rows), squeeze=False)
    for r in range(rows):
        for ax, (name, batch) in zip(axes[r], images.items()):
            ax.imshow(np.clip(batch[r], 0, 1))
            ax.axis("off")
            score = "" if name == "target" else f" {float(psnr(batch[r][None], pairs['targets'][r][None])[0]):.2f} dB"
            ax.set_title(name + score, fontsize=9)
    return save_figure(fig, path)


def main(config: Config, workdir: Path) -> dict:
    if config.run.data_dir is None:
        raise InputError("lesson7_superres_gan needs --data-dir: any folder of images (e.g. ../shared/data/camvid; "
                         "its train/ trains and its val/ is held out)")
    runner = gan_runner(config.train.parallel)  # --parallel pmap is refused before the generator trains
    if config.size < 2 ** (config.critic_blocks + 3):
        raise InputError(f"--size {config.size} is too small for gan_critic with --critic-blocks "
                         f"{config.critic_blocks} (needs {2 ** (config.critic_blocks + 3)} px)")
    data = restoration_data(config.run.data_dir, config.size, config.batch_size, config.train.seed,
                            low_size=config.low_size, valid_pct=config.valid_pct, max_train=config.max_train,
                            max_valid=config.max_valid)
    content = "mse"
    if config.gen_loss == "feature":
        content = feature_loss_from_file(config.vgg_weights)
        print(content.message)
    norm = None if config.norm_type in (None, "none") else config.norm_type
    learn = unet_learner(data, config.arch, config.pretrained or False, loss=content, n_classes=3, blur=config.blur,
                         norm_type=norm, self_attention=config.self_attention, y_range=config.y_range,
                         config=config.train, workdir=workdir, export_meta=lambda d: dict(d.meta))
    print(f"== stage 1, the generator: fit_one_cycle({config.gen_epochs}, {config.gen_lr}, pct_start=0.8), "
          f"{config.gen_loss} loss")
    learn.fit_one_cycle(config.gen_epochs, slice(config.gen_lr), pct_start=0.8)

    pairs = data.valid.pairs()
    scores = {f"bicubic_{k}": float(np.mean(v))
              for k, v in bicubic_baseline(pairs["low"].astype(np.float32) / 255.0, pairs["targets"]).items()}
    pretrained_out = restore_images(learn.state, data.valid, pairs["inputs"])
    scores.update(image_scores(pretrained_out, pairs["targets"], "pretrained"))

    critic_model = gan_critic(3, config.critic_nf, config.critic_blocks, 0.15)
    critic = create_train_state(critic_model, jnp.zeros((config.batch_size, config.size, config.size, 3)),
                                optax.identity(), Task(binary_cross_entropy), config.train.seed + 1)
    trainer = GANTrainer(learn.state, critic, workdir, config.train, history_name="gan_history.csv", runner=runner)
    steps = jit_gan_steps(gan_loss(learn.state.task.loss, config.weights_gen, switch_eval=True))
    shown = {k: v[:config.sample_rows] for k, v in pairs.items()}

    def write_samples(epoch: int, trainer: GANTrainer) -> None:
        restored = restore_images(trainer.gen_state, data.valid, shown["inputs"])
        rows = np.stack([shown["inputs"], restored, shown["targets"]], axis=1).reshape(-1, *restored.shape[1:])
        path = save_grid(rows * 2 - 1, workdir / "samples" / f"epoch_{epoch:03d}.png", n_cols=3)
        if trainer.tensorboard is not None:
            trainer.tensorboard.image_png("samples", path, trainer.history.n_steps)

    wd, n_batches = config.train.wd, len(data.train)
    print(f"== stage 2, the critic: {config.critic_epochs} one-cycle epochs at {config.critic_lr}, real vs generated")
    critic_schedule = one_cycle_lr(config.critic_lr, config.critic_epochs * n_batches)
    trainer.fit("critic", config.critic_epochs, data.train, steps, CriticOnly(), optax.identity(),
                adam(critic_schedule, (0.9, 0.99), wd), {"lr": config.critic_lr, "one_cycle": True, "wd": wd},
                to_batch=lambda b: b, switch_state=initial_switch_state())

    critic_lr = config.gan_lr * config.critic_lr_mult
    print(f"== stage 3, the GAN: fit({config.gan_epochs}, {config.gan_lr}), critic lr {critic_lr:g}, "
          f"weights_gen {config.weights_gen}, critic_thresh {config.critic_thresh}")
    trainer.fit("gan", config.gan_epochs, data.train, steps, AdaptiveSwitcher(critic_thresh=config.critic_thresh),
                adam(config.gan_lr, config.betas, wd), adam(critic_lr, config.betas, wd),
                {"lr": config.gan_lr, "critic_lr": critic_lr, "betas": config.betas, "wd": wd,
                 "weights_gen": config.weights_gen}, to_batch=lambda b: b, on_epoch=write_samples,
                switch_state=initial_switch_state())

    gan_out = restore_images(trainer.gen_state, data.valid, pairs["inputs"])
    scores.update(image_scores(gan_out, pairs["targets"], "gan"))
    history = trainer.history
    gan_rows = history.epochs[config.critic_epochs:]
    critic_accuracy = history.epochs[config.critic_epochs - 1]["critic_accuracy"] if config.critic_epochs else math.nan
    final = {**scores, "critic_pretrain_accuracy": critic_accuracy, "held_out_images": data.valid.num_rows,
             "gan_critic_steps": sum(r["n_critic_steps"] for r in gan_rows),
             "gan_generator_steps": sum(r["n_generator_steps"] for r in gan_rows)}
    path = save_compare(workdir / "compare.png", pairs, {"pretrained": pretrained_out, "GAN": gan_out},
                        config.sample_rows)
    print(f"held out ({data.valid.num_rows} images, {config.size} px): pretrained PSNR {final['pretrained_psnr']:.2f} "
          f"dB SSIM {final['pretrained_ssim']:.4f}; after the GAN {final['gan_psnr']:.2f} dB SSIM "
          f"{final['gan_ssim']:.4f}; bicubic {final['bicubic_psnr']:.2f} dB SSIM {final['bicubic_ssim']:.4f}")
    print(f"results: {path}, {workdir / 'samples'}, {workdir / 'gan_losses.png'}")
    return final


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
