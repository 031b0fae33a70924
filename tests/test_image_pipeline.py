"""The tf.data image loader: fixed batches with masks, exact resume, per-epoch order,
broken files skipped, seeded splits, CSV labels, shards, sizes, the real mnist_tiny
folder, and tfds failing fast offline."""

import dataclasses
import time
import warnings

import numpy as np
import pytest
from conftest import shared_dataset
from PIL import Image

from jaxfast.data.download import DatasetUnavailable, check_reachable
from jaxfast.vision import (
    CATALOG,
    ImageLoader,
    ImageSource,
    catalog_databunch,
    compute_stats,
    databunch_with_size,
    image_databunch,
    load_tfds_images,
    measure_pipeline,
)
from jaxfast.vision.transforms import TransformConfig

QUIET = dict(log=lambda s: None)


def coded_pixels(n=21, hw=(10, 14), classes=3):
    """Image i is constant with value i (as uint8), label i % classes: inputs reveal the row."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None] * 5, (n, *hw, 3)).copy()
    labels = (np.arange(n) % classes).astype(np.int32)
    return ImageSource("pixels", images, labels, tuple("abc"[:classes]), "coded")


def rows_of(batch):
    """Which coded image each row holds (from its pixel value)."""
    return np.round(batch["inputs"][:, 0, 0, 0] * 255 / 5).astype(int)


def write_folder(root, counts, size=(12, 16)):
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_every_batch_is_full_size_with_mask():
    valid = ImageLoader(coded_pixels(), 8, size=8, stats=None)
    batches = list(valid.batches(0))
    assert len(valid) == len(batches) == 3 and valid.num_rows == 21
    assert [b["inputs"].shape for b in batches] == [(8, 8, 8, 3)] * 3
    assert [b["mask"].tolist() for b in batches][-1] == [1.0] * 5 + [0.0] * 3
    assert all(b["inputs"].dtype == np.float32 and b["targets"].dtype == np.int32 for b in batches)
    seen = np.concatenate([rows_of(b)[b["mask"] > 0] for b in batches])
    assert seen.tolist() == list(range(21))
    np.testing.assert_array_equal(np.concatenate([b["targets"][b["mask"] > 0] for b in batches]), np.arange(21) % 3)
    train = ImageLoader(coded_pixels(), 8, size=8, shuffle=True, drop_last=True)
    assert len(train) == 2 and all(b["mask"].sum() == 8 for b in train.batches(0))
    with pytest.raises(ValueError, match="coded: 21 images per process is fewer than one batch of 32"):
        ImageLoader(coded_pixels(), 32, drop_last=True)


def test_resume_at_start_gives_the_same_batches(tmp_path):
    data = image_databunch(write_folder(tmp_path / "d", {"a": 12, "b": 12}), size=16, batch_size=4,
                           tfms=TransformConfig(p_affine=1.0, p_lighting=1.0), **QUIET)
    full = list(data.train.batches(3))
    resumed = list(data.train.batches(3, start=2))
    assert len(full) == len(data.train) and len(resumed) == len(full) - 2
    for a, b in zip(full[2:], resumed):
        for k in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(a[k], b[k])


def test_each_epoch_reshuffles_and_repeats_exactly():
    loader = ImageLoader(coded_pixels(40), 8, size=8, shuffle=True, drop_last=True, tfms=TransformConfig(), seed=3)
    epoch0 = np.concatenate([rows_of(b) for b in loader.batches(0)])
    again = list(loader.batches(0))
    epoch1 = np.concatenate([rows_of(b) for b in loader.batches(1)])
    assert epoch0.tolist() != epoch1.tolist()
    np.testing.assert_array_equal(epoch0, np.concatenate([rows_of(b) for b in again]))
    np.testing.assert_array_equal(next(loader.batches(0))["inputs"], again[0]["inputs"])  # augmentation too
    in_order = dataclasses.replace(loader, shuffle=False)
    first, second = next(in_order.batches(0)), next(in_order.batches(1))
    np.testing.assert_array_equal(first["targets"], second["targets"])
    assert np.abs(first["inputs"] - second["inputs"]).max() > 1e-3  # fresh augmentation each epoch
    other_seed = dataclasses.replace(loader, seed=4)
    assert np.concatenate([rows_of(b) for b in other_seed.batches(0)]).tolist() != epoch0.tolist()


def test_broken_files_are_listed_once_and_skipped(tmp_path):
    root = write_folder(tmp_path / "bears", {"black": 5, "teddy": 5})
    good = (root / "black" / "0.png").read_bytes()
    (root / "black" / "cut.png").write_bytes(good[: len(good) // 3])
    (root / "teddy" / "zero.jpg").write_bytes(b"")
    (root / "teddy" / "html.jpeg").write_text("<html>404</html>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = image_databunch(root, size=8, batch_size=2, valid_pct=0.2, seed=1, **QUIET)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1 and all(n in messages[0] for n in ("cut.png", "zero.jpg", "html.jpeg"))
    assert data.train.num_rows + data.valid.num_rows == 10
    for loader in (data.train, data.valid):  # whole epochs run without meeting a bad file
        assert sum(b["mask"].sum() for b in loader.batches(0)) == (8 if loader is data.train else 2)


def test_valid_pct_split_is_seeded(tmp_path):
    root = write_folder(tmp_path / "d", {"a": 10, "b": 10})
    split = lambda seed: set(image_databunch(root, size=8, batch_size=2, seed=seed, verify=False,
                                             **QUIET).valid.source.items)
    assert split(0) == split(0) and split(0) != split(1) and len(split(0)) == 4


def test_csv_labels_reach_the_targets(tmp_path):
    root = write_folder(tmp_path / "d", {"imgs": 8})
    rows = [f"imgs/{i}.png,{'odd' if i % 2 else 'even'},{int(i >= 6)}" for i in range(8)]
    (root / "labels.csv").write_text("name,label,is_valid\n" + "\n".join(rows) + "\n")
    data = image_databunch(root, csv="labels.csv", size=8, batch_size=2, **QUIET)
    assert data.train.classes == ("even", "odd")
    batch = next(data.valid.batches(0))
    assert batch["targets"].tolist() == [0, 1]  # imgs/6 even, imgs/7 odd


def test_process_shards_split_the_files():
    source = coded_pixels(23)
    parts = [ImageLoader(source, 4, size=8, stats=None, process_index=i, process_count=3) for i in range(3)]
    assert len({len(p) for p in parts}) == 1  # every process runs the same number of steps
    seen = [np.concatenate([rows_of(b)[b["mask"] > 0] for b in p.batches(0)]) for p in parts]
    assert sorted(np.concatenate(seen).tolist()) == list(range(23))
    assert [p.num_rows for p in parts] == [8, 8, 7]
    train = [ImageLoader(source, 2, size=8, shuffle=True, drop_last=True, process_index=i, process_count=3)
             for i in range(3)]
    assert {len(t) for t in train} == {3}


def test_with_size_keeps_order_and_progressive_resizing_trains(tmp_path):
    import flax.linen as nn

    from jaxfast.learner import Learner, TrainConfig

    data = image_databunch(write_folder(tmp_path / "d", {"a": 10, "b": 10}), size=12, batch_size=4, valid_pct=0.2,
                           stats="computed", **QUIET)
    small, large = next(data.train.batches(1)), next(data.train.with_size(20).batches(1))
    assert small["inputs"].shape == (4, 12, 12, 3) and large["inputs"].shape == (4, 20, 20, 3)
    np.testing.assert_array_equal(small["targets"], large["targets"])

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(2)(nn.relu(nn.Conv(4, (3, 3))(x)).mean(axis=(1, 2)))

    learn = Learner(Tiny(), data, "cross_entropy", ["accuracy"], config=TrainConfig(progress=False),
                    log=lambda s: None)
    learn.fit(1, 1e-2)
    learn.data = databunch_with_size(data, 20)
    learn.fit(1, 1e-2)
    assert len(learn.recorder.losses) == 2 * len(data.train) and np.isfinite(learn.recorder.losses).all()
    assert learn.validate()["loss"] > 0


def test_computed_stats_normalise_to_zero_mean(tmp_path):
    loader = image_databunch(write_folder(tmp_path / "d", {"a": 6, "b": 6}), size=8, batch_size=4,
                             stats=None, valid_pct=0.25, **QUIET).train
    mean, std = compute_stats(loader)
    assert all(0.3 < m < 0.7 for m in mean) and all(0.0 < s < 0.5 for s in std)  # uniform noise, blurred
    normed = dataclasses.replace(loader, tfms=None, drop_last=False, stats=(mean, std))
    x = np.concatenate([b["inputs"][b["mask"] > 0] for b in normed.batches(0)])
    assert x.shape[0] == loader.num_rows == 9
    np.testing.assert_allclose(x.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_measure_pipeline_counts_images(monkeypatch):
    import jaxfast.vision.pipeline as pipeline

    clock = iter([10.0, 12.5])  # the timed part (3 batches of 4 after the warm-up) takes 2.5 s
    monkeypatch.setattr(pipeline.time, "perf_counter", lambda: next(clock))
    assert measure_pipeline(ImageLoader(coded_pixels(), 4, size=8), 3) == pytest.approx(12 / 2.5)


def test_mnist_tiny_real_folder():
    root = shared_dataset("mnist_tiny")
    data = image_databunch(root, size=28, batch_size=64, **QUIET)
    assert (data.train.num_rows, data.valid.num_rows) == (709, 699) and data.extra == {}
    batches = list(data.valid.batches(0))
    assert len(batches) == 11 and sum(b["mask"].sum() for b in batches) == 699
    assert batches[0]["inputs"].shape == (64, 28, 28, 3)


def test_catalog_reads_a_local_image_folder(tmp_path):
    root = tmp_path / "cifar10"
    write_folder(root / "train", {"cat": 6, "dog": 6})
    write_folder(root / "test", {"cat": 2, "dog": 3})
    data = catalog_databunch("cifar10", data_dir=root, size=8, batch_size=4, **QUIET)
    assert (data.train.num_rows, data.valid.num_rows) == (12, 5) and data.extra == {}
    assert data.train.classes == ("cat", "dog")
    pets = tmp_path / "oxford-iiit-pet"
    for breed in ("Abyssinian", "great_pyrenees"):
        for i in range(5):
            write_folder(pets, {"images": 0})
            Image.new("RGB", (20, 14), (40 * i, 90, 200)).save(pets / "images" / f"{breed}_{i + 1}.jpg")
    data = catalog_databunch("oxford_iiit_pet", data_dir=pets, size=8, batch_size=2, valid_pct=0.2, **QUIET)
    assert data.train.classes == ("Abyssinian", "great_pyrenees")
    assert (data.train.num_rows, data.valid.num_rows) == (8, 2)
    with pytest.raises(DatasetUnavailable, match="oxford-iiit-pet"):
        catalog_databunch("oxford_iiit_pet", data_dir=tmp_path / "nothing", **QUIET)


def test_catalog_through_tfds(monkeypatch):
    """tfds' mock data stands in for prepared datasets: cifar10 (PNG bytes, test split as
    valid), and oxford_iiit_pet (JPEG bytes, 37 breeds, valid_pct of train, test as extra)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    with tfds.testing.mock_data(num_examples=10):
        cifar = catalog_databunch("cifar10", size=16, batch_size=4, **QUIET)
    assert len(cifar.train.classes) == 10 and cifar.train.source.kind == "encoded"  # names: dataset_info.json
    assert (cifar.train.num_rows, cifar.valid.num_rows, cifar.extra) == (10, 10, {})
    batch = next(cifar.valid.batches(0))
    assert batch["inputs"].shape == (4, 16, 16, 3) and np.isfinite(batch["inputs"]).all()
    assert batch["targets"].dtype == np.int32 and ((0 <= batch["targets"]) & (batch["targets"] < 10)).all()

    def pets(builder, split, **kwargs):  # the generic mock draws invalid head boxes
        jpeg = tf.io.encode_jpeg(tf.fill([12, 9, 3], tf.constant(120, tf.uint8)))
        n = 10 if split == "train" else 4
        return tf.data.Dataset.from_tensor_slices({"image": [jpeg] * n, "label": np.arange(n) % 37})

    with tfds.testing.mock_data(as_dataset_fn=pets):
        data = catalog_databunch("oxford_iiit_pet", size=8, batch_size=2, valid_pct=0.2, seed=0, **QUIET)
    assert len(data.train.classes) == 37 and data.train.classes[0] == "Abyssinian"
    assert (data.train.num_rows, data.valid.num_rows, data.extra["test"].num_rows) == (8, 2, 4)
    assert next(data.train.batches(0))["inputs"].shape == (2, 8, 8, 3)


