"""A tiny lesson for the multi-process tests (tests/test_distributed.py): lesson 4's tabular
recipe (its procs, tabular_learner with BatchNorm, fit_one_cycle) on the Adult dummy data, or
(`--kind images`) a small CNN with BatchNorm on augmented tf.data image batches (each process
decodes only its own rows of every batch), run through `experiment.run` like every experiment,
that writes its final parameters to <workdir>/params.npz (process 0) where a lesson writes an export.

Usage: python tests/distributed_lesson.py [--workdir W] [--parallel ...] [--coordinator ...] ...
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxfast import distributed, experiment  # noqa: E402
from jaxfast.datasets import adult  # noqa: E402
from jaxfast.datasets.adult import NA_VALUES, TARGET, load_adult  # noqa: E402
from jaxfast.experiment import Run, RunConfig  # noqa: E402
from jaxfast.tabular import TabularProcessor, TabularTarget, split_random, tabular_databunch, tabular_learner  # noqa: E402
from jaxfast.train_config import TrainConfig  # noqa: E402

DUMMY = Path(adult.__file__).parent / "dummy_data" / "adult"


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 4's tabular recipe, tiny, on the Adult dummy data."""

    run: Run = RunConfig(data_dir=str(DUMMY))
    train: TrainConfig = TrainConfig(progress=False, checkpoint_every_steps=2)
    batch_size: int = 8
    epochs: int = 2
    lr: float = 1e-2
    kind: str = "tabular"
    """tabular, or images."""


def flat_params(params, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def band_images(n: int, seed: int):
    """Learnable 24x24 pixel images: class 0 has a bright band at the top, class 1 at the bottom."""
    from jaxfast.vision import ImageSource

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(np.int32)
    images = rng.integers(0, 80, (n, 24, 24, 3)).astype(np.uint8)
    for image, label in zip(images, labels):
        image[(slice(2, 8) if label == 0 else slice(16, 22))] = 230
    return ImageSource("pixels", images, labels, ("top", "bottom"), f"bands{seed}")


def image_learner(config: Config, workdir: Path):
    from jaxfast.learner import Learner
    from jaxfast.models.registry import ModelSpec
    from jaxfast.vision import sources_databunch
    from jaxfast.vision.transforms import TransformConfig

    tfms = TransformConfig(max_rotate=10.0, max_zoom=1.1, max_lighting=0.2, p_affine=1.0)
    data = sources_databunch(band_images(40, 0), band_images(20, 1), size=16, batch_size=config.batch_size, tfms=tfms,
                             stats=None, seed=config.train.seed)
    spec = ModelSpec("simple_cnn", {"features": [8, 16, 2], "bn": True})
    return data, Learner(spec, data, "cross_entropy", ["accuracy"], config=config.train, workdir=workdir)


def main(config: Config, workdir: Path) -> dict:
    if config.kind == "images":
        data, learn = image_learner(config, workdir)
    else:
        frames = load_adult(config.run.data_dir)
        train, valid = split_random(frames.train, 0.25, config.train.seed)
        processor = TabularProcessor(["workclass", "education", "sex"], ["age", "fnlwgt", "hours-per-week"]).fit(train)
        target = TabularTarget(TARGET).fit(train)
        data = tabular_databunch(processor, target, train, valid, config.batch_size, config.train.seed,
                                 na_values=NA_VALUES)
        learn = tabular_learner(data, (16, 8), metrics=["accuracy"], config=config.train, workdir=workdir)
    print(f"{len(data.train)} steps per epoch on {learn.runner.n_devices} device(s), mode {learn.runner.mode}")
    learn.fit_one_cycle(config.epochs, config.lr)
    results = learn.validate()
    if distributed.is_primary():
        np.savez(workdir / "params.npz", **flat_params(learn.state.params), step=np.asarray(learn.state.step))
    return {f"valid_{k}": v for k, v in results.items()}


if __name__ == "__main__":
    experiment.run(main, Config(), Config())
