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

Without --pretrained there are no ImageNet features to fine-tune, and the lesson's schedule
(4 epochs of a frozen random body) learns nothing on a few hundred photos (0.45 error on a
245-photo folder). The run then says so and follows `FromScratch` instead: a small ResNet
trained whole, at 128 px, with strong augmentation for many epochs (see its docstring).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import TrainConfig
from jaxfast.models.hub import PRETRAINED_WEIGHTS, resolve_pretrained
from jaxfast.vision import cnn_learner, get_transforms, image_databunch, interpret_to_pngs
from jaxfast.vision.synthetic import synthetic_image
from jaxfast.vision.transforms import TransformConfig

SYNTHETIC_CLASSES = ("black", "grizzly", "teddys")


@dataclasses.dataclass(frozen=True)
class FromScratch:
    """The recipe without pretrained weights, for a few hundred photos: every layer trains from
    the start (one-cycle), a small ResNet at a small size so that many epochs of strong
    augmentation fit in minutes on 2 CPU cores; the photos are decoded and downsized once."""

    arch: str = "small_resnet"
    """jaxfast.models.small_resnet (1.2M params, 0.09 GMAC at 128 px), or any registered body."""
    size: int = 128
    batch_size: int = 16
    """Small batches: ~6 steps an epoch on ~95 photos (the last partial batch is dropped)."""
    epochs: int = 40
    lr: float = 3e-3
    wd: float = 0.1
    ps: float = 0.5
    """Dropout of the head."""
    max_rotate: float = 10.0
    max_zoom: float = 1.3
    max_lighting: float = 0.3
    max_warp: float = 0.2
    downsize: float = 1.25
    """Photos are decoded once and kept in memory with their shorter side at size * downsize
    (no per-epoch decoding of multi-megapixel JPEGs); 0 reads the files every epoch."""

    def transforms(self) -> TransformConfig:
        return get_transforms(max_rotate=self.max_rotate, max_zoom=self.max_zoom, max_lighting=self.max_lighting,
                              max_warp=self.max_warp)

    def describe(self) -> str:
        return (f"{self.arch} at {self.size} px, every layer trained: fit_one_cycle({self.epochs}, {self.lr:g}), "
                f"wd {self.wd:g}, batch {self.batch_size}, flips, rotate {self.max_rotate:g} deg, zoom {self.max_zoom:g}, "
                f"lighting {self.max_lighting:g}, warp {self.max_warp:g}")


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
    """The body fine-tuned with --pretrained (without it, --scratch.arch)."""
    pretrained: str | None = None
    """ImageNet weights of the body: a name (resnet34, ...; fetched once into ~/.cache/jaxfast or $JAXFAST_CACHE)
    or a local .pth/.safetensors file; absent: trains from scratch with the --scratch.* recipe."""
    scratch: FromScratch = FromScratch()
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
              epochs_frozen=1, lr_find_iters=8, epochs_unfrozen=1, lr_unfrozen=(1e-4, 1e-3), top_losses=4,
              scratch=FromScratch(arch="simple_cnn", size=32, batch_size=8, epochs=3, lr=1e-2, downsize=2.0))


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
    options = dict(csv=config.csv, label_re=config.label_re, valid_pct=config.valid_pct, seed=config.split_seed,
                   verify=True, cleaned=config.cleaned, stats="imagenet")
    if config.pretrained:
        return image_databunch(folder, size=config.size, batch_size=config.batch_size, tfms=get_transforms(), **options)
    recipe = config.scratch
    return scratch_databunch(folder, recipe.size, recipe.batch_size, recipe.transforms(), recipe.downsize, **options)


