"""Lesson 1 (MNIST sample): 3s vs 7s with a cnn (resnet18 body + fastai's head).

fastai: ImageDataBunch.from_folder(ds_tfms=(rand_pad(2, 28), []), bs=64) normalised with
imagenet stats, cnn_learner(resnet18) and learn.fit(2) on a pretrained, frozen body.
Here the body is trained from scratch unless --pretrained is given: no pretrained body,
every group trains with fit_one_cycle; with one, the body is frozen and `fit` runs as in
the lesson, with the lesson's rand_pad(2, 28) (reflection padding, then a random crop).
Data: --data-dir with mnist_sample.npz or fastai's train/{3,7}, valid/{3,7} PNG folders,
else tfds `mnist` filtered to 3s and 7s (the same 12,396 / 2,038 images).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxfast import experiment
from jaxfast.data.mnist import load_mnist_sample
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import TrainConfig
from jaxfast.vision import ImageSource, cnn_learner, interpret_to_pngs, rand_pad, sources_databunch

RAND_PAD = rand_pad(2)


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 1: MNIST_SAMPLE (3s vs 7s) with a cnn, from scratch unless --pretrained.

    --data-dir: a folder with mnist_sample.npz or train/{3,7}, valid/{3,7} PNGs; without it, tfds mnist (3s and 7s)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    arch: str = "resnet18"
    pretrained: str | None = None
    """ImageNet weights of the body: a name (resnet18, ...) or a .pth/.safetensors file; absent: random init, all groups trained."""
    size: int = 28
    batch_size: int = 64
    epochs: int = 2
    lr: float = 1e-2
    """fit_one_cycle's max rate when training from scratch."""
    lr_pretrained: float = 3e-3
    """With --pretrained: fit's rate of the head, fastai's default slice(3e-3)."""
    max_train_rows: int | None = None
    """Use only N training images, drawn evenly over the (3s first) list (the tiny variant)."""
    top_losses: int = 9
    conv_lowering: str = "auto"
    """auto (the measured per-shape rule) | xla | im2col: every conv's lowering (benchmarks compare them)."""


TINY = Config(train=TrainConfig(progress=False), arch="simple_cnn", batch_size=16, epochs=1, max_train_rows=128,
              top_losses=4)


def make_data(config: Config):
    splits = load_mnist_sample(config.run.data_dir)
    print(splits.note)
    x_train, y_train = splits.x_train, splits.y_train
    if config.max_train_rows is not None:  # both classes: the arrays hold the 3s first
        step = max(1, len(x_train) // config.max_train_rows)
        x_train, y_train = x_train[::step][: config.max_train_rows], y_train[::step][: config.max_train_rows]
    train = ImageSource("pixels", x_train[..., None], y_train, splits.classes, "train")
    valid = ImageSource("pixels", splits.x_valid[..., None], splits.y_valid, splits.classes, "valid")
    return sources_databunch(train, valid, size=config.size, batch_size=config.batch_size, tfms=RAND_PAD,
                             stats="imagenet", seed=config.train.seed)


def main(config: Config, workdir: Path) -> dict:
    data = make_data(config)
    print(f"train {data.train.num_rows} images, valid {data.valid.num_rows} images, {len(data.train)} steps/epoch")
    pretrained = config.pretrained or False
    learn = cnn_learner(data, config.arch, pretrained, metrics=["accuracy"], conv_lowering=config.conv_lowering,
                        config=config.train, workdir=workdir)
    if not pretrained:
        print(f"== {config.arch} from scratch: fit_one_cycle({config.epochs}, {config.lr}), all groups")
        learn.fit_one_cycle(config.epochs, config.lr)
    else:
        print(f"== {config.arch} pretrained, body frozen: fit({config.epochs}, slice({config.lr_pretrained}))")
        learn.fit(config.epochs, slice(config.lr_pretrained))
    results = learn.evaluate_all()
    print_results(results)
    interpret_to_pngs(learn, workdir, config.top_losses, 1)
    print(f"export: {learn.export(workdir / 'export')}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
