"""Lesson 7 (resnet-mnist): fastai's small ResNet for MNIST, trained from scratch.

fastai's protocol: grey 28x28 digits, rand_pad(3, 28, mode='zeros') on the training set,
normalised with statistics of the data, bs 128, the model conv2 / res_block x4 then
conv2(16, 10) + flatten, fit_one_cycle(12, max_lr=0.05): 0.9952 accuracy on the 60k/10k split.
Data: tfds `mnist` when online, or --data-dir with the idx files; with only the 10k test
images there (as in ../shared/data/mnist), 8,000 train and 2,000 validate.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast import experiment
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.data.mnist import load_mnist
from jaxfast.experiment import Run, RunConfig, print_results
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import ModelSpec
from jaxfast.vision import interpret_to_pngs
from jaxfast.vision.predict_images import image_export_meta


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 7: MNIST with fastai's from-scratch ResNet (fit_one_cycle(12, 0.05)).

    --data-dir: a folder with the MNIST idx files; without it, tfds 'mnist' (needs the network)."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    """The loop's options; train.seed also draws the 8k/2k split when only the test images are there."""
    widths: tuple[int, int, int, int] = (8, 16, 32, 16)
    """Channels of the four conv2 + res_block stages (28 -> 14 -> 7 -> 4 -> 2, then conv2 to 1 x 1)."""
    conv_lowering: str = "auto"
    """auto (the measured per-shape rule) | xla | im2col: every conv's lowering (benchmarks compare them)."""
    batch_size: int = 128
    epochs: int = 12
    lr: float = 0.05
    pad: int = 3
    """rand_pad's padding (random shifts of up to `pad` pixels, zeros shifted in); 0: none."""
    max_train_rows: int | None = None
    """Use only the first N training rows (the tiny variant)."""
    top_losses: int = 9


TINY = Config(train=TrainConfig(progress=False), batch_size=32, epochs=1, max_train_rows=256, top_losses=4)


def rand_pad(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """fastai's rand_pad(pad, size, mode='zeros'): zero-pad [N, H, W] by `pad`, crop H x W at
    a random offset per image."""
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    dy, dx = rng.integers(0, 2 * pad + 1, (2, n))
    rows = dy[:, None, None] + np.arange(h)[None, :, None]
    cols = dx[:, None, None] + np.arange(w)[None, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


@dataclasses.dataclass(frozen=True)
class DigitLoader(ArrayLoader):
    """ArrayLoader of uint8 [N, H, W] digits yielding normalised float32 [N, H, W, 1], shifted
    by rand_pad when `pad` > 0 (draws keyed on (seed, epoch, batch): exact resume)."""

    pad: int = 0
    stats: tuple[float, float] = (0.0, 1.0)
    classes: tuple[str, ...] = ()

    def batches(self, epoch: int = 0, start: int = 0):
        mean, std = self.stats
        for b, batch in enumerate(super().batches(epoch, start), start=start):
            x = batch["inputs"]
            if self.pad:
                x = rand_pad(x, self.pad, np.random.default_rng([self.seed, epoch, b]))
            yield {**batch, "inputs": ((x.astype(np.float32) / 255.0 - mean) / std)[..., None]}


def make_data(config: Config) -> tuple[DataBunch, str]:
    splits = load_mnist(config.run.data_dir, seed=config.train.seed)
    x_train, y_train = splits.x_train, splits.y_train
    if config.max_train_rows is not None:
        x_train, y_train = x_train[: config.max_train_rows], y_train[: config.max_train_rows]
    pixels = x_train.astype(np.float64) / 255.0
    stats = (float(pixels.mean()), float(pixels.std()))  # fastai's data.normalize(): the data's own
    common = {"stats": stats, "classes": splits.classes}
    data = DataBunch(
        DigitLoader(x_train, y_train, config.batch_size, shuffle=True, drop_last=True, seed=config.train.seed,
                    name="train", pad=config.pad, **common),
        DigitLoader(splits.x_valid, splits.y_valid, 2 * config.batch_size, name="valid", **common),
    )
    return data, f"{splits.note}; normalised with mean {stats[0]:.4f}, std {stats[1]:.4f}"


def main(config: Config, workdir: Path) -> dict:
    data, note = make_data(config)
    print(note)
    print(f"train {data.train.num_rows} rows, valid {data.valid.num_rows} rows, {len(data.train)} steps/epoch")
    spec = ModelSpec("mnist_resnet", {"widths": list(config.widths), "n_classes": len(data.train.classes),
                                      "conv_lowering": config.conv_lowering})
    meta = image_export_meta(data.train.classes, (28, 28), ((data.train.stats[0],), (data.train.stats[1],)),
                             "squish", channels=1)  # greyscale, normalised with the training digits' own stats
    learn = Learner(spec, data, "cross_entropy", ["accuracy"], config=config.train, workdir=workdir,
                    export_meta=meta)
    print(f"== mnist_resnet{config.widths} from scratch: fit_one_cycle({config.epochs}, {config.lr})")
    learn.fit_one_cycle(config.epochs, config.lr)
    results = learn.evaluate_all()
    print_results(results)
    interpret_to_pngs(learn, workdir, config.top_losses, 2)
    path = learn.export(workdir / "export")
    print(f"export: {path} (predict PNG digits with: python -m jaxfast.predict {path} DIGITS...)")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