def scratch_databunch(folder, size: int, batch_size: int, tfms: TransformConfig, downsize: float, *, csv, label_re,
                      valid_pct, seed, verify, cleaned, stats):
    """image_databunch for the from-scratch recipe: the photos decoded once and kept in memory
    as PNGs whose shorter side is size * downsize (0: the files, read every epoch)."""
    from jaxfast.vision.cleaner import apply_cleaning
    from jaxfast.vision.folders import find_images
    from jaxfast.vision.pipeline import ImageSource, hide_accelerators_from_tensorflow, sources_databunch

    if not downsize:
        return image_databunch(folder, csv=csv, label_re=label_re, valid_pct=valid_pct, seed=seed, verify=verify,
                               cleaned=cleaned, size=size, batch_size=batch_size, tfms=tfms, stats=stats)
    hide_accelerators_from_tensorflow()
    found = find_images(folder, csv=csv, label_re=label_re, valid_pct=valid_pct, seed=seed, verify=verify)
    print(found.note)
    if cleaned is not None:
        found = apply_cleaning(found, cleaned, folder)
        print(f"cleaning decisions applied from {cleaned}")
    shorter = max(size, round(size * downsize))

    def source(split, name):
        if split is None or not len(split):
            return None
        encoded = np.array([downsized_png(path, shorter) for path in split.paths], dtype=object)
        return ImageSource("encoded", encoded, split.labels, tuple(found.classes), name)

    return sources_databunch(source(found.train, "train"), source(found.valid, "valid"), source(found.test, "test"),
                             size=size, batch_size=min(batch_size, len(found.train)), tfms=tfms, stats=stats,
                             seed=seed)


def downsized_png(path: str, shorter: int) -> bytes:
    """The image at `path` as PNG bytes with its shorter side at most `shorter` pixels (the
    file's own bytes when PIL cannot read what TensorFlow verified)."""
    import io

    from PIL import Image, UnidentifiedImageError

    data = Path(path).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (shorter, shorter))  # JPEG: decode at a reduced scale directly
            image = image.convert("RGB")
            scale = shorter / min(image.size)
            if scale < 1:
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, format="PNG", compress_level=1)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError):
        return data


def main(config: Config, workdir: Path) -> dict:
    if config.pretrained:  # fetched (or refused, offline) before the photos are read
        config = dataclasses.replace(config, arch=weights_arch(config.pretrained, config.arch))
        resolve_pretrained(config.pretrained, config.arch)
    data = make_data(config, workdir)
    classes = data.train.classes
    if config.pretrained:
        learn = fine_tune(config, data, workdir)
    else:
        learn = train_from_scratch(config, data, workdir)
    results = learn.evaluate_all()
    print_results(results)
    interpret_to_pngs(learn, workdir, config.top_losses, 1)
    path = learn.export(workdir / "export")
    print(f"export: {path} (classes {', '.join(classes)}; predict with: python -m jaxfast.predict {path} IMAGES...)")
    return results


def weights_arch(pretrained: str, arch: str) -> str:
    """The architecture that weights named `pretrained` (resnet50, ...) are made for; `arch`
    for a file or an unknown name (which resolve_pretrained then explains)."""
    entry = PRETRAINED_WEIGHTS.get(pretrained)
    if entry is not None and entry.arch != arch:
        print(f"--pretrained {pretrained}: the body is {entry.arch}")
        return entry.arch
    return arch


def fine_tune(config: Config, data, workdir: Path):
    """The lesson: pretrained body frozen, head trained; then everything, at discriminative rates."""
    learn = cnn_learner(data, config.arch, config.pretrained, metrics=["error_rate", "accuracy"], config=config.train,
                        workdir=workdir)
    print(f"== {config.arch}, classes {', '.join(data.train.classes)}: body frozen ({len(data.train)} steps/epoch)")
    learn.fit_one_cycle(config.epochs_frozen, slice(config.lr_frozen))
    learn.unfreeze()
    if config.lr_find_iters:  # a rerun replays the recorded result (and redraws lr_find.png)
        learn.lr_find(num_it=config.lr_find_iters)
    print(f"== unfrozen, lr slice{config.lr_unfrozen}")
    learn.fit_one_cycle(config.epochs_unfrozen, slice(*config.lr_unfrozen))
    return learn


def train_from_scratch(config: Config, data, workdir: Path):
    """No ImageNet weights: the FromScratch recipe, every layer trained from the first step."""
    import jaxfast.models.small_resnet  # noqa: F401  (registers small_resnet)

    recipe = config.scratch
    print(f"== no pretrained weights: training from scratch, {recipe.describe()} "
          f"({len(data.train)} steps/epoch, classes {', '.join(data.train.classes)}). Fine-tuning ImageNet weights "
          f"is far better on a few hundred photos: --pretrained resnet34")
    learn = cnn_learner(data, recipe.arch, False, metrics=["error_rate", "accuracy"], ps=recipe.ps,
                        config=config.train, workdir=workdir)
    learn.fit_one_cycle(recipe.epochs, recipe.lr, wd=recipe.wd)
    return learn


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
