"""CamVid: the tfds builder on its dummy data (both configs, the fastai download path), the
direct reader and its errors, segmentation and point loaders end to end, failing fast
offline, and the real ../shared/data copies (counts per split, class range)."""

import shutil
import tarfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import shared_dataset
from PIL import Image

from jaxfast.data.download import DatasetUnavailable
from jaxfast.datasets import camvid
from jaxfast.errors import InputError
from jaxfast.vision.segmentation import (
    PointLoader,
    PointSource,
    SegmentationLoader,
    SegmentationSource,
    camvid_databunch,
    camvid_sources,
    points_databunch,
)
from jaxfast.vision.transforms import TransformConfig

DUMMY = camvid.Path(camvid.__file__).parent / "dummy_data" / "camvid"
QUIET = dict(log=lambda line: None)
NO_STATS = dict(download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))


class CamvidFastaiTest(tfds.testing.DatasetBuilderTestCase):
    """camvid/fastai from the dummy manual dir: 4 images, valid.txt names one."""

    DATASET_CLASS = camvid.Camvid
    BUILDER_CONFIG_NAMES_TO_TEST = ["fastai"]
    EXAMPLE_DIR = str(DUMMY / "fastai")
    SPLITS = {"train": 3, "valid": 1}
    SKIP_CHECKSUMS = True  # fastai publishes no sha256 of camvid.tgz (see camvid.py)


class CamvidSegnetTest(tfds.testing.DatasetBuilderTestCase):
    """camvid/segnet from the dummy manual dir: train 2, val 1 (a .jpg), test 1."""

    DATASET_CLASS = camvid.Camvid
    BUILDER_CONFIG_NAMES_TO_TEST = ["segnet"]
    EXAMPLE_DIR = str(DUMMY / "segnet")
    SPLITS = {"train": 2, "valid": 1, "test": 1}
    SKIP_CHECKSUMS = True


def copy_of(layout, tmp_path):
    return shutil.copytree(DUMMY / layout, tmp_path / layout)


def test_fastai_config_downloads_checks_and_extracts_the_archive(tmp_path, monkeypatch):
    archive = tmp_path / "camvid.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(DUMMY / "fastai" / "camvid", arcname="camvid")  # as fastai's archive: a camvid/ folder
    size, head = archive.stat().st_size, camvid.hashlib.md5(archive.read_bytes()[: 2**20]).hexdigest()
    asked = []
    monkeypatch.setattr(tfds.download.DownloadManager, "download", lambda self, url: asked.append(url) or archive)
    with pytest.raises(InputError, match="is not fastai's camvid.tgz"):
        camvid.Camvid(config="fastai", data_dir=str(tmp_path / "wrong")).download_and_prepare(**NO_STATS)
    monkeypatch.setattr(camvid, "FASTAI_SIZE", size)
    monkeypatch.setattr(camvid, "FASTAI_HEAD_MD5", head)
    builder = camvid.Camvid(config="fastai", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(**NO_STATS)
    assert asked == [camvid.FASTAI_URL] * 2
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3, "valid": 1}
    example = next(iter(builder.as_dataset(split="valid").as_numpy_iterator()))
    assert example["file_name"] == b"Seq05VD_f00000.png" and example["image"].shape == (12, 16, 3)
    expected = np.asarray(Image.open(DUMMY / "fastai" / "camvid" / "labels" / "Seq05VD_f00000_P.png"))
    np.testing.assert_array_equal(example["segmentation_mask"][..., 0], expected)
    assert builder.info.features["segmentation_mask"].names[30] == "Void"


