"""Lesson 7's restoration pairs (jaxfast.vision.restoration_data): which files train and which
are held out, the pairs' shapes and normalisation, determinism per seed, and bad input."""

import numpy as np
import pytest
from PIL import Image

from jaxfast.errors import InputError
from jaxfast.vision.restoration_data import image_files, restoration_data, split_files
from jaxfast.vision.transforms import IMAGENET_STATS


def _write(path, seed: int, shape=(60, 80)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = (rng.random((*shape, 3)) * 40 + np.linspace(0, 200, shape[1])[None, :, None]).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def split_folder(tmp_path):
    """train/ (6 images, one in a sub-folder) + val/ (3) + trainannot/ labels + test/."""
    for i in range(5):
        _write(tmp_path / "train" / f"t{i}.png", i)
    _write(tmp_path / "train" / "deeper" / "t5.jpg", 5)
    for i in range(3):
        _write(tmp_path / "val" / f"v{i}.png", 10 + i)
    _write(tmp_path / "trainannot" / "t0.png", 20)
    _write(tmp_path / "test" / "x.png", 21)
    return tmp_path


def test_val_folder_is_held_out_and_label_folders_are_skipped(split_folder, tmp_path):
    train, valid, how = split_files(split_folder)
    assert [p.name for p in train] == ["t5.jpg", "t0.png", "t1.png", "t2.png", "t3.png", "t4.png"]
    assert [p.name for p in valid] == ["v0.png", "v1.png", "v2.png"] and "held out" in how
    flat = tmp_path / "flat"
    for i in range(10):
        _write(flat / f"a{i}.png", i)
    _write(flat / "labels" / "a0_P.png", 0)
    assert len(image_files(flat)) == 10
    train, valid, _ = split_files(flat, valid_pct=0.3, seed=1)
    assert len(valid) == 3 and len(train) == 7 and not set(train) & set(valid)
    assert split_files(flat, valid_pct=0.3, seed=1)[1] == valid != split_files(flat, valid_pct=0.3, seed=2)[1]


def test_pairs_are_normalised_crops_deterministic_per_seed(split_folder):
    data = restoration_data(split_folder, size=32, batch_size=4, seed=0, log=lambda m: None)
    assert (data.train.num_rows, data.valid.num_rows, len(data.train), len(data.valid)) == (6, 3, 1, 1)
    assert data.train.low_size == 24 and data.meta["kind"] == "restoration"
    batch = next(data.train.batches(0))
    assert {k: v.shape for k, v in batch.items()} == {"inputs": (4, 32, 32, 3), "targets": (4, 32, 32, 3),
                                                     "mask": (4,)}
    mean, std = (np.asarray(s, np.float32) for s in IMAGENET_STATS)
    clean = batch["targets"] * std + mean
    assert clean.min() >= -1e-5 and clean.max() <= 1 + 1e-5
    degraded = batch["inputs"] * std + mean
    assert 0.005 < np.abs(degraded - clean).mean() < 0.2  # degraded, not unrelated
    again = restoration_data(split_folder, size=32, batch_size=4, seed=0, log=lambda m: None)
    np.testing.assert_array_equal(next(again.train.batches(0))["inputs"], batch["inputs"])
    assert not np.array_equal(next(data.train.batches(1))["inputs"], batch["inputs"])  # fresh crops each epoch
    valid = [next(data.valid.batches(e)) for e in (0, 5)]
    np.testing.assert_array_equal(valid[0]["inputs"], valid[1]["inputs"])  # held-out pairs never change
    np.testing.assert_array_equal(valid[0]["mask"], [1, 1, 1, 0])  # padded and masked
    pairs = data.valid.pairs()
    assert pairs["low"].shape == (3, 24, 24, 3) and pairs["low"].dtype == np.uint8
    np.testing.assert_allclose(data.valid.normalize(pairs["inputs"]), valid[0]["inputs"][:3], atol=1e-5)
    other = restoration_data(split_folder, size=32, batch_size=4, seed=1, log=lambda m: None)
    assert not np.array_equal(other.valid.pairs()["inputs"], pairs["inputs"])


def test_bad_input_is_one_clear_error(tmp_path, split_folder):
    with pytest.raises(InputError, match="is not a folder"):
        restoration_data(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds 0 image file"):
        restoration_data(tmp_path / "empty")
    with pytest.raises(InputError, match="size 8 must be between"):
        restoration_data(split_folder, size=8)
    with pytest.raises(InputError, match="fewer than one batch of 8"):
        restoration_data(split_folder, size=32, batch_size=8, log=lambda m: None)
    (split_folder / "val" / "v1.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot read image .*v1.png"):
        restoration_data(split_folder, size=32, batch_size=4, log=lambda m: None)
