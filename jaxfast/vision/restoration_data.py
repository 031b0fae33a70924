"""Lesson 7's restoration data: (crappified input, clean target) pairs made on the fly from
any folder of images, for the Learner (`restoration_data`) and for the GAN experiments.

    data = restoration_data("../shared/data/camvid", size=96, batch_size=8, seed=0)
    batch = next(data.train.batches(0))   # {'inputs', 'targets', 'mask'}: [8, 96, 96, 3] each

- Files: every image under `data_dir`, recursively, except label/mask folders (names in
  `LABEL_FOLDERS` or ending in 'annot': CamVid's trainannot/, camvid_tiny's labels/). When
  `data_dir` has a `train/` folder beside `val/` or `valid/` (CamVid, mnist_tiny), that folder
  is the held-out split and `train/` the training one (other folders, e.g. test/, are left
  out); otherwise a seeded `valid_pct` of the files is held out. Held-out files are never
  trained on.
- Pixels: each image is read once (PIL, RGB) and resized (antialiased) to cover a
  `size` x `round(size * 4 / 3)` box, centre-cropped to it (landscape scenes such as CamVid's
  keep their whole width), and kept in memory as uint8.
- Pairs: a `size` x `size` crop of that box is the target, crappified by
  `jaxfast.vision.crappify` at `low_size` (default 3/4 of `size`, the lesson's 96 -> 128):
  bilinear down, the JPEG quality drawn as text, JPEG at a random quality in 10..70; the
  input is that small JPEG resized back up (bilinear). Training crops are random with a
  random horizontal flip, drawn afresh each epoch; held-out crops are centred and their
  crappification is the same every epoch. Every draw comes from a stateless seed
  (seed, epoch, file), so a run is deterministic per seed and resumes exactly.
- Batches: `{'inputs', 'targets', 'mask'}` of `batch_size` rows, inputs and targets
  normalised with `stats` (ImageNet's, as fastai's `normalize(imagenet_stats, do_y=True)`);
  training drops the last partial batch, held-out batches are padded and masked.
  `loader.pairs()` gives a split's pairs unnormalised in [0, 1] with the small JPEGs
  (`low`), for the bicubic baseline and pictures.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

import numpy as np
import tensorflow as tf

from jaxfast.data.loader import DataBunch
from jaxfast.errors import InputError
from jaxfast.vision.crappify import QUALITY_RANGE, crappify
from jaxfast.vision.folders import IMAGE_EXTENSIONS, random_split
from jaxfast.vision.pipeline import hide_accelerators_from_tensorflow
from jaxfast.vision.transforms import IMAGENET_STATS

LABEL_FOLDERS = ("labels", "label", "masks", "mask", "annotations")
HELD_OUT_FOLDERS = ("val", "valid")
VALID_EPOCH = -1  # the seed slot of held-out pairs: the same pairs every epoch


def _is_label_folder(name: str) -> bool:
    name = name.lower()
    return name in LABEL_FOLDERS or name.endswith("annot")


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under `folder`, recursively and sorted, label/mask folders left out."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not any(_is_label_folder(part) for part in p.relative_to(folder).parts[:-1]))


def split_files(data_dir: str | Path, valid_pct: float = 0.2, seed: int = 0) -> tuple[list[Path], list[Path], str]:
    """(train files, held-out files, how they were split): train/ + val/ (or valid/) folders when
    present, else a seeded `valid_pct` of every image under `data_dir`."""
    root = Path(data_dir)
    if not root.is_dir():
        raise InputError(f"restoration data: {root} is not a folder of images")
    held_out = next((root / n for n in HELD_OUT_FOLDERS if (root / n).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        train, valid = image_files(root / "train"), image_files(held_out)
        how = f"{root / 'train'} to train, {held_out} held out"
    else:
        files = image_files(root)
        if len(files) < 2:
            raise InputError(f"restoration data: {root} holds {len(files)} image file(s) (looked for "
                             f"{', '.join(IMAGE_EXTENSIONS)} recursively); it needs at least 2")
        is_valid = random_split(len(files), valid_pct, seed)
        train = [f for f, v in zip(files, is_valid) if not v]
        valid = [f for f, v in zip(files, is_valid) if v]
        how = f"{valid_pct:.0%} of the images under {root} held out (seed {seed})"
    for name, files in (("training", train), ("held-out", valid)):
        if not files:
            raise InputError(f"restoration data: no {name} images under {root} ({how})")
    return train, valid, how


def box_shape(size: int) -> tuple[int, int]:
    """The (height, width) every image is brought to: `size` x round(size * 4 / 3)."""
    return size, int(round(size * 4 / 3))


def read_box(path: Path, size: int) -> np.ndarray:
    """uint8 [size, W, 3]: the image resized (antialiased) to cover the box, centre-cropped."""
    from PIL import Image

    h, w = box_shape(size)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = max(h / img.height, w / img.width)
            new = (max(w, int(round(img.width * scale))), max(h, int(round(img.height * scale))))
            img = img.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (new[0] - w) // 2, (new[1] - h) // 2
            return np.asarray(img.crop((left, top, left + w, top + h)), np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"restoration data: cannot read image {path}: {err}") from err


def make_pair(box: tf.Tensor, seed: tf.Tensor, size: int, low_size: int, train: bool, quality, text: bool):
    """(low uint8 [low, low, 3], input float [size, size, 3], target float) in [0, 1] from one
    uint8 box and a stateless seed: crop (random + flip when `train`, else centred), crappify."""
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if train:
        crop = tf.image.stateless_random_crop(box, (size, size, 3), seeds[0])
        crop = tf.image.stateless_random_flip_left_right(crop, seeds[1])
    else:
        left = (tf.shape(box)[1] - size) // 2
        crop = box[:size, left:left + size]
    small, _ = crappify(crop, seeds[2], low_size, quality, text)
    small = tf.ensure_shape(small, (low_size, low_size, 3))
    upscaled = tf.image.resize(tf.cast(small, tf.float32) / 255.0, (size, size), method="bilinear")
    return small, tf.clip_by_value(upscaled, 0.0, 1.0), tf.cast(crop, tf.float32) / 255.0


@dataclasses.dataclass(frozen=True, eq=False)
class RestorationLoader:
    """One split's pairs (see the module doc); the Learner's Loader protocol."""

    boxes: np.ndarray  # uint8 [N, size, W, 3]
    files: tuple[str, ...]
    size: int
    low_size: int
    batch_size: int
    train: bool
    seed: int = 0
    quality: tuple[int, int] = QUALITY_RANGE
    text: bool = True
    stats: tuple = IMAGENET_STATS
    name: str = "train"

    def __post_init__(self):
        if self.batch_size < 1:
            raise InputError(f"restoration data ({self.name}): batch_size must be >= 1, got {self.batch_size}")
        if self.train and self.num_rows < self.batch_size:
            raise InputError(f"restoration data ({self.name}): {self.num_rows} images is fewer than one batch of "
                             f"{self.batch_size}; lower the batch size")

    @property
    def num_rows(self) -> int:
        return len(self.boxes)

    def __len__(self) -> int:
        n = self.num_rows
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if not self.train:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def _pairs_dataset(self, indices: np.ndarray, epoch: int) -> tf.data.Dataset:
        hide_accelerators_from_tensorflow()
        boxes = tf.constant(self.boxes)
        base = tf.constant([self.seed, VALID_EPOCH if not self.train else epoch], tf.int64)
        size, low, train, quality, text = self.size, self.low_size, self.train, self.quality, self.text

        def one(index):
            seed = tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))
            return make_pair(tf.gather(boxes, index), seed, size, low, train, quality, text)

        return tf.data.Dataset.from_tensor_slices(indices).map(one, num_parallel_calls=tf.data.AUTOTUNE,
                                                               deterministic=True)

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        """The batches of `epoch` from batch `start` on (deterministic in both)."""
        order, bs = self.order(epoch), self.batch_size
        rows = order[start * bs:len(self) * bs]
        real = len(rows)
        padded = np.concatenate([rows, np.resize(order, (-real) % bs)]) if real % bs else rows
        mean, std = (np.asarray(s, np.float32) for s in self.stats)
        for b, (_, inputs, targets) in enumerate(self._pairs_dataset(padded, epoch).batch(bs).prefetch(2)):
            mask = (np.arange(bs) + b * bs < real).astype(np.float32)
            yield {"inputs": (inputs.numpy() - mean) / std, "targets": (targets.numpy() - mean) / std, "mask": mask}

    def sample_inputs(self) -> np.ndarray:
        return next(self.batches(0))["inputs"]

    def pairs(self, epoch: int = 0, limit: int | None = None) -> dict[str, np.ndarray]:
        """A split's pairs in file order, unnormalised: {'low' uint8 small JPEGs, 'inputs', 'targets'
        float32 [0, 1]} (held-out: the very pairs its batches hold, whatever `epoch`)."""
        indices = np.arange(self.num_rows if limit is None else min(limit, self.num_rows))
        low, inputs, targets = zip(*((a.numpy(), b.numpy(), c.numpy())
                                     for a, b, c in self._pairs_dataset(indices, epoch)))
        return {"low": np.stack(low), "inputs": np.stack(inputs), "targets": np.stack(targets)}

    def normalize(self, images: np.ndarray) -> np.ndarray:
        mean, std = (np.asarray(s, np.float32) for s in self.stats)
        return ((images - mean) / std).astype(np.float32)

    def denormalize(self, images: np.ndarray) -> np.ndarray:
        mean, std = (np.asarray(s, np.float32) for s in self.stats)
        return np.asarray(images, np.float32) * std + mean


def restoration_data(data_dir: str | Path, size: int = 96, batch_size: int = 8, seed: int = 0, *,
                     low_size: int | None = None, valid_pct: float = 0.2, max_train: int | None = None,
                     max_valid: int | None = None, quality: tuple[int, int] = QUALITY_RANGE, text: bool = True,
                     stats=IMAGENET_STATS, log=print) -> DataBunch:
    """A DataBunch of (crappified, clean) pairs from the images under `data_dir` (see the module
    doc): `size` px square targets, inputs crappified at `low_size` px (default 3/4 of size)
    and brought back to `size`; `max_train`/`max_valid`: the first N files of each split only."""
    if not 16 <= size <= 1024:
        raise InputError(f"restoration data: size {size} must be between 16 and 1024 pixels")
    low_size = int(round(size * 3 / 4)) if low_size is None else int(low_size)
    if not 1 <= low_size <= size:
        raise InputError(f"restoration data: low_size {low_size} must be between 1 and size {size}")
    train_files, valid_files, how = split_files(data_dir, valid_pct, seed)
    train_files = train_files[:max_train] if max_train is not None else train_files
    valid_files = valid_files[:max_valid] if max_valid is not None else valid_files
    common = dict(size=size, low_size=low_size, batch_size=batch_size, seed=seed, quality=tuple(quality), text=text,
                  stats=(tuple(stats[0]), tuple(stats[1])))
    loaders = {}
    for name, files in (("train", train_files), ("valid", valid_files)):
        boxes = np.stack([read_box(f, size) for f in files])
        loaders[name] = RestorationLoader(boxes, tuple(str(f) for f in files), train=name == "train", name=name,
                                          **common)
    log(f"restoration data: {len(train_files)} training and {len(valid_files)} held-out images ({how}); "
        f"{size} px targets, inputs crappified at {low_size} px")
    meta = {"kind": "restoration", "size": size, "low_size": low_size, "stats": [list(s) for s in common["stats"]]}
    return DataBunch(loaders["train"], loaders["valid"], meta=meta)
