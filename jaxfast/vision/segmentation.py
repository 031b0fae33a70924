"""Segmentation and point-regression batches through the image pipeline (lesson 3: CamVid, head pose).

`SegmentationLoader` and `PointLoader` are `ImageLoader`s (same order, masks, exact resume,
shards, `with_size`) whose targets follow the image's own augmentation
(jaxfast.vision.target_transforms): per batch
- segmentation: {'inputs': float32 [B, H, W, 3] normalised, 'targets': int32 [B, H, W] class
  codes, 'mask': float32 [B]}; pixels that come from outside the image (rotation corners,
  padding) get the void code, which the loss and metrics ignore (cross_entropy_ignore,
  accuracy_ignoring);
- points: {'inputs', 'targets': float32 [B, n_points * 2] = (row, col) pairs in [-1, 1],
  'visible': float32 [B, n_points] (0 where a point left the image), 'mask'}.

CamVid's size: its SegNet version is 360x480 (fastai's is 720x960, halved in the lesson).
`camvid_databunch` defaults to (384, 480) with resize method 'pad': the image keeps its
scale and gets 24 rows of reflection whose mask is void (12 top and 12 bottom in evaluation,
a random split of them in training; fastai's 720x960 is halved first), so every
labelled pixel is trained on and scored, and both sides divide by 32 (the encoder's stride).
(352, 480) with 'crop' instead drops 8 rows (random ones in training, 4 + 4 in
evaluation); 'squish' rescales the rows. Any (H, W) works: the U-Net resizes unequal maps.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from jaxfast.data.download import DatasetUnavailable, require_download
from jaxfast.data.loader import DataBunch
from jaxfast.errors import InputError
from jaxfast.vision import target_transforms as TT
from jaxfast.vision import transforms as T
from jaxfast.vision.pipeline import SOURCE_KINDS, ImageLoader, sources_databunch

CAMVID_SIZE = (384, 480)
CAMVID_RESIZE = "pad"


def _check_kind(kind: str, name: str) -> None:
    if kind not in SOURCE_KINDS:
        raise InputError(f"{name}: source kind must be one of {SOURCE_KINDS}, got {kind!r}")


def _read_image(kind: str, items: tf.Tensor, index) -> tf.Tensor:
    if kind == "files":
        return T.decode_image(tf.io.read_file(tf.gather(items, index)))
    if kind == "encoded":
        return T.decode_image(tf.gather(items, index))
    pixels = tf.gather(items, index)
    return tf.image.grayscale_to_rgb(pixels) if pixels.shape[-1] == 1 else pixels


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationSource:
    """One split's images and class-index masks: both file paths ('files'), both encoded bytes
    ('encoded') or uint8 arrays ('pixels': images [N, H, W, 3], masks [N, H, W(, 1)])."""

    kind: str
    items: np.ndarray
    masks: np.ndarray
    codes: tuple[str, ...]
    void_code: int | None = None
    name: str = "data"

    def __post_init__(self):
        _check_kind(self.kind, self.name)
        if len(self.items) != len(self.masks):
            raise InputError(f"{self.name}: {len(self.items)} images but {len(self.masks)} masks")
        if self.void_code is not None and not 0 <= self.void_code < max(len(self.codes), 1):
            raise InputError(f"{self.name}: void code {self.void_code} is not one of the {len(self.codes)} codes")
        if self.kind == "pixels":
            masks = self.masks if self.masks.ndim == 4 else self.masks[..., None]
            if self.items.ndim != 4 or masks.shape[:3] != self.items.shape[:3] or masks.shape[-1] != 1:
                raise InputError(f"{self.name}: pixels need images [N, H, W, C] and masks [N, H, W] of the same "
                                 f"N, H, W; got {self.items.shape} and {self.masks.shape}")
            object.__setattr__(self, "masks", masks)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.codes

    @classmethod
    def from_pairs(cls, pairs, codes, void_code: int | None, name: str) -> SegmentationSource:
        """A 'files' source from (image path, mask path) pairs."""
        pairs = list(pairs)
        images = np.array([image for image, _ in pairs], dtype=str)
        masks = np.array([mask for _, mask in pairs], dtype=str)
        return cls("files", images, masks, tuple(codes), void_code, name)

    @functools.cached_property
    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.init_scope():
            return tf.constant(self.items), tf.constant(self.masks)

    def read(self, index) -> tuple[tf.Tensor, tf.Tensor]:
        """(uint8 image [H, W, 3], uint8 mask [H, W, 1]) of example `index`; sizes must agree."""
        items, masks = self.tensors
        image = _read_image(self.kind, items, index)
        if self.kind == "pixels":
            return image, tf.gather(masks, index)
        data = tf.gather(masks, index)
        mask = tf.io.decode_image(tf.io.read_file(data) if self.kind == "files" else data, channels=1,
                                  expand_animations=False)
        mask.set_shape([None, None, 1])
        where = [tf.gather(items, index), data] if self.kind == "files" else [f"example {self.name}", index]
        image_hw, mask_hw = tf.shape(image)[:2], tf.shape(mask)[:2]
        check = tf.debugging.Assert(tf.reduce_all(tf.equal(image_hw, mask_hw)),
                                    [f"{self.name}: image and mask sizes differ:", *where, image_hw, mask_hw])
        with tf.control_dependencies([check]):
            return tf.identity(image), tf.identity(mask)


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationLoader(ImageLoader):
    """ImageLoader over a SegmentationSource: targets are int32 [B, H, W] masks augmented with
    the images. `ignore_code` fills pixels from outside the image (None: the source's void
    code; reflected when the source has none)."""

    ignore_code: int | None = None

    @property
    def fill(self) -> int | None:
        return self.source.void_code if self.ignore_code is None else self.ignore_code

    def _example(self, index, mask, params: dict | None):
        image, labels = self.source.read(index)
        if params is not None:
            mine = {name: tf.gather(value, index) for name, value in params.items()}
            image = T.apply_augment(image, mine, self.size, self.tfms, self.resize_method)
            labels = TT.augment_mask(labels, mine, self.size, self.resize_method, self.fill)
        else:
            image = T.eval_transform(image, self.size, self.resize_method)
            labels = TT.eval_mask(labels, self.size, self.resize_method, self.fill)
        image = tf.ensure_shape(image, [*T.as_hw(self.size), 3])
        if self.stats is not None:
            image = T.normalize(image, *self.stats)
        return image, tf.cast(labels[..., 0], tf.int32), mask


@dataclasses.dataclass(frozen=True, eq=False)
class PointSource:
    """One split's images ('files', 'encoded' or 'pixels' as ImageSource) and float32 points
    [N, n_points, 2] as (row, col) pixel coordinates of each original image (fastai's y first)."""

    kind: str
    items: np.ndarray
    points: np.ndarray
    name: str = "data"

    def __post_init__(self):
        _check_kind(self.kind, self.name)
        points = np.asarray(self.points, np.float32)
        if points.ndim != 3 or points.shape[-1] != 2 or len(points) != len(self.items):
            raise InputError(f"{self.name}: points must be [N={len(self.items)}, n_points, 2] (row, col), "
                             f"got shape {points.shape}")
        if not np.isfinite(points).all():
            raise InputError(f"{self.name}: points hold NaN or infinite values (row {np.argwhere(~np.isfinite(points))[0, 0]})")
        object.__setattr__(self, "points", points)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def classes(self) -> tuple[str, ...]:
        return ()

    @functools.cached_property
    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.init_scope():
            return tf.constant(self.items), tf.constant(self.points)

    def read(self, index) -> tuple[tf.Tensor, tf.Tensor]:
        """(uint8 image [H, W, 3], float32 points [n_points, 2]) of example `index`."""
        items, points = self.tensors
        return _read_image(self.kind, items, index), tf.gather(points, index)


@dataclasses.dataclass(frozen=True, eq=False)
class PointLoader(ImageLoader):
    """ImageLoader over a PointSource: targets float32 [B, n_points * 2] in [-1, 1] (row, col
    pairs), plus 'visible' [B, n_points] (0 for a point the augmentation moved off the image)."""

    def _example(self, index, mask, params: dict | None):
        image, points = self.source.read(index)
        source_hw = tf.shape(image)[:2]
        if params is not None:
            mine = {name: tf.gather(value, index) for name, value in params.items()}
            image = T.apply_augment(image, mine, self.size, self.tfms, self.resize_method)
            unit, visible = TT.augment_points(points, source_hw, mine, self.size, self.resize_method)
        else:
            image = T.eval_transform(image, self.size, self.resize_method)
            unit, visible = TT.eval_points(points, source_hw, self.size, self.resize_method)
        image = tf.ensure_shape(image, [*T.as_hw(self.size), 3])
        if self.stats is not None:
            image = T.normalize(image, *self.stats)
        return image, tf.reshape(unit, [-1]), tf.cast(visible, tf.float32), mask

    def _as_batch(self, parts: tuple) -> dict:
        inputs, targets, visible, mask = parts
        return {"inputs": inputs, "targets": targets, "visible": visible, "mask": mask}


def segmentation_databunch(train: SegmentationSource, valid: SegmentationSource | None,
                           test: SegmentationSource | None = None, **options) -> DataBunch:
    """Train (shuffled, augmented), valid and test segmentation loaders; `options` as
    `sources_databunch` (size, batch_size, tfms, stats, resize_method, seed, ...)."""
    return sources_databunch(train, valid, test, loader=SegmentationLoader, **options)


def points_databunch(train: PointSource, valid: PointSource | None, test: PointSource | None = None,
                     **options) -> DataBunch:
    """Train / valid / test point-regression loaders; `options` as `sources_databunch`."""
    return sources_databunch(train, valid, test, loader=PointLoader, **options)


# ---- CamVid -----------------------------------------------------------------------------
def camvid_sources(data_dir: str | Path | None = None, *, config: str = "fastai", tfds_data_dir: str | None = None,
                   valid_pct: float = 0.2, seed: int = 0,
                   log: Callable[[str], None] = print) -> dict[str, SegmentationSource]:
    """CamVid's splits as SegmentationSources: read straight from `data_dir` when it holds
    either layout (files; no tfds build), else from the tfds builder `camvid/<config>` (a
    prepared one in `data_dir` or `tfds_data_dir`; `fastai` downloads once, failing fast
    offline with the --data-dir hint)."""
    import tensorflow_datasets as tfds

    from jaxfast.datasets import camvid

    if data_dir is not None and camvid.find_layout(data_dir) is not None:
        found = camvid.read_camvid(data_dir, valid_pct, seed)
        log(found.note)
        return {split: SegmentationSource.from_pairs(pairs, found.codes, found.void_code, f"camvid:{split}")
                for split, pairs in found.splits.items() if pairs}
    if config not in camvid.LAYOUTS:
        raise InputError(f"unknown camvid config {config!r}; use one of {sorted(camvid.LAYOUTS)}")
    tfds_dir = data_dir if data_dir is not None else tfds_data_dir
    builder = camvid.Camvid(config=config, data_dir=None if tfds_dir is None else str(tfds_dir))
    if not builder.is_prepared():
        if data_dir is not None:
            raise DatasetUnavailable(f"--data-dir {data_dir} holds neither {camvid.DATA_DIR_HINT} nor a prepared "
                                     f"tfds camvid/{config}")
        if config != "fastai":
            raise DatasetUnavailable(f"camvid/{config} is not prepared in {builder.data_dir}; pass --data-dir with "
                                     f"{camvid.DATA_DIR_HINT}")
        require_download("camvid", camvid.FASTAI_URL, camvid.DATA_DIR_HINT)
        builder.download_and_prepare()
    codes = tuple(builder.info.features["segmentation_mask"].names)
    void_code = codes.index(camvid.LAYOUTS[config][1])
    skip = {"image": tfds.decode.SkipDecoding(), "segmentation_mask": tfds.decode.SkipDecoding()}
    sources = {}
    for split in builder.info.splits:
        rows = list(builder.as_dataset(split=split, decoders=skip).as_numpy_iterator())
        images = np.array([row["image"] for row in rows], dtype=object)
        masks = np.array([row["segmentation_mask"] for row in rows], dtype=object)
        sources[split] = SegmentationSource("encoded", images, masks, codes, void_code, f"camvid:{split}")
    log(f"camvid/{config} (tfds, {builder.data_dir}): " + " / ".join(f"{len(s)} {k}" for k, s in sources.items()))
    return sources


def camvid_databunch(data_dir: str | Path | None = None, *, config: str = "fastai", tfds_data_dir: str | None = None,
                     valid_pct: float = 0.2, seed: int = 0, size=CAMVID_SIZE, resize_method: str = CAMVID_RESIZE,
                     log: Callable[[str], None] = print, **loader_options) -> DataBunch:
    """Lesson 3's CamVid loaders (see `camvid_sources`; sizes in the module doc); a test split
    becomes `extra['test']`."""
    sources = camvid_sources(data_dir, config=config, tfds_data_dir=tfds_data_dir, valid_pct=valid_pct, seed=seed,
                             log=log)
    return segmentation_databunch(sources["train"], sources.get("valid"), sources.get("test"), size=size,
                                  resize_method=resize_method, seed=seed, **loader_options)
