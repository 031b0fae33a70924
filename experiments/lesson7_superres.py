"""Lesson 7 (lesson7-superres): image restoration with a U-Net and the feature loss.

fastai: crappified pets (96 px, random JPEG quality drawn as text) against the originals;
`unet_learner(data, resnet34, wd=1e-3, loss_func=feat_loss, blur=True,
norm_type=NormType.Weight)` (+ self_attention and y_range=(-3, 3) in the GAN notebook's
generator), `fit_one_cycle(10, slice(1e-2), pct_start=0.9)` frozen, unfreeze,
`fit_one_cycle(10, slice(1e-5, 1e-3), pct_start=0.9)`.

Here: (crappified, clean) pairs made on the fly from any image folder
(`jaxfast.vision.restoration_data`: CamVid's train/ to train, its val/ held out, never
trained on), the same U-Net options, the same two phases. No pretrained encoder (offline):
the frozen phase then trains every group, as lesson3_camvid does, and the second phase's
rates default to (lr / 10, lr) instead of fastai's (1e-5, 1e-3). Without `--vgg-weights`
(torchvision's vgg16_bn .pth/.safetensors) the loss is the pixel L1 alone, and the run says so.

Scores on the held-out images: PSNR and SSIM of the U-Net's output (clipped to [0, 1], as a
saved image) against the clean target, beside the same scores of the bicubic re-upscale of
the crappified small JPEG (`bicubic_*`) and of the bilinear input the U-Net sees (`input_*`).
The default is sized for the CPU budget (20 minutes on 2 cores): a ResNet-18 encoder at
96 px (inputs crappified at 72 px). Measured on CamVid (train/ 367 images, val/ 101 held out):
27.82 dB / SSIM 0.832 against bicubic's 25.86 dB / 0.816 (+1.95 dB), 9:27 wall on 2 idle cores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.gan.feature_loss import feature_loss_from_file
from jaxfast.gan.image_metrics import bicubic_baseline, psnr, psnr_metric, ssim, ssim_metric
from jaxfast.learner import TrainConfig
from jaxfast.show import save_figure
from jaxfast.vision import unet_learner
from jaxfast.vision.restoration_data import restoration_data


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 7: restoration (super-resolution) with a U-Net and the feature loss.

    --data-dir: any folder of images (train/ + val/ folders: val/ is held out; else a seeded --valid-pct)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=1e-3)
    arch: str = "resnet18"
    """The U-Net's encoder: resnet18, resnet34 (the lesson's) or resnet50."""
    pretrained: str | None = None
    """Encoder weights: a name (resnet34, ...) or a .pth/.safetensors file; absent: from scratch."""
    vgg_weights: str | None = None
    """torchvision vgg16_bn weights (.pth/.safetensors) for the feature loss; absent: pixel L1 alone."""
    size: int = 96
    """Target size in pixels (square crops)."""
    low_size: int | None = None
    """Size the inputs are crappified at; default 3/4 of --size (the lesson's 96 -> 128)."""
    batch_size: int = 8
    epochs1: int = 5
    """Phase 1: fit_one_cycle(epochs1, slice(lr1), pct_start=0.9), frozen when pretrained (fastai: 10, 1e-2)."""
    lr1: float = 3e-3
    epochs2: int = 2
    """Phase 2: unfreeze, fit_one_cycle(epochs2, slice(lr2_range), pct_start=0.9) (2: the 20-minute CPU budget; fastai: 10)."""
    lr2_range: tuple[float, float] | None = None
    """Phase 2's (first group, last group) rates; default fastai's (1e-5, 1e-3) when pretrained, else (1e-4, 1e-3)."""
    pct_start: float = 0.9
    norm_type: str | None = "weight"
    """The decoder's norm: weight (fastai's NormType.Weight), batch, spectral or none."""
    self_attention: bool = True
    blur: bool = True
    y_range: tuple[float, float] | None = (-3.0, 3.0)
    valid_pct: float = 0.2
    """Held-out share when the folder has no train/ + val/ split."""
    max_train: int | None = None
    """Train on the first N training images only (the tiny variant)."""
    max_valid: int | None = None
    show_rows: int = 3


TINY = Config(train=TrainConfig(wd=1e-3, progress=False), size=64, batch_size=4, epochs1=1, epochs2=1, lr1=3e-3,
              max_train=16, max_valid=8, self_attention=True)


def score_pairs(pairs: dict, outputs: np.ndarray | None = None) -> dict:
    """Mean PSNR/SSIM of the bicubic re-upscale and the bilinear input (and of `outputs`, [0, 1])."""
    targets = pairs["targets"]
    scores = {f"bicubic_{k}": float(np.mean(v)) for k, v in
              bicubic_baseline(pairs["low"].astype(np.float32) / 255.0, targets).items()}
    scores["input_psnr"] = float(np.mean(psnr(pairs["inputs"], targets)))
    scores["input_ssim"] = float(np.mean(ssim(pairs["inputs"], targets)))
    if outputs is not None:
        scores["output_psnr"] = float(np.mean(psnr(np.clip(outputs, 0, 1), targets)))
    return scores


def show_restorations(path: Path, pairs: dict, outputs: np.ndarray, rows: int) -> Path:
    """show_results.png: input | prediction | target per row, with each image's PSNR."""
    import matplotlib.pyplot as plt

    rows = min(rows, len(outputs))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.6 * rows), squeeze=False)
    for r in range(rows):
        target = pairs["targets"][r]
        for ax, image, title in zip(axes[r], (pairs["inputs"][r], np.clip(outputs[r], 0, 1), target),
                                    ("input", "prediction", "target")):
            ax.imshow(image)
            ax.axis("off")
            if title != "target":
                title += f" {float(psnr(image[None], target[None])[0]):.2f} dB"
            ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def main(config: Config, workdir: Path) -> dict:
    if config.run.data_dir is None:
        raise InputError("lesson7_superres needs --data-dir: any folder of images (e.g. ../shared/data/camvid; "
                         "its train/ trains and its val/ is held out)")
    data = restoration_data(config.run.data_dir, config.size, config.batch_size, config.train.seed,
                            low_size=config.low_size, valid_pct=config.valid_pct, max_train=config.max_train,
                            max_valid=config.max_valid)
    loss = feature_loss_from_file(config.vgg_weights)
    print(loss.message)
    stats = data.train.stats
    metrics = [psnr_metric(stats=stats, clip=True), ssim_metric(stats=stats, clip=True)]
    pretrained = config.pretrained or False
    norm = None if config.norm_type in (None, "none") else config.norm_type
    learn = unet_learner(data, config.arch, pretrained, metrics=metrics, loss=loss, n_classes=3, blur=config.blur,
                         norm_type=norm, self_attention=config.self_attention, y_range=config.y_range,
                         config=config.train, workdir=workdir, export_meta=lambda d: dict(d.meta))
    frozen = "frozen" if pretrained else "all groups (from scratch)"
    print(f"== phase 1, {frozen}: fit_one_cycle({config.epochs1}, slice({config.lr1}), pct_start={config.pct_start})")
    learn.fit_one_cycle(config.epochs1, slice(config.lr1), pct_start=config.pct_start)
    lo, hi = config.lr2_range or ((1e-5, 1e-3) if pretrained else (1e-4, 1e-3))
    learn.unfreeze()
    print(f"== phase 2, unfrozen: fit_one_cycle({config.epochs2}, slice({lo:g}, {hi:g}), pct_start={config.pct_start})")
    learn.fit_one_cycle(config.epochs2, slice(lo, hi), pct_start=config.pct_start)

    results = learn.validate()  # psnr, ssim of the U-Net on every held-out image
    pairs = data.valid.pairs()
    outputs = data.valid.denormalize(learn.predict(data.valid.normalize(pairs["inputs"])))
    results.update(score_pairs(pairs, outputs))
    results["bicubic_gain_db"] = results["psnr"] - results["bicubic_psnr"]
    print_results(results)
    print(f"held out ({data.valid.num_rows} images, {config.size} px): U-Net PSNR {results['psnr']:.2f} dB, "
          f"SSIM {results['ssim']:.4f}; bicubic {results['bicubic_psnr']:.2f} dB, SSIM {results['bicubic_ssim']:.4f} "
          f"(gain {results['bicubic_gain_db']:+.2f} dB); the bilinear input {results['input_psnr']:.2f} dB")
    print(f"results: {show_restorations(workdir / 'show_results.png', pairs, outputs, config.show_rows)}")
    print(f"export: {learn.export(workdir / 'export')}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
