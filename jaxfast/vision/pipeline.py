"""Image batches over tf.data, implementing the Learner's `Loader` protocol.

Every batch has exactly `batch_size` rows {'inputs': float32 NHWC, 'targets': int32,
'mask': float32}; a last partial batch is padded with repeated rows and masked out
(training loaders drop it instead). The row order is a permutation drawn from
(seed, epoch) and each example's augmentation is row `index` of draws keyed on
(seed, epoch) (see jaxfast.vision.transforms), so
`batches(epoch, start=k)` gives exactly the batches k... of a full pass (exact resume).
With several processes (jax.distributed), every process plans the same global batches and
`local_batches(epoch, start, rows)` decodes only the rows of each batch that its own devices
hold (jaxfast.parallel's `Runner.local_rows`; the Learner asks for them): each process reads
its own share of every split, and the batches the steps see are those of one process. (A loop
of one's own can instead give each process a strided share of the files: `process_index`,
`process_count`.) `with_size` gives the same loader at another image size (progressive resizing).

Sources: files found by `jaxfast.vision.folders`, or tfds catalog datasets
(`oxford_iiit_pet`, `mnist`, `cifar10`) kept encoded in memory; offline, tfds fails
fast and `data_dir` (a prepared tfds dir or an image folder) is used instead. Segmentation
masks and points: jaxfast.vision.segmentation's loaders (ImageLoaders whose targets follow
the image's augmentation).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np
import tensorflow as tf

from jaxfast.data.download import DatasetUnavailable, require_download
from jaxfast.data.loader import DataBunch
from jaxfast.data.mnist import MNIST_URL, TRAIN_IMAGES
from jaxfast.vision import transforms as T
from jaxfast.vision.folders import ImageSplit, ImageSplits, find_images


@functools.cache
def hide_accelerators_from_tensorflow() -> None:
    """Make TensorFlow see no GPU, once, before this module's first TF tensor or dataset.

    Why: tf.data only feeds the host, and a TensorFlow that initialises its GPU devices
    claims the accelerator's memory that JAX uses. Called lazily (not at import) so that
    importing the module changes nothing; TF only accepts it before its devices are
    initialised, so later calls, or a TF already initialised elsewhere, leave it as is."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised: nothing left to change
        pass