def test_tfds_and_the_direct_reader_give_the_same_splits(tmp_path):
    builder = camvid.Camvid(config="segnet", data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(DUMMY / "segnet"), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    via_tfds = camvid_sources(config="segnet", tfds_data_dir=str(tmp_path), **QUIET)
    direct = camvid_sources(DUMMY / "segnet", **QUIET)
    assert {k: len(v) for k, v in via_tfds.items()} == {k: len(v) for k, v in direct.items()} == {
        "train": 2, "valid": 1, "test": 1}
    assert via_tfds["train"].kind == "encoded" and direct["train"].kind == "files"
    for split in direct:
        a = SegmentationLoader(via_tfds[split], 1, size=(12, 16), stats=None)
        b = SegmentationLoader(direct[split], 1, size=(12, 16), stats=None)
        key = lambda batch: batch["targets"].tobytes()
        assert sorted(map(key, a.batches())) == sorted(map(key, b.batches())), split
    assert direct["train"].void_code == via_tfds["train"].void_code == 11


def test_reader_names_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match=r"holds neither CamVid layout \(found: fastai, segnet\)"):
        camvid.read_camvid(DUMMY)
    fastai = copy_of("fastai", tmp_path) / "camvid"
    (fastai / "labels" / "0001TP_006720_P.png").unlink()
    with pytest.raises(InputError, match=r"1 image\(s\) without a mask: .*0001TP_006720.png"):
        camvid.read_camvid(fastai)
    segnet = copy_of("segnet", tmp_path)
    Image.fromarray(np.zeros((10, 16), np.uint8), "L").save(segnet / "trainannot" / "0001TP_006690.png")
    with pytest.raises(InputError, match=r"0001TP_006690.png is 12x16 but its mask .*trainannot/0001TP_006690.png "
                                         r"is 10x16"):
        camvid.read_camvid(segnet)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(segnet / "trainannot" / "0001TP_006690.png")
    with pytest.raises(InputError, match="is mode RGB, not 8-bit greyscale"):
        camvid.read_camvid(segnet)
    shutil.copy(segnet / "trainannot" / "0006R0_f02910.png", segnet / "trainannot" / "extra.png")
    with pytest.raises(InputError, match=r"1 mask\(s\) without an image: .*extra.png"):
        camvid.read_camvid(segnet)
    (segnet / "trainannot" / "extra.png").unlink()
    shutil.rmtree(segnet / "testannot")
    with pytest.raises(InputError, match="test/ and testannot/ come in pairs"):
        camvid.read_camvid(segnet)
    shutil.copy(DUMMY / "fastai" / "camvid" / "labels" / "0001TP_006720_P.png", fastai / "labels")
    (fastai / "valid.txt").write_text("nope.png\n")
    with pytest.raises(InputError, match="names 1 image.* nope.png"):
        camvid.read_camvid(fastai.parent)
    with pytest.raises(InputError, match="holds class 40"):
        bad = tmp_path / "bad.png"
        Image.fromarray(np.full((2, 2), 40, np.uint8), "L").save(bad)
        camvid.read_mask(bad, 32)


def test_fastai_folder_without_valid_txt_splits_randomly_with_the_seed(tmp_path):
    root = copy_of("fastai", tmp_path)
    (root / "camvid" / "valid.txt").unlink()
    first, again = (camvid.read_camvid(root, valid_pct=0.5, seed=3) for _ in range(2))
    assert "no valid.txt: random 50% valid (seed 3)" in first.note
    assert first.splits == again.splits and {k: len(v) for k, v in first.splits.items()} == {"train": 2, "valid": 2}
    assert first.codes == camvid.FASTAI_CODES and first.void_code == 30


