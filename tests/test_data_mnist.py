"""MNIST loaders: idx parsing, local-folder splits, fail-fast download check, real data."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest

from jaxfast.data.download import DatasetUnavailable, check_reachable, require_download
from jaxfast.data.mnist import MnistSplits, load_mnist, load_mnist_sample, read_idx

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_MNIST = SHARED_DATA / "mnist"
REAL_MNIST_SAMPLE = SHARED_DATA / "mnist_sample"
REAL_MNIST_TINY = SHARED_DATA / "mnist_tiny"


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array of 1 or 3 dims as an idx file."""
    magic = {1: 2049, 3: 2051}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write `array` as idx, gzipped when the name ends in .gz."""
    content = idx_bytes(array)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(content))
    else:
        path.write_bytes(content)
    return path


def fake_images_and_labels(count: int, seed: int = 123) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose first pixel holds the index, so the split can be traced."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(count)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_images_and_labels(tmp_path, suffix):
    images, labels = fake_images_and_labels(7)
    images_path = write_idx(tmp_path / f"images-idx3-ubyte{suffix}", images)
    labels_path = write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels)

    read_images, read_labels = read_idx(images_path), read_idx(labels_path)

    assert read_images.dtype == np.uint8 and read_images.shape == (7, 28, 28)
    assert read_labels.dtype == np.uint8 and read_labels.shape == (7,)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)


def test_read_idx_rejects_bad_magic(tmp_path):
    content = bytearray(idx_bytes(np.zeros(5, np.uint8)))
    content[:4] = (1234).to_bytes(4, "big")
    path = tmp_path / "bad-magic-idx1-ubyte"
    path.write_bytes(bytes(content))

    with pytest.raises(ValueError, match="bad magic number 1234") as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def test_read_idx_rejects_truncated_file(tmp_path):
    images, _ = fake_images_and_labels(3)
    content = idx_bytes(images)
    path = tmp_path / "short-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(content[:-100]))

    expected = len(content)
    wrong_size = f"truncated.*expected {expected} bytes, got {expected - 100}"
    with pytest.raises(ValueError, match=wrong_size) as caught:
        read_idx(path)
    assert str(path) in str(caught.value)


def write_fake_test_pair(folder: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = fake_images_and_labels(count)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_load_mnist_splits_test_only_folder_80_20_deterministically(tmp_path):
    images, labels = write_fake_test_pair(tmp_path, 50)

    splits = load_mnist(tmp_path, seed=3)

    assert isinstance(splits, MnistSplits)
    assert splits.x_train.shape == (40, 28, 28) and splits.x_valid.shape == (10, 28, 28)
    assert splits.y_train.dtype == np.int32 and splits.y_valid.dtype == np.int32
    for phrase in ("40 train / 10 valid", "80/20", "seed 3"):
        assert phrase in splits.note
    # Every test image is used exactly once, with its own label.
    used = np.concatenate([splits.x_train[:, 0, 0], splits.x_valid[:, 0, 0]])
    assert sorted(used.tolist()) == list(range(50))
    np.testing.assert_array_equal(splits.y_train, labels[splits.x_train[:, 0, 0]])
    # Same seed, same split; another seed, another order.
    again = load_mnist(tmp_path, seed=3)
    np.testing.assert_array_equal(again.x_train, splits.x_train)
    np.testing.assert_array_equal(again.y_valid, splits.y_valid)
    other = load_mnist(tmp_path, seed=4)
    assert not np.array_equal(other.x_train[:, 0, 0], splits.x_train[:, 0, 0])


def test_load_mnist_uses_full_train_set_when_present(tmp_path):
    write_fake_test_pair(tmp_path, 6)
    train_images, train_labels = fake_images_and_labels(9, seed=7)
    write_idx(tmp_path / "train-images-idx3-ubyte", train_images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", train_labels)

    splits = load_mnist(tmp_path)

    np.testing.assert_array_equal(splits.x_train, train_images)
    assert splits.x_valid.shape == (6, 28, 28)
    assert splits.note == "MNIST: 9 train / 6 test as valid"


def test_load_mnist_missing_files_lists_what_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_mnist(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in message


def test_require_download_fails_fast_for_unreachable_url():
    url = "http://localhost:9/x"
    started = time.monotonic()
    assert not check_reachable(url)
    with pytest.raises(DatasetUnavailable) as caught:
        require_download("mnist", url, "a folder with the MNIST idx files")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "mnist" in message and url in message and "--data-dir" in message


@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST folder {REAL_MNIST} is absent")
def test_load_mnist_on_real_test_only_folder():
    splits = load_mnist(REAL_MNIST, seed=0)

    assert splits.x_train.shape == (8000, 28, 28) and splits.x_valid.shape == (2000, 28, 28)
    assert splits.y_train.shape == (8000,) and splits.y_valid.shape == (2000,)
    labels = np.concatenate([splits.y_train, splits.y_valid])
    assert labels.min() == 0 and labels.max() == 9
    pixels = np.concatenate([splits.x_train, splits.x_valid])
    assert abs(pixels.mean() - 33.79) < 0.01
    assert splits.note.startswith("MNIST test set only in DATA_DIR: 8,000 train / 2,000 valid")


@pytest.mark.skipif(
    not (REAL_MNIST_SAMPLE / "mnist_sample.npz").is_file(),
    reason=f"real MNIST_SAMPLE file {REAL_MNIST_SAMPLE / 'mnist_sample.npz'} is absent",
)
def test_load_mnist_sample_on_real_npz():
    splits = load_mnist_sample(REAL_MNIST_SAMPLE)

    assert splits.x_train.shape == (12396, 28, 28) and splits.x_valid.shape == (2038, 28, 28)
    assert set(np.unique(splits.y_train).tolist()) == {0, 1}
    assert set(np.unique(splits.y_valid).tolist()) == {0, 1}
    assert splits.classes == ("3", "7")
    # fastai's counts: 6,265 sevens in train, 1,028 in valid.
    assert int(splits.y_train.sum()) == 6265 and int(splits.y_valid.sum()) == 1028


@pytest.mark.skipif(
    not REAL_MNIST_TINY.is_dir(), reason=f"real MNIST_TINY folder {REAL_MNIST_TINY} is absent"
)
def test_load_mnist_sample_reads_fastai_png_folders():
    splits = load_mnist_sample(REAL_MNIST_TINY)

    assert splits.x_train.shape == (709, 28, 28) and splits.x_valid.shape == (699, 28, 28)
    assert splits.x_train.dtype == np.uint8
    assert int((splits.y_train == 0).sum()) == 346 and int((splits.y_valid == 1).sum()) == 353


def test_load_mnist_sample_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist_sample.npz"):
        load_mnist_sample(tmp_path)


def test_load_tfds_as_numpy_fails_fast_when_not_prepared_and_offline(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from jaxfast.data.download import load_tfds_as_numpy

    url = "http://localhost:9/mnist"
    started = time.monotonic()
    with pytest.raises(DatasetUnavailable, match="--data-dir"):
        load_tfds_as_numpy(
            "mnist", "test", url, "a folder with the MNIST idx files", tfds_data_dir=str(tmp_path)
        )
    assert time.monotonic() - started < 10