SOURCE_KINDS = ("files", "encoded", "pixels")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSource:
    """One split's images: file paths ('files'), encoded bytes ('encoded') or uint8
    [N, H, W, C] arrays ('pixels'), with int32 labels and the class names."""

    kind: str
    items: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str = "data"

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"{self.name}: source kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if len(self.items) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.items)} images but {len(self.labels)} labels")
        if self.kind == "pixels" and (self.items.ndim != 4 or self.items.shape[-1] not in (1, 3)):
            raise ValueError(f"{self.name}: pixels must be [N, H, W, 1 or 3], got shape {self.items.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_split(cls, split: ImageSplit, classes, name: str) -> ImageSource:
        return cls("files", split.paths, split.labels, tuple(classes), name)

    @functools.cached_property
    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(items, labels) as eager tf tensors, made once and shared by every epoch's pipeline."""
        hide_accelerators_from_tensorflow()
        with tf.init_scope():  # eager even when first asked for inside a traced map function
            return tf.constant(self.items), tf.constant(self.labels.astype(np.int32))

    def read(self, index: tf.Tensor) -> tf.Tensor:
        """uint8 [H, W, 3] image `index`."""
        items = self.tensors[0]
        if self.kind == "files":
            return T.decode_image(tf.io.read_file(tf.gather(items, index)))
        if self.kind == "encoded":
            return T.decode_image(tf.gather(items, index))
        pixels = tf.gather(items, index)
        return tf.image.grayscale_to_rgb(pixels) if self.items.shape[-1] == 1 else pixels


@dataclasses.dataclass(frozen=True, eq=False)
class ImageLoader:
    """Fixed-size, masked image batches from an ImageSource (see the module docstring).

    `tfms` None means no augmentation (resize + centre crop only); `stats` (mean, std)
    in [0, 1] units, or None to leave pixels in [0, 1].
    """

    source: ImageSource
    batch_size: int
    size: int | tuple[int, int] = 224
    shuffle: bool = False
    drop_last: bool = False
    tfms: T.TransformConfig | None = None
    stats: tuple | None = T.IMAGENET_STATS
    resize_method: str = "crop"
    seed: int = 0
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        name = self.source.name
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"{name}: process_index {self.process_index} not in [0, {self.process_count})")
        if self.batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {self.batch_size}")
        if self.resize_method not in T.RESIZE_METHODS:
            raise ValueError(f"{name}: resize_method must be one of {T.RESIZE_METHODS}, got {self.resize_method!r}")
        T.as_hw(self.size)
        if len(self.source) < self.process_count:
            raise ValueError(f"{name}: {len(self.source)} images cannot be shared by {self.process_count} processes")
        if self.drop_last and len(self.source) // self.process_count < self.batch_size:
            raise ValueError(
                f"{name}: {len(self.source) // self.process_count} images per process is fewer than one batch "
                f"of {self.batch_size} and the last partial batch is dropped; lower the batch size"
            )

    @property
    def classes(self) -> tuple[str, ...]:
        return self.source.classes

    @property
    def shard(self) -> np.ndarray:
        """Indices into the source read by this process (a strided share of the list)."""
        return np.arange(len(self.source))[self.process_index :: self.process_count]

    @property
    def num_rows(self) -> int:
        return len(self.shard)

    def __len__(self) -> int:
        """Batches per epoch, the same on every process."""
        n, count, bs = len(self.source), self.process_count, self.batch_size
        if self.drop_last:
            return (n // count) // bs
        largest_shard = (n + count - 1) // count
        return (largest_shard + bs - 1) // bs

    def with_size(self, size) -> ImageLoader:
        """The same loader (order, keys, augmentation) producing `size` images."""
        return dataclasses.replace(self, size=size)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Source indices and mask of every row of `epoch` (len(self) * batch_size of each)."""
        shard = self.shard
        order = np.arange(len(shard))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(shard))
        rows = len(self) * self.batch_size
        real = min(rows, len(shard))
        index = shard[order[:real]]
        mask = np.zeros(rows, np.float32)
        mask[:real] = 1.0
        return np.concatenate([index, np.resize(index, rows - real)]), mask

    def augment_params(self, epoch: int) -> dict:
        """Every example's augmentation parameters for `epoch` ([N, ...] tensors, row = index):
        drawn from the stateless key (seed, epoch), so any batch of the epoch can be rebuilt."""
        key = tf.random.experimental.stateless_fold_in(tf.constant([self.seed, 0x5EED], tf.int64), epoch)
        return T.augment_params(T.draws(key, len(self.source)), self.size, self.tfms)

    def _example(self, index, mask, params: dict | None):
        image = self.source.read(index)
        if params is not None:
            mine = {name: tf.gather(value, index) for name, value in params.items()}
            image = T.apply_augment(image, mine, self.size, self.tfms, self.resize_method)
        else:
            image = T.eval_transform(image, self.size, self.resize_method)
        image = tf.ensure_shape(image, [*T.as_hw(self.size), 3])
        if self.stats is not None:
            image = T.normalize(image, *self.stats)
        return image, tf.gather(self.source.tensors[1], index), mask

    def dataset(self, epoch: int = 0, start: int = 0, stop: int | None = None,
                rows: np.ndarray | None = None) -> tf.data.Dataset:
        """Batches start..stop-1 of `epoch` as a tf.data pipeline (decode, augment, batch, prefetch);
        with `rows` (positions within a batch), only those rows of each batch."""
        hide_accelerators_from_tensorflow()
        stop = len(self) if stop is None else min(stop, len(self))
        index, mask = self.plan(epoch)
        bs = self.batch_size
        rows = np.arange(bs) if rows is None else np.asarray(rows, np.int64)
        take = (np.arange(start, stop)[:, None] * bs + rows[None, :]).ravel()
        params = self.augment_params(epoch) if self.tfms is not None else None
        ds = tf.data.Dataset.from_tensor_slices((index[take].astype(np.int64), mask[take]))
        ds = ds.map(functools.partial(self._example, params=params), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        return ds.batch(len(rows), drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    def _as_batch(self, parts: tuple) -> dict:
        """One element of `dataset` as the batch dict."""
        inputs, targets, mask = parts
        return {"inputs": inputs, "targets": targets, "mask": mask}

    def batches(self, epoch: int = 0, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """Yield the batches of `epoch` from index `start` as numpy dicts."""
        for parts in self.dataset(epoch, start, stop).as_numpy_iterator():
            yield self._as_batch(parts)

    def local_batches(self, epoch: int = 0, start: int = 0, rows: np.ndarray | None = None) -> Iterator[dict]:
        """`batches(epoch, start)` with only `rows` of each batch read and decoded (the rows that
        this process's devices hold under jax.distributed); the other rows are zeros, which the
        runner never sends to a device. `rows` None: every row."""
        if rows is None:
            yield from self.batches(epoch, start)
            return
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or not len(rows) or rows.min() < 0 or rows.max() >= self.batch_size:
            raise ValueError(f"{self.source.name}: rows must be positions in a batch of {self.batch_size}, got {rows}")

        def spread(part):
            full = np.zeros((self.batch_size, *part.shape[1:]), part.dtype)
            full[rows] = part
            return full

        for parts in self.dataset(epoch, start, None, rows).as_numpy_iterator():
            yield jax.tree.map(spread, self._as_batch(parts))

    def sample_inputs(self) -> np.ndarray:
        """The inputs of the first batch (for model initialisation)."""
        return next(self.batches(0, 0, 1))["inputs"]


# ---- helpers around loaders ----------------------------------------------------------------
def measure_pipeline(loader: ImageLoader, n_batches: int) -> float:
    """Images per second the pipeline delivers, timed over `n_batches` after a warm-up batch."""
    def endless():
        epoch = 0
        while True:
            yield from loader.batches(epoch)
            epoch += 1

    stream = endless()
    next(stream)  # builds and warms the pipeline
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(stream)
    return n_batches * loader.batch_size / (time.perf_counter() - t0)


def compute_stats(loader: ImageLoader, n_batches: int = 8) -> tuple[tuple, tuple]:
    """Per-channel (mean, std) in [0, 1] units of up to `n_batches` unaugmented batches."""
    plain = dataclasses.replace(loader, tfms=None, stats=None, shuffle=True, drop_last=False)
    total, total_sq, count = np.zeros(3), np.zeros(3), 0.0
    for batch in plain.batches(0, 0, n_batches):
        real = batch["inputs"][batch["mask"] > 0].astype(np.float64)
        total += real.sum(axis=(0, 1, 2))
        total_sq += (real**2).sum(axis=(0, 1, 2))
        count += real.shape[0] * real.shape[1] * real.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(mean.tolist()), tuple(std.tolist())


def databunch_with_size(data: DataBunch, size) -> DataBunch:
    """Every loader of `data` at image `size` (progressive resizing between fit calls)."""
    resize = lambda loader: None if loader is None else loader.with_size(size)
    return DataBunch(resize(data.train), resize(data.valid), {k: resize(v) for k, v in data.extra.items()})


def sources_databunch(
    train: ImageSource, valid: ImageSource | None, test: ImageSource | None = None, *, size=224,
    batch_size: int = 64, valid_batch_size: int | None = None, tfms: T.TransformConfig | None = T.FASTAI_TRANSFORMS,
    stats="imagenet", resize_method: str = "crop", seed: int = 0, process_index: int = 0,
    process_count: int = 1, loader: type[ImageLoader] | None = None,
) -> DataBunch:
    """Train (shuffled, augmented, last batch dropped), valid and test loaders (`process_index`,
    `process_count`: a strided share of the files for a loop of one's own; the Learner needs 0, 1).

    `stats`: 'imagenet', 'computed' (from the training images), None, or (mean, std).
    `loader`: the ImageLoader class (jaxfast.vision.segmentation's for masks and points).
    """
    loader = ImageLoader if loader is None else loader
    common = dict(size=size, resize_method=resize_method, seed=seed, process_index=process_index,
                  process_count=process_count)
    train_loader = loader(train, batch_size, shuffle=True, drop_last=True, tfms=tfms, stats=None, **common)
    if stats == "imagenet":
        stats = T.IMAGENET_STATS
    elif stats == "computed":
        stats = compute_stats(train_loader)
    elif stats is not None and (len(stats) != 2 or len(stats[0]) != 3 or len(stats[1]) != 3):
        raise ValueError(f"stats must be 'imagenet', 'computed', None or (mean[3], std[3]), got {stats!r}")
    train_loader = dataclasses.replace(train_loader, stats=stats)
    eval_loader = lambda src: loader(src, valid_batch_size or batch_size, stats=stats, **common)
    valid_loader = eval_loader(valid) if valid is not None and len(valid) else None
    extra = {"test": eval_loader(test)} if test is not None and len(test) else {}
    return DataBunch(train_loader, valid_loader, extra)


def image_databunch(
    folder: str | Path, *, csv: str | None = None, label_re: str | None = None, valid_pct: float | None = None,
    seed: int = 0, verify: bool = True, log: Callable[[str], None] = print, cleaned: str | Path | None = None,
    **loader_options,
) -> DataBunch:
    """fastai's ImageDataBunch.from_folder / from_csv / from_name_re on an own image folder.

    See `find_images` for the layouts and `sources_databunch` for `loader_options`
    (size, batch_size, tfms, stats, ...). A test/<class> folder becomes `extra['test']`.
    `cleaned`: the CSV of decisions written by the image cleaner (`python -m
    jaxfast.vision.cleaner`): deleted files are left out, relabelled ones take their new class.
    """
    from jaxfast.vision.cleaner import apply_cleaning

    hide_accelerators_from_tensorflow()  # find_images verifies the files through tf.data
    found = find_images(folder, csv=csv, label_re=label_re, valid_pct=valid_pct, seed=seed, verify=verify)
    log(found.note)
    if cleaned is not None:
        found = apply_cleaning(found, cleaned, folder)
        log(f"cleaning decisions applied from {cleaned}")
    return splits_databunch(found, seed=seed, **loader_options)


def splits_databunch(found: ImageSplits, *, seed: int = 0, **loader_options) -> DataBunch:
    """Loaders for the train / valid (/ test as extra) splits that `find_images` found."""
    make = lambda split, name: None if split is None else ImageSource.from_split(split, found.classes, name)
    return sources_databunch(
        make(found.train, "train"), make(found.valid, "valid"), make(found.test, "test"), seed=seed, **loader_options
    )


# ---- tfds catalog ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CatalogEntry:
    """A tfds dataset: its source URL, what --data-dir may hold instead, and its splits."""

    url: str
    data_dir_hint: str
    folder: dict  # find_images options for a local image-folder copy ('subdir': folder below data_dir)
    valid_split: str | None  # the tfds split used for validation; None: valid_pct of train
    test_split: str | None = None  # a tfds split evaluated as extra 'test'


CATALOG = {
    "oxford_iiit_pet": CatalogEntry(
        "https://thor.robots.ox.ac.uk/~vgg/data/pets/images.tar.gz",
        "a prepared tfds oxford_iiit_pet (a tfds data dir) or fastai's oxford-iiit-pet folder (images/<Breed>_<n>.jpg)",
        {"subdir": "images", "label_re": r"^(.+)_\d+\.jpe?g$"}, None, "test",
    ),
    "mnist": CatalogEntry(
        MNIST_URL + f"{TRAIN_IMAGES}.gz",
        "a prepared tfds mnist (a tfds data dir) or fastai's mnist_png folder (training/<digit>/, testing/<digit>/)",
        {"train": "training", "valid": ("testing",)}, "test",
    ),
    "cifar10": CatalogEntry(
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "a prepared tfds cifar10 (a tfds data dir) or fastai's cifar10 folder (train/<class>/, test/<class>/)",
        {"valid": ("test",), "test": None}, "test",
    ),
}


def load_tfds_images(name: str, split: str, tfds_data_dir: str | Path | None = None) -> ImageSource:
    """A tfds split as an in-memory 'encoded' ImageSource (images stay JPEG/PNG bytes).

    Not prepared locally: probe the URL first (DatasetUnavailable within seconds offline),
    then let tfds download and prepare it.
    """
    import tensorflow_datasets as tfds

    hide_accelerators_from_tensorflow()
    entry = _entry(name)
    builder = tfds.builder(name, data_dir=None if tfds_data_dir is None else str(tfds_data_dir))
    if not builder.is_prepared():
        require_download(name, entry.url, entry.data_dir_hint)
        builder.download_and_prepare()
    image_features = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
    ds = builder.as_dataset(split=split, decoders={k: tfds.decode.SkipDecoding() for k in image_features})
    images, labels = [], []
    for example in ds.as_numpy_iterator():
        images.append(example["image"])
        labels.append(example["label"])
    classes = tuple(builder.info.features["label"].names)
    images, labels = np.array(images, dtype=object), np.array(labels, np.int32)
    return ImageSource("encoded", images, labels, classes, f"{name}:{split}")


def _entry(name: str) -> CatalogEntry:
    if name not in CATALOG:
        raise ValueError(f"unknown catalog dataset {name!r}; known: {sorted(CATALOG)}")
    return CATALOG[name]


def catalog_databunch(
    name: str, *, data_dir: str | Path | None = None, tfds_data_dir: str | Path | None = None,
    valid_pct: float = 0.2, seed: int = 0, verify: bool = True, log: Callable[[str], None] = print,
    **loader_options,
) -> DataBunch:
    """`oxford_iiit_pet` (lesson 1), `mnist` or `cifar10` through tfds, or from `data_dir`.

    `data_dir` may be a tfds data dir holding the prepared dataset or an image folder
    (see CATALOG hints). Pets has no validation split: `valid_pct` of train, with `seed`.
    """
    import tensorflow_datasets as tfds

    hide_accelerators_from_tensorflow()  # before tfds or find_images run TensorFlow
    entry = _entry(name)
    if data_dir is not None and not tfds.builder(name, data_dir=str(data_dir)).is_prepared():
        options = dict(entry.folder)
        folder = Path(data_dir) / options.pop("subdir", "")
        if not folder.is_dir():
            raise DatasetUnavailable(f"--data-dir {data_dir} holds neither {entry.data_dir_hint} (no {folder})")
        if options.get("label_re"):
            options["valid_pct"] = valid_pct
        found = find_images(folder, seed=seed, verify=verify, **options)
        log(found.note)
        return splits_databunch(found, seed=seed, **loader_options)

    tfds_dir = data_dir if data_dir is not None else tfds_data_dir
    train = load_tfds_images(name, "train", tfds_dir)
    if entry.valid_split is not None:
        valid = load_tfds_images(name, entry.valid_split, tfds_dir)
    else:
        from jaxfast.vision.folders import random_split

        is_valid = random_split(len(train), valid_pct, seed)
        valid = dataclasses.replace(
            train, items=train.items[is_valid], labels=train.labels[is_valid], name=f"{name}:valid"
        )
        train = dataclasses.replace(train, items=train.items[~is_valid], labels=train.labels[~is_valid])
    test = load_tfds_images(name, entry.test_split, tfds_dir) if entry.test_split else None
    log(f"{name} (tfds): {len(train)} train / {len(valid)} valid" + (f" / {len(test)} test" if test else ""))
    return sources_databunch(train, valid, test, seed=seed, **loader_options)