def stripes(n=6, hw=(48, 64)):
    """Images whose red channel encodes the class (class k: red = 40 k) in vertical bands of
    classes 0..4, shifted per image; masks hold the classes."""
    cols = np.arange(hw[1])
    masks = np.stack([np.broadcast_to(((cols + 5 * i) // 13) % 5, hw) for i in range(n)]).astype(np.uint8)
    images = np.zeros((n, *hw, 3), np.uint8)
    images[..., 0] = masks * 40
    return images, masks


def test_segmentation_batches_keep_masks_on_their_pixels():
    images, masks = stripes()
    source = SegmentationSource("pixels", images, masks, ("a", "b", "c", "d", "e", "void"), 5, "stripes")
    tfms = TransformConfig(max_rotate=25.0, max_zoom=1.4, max_warp=0.3, max_lighting=0.0, p_affine=1.0)
    loader = SegmentationLoader(source, 4, size=(32, 48), shuffle=True, drop_last=True, tfms=tfms, stats=None)
    batches = list(loader.batches(0))
    assert len(batches) == 1 and set(batches[0]) == {"inputs", "targets", "mask"}
    batch = batches[0]
    assert batch["inputs"].shape == (4, 32, 48, 3) and batch["targets"].shape == (4, 32, 48)
    assert batch["targets"].dtype == np.int32 and batch["mask"].tolist() == [1.0] * 4
    labelled = batch["targets"] != 5
    decoded = np.round(batch["inputs"][..., 0] * 255 / 40)
    agree = (decoded == batch["targets"])[labelled].mean()
    assert agree > 0.93 and (~labelled).any(), agree  # some corners came from outside: void
    np.testing.assert_array_equal(next(loader.batches(0, start=0))["targets"], batch["targets"])
    valid = SegmentationLoader(source, 4, size=(64, 64), resize_method="pad", stats=None)
    first = next(valid.batches(0))["targets"]
    assert (first[:, :8] == 5).all() and (first[:, 8:56] != 5).all()  # 48x64 padded to 64x64 with void
    np.testing.assert_array_equal(first[:, 8:56], masks[:4])


def test_size_mismatch_in_the_pipeline_names_the_files(tmp_path):
    root = copy_of("segnet", tmp_path)
    Image.fromarray(np.zeros((10, 16), np.uint8), "L").save(root / "valannot" / "0016E5_07959.png")
    source = SegmentationSource.from_pairs([(str(root / "val" / "0016E5_07959.jpg"),
                                             str(root / "valannot" / "0016E5_07959.png"))], camvid.SEGNET_CODES, 11, "v")
    with pytest.raises(Exception, match=r"(?s)image and mask sizes differ.*0016E5_07959.jpg"):
        list(SegmentationLoader(source, 1, size=8).batches())


def test_point_batches_follow_the_image():
    rng = np.random.default_rng(0)
    images = np.full((8, 60, 80, 3), 30, np.uint8)
    points = np.stack([rng.uniform(10, 50, 8), rng.uniform(10, 70, 8)], -1)[:, None, :].astype(np.float32)
    for image, (r, c) in zip(images, points[:, 0].round().astype(int)):
        image[r - 3 : r + 4, c - 3 : c + 4] = 255
    data = points_databunch(PointSource("pixels", images, points, "blobs"), PointSource("pixels", images, points),
                            size=(48, 64), batch_size=4, stats=None, **{"tfms": TransformConfig(
                                max_rotate=20.0, max_zoom=1.3, max_lighting=0.0, p_affine=1.0)})
    assert isinstance(data.train, PointLoader)
    for loader in (data.train, data.valid):
        for batch in loader.batches(0):
            assert batch["targets"].shape == (4, 2) and batch["visible"].shape == (4, 1)
            assert batch["targets"].dtype == np.float32
            rows = np.round((batch["targets"][:, 0] + 1) * 47 / 2).astype(int)
            cols = np.round((batch["targets"][:, 1] + 1) * 63 / 2).astype(int)
            for image, r, c, seen in zip(batch["inputs"], rows, cols, batch["visible"][:, 0]):
                if seen:
                    assert image[r, c, 0] > 0.8, (r, c)
    with pytest.raises(InputError, match=r"points must be \[N=8, n_points, 2\]"):
        PointSource("pixels", images, points[:, :, :1])


def test_offline_download_fails_fast_naming_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(camvid, "FASTAI_URL", "http://127.0.0.1:9/camvid.tgz")
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailable, match="--data-dir"):
        camvid_sources(config="fastai", tfds_data_dir=str(tmp_path), **QUIET)
    assert time.perf_counter() - start < 10
    with pytest.raises(DatasetUnavailable, match="camvid/segnet is not prepared.*--data-dir"):
        camvid_sources(config="segnet", tfds_data_dir=str(tmp_path), **QUIET)
    with pytest.raises(DatasetUnavailable, match="holds neither"):
        camvid_sources(tmp_path, **QUIET)


def class_counts(pairs, n_codes):
    counts = np.zeros(n_codes, np.int64)
    for _, mask in pairs:
        counts += np.bincount(camvid.read_mask(mask, n_codes).ravel(), minlength=n_codes)
    return counts


def test_real_segnet_camvid_splits_and_classes():
    root = shared_dataset("camvid")
    found = camvid.read_camvid(root)
    counts = {k: len(v) for k, v in found.splits.items()}
    assert counts["train"] == 367 and counts["valid"] == 101 and counts.get("test", 233) == 233, counts
    assert found.layout == "segnet" and found.codes == camvid.SEGNET_CODES and found.void_code == 11
    pixels = sum(class_counts(pairs, 12) for pairs in found.splits.values())  # read_mask raises on a class >= 12
    assert (pixels > 0).all() and 0.01 < pixels[11] / pixels.sum() < 0.1, pixels
    data = camvid_databunch(root, batch_size=2, **QUIET)
    batch = next(data.valid.batches(0))
    assert batch["inputs"].shape == (2, 384, 480, 3) and batch["targets"].shape == (2, 384, 480)
    assert (batch["targets"][:, :12] == 11).all() and (batch["targets"][:, -12:] == 11).all()


def test_real_camvid_tiny_has_no_valid_txt_and_splits_randomly():
    root = shared_dataset("camvid_tiny")
    found = camvid.read_camvid(root)
    assert found.layout == "fastai" and "no valid.txt" in found.note
    assert {k: len(v) for k, v in found.splits.items()} == {"train": 80, "valid": 20}
    assert found.codes == camvid.FASTAI_CODES and found.void_code == 30
    assert class_counts(found.splits["train"], 32).sum() == 80 * 96 * 128


def test_segmentation_and_point_loaders_decode_only_the_given_rows():
    images, masks = stripes()
    source = SegmentationSource("pixels", images, masks, ("a", "b", "c", "d", "e", "void"), 5, "stripes")
    points = np.tile(np.array([[[20.0, 30.0]]], np.float32), (len(images), 1, 1))
    tfms = TransformConfig(max_rotate=25.0, max_zoom=1.4, max_warp=0.3, max_lighting=0.0, p_affine=1.0)
    for loader in (SegmentationLoader(source, 4, size=(32, 48), shuffle=True, tfms=tfms, stats=None),
                   PointLoader(PointSource("pixels", images, points, "p"), 4, size=(32, 48), tfms=tfms)):
        rows = np.array([0, 3])
        for a, b in zip(loader.batches(0), loader.local_batches(0, 0, rows), strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(b[key][rows], a[key][rows], err_msg=key)
                assert not np.any(b[key][[1, 2]]), key
