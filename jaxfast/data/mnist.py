"""MNIST and fastai's MNIST_SAMPLE (3s vs 7s) as numpy arrays.

Sources, in order: a local folder (idx files, an .npz, or fastai's PNG folders)
given as `data_dir`, else tfds `mnist` (which fails fast when offline).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxfast.data.download import load_tfds_as_numpy
from jaxfast.errors import InputError, MissingInput

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

# Official file names with (size in bytes, sha256) as tfds records them in
# tensorflow_datasets/url_checksums/mnist.txt. Re-gzipped copies differ in sha256
# (gzip header mtime) while the decompressed content is the same.
MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (
        9912422,
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": (
        28881,
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": (
        1648877,
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        4542,
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}

IDX_IMAGES_MAGIC = 2051  # uint8, 3 dims: [N, rows, cols]
IDX_LABELS_MAGIC = 2049  # uint8, 1 dim: [N]
_IDX_NDIM_BY_MAGIC = {IDX_IMAGES_MAGIC: 3, IDX_LABELS_MAGIC: 1}

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# Share of the test images used for training when only the test set is available:
# 8,000 of 10,000, the rest (2,000) for validation.
TEST_ONLY_TRAIN_FRACTION = 0.8

DIGIT_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
SAMPLE_CLASSES: tuple[str, ...] = ("3", "7")
SAMPLE_NPZ = "mnist_sample.npz"

MNIST_DATA_DIR_HINT = "a folder with the MNIST idx files (t10k-images-idx3-ubyte.gz ...)"
SAMPLE_DATA_DIR_HINT = (
    f"a folder holding {SAMPLE_NPZ} (x_train/y_train/x_valid/y_valid) "
    "or fastai's MNIST_SAMPLE layout train/{3,7}/*.png, valid/{3,7}/*.png"
)


@dataclass(frozen=True, eq=False)
class MnistSplits:
    """Train and validation arrays: x uint8 [N, 28, 28], y int32 [N] class indices.

    `note` says where the data came from and how it was split; `classes` names
    the class of each label index.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    note: str
    classes: tuple[str, ...] = DIGIT_CLASSES


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST idx file (plain or .gz): images uint8 [N, 28, 28] or labels uint8 [N].

    Checks the magic number and that the byte count matches the header, so that a
    truncated download or a wrong file fails here with a ValueError naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                content = stream.read()
        else:
            content = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise InputError(f"{path}: not a valid gzip file ({error})") from error

    if len(content) < 8:
        raise InputError(
            f"{path}: truncated idx header: expected at least 8 bytes, got {len(content)}"
        )
    magic = int.from_bytes(content[:4], "big")
    if magic not in _IDX_NDIM_BY_MAGIC:
        raise InputError(
            f"{path}: bad magic number {magic}: expected {IDX_IMAGES_MAGIC} (images) "
            f"or {IDX_LABELS_MAGIC} (labels)"
        )
    ndim = _IDX_NDIM_BY_MAGIC[magic]
    header_bytes = 4 + 4 * ndim
    if len(content) < header_bytes:
        raise InputError(
            f"{path}: truncated idx header: expected {header_bytes} bytes, got {len(content)}"
        )
    shape = tuple(
        int.from_bytes(content[4 + 4 * axis : 8 + 4 * axis], "big") for axis in range(ndim)
    )
    expected_bytes = header_bytes + int(np.prod(shape))
    if len(content) != expected_bytes:
        problem = "truncated" if len(content) < expected_bytes else "trailing data"
        raise InputError(
            f"{path}: {problem}: header says shape {shape}, expected {expected_bytes} bytes, "
            f"got {len(content)}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_bytes).reshape(shape).copy()


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The idx file `stem` in `folder`, uncompressed or .gz, or None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int32 [N], checked to have the same N."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise InputError(
            f"{images_path} / {labels_path}: expected images [N, 28, 28] and labels [N], "
            f"got shapes {images.shape} and {labels.shape}"
        )
    if len(images) != len(labels):
        raise InputError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    return images, labels.astype(np.int32)


