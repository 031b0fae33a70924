"""Lesson 3's data: the Planet and BIWI head pose tfds builders on their dummy data, the
multi-label CSV reader, and the head-centre pixel against the lesson's published value."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxfast.datasets import biwi, planet
from jaxfast.errors import InputError
from jaxfast.vision.multilabel import multi_hot, read_multilabel_csv

DUMMY = Path(planet.__file__).parent / "dummy_data"
NO_STATS = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)


class PlanetTest(tfds.testing.DatasetBuilderTestCase):
    """Kaggle layout: train_v2.csv and 6 JPEGs in train-jpg/."""

    DATASET_CLASS = planet.Planet
    EXAMPLE_DIR = str(DUMMY / "planet")
    SPLITS = {"train": 6}


class BiwiHeadPoseTest(tfds.testing.DatasetBuilderTestCase):
    """Recordings 01, 09 (train) and 13 (validation), two frames each; both configs."""

    DATASET_CLASS = biwi.BiwiHeadPose
    EXAMPLE_DIR = str(DUMMY / "biwi_head_pose")
    SPLITS = {"train": 4, "validation": 2}


def prepared(builder_class, manual_dir, tmp_path, **kwargs):
    builder = builder_class(data_dir=str(tmp_path), **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir), compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder


# ------------------------------------------------------------------------ planet


def test_planet_examples_carry_tags_and_multi_hot(tmp_path):
    builder = prepared(planet.Planet, DUMMY / "planet", tmp_path)
    assert builder.info.features["tags"].feature.names == list(planet.TAGS) == sorted(planet.TAGS)
    rows = {ex["image_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    ex = rows["train_1"]  # agriculture clear primary water
    want = [planet.TAGS.index(t) for t in ("agriculture", "clear", "primary", "water")]
    assert sorted(ex["tags"].tolist()) == want == [0, 5, 12, 16]
    assert np.flatnonzero(ex["multi_hot"]).tolist() == want and ex["multi_hot"].dtype == np.uint8
    assert ex["image"].shape == (16, 16, 3)


def test_planet_items_read_the_fastai_tiny_layout(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "labels.csv").write_text("image_name,tags\na,haze primary\nb,water\n")
    for name in "ab":
        (tmp_path / "train" / f"{name}.jpg").write_bytes(b"not decoded here")
    items = planet.planet_items(tmp_path)
    assert items.classes == planet.TAGS and items.targets.shape == (2, 17)
    assert [Path(p).name for p in items.paths] == ["a.jpg", "b.jpg"]
    assert np.flatnonzero(items.targets[0]).tolist() == [10, 12] and np.flatnonzero(items.targets[1]).tolist() == [16]
    with pytest.raises(InputError, match="no Planet data .*train_v2.csv \\+ train-jpg/"):
        planet.planet_items(tmp_path / "train")


def test_planet_rejects_tags_outside_the_competition_set(tmp_path):
    (tmp_path / "train-jpg").mkdir()
    (tmp_path / "train_v2.csv").write_text("image_name,tags\nx,primary\ny,primary volcano\n")
    outside = r"train_v2.csv: 1 row\(s\) have labels outside the 17 classes: line 3: \['volcano'\]"
    with pytest.raises(InputError, match=outside):
        planet.planet_items(tmp_path, check_files=False)


# ------------------------------------------------------------- multi-label reader


def write_csv(folder: Path, text: str, files=()) -> None:
    (folder / "imgs").mkdir(exist_ok=True)
    (folder / "tags.csv").write_text(text)
    for name in files:
        (folder / "imgs" / name).write_bytes(b"x")


def test_read_multilabel_csv_any_delimiter_and_columns(tmp_path):
    write_csv(tmp_path, "id,file,labels\n1,p.png,dog;cat\n2,q.png, cat \n3,r.png,bird;dog\n",
              files=("p.png", "q.png", "r.png"))
    items = read_multilabel_csv(tmp_path, "tags.csv", folder="imgs", label_delim=";", fn_col="file",
                                label_col="labels")
    assert items.classes == ("bird", "cat", "dog")
    np.testing.assert_array_equal(items.targets, [[0, 1, 1], [0, 1, 0], [1, 0, 1]])
    assert items.paths[2] == str(tmp_path / "imgs" / "r.png")
    train, valid = items.split(valid_pct=0.34, seed=0)
    assert len(train) == 2 and len(valid) == 1
    assert sorted([*train.paths, *valid.paths]) == sorted(items.paths)
    row = list(items.paths).index(valid.paths[0])
    np.testing.assert_array_equal(valid.targets[0], items.targets[row])


def test_read_multilabel_csv_names_bad_rows(tmp_path):
    write_csv(tmp_path, "name,tags\na,x y\nb,\nc,y\n", files=("a.jpg", "b.jpg", "c.jpg"))
    with pytest.raises(InputError, match=r"tags.csv: 1 row\(s\) have no labels: line 3 \('b'\)"):
        read_multilabel_csv(tmp_path, "tags.csv", folder="imgs", suffix=".jpg")
    write_csv(tmp_path, "name,tags\na,x y\nb,x\nc,y\n")
    (tmp_path / "imgs" / "b.jpg").unlink()
    with pytest.raises(InputError, match=r"1 row\(s\) name missing image files: line 3: .*imgs/b.jpg"):
        read_multilabel_csv(tmp_path, "tags.csv", folder="imgs", suffix=".jpg")
    with pytest.raises(InputError, match=r"no column 'labels' in header \['name', 'tags'\]"):
        read_multilabel_csv(tmp_path, "tags.csv", label_col="labels")
    with pytest.raises(InputError, match="label CSV .*nothing.csv does not exist"):
        read_multilabel_csv(tmp_path, "nothing.csv")
    with pytest.raises(KeyError, match="label 'z' of row 0"):
        multi_hot([["z"]], ["x", "y"])


# -------------------------------------------------------------------------- BIWI


def test_head_centre_pixel_is_the_lessons_value():
    """09/frame_00667 holds the lesson's pose (187.332, 40.3892, 893.135); the notebook prints
    get_ctr(fname) = tensor([263.9104, 428.5814]) with 01/rgb.cal (517.679, 320, 240.5)."""
    folder = DUMMY / "biwi_head_pose"
    cal = biwi.read_calibration(folder / "01" / "rgb.cal")
    np.testing.assert_array_equal(cal, np.genfromtxt(folder / "01" / "rgb.cal", skip_footer=6))
    centre = biwi.read_head_centre(folder / "09" / "frame_00667_pose.txt")
    np.testing.assert_array_equal(centre, np.genfromtxt(folder / "09" / "frame_00667_pose.txt", skip_header=3))
    np.testing.assert_allclose(biwi.project_to_pixel(centre, cal), [263.9104, 428.5814], atol=1e-4)


@pytest.mark.parametrize("config, want", [
    ("lesson", {"09/frame_00667_rgb.jpg": (263.9104, 428.5814),
                # (100, -50, 500) with 01's cal: -50*517.679/500 + 240.5, 100*517.679/500 + 320
                "09/frame_00668_rgb.jpg": (188.7321, 423.5358)}),
    ("own_calibration", {  # 09/rgb.cal is f = 500, centre (330, 250)
        "09/frame_00667_rgb.jpg": (40.3892 * 500 / 893.135 + 250, 187.332 * 500 / 893.135 + 330),
        "09/frame_00668_rgb.jpg": (200.0, 430.0)}),
])
def test_biwi_points_per_config(tmp_path, config, want):
    builder = prepared(biwi.BiwiHeadPose, DUMMY / "biwi_head_pose", tmp_path, config=config)
    train = {ex["image_name"].decode(): ex for ex in tfds.as_numpy(builder.as_dataset(split="train"))}
    valid = list(tfds.as_numpy(builder.as_dataset(split="validation")))
    assert {ex["person"].decode() for ex in valid} == {"13"} and len(train) == 4
    for name, point in want.items():
        np.testing.assert_allclose(train[name]["point"], point, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(train["01/frame_00004_rgb.jpg"]["point"], (240.5, 320.0), atol=1e-5)  # z axis
    assert train["01/frame_00004_rgb.jpg"]["image"].shape == (12, 16, 3)


def test_biwi_reader_finds_a_nested_folder_and_names_bad_files(tmp_path):
    import shutil

    shutil.copytree(DUMMY / "biwi_head_pose", tmp_path / "biwi_head_pose")
    frames = biwi.read_biwi(tmp_path)
    assert [f"{f.person}/{Path(f.image).name}" for f in frames][:2] == ["01/frame_00003_rgb.jpg",
                                                                        "01/frame_00004_rgb.jpg"]
    root = tmp_path / "biwi_head_pose"
    (root / "13" / "frame_00011_pose.txt").unlink()
    with pytest.raises(InputError, match="frame_00011_rgb.jpg has no pose file frame_00011_pose.txt"):
        biwi.read_biwi(tmp_path)
    (root / "13" / "frame_00010_pose.txt").write_text("1 0 0\n0 1 0\n0 0 1\n\n1.5 oops 3\n")
    with pytest.raises(InputError, match=r"frame_00010_pose.txt:5: not a row of numbers: '1.5 oops 3'"):
        biwi.read_head_centre(root / "13" / "frame_00010_pose.txt")
    (root / "01" / "rgb.cal").write_text("517.679 0 320\n0 517.679\n")
    with pytest.raises(InputError, match="rgb.cal: expected a 3x3 intrinsics matrix"):
        biwi.read_biwi(root)
    with pytest.raises(InputError, match="no numbered recording folders"):
        biwi.read_biwi(root / "01")
