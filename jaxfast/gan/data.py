"""Unlabelled images for GANs (the WGAN lesson's LSUN bedrooms, or any image folder) and the
pictures a GAN run writes (sample grids).

Images come through jaxfast's tf.data `ImageLoader` (order from (seed, epoch), exact resume),
normalised with mean = std = 0.5 to [-1, 1], the range of basic_generator's tanh (fastai's
lesson: `normalize(stats=[[0.5]*3, [0.5]*3])`); training loaders drop the last partial batch.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np

from jaxfast.data.download import require_download
from jaxfast.errors import InputError, MissingInput
from jaxfast.vision.folders import is_image_name
from jaxfast.vision.pipeline import ImageLoader, ImageSource, hide_accelerators_from_tensorflow

HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # pixels in [0, 1] -> [-1, 1]
LSUN_URL = "http://dl.yf.io/lsun/scenes/{category}_train_lmdb.zip"  # tfds lsun's source
# Folders of label maps (CamVid's trainannot/, fastai's labels/) are not pictures to imitate.
DEFAULT_EXCLUDE = ("*annot", "labels")


def image_files(root: str | Path, exclude_dirs=DEFAULT_EXCLUDE) -> list[Path]:
    """Every image file under `root` (recursive, sorted), skipping folders whose name matches
    a glob of `exclude_dirs` and hidden files."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"image folder {root} does not exist")
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(fnmatch.fnmatch(p, pattern) for p in parts[:-1] for pattern in exclude_dirs):
            continue
        if path.is_file() and not path.name.startswith(".") and is_image_name(path):
            found.append(path)
    if not found:
        raise InputError(f"no image files under {root} (folders matching {list(exclude_dirs)} are skipped)")
    return found


def folder_source(root: str | Path, exclude_dirs=DEFAULT_EXCLUDE, max_images: int | None = None,
                  skip: int = 0) -> ImageSource:
    """The images under `root` as an unlabelled ImageSource (files `skip`..`skip + max_images`)."""
    paths = image_files(root, exclude_dirs)[skip:]
    paths = paths[:max_images] if max_images is not None else paths
    if not paths:
        raise InputError(f"{root}: no images left after skipping {skip}")
    items = np.array([str(p) for p in paths])
    return ImageSource("files", items, np.zeros(len(items), np.int32), ("image",), str(root))


def lsun_source(category: str = "bedroom", max_images: int = 100_000, tfds_data_dir: str | None = None) -> ImageSource:
    """The first `max_images` of tfds `lsun/<category>` (the WGAN lesson's bedrooms), kept
    JPEG-encoded in memory. Not prepared and offline: fails within seconds, naming --data-dir."""
    import tensorflow_datasets as tfds

    hide_accelerators_from_tensorflow()
    name = f"lsun/{category}"
    builder = tfds.builder(name, data_dir=tfds_data_dir)
    if not builder.is_prepared():
        require_download(name, LSUN_URL.format(category=category), "a folder of images (any layout, searched "
                         "recursively: e.g. ../shared/data/camvid)")
        builder.download_and_prepare()
    ds = builder.as_dataset(split=f"train[:{int(max_images)}]", decoders={"image": tfds.decode.SkipDecoding()})
    images = np.array([example["image"] for example in ds.as_numpy_iterator()], dtype=object)
    return ImageSource("encoded", images, np.zeros(len(images), np.int32), ("image",), f"{name}:train")


def gan_loader(source: ImageSource, size: int, batch_size: int, seed: int = 0, shuffle: bool = True) -> ImageLoader:
    """Square `size` images in [-1, 1] (centre crop), shuffled per (seed, epoch), last partial batch dropped."""
    return ImageLoader(source, batch_size, size, shuffle=shuffle, drop_last=shuffle, tfms=None, stats=HALF_STATS,
                       resize_method="crop", seed=seed)


def real_images_batch(batch: dict) -> dict:
    """A loader batch as the GAN steps' batch: the images are the real `targets`; the
    generator's noise is drawn from the step's key."""
    return {"targets": batch["inputs"], "mask": batch["mask"]}


def image_grid(images: np.ndarray, n_cols: int | None = None, pad: int = 2) -> np.ndarray:
    """[N, H, W, C] images in [-1, 1] -> one uint8 [rows * (H + pad), cols * (W + pad), 3] grid."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InputError(f"image_grid: images must be [N, H, W, 1 or 3], got {images.shape}")
    n, h, w, _ = images.shape
    n_cols = n_cols or int(np.ceil(np.sqrt(n)))
    n_rows = -(-n // n_cols)
    grid = np.ones((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), np.float32)
    pixels = np.clip((images + 1) / 2, 0, 1)
    pixels = np.repeat(pixels, 3, axis=-1) if pixels.shape[-1] == 1 else pixels
    for i in range(n):
        r, c = divmod(i, n_cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = pixels[i]
    return (grid * 255).round().astype(np.uint8)


def save_grid(images: np.ndarray, path: str | Path, n_cols: int | None = None) -> Path:
    """A PNG of `image_grid(images)` (its folder made if needed; process 0 alone writes it)."""
    import matplotlib.pyplot as plt

    from jaxfast.distributed import is_primary

    path = Path(path)
    if not is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, image_grid(images, n_cols))
    return path
