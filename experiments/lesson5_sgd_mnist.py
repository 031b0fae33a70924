"""Lesson 5 (sgd-mnist): logistic regression, then a 784-50-10 MLP, on MNIST with fit_one_cycle.

fastai reached 0.9635 accuracy with the MLP after one epoch on the 60k training set.
Data: tfds `mnist` when online, or --data-dir with the idx files. With only the 10k
test images there (as in ../shared/data/mnist), 8,000 train and 2,000 validate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxfast import experiment
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.data.mnist import load_mnist
from jaxfast.experiment import Run, RunConfig
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import ModelSpec


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 5: MNIST with logistic regression and a 784-50-10 MLP (fit_one_cycle).

    --data-dir: a folder with the MNIST idx files; without it, tfds 'mnist' (needs the network)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    """The loop's settings; --train.checkpoint-every-steps N also checkpoints every N steps."""
    models: tuple[str, ...] = ("logistic", "mlp")
    """Trained in this order; the last one's metrics are the final ones."""
    hidden: int = 50
    batch_size: int = 64
    epochs: int = 5
    """5 epochs of 8,000 rows at bs 64 is 625 steps, about fastai's one epoch of 50,000 (782 steps)."""
    lr_logistic: float = 1e-2
    lr_mlp: float = 1e-2
    max_train_rows: int | None = None
    """Use only the first N training rows (the tiny variant)."""


TINY = Config(train=TrainConfig(progress=False), epochs=2, max_train_rows=512, batch_size=32)


def make_data(config: Config) -> tuple[DataBunch, str]:
    splits = load_mnist(config.run.data_dir, seed=config.train.seed)
    x_train, y_train = splits.x_train, splits.y_train
    if config.max_train_rows is not None:
        x_train, y_train = x_train[: config.max_train_rows], y_train[: config.max_train_rows]
    data = DataBunch(
        train=ArrayLoader(x_train, y_train, config.batch_size, shuffle=True, drop_last=True, seed=config.train.seed,
                           name="train"),
        valid=ArrayLoader(splits.x_valid, splits.y_valid, 2 * config.batch_size, name="valid"),
    )
    return data, splits.note


def main(config: Config, workdir: Path) -> dict:
    data, note = make_data(config)
    print(note)
    print(f"train {data.train.num_rows} rows, valid {data.valid.num_rows} rows")
    final = {}
    for name in config.models:
        arch_config = {"n_out": 10} if name == "logistic" else {"hidden": [config.hidden], "n_out": 10}
        learn = Learner(ModelSpec(name, arch_config), data, "cross_entropy", ["accuracy"], config=config.train,
                        workdir=workdir / name, export_meta={"classes": [str(d) for d in range(10)]})
        print(f"== {name}")
        learn.fit_one_cycle(config.epochs, config.lr_logistic if name == "logistic" else config.lr_mlp)
        results = learn.evaluate_all()
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        final.update({f"{name}_{k}": v for k, v in results.items()})
        learn.export(workdir / name / "export")
    last = config.models[-1]
    final["valid_accuracy"] = final[f"{last}_valid_accuracy"]
    return final


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
