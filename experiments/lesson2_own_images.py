"""Lesson 2 (download): a classifier of your own images, exported for prediction.

fastai's protocol (the bears): ImageDataBunch.from_folder(train=".", valid_pct=0.2, seed 42,
get_transforms(), size 224) normalised with imagenet stats, verify_images, cnn_learner
(resnet34, error_rate), fit_one_cycle(4), unfreeze, lr_find, fit_one_cycle(2,
slice(3e-5, 3e-4)), confusion matrix, export; fastai reached error_rate ~0.02 (pretrained).
Data (--data-dir): a folder per class; train/<class> + valid/<class> (+ test/<class>,
evaluated too); or a CSV of file names and labels (--csv; an is_valid column is honoured).
Every image is decoded first (verify_images): unreadable files are listed and left out.
Predict new images with `python -m jaxfast.predict WORKDIR/export IMAGES...`. The tiny
variant writes generated images (and one broken file) to workdir/synthetic_images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import TrainConfig
from jaxfast.vision import cnn_learner, get_transforms, image_databunch, interpret_to_pngs
from jaxfast.vision.synthetic import synthetic_image

SYNTHETIC_CLASSES = ("black", "grizzly", "teddys")


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 2: your own image folders (or CSV), a cnn frozen then unfrozen, exported.

    --data-dir: the image folder: <class>/ folders, train/ + valid/ (+ test/) class folders, or --csv."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    csv: str | None = None
    """A CSV in --data-dir with file names (relative to it) and labels (fastai's from_csv)."""
    label_re: str | None = None
    """Labels from file names with this regex's first group (fastai's from_name_re)."""
    cleaned: str | None = None
    """The decisions CSV of the image cleaner (python -m jaxfast.vision.cleaner EXPORT DATA, or the serve app's
    /clean page): deleted files are left out, relabelled ones take their new class; the files are never touched."""
    valid_pct: float | None = None
    """Random validation share when there is no valid folder or is_valid column (default 0.2)."""
    split_seed: int = 42
    synthetic: bool = False
    """Without --data-dir: generated images (workdir/synthetic_images) instead."""
    arch: str = "resnet34"
    pretrained: str | None = None
    """ImageNet weights of the body: a name (resnet34, ...) or a .pth/.safetensors file; absent: random init."""
    size: int = 224
    batch_size: int = 64
    epochs_frozen: int = 4
    lr_frozen: float = 3e-3
    """The head's rate, as fastai's default max_lr slice(3e-3)."""
    lr_find_iters: int = 100
    """Iterations of lr_find after unfreezing (lr_find.png); 0 skips it."""
    epochs_unfrozen: int = 2
    lr_unfrozen: tuple[float, float] = (3e-5, 3e-4)
    top_losses: int = 9


TINY = Config(train=TrainConfig(progress=False), synthetic=True, arch="simple_cnn", size=32, batch_size=8,
              epochs_frozen=1, lr_find_iters=8, epochs_unfrozen=1, lr_unfrozen=(1e-4, 1e-3), top_losses=4)


def write_synthetic_images(folder: Path, per_class: int = 12, seed: int = 0) -> Path:
    """folder/<class>/<n>.png for SYNTHETIC_CLASSES, plus a truncated JPEG and a text file
    that verify_images must leave out; files already there are kept."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(SYNTHETIC_CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            pixels = synthetic_image(rng, label, (int(rng.integers(36, 60)), int(rng.integers(36, 60))))
            if not (folder / name / f"{n:04d}.png").exists():
                Image.fromarray(pixels).save(folder / name / f"{n:04d}.png")
    (folder / SYNTHETIC_CLASSES[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated download")
    (folder / SYNTHETIC_CLASSES[1] / "urls.txt").write_text("https://example.com/bear.jpg\n")
    return folder


def make_data(config: Config, workdir: Path):
    folder = config.run.data_dir
    if folder is None:
        if not config.synthetic:
            raise InputError("lesson2_own_images needs --data-dir (a folder of your images), or --synthetic")
        folder = write_synthetic_images(workdir / "synthetic_images", seed=config.train.seed)
    return image_databunch(
        folder, csv=config.csv, label_re=config.label_re, valid_pct=config.valid_pct, seed=config.split_seed,
        verify=True, cleaned=config.cleaned, size=config.size, batch_size=config.batch_size, tfms=get_transforms(), stats="imagenet",
    )


def main(config: Config, workdir: Path) -> dict:
    data = make_data(config, workdir)
    classes = data.train.classes
    pretrained = config.pretrained or False
    learn = cnn_learner(data, config.arch, pretrained, metrics=["error_rate", "accuracy"], config=config.train,
                        workdir=workdir)
    if not pretrained:
        learn.freeze()  # the lesson's schedule either way: the head first
    print(f"== {config.arch}, classes {', '.join(classes)}: body frozen ({len(data.train)} steps/epoch)")
    learn.fit_one_cycle(config.epochs_frozen, slice(config.lr_frozen))
    learn.unfreeze()
    if config.lr_find_iters:  # a rerun replays the recorded result (and redraws lr_find.png)
        learn.lr_find(num_it=config.lr_find_iters)
    print(f"== unfrozen, lr slice{config.lr_unfrozen}")
    learn.fit_one_cycle(config.epochs_unfrozen, slice(*config.lr_unfrozen))
    results = learn.evaluate_all()
    print_results(results)
    interpret_to_pngs(learn, workdir, config.top_losses, 1)
    path = learn.export(workdir / "export")
    print(f"export: {path} (predict with: python -m jaxfast.predict {path} IMAGES...)")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