def test_tfds_fails_fast_offline(tmp_path):
    url = CATALOG["cifar10"].url
    if check_reachable(url):
        pytest.skip(f"{url} is reachable: this checks the offline path (and would download cifar10)")
    t0 = time.time()
    with pytest.raises(DatasetUnavailable) as error:
        load_tfds_images("cifar10", "train", tfds_data_dir=tmp_path)
    assert time.time() - t0 < 20
    for part in ("'cifar10'", url, "--data-dir"):
        assert part in str(error.value)


def test_local_batches_decode_only_the_given_rows_of_the_global_batches():
    """Under jax.distributed each process decodes only the rows its devices hold: those rows are
    the global batches' rows (same order, same augmentation), the others zeros."""
    source = coded_pixels(23)
    tfms = TransformConfig(max_rotate=20.0, max_zoom=1.2, max_lighting=0.2, p_affine=1.0)
    for loader in (ImageLoader(source, 6, size=8, shuffle=True, drop_last=True, tfms=tfms, seed=3),
                   ImageLoader(source, 6, size=8, stats=None)):
        rows = np.array([1, 2, 5])
        full = list(loader.batches(1, start=1))
        local = list(loader.local_batches(1, 1, rows))
        assert len(local) == len(full) == len(loader) - 1
        for a, b in zip(full, local):
            assert a.keys() == b.keys()
            for key in a:
                assert b[key].shape == a[key].shape and b[key].dtype == a[key].dtype, key
                np.testing.assert_array_equal(b[key][rows], a[key][rows], err_msg=key)
                assert not np.any(np.delete(b[key], rows, axis=0)), key
        assert [list(b) for b in loader.local_batches(0, 0, None)] == [list(b) for b in loader.batches(0)]
    with pytest.raises(ValueError, match="rows must be positions in a batch of 6"):
        next(loader.local_batches(0, 0, np.array([6])))


def test_the_steps_refuse_a_loader_that_reads_a_strided_share():
    from jaxfast.errors import InputError
    from jaxfast.parallel import make_runner

    runner = make_runner("single")
    assert len(list(runner.host_batches(ImageLoader(coded_pixels(8), 4, size=8), 0))) == 2
    with pytest.raises(InputError, match="process_count 2"):
        runner.host_batches(ImageLoader(coded_pixels(8), 4, size=8, process_index=0, process_count=2), 0)