def split_test_only(
    images: np.ndarray, labels: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle with `seed` and split 80/20 into (x_train, y_train, x_valid, y_valid).

    Used when only MNIST's 10k test images are available: 8,000 train / 2,000 valid.
    """
    order = np.random.default_rng(seed).permutation(len(images))
    train_count = int(round(TEST_ONLY_TRAIN_FRACTION * len(images)))
    train_index, valid_index = order[:train_count], order[train_count:]
    return images[train_index], labels[train_index], images[valid_index], labels[valid_index]


def _load_mnist_folder(folder: Path, seed: int) -> MnistSplits:
    """MNIST from the idx files in `folder`: full train/test, or an 80/20 split of test only."""
    train_images = _find_idx(folder, TRAIN_IMAGES)
    train_labels = _find_idx(folder, TRAIN_LABELS)
    test_images = _find_idx(folder, TEST_IMAGES)
    test_labels = _find_idx(folder, TEST_LABELS)

    if train_images and train_labels and test_images and test_labels:
        x_train, y_train = _read_idx_pair(train_images, train_labels)
        x_valid, y_valid = _read_idx_pair(test_images, test_labels)
        note = f"MNIST: {len(x_train):,} train / {len(x_valid):,} test as valid"
        return MnistSplits(x_train, y_train, x_valid, y_valid, note)

    if test_images and test_labels:
        images, labels = _read_idx_pair(test_images, test_labels)
        x_train, y_train, x_valid, y_valid = split_test_only(images, labels, seed)
        note = (
            f"MNIST test set only in DATA_DIR: {len(x_train):,} train / {len(x_valid):,} valid "
            f"drawn from the {len(images):,} test images (80/20, seed {seed})"
        )
        return MnistSplits(x_train, y_train, x_valid, y_valid, note)

    looked_for = ", ".join(
        f"{stem}[.gz]" for stem in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    )
    raise MissingInput(
        f"No usable MNIST idx files in {folder}: looked for {looked_for}; need the "
        f"{TEST_IMAGES} + {TEST_LABELS} pair, plus the train pair for the full 60k train set"
    )


def load_mnist(data_dir: str | Path | None, *, seed: int = 0) -> MnistSplits:
    """MNIST digits 0-9 from the idx files in `data_dir`, or from tfds `mnist` when None.

    A folder with only the test pair (t10k-*) gives an 80/20 split of the test
    images (8,000 / 2,000 for the full 10k), shuffled with `seed`.
    """
    if data_dir is not None:
        return _load_mnist_folder(Path(data_dir), seed)
    train = _load_tfds_mnist_split("train")
    test = _load_tfds_mnist_split("test")
    note = f"MNIST (tfds): {len(train[0]):,} train / {len(test[0]):,} test as valid"
    return MnistSplits(train[0], train[1], test[0], test[1], note)


def _load_tfds_mnist_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """One tfds `mnist` split as images uint8 [N, 28, 28] and labels int32 [N]."""
    features = load_tfds_as_numpy(
        "mnist", split, MNIST_URL + f"{TRAIN_IMAGES}.gz", MNIST_DATA_DIR_HINT
    )
    images = features["image"].astype(np.uint8).reshape(-1, 28, 28)
    return images, features["label"].astype(np.int32)


def _digits_to_sample_labels(digits: np.ndarray, source: str) -> np.ndarray:
    """Map digits 3 -> 0 and 7 -> 1 (labels already 0/1 are kept as they are)."""
    values = set(np.unique(digits).tolist())
    if values <= {3, 7}:
        return (digits == 7).astype(np.int32)
    if values <= {0, 1}:
        return digits.astype(np.int32)
    raise InputError(f"{source}: expected labels 3/7 (or 0/1), found {sorted(values)}")


def _read_png_class_folders(split_folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] and 0/1 labels from `split_folder`/{3,7}/*.png, sorted by numeric stem."""
    from PIL import Image

    images: list[np.ndarray] = []
    labels: list[int] = []
    for class_index, class_name in enumerate(SAMPLE_CLASSES):
        png_paths = sorted(
            (split_folder / class_name).glob("*.png"),
            key=lambda png: (int(png.stem) if png.stem.isdigit() else float("inf"), png.stem),
        )
        for png_path in png_paths:
            with Image.open(png_path) as image:
                images.append(np.asarray(image.convert("L"), dtype=np.uint8))
            labels.append(class_index)
    if not images:
        raise MissingInput(f"No PNGs in {split_folder}/3 or {split_folder}/7")
    return np.stack(images), np.asarray(labels, dtype=np.int32)


def load_mnist_sample(data_dir: str | Path | None) -> MnistSplits:
    """fastai's MNIST_SAMPLE: 3s vs 7s, labels 0 = "3", 1 = "7".

    From `data_dir`/mnist_sample.npz, or fastai's PNG folders train/{3,7}, valid/{3,7};
    without data_dir, tfds `mnist` filtered to 3s and 7s (the same 12,396 / 2,038 images).
    """
    if data_dir is None:
        return _load_tfds_mnist_sample()
    folder = Path(data_dir)
    npz_path = folder / SAMPLE_NPZ
    if npz_path.is_file():
        with np.load(npz_path) as arrays:
            x_train, x_valid = arrays["x_train"], arrays["x_valid"]
            y_train = _digits_to_sample_labels(arrays["y_train"], f"{npz_path}:y_train")
            y_valid = _digits_to_sample_labels(arrays["y_valid"], f"{npz_path}:y_valid")
        note = (
            f"MNIST_SAMPLE ({npz_path.name}): {len(x_train):,} train / {len(x_valid):,} valid, "
            "classes 3 -> 0, 7 -> 1"
        )
        return MnistSplits(x_train, y_train, x_valid, y_valid, note, SAMPLE_CLASSES)
    if (folder / "train" / "3").is_dir() and (folder / "valid" / "3").is_dir():
        x_train, y_train = _read_png_class_folders(folder / "train")
        x_valid, y_valid = _read_png_class_folders(folder / "valid")
        note = (
            f"MNIST_SAMPLE (PNG folders): {len(x_train):,} train / {len(x_valid):,} valid, "
            "classes 3 -> 0, 7 -> 1"
        )
        return MnistSplits(x_train, y_train, x_valid, y_valid, note, SAMPLE_CLASSES)
    raise MissingInput(
        f"No MNIST_SAMPLE data in {folder}: looked for {SAMPLE_NPZ} and for "
        "train/{3,7}/*.png with valid/{3,7}/*.png"
    )


def _load_tfds_mnist_sample() -> MnistSplits:
    """MNIST_SAMPLE rebuilt from tfds `mnist`: the 3s and 7s of train and of test."""

    def threes_and_sevens(split: str) -> tuple[np.ndarray, np.ndarray]:
        features = load_tfds_as_numpy(
            "mnist", split, MNIST_URL + f"{TRAIN_IMAGES}.gz", SAMPLE_DATA_DIR_HINT
        )
        digits = features["label"]
        keep = (digits == 3) | (digits == 7)
        images = features["image"][keep].astype(np.uint8).reshape(-1, 28, 28)
        return images, (digits[keep] == 7).astype(np.int32)

    x_train, y_train = threes_and_sevens("train")
    x_valid, y_valid = threes_and_sevens("test")
    note = (
        f"MNIST_SAMPLE from tfds mnist (3s and 7s of train/test): {len(x_train):,} train / "
        f"{len(x_valid):,} valid, classes 3 -> 0, 7 -> 1"
    )
    return MnistSplits(x_train, y_train, x_valid, y_valid, note, SAMPLE_CLASSES)
