"""Lesson 1 (pets): a cnn (resnet34 body + fastai's head) on the 37 Oxford-IIIT Pet breeds.

fastai's protocol: labels from the file names, 20% validation (seed 2), get_transforms(),
size 224, bs 64, imagenet stats; fit_one_cycle(4) with the body frozen, unfreeze,
fit_one_cycle(2, slice(1e-6, 1e-4)); fastai reached error_rate 0.0622 (pretrained body).
Data: tfds `oxford_iiit_pet` (its test split is evaluated too), or --data-dir with a
prepared tfds dir or fastai's oxford-iiit-pet folder (images/<Breed>_<n>.jpg).
--pretrained loads an ImageNet body (a weights name or a torchvision .pth/.safetensors);
without it the body is randomly initialised, and the run says so (the schedule stays the
lesson's: head first, body frozen). The tiny variant trains on generated images.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxfast import experiment
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import TrainConfig
from jaxfast.vision import catalog_databunch, cnn_learner, get_transforms, interpret_to_pngs
from jaxfast.vision.synthetic import PET_BREEDS, write_synthetic_pets


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 1: pet breeds with a cnn, frozen then unfrozen (fit_one_cycle).

    --data-dir: a tfds data dir with oxford_iiit_pet prepared, or fastai's oxford-iiit-pet folder; without it, tfds."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    tfds_data_dir: str | None = None
    """Where tfds keeps its datasets (when --data-dir is not given)."""
    synthetic: bool = False
    """Without --data-dir: train on generated images (workdir/synthetic_pets) instead of tfds."""
    arch: str = "resnet34"
    pretrained: str | None = None
    """ImageNet weights of the body: a name (resnet34, ...) or a .pth/.safetensors file; absent: random init."""
    size: int = 224
    batch_size: int = 64
    valid_pct: float = 0.2
    split_seed: int = 2
    """fastai's np.random.seed(2) before the random 20% split."""
    epochs_frozen: int = 4
    lr_frozen: float = 3e-3
    """The head's rate, as fastai's default max_lr slice(3e-3) (body groups get a tenth)."""
    epochs_unfrozen: int = 2
    lr_unfrozen: tuple[float, float] = (1e-6, 1e-4)
    top_losses: int = 9
    most_confused_min: int = 2


TINY = Config(train=TrainConfig(progress=False), synthetic=True, arch="simple_cnn", size=32, batch_size=8,
              epochs_frozen=1, epochs_unfrozen=1, lr_unfrozen=(1e-4, 1e-3), top_losses=4, most_confused_min=1)


def make_data(config: Config, workdir: Path):
    data_dir = config.run.data_dir
    if data_dir is None and config.synthetic:
        data_dir = write_synthetic_pets(workdir / "synthetic_pets", seed=config.train.seed)
        print(f"synthetic pets: {len(PET_BREEDS)} generated breeds in {data_dir}")
    return catalog_databunch(
        "oxford_iiit_pet", data_dir=data_dir, tfds_data_dir=config.tfds_data_dir, valid_pct=config.valid_pct,
        seed=config.split_seed, size=config.size, batch_size=config.batch_size, tfms=get_transforms(),
        stats="imagenet",
    )


def main(config: Config, workdir: Path) -> dict:
    data = make_data(config, workdir)
    classes = data.train.classes
    pretrained = config.pretrained or False
    learn = cnn_learner(data, config.arch, pretrained, metrics=["error_rate", "accuracy"], config=config.train,
                        workdir=workdir)
    if not pretrained:
        learn.freeze()  # the lesson's schedule either way: the head first
    print(f"== {config.arch}, {len(classes)} classes, size {config.size}: body frozen ({len(data.train)} steps/epoch)")
    learn.fit_one_cycle(config.epochs_frozen, slice(config.lr_frozen))
    print(f"== unfrozen, lr slice{config.lr_unfrozen}")
    learn.unfreeze()
    learn.fit_one_cycle(config.epochs_unfrozen, slice(*config.lr_unfrozen))
    results = learn.evaluate_all()
    print_results(results)
    interpret_to_pngs(learn, workdir, config.top_losses, config.most_confused_min)
    path = learn.export(workdir / "export")
    print(f"export: {path} (predict with: python -m jaxfast.predict {path} IMAGES...)")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
