"""A tiny lesson for the multi-process tests (tests/test_distributed.py): lesson 4's tabular
recipe (its procs, tabular_learner with BatchNorm, fit_one_cycle) on the Adult dummy data,
run through `experiment.run` like every experiment, that writes its final parameters to
<workdir>/params.npz (process 0) where the lesson writes an export.

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


def flat_params(params, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = np.asarray(value)
    return out


def main(config: Config, workdir: Path) -> dict:
    frames = load_adult(config.run.data_dir)
    train, valid = split_random(frames.train, 0.25, config.train.seed)
    processor = TabularProcessor(["workclass", "education", "sex"], ["age", "fnlwgt", "hours-per-week"]).fit(train)
    target = TabularTarget(TARGET).fit(train)
    data = tabular_databunch(processor, target, train, valid, config.batch_size, config.train.seed, na_values=NA_VALUES)
    learn = tabular_learner(data, (16, 8), metrics=["accuracy"], config=config.train, workdir=workdir)
    print(f"{len(data.train)} steps per epoch on {learn.runner.n_devices} device(s), mode {learn.runner.mode}")
    learn.fit_one_cycle(config.epochs, config.lr)
    results = learn.validate()
    if distributed.is_primary():
        np.savez(workdir / "params.npz", **flat_params(learn.state.params), step=np.asarray(learn.state.step))
    return {f"valid_{k}": v for k, v in results.items()}


if __name__ == "__main__":
    experiment.run(main, Config(), Config())
