"""Finding labelled images: folder per class, train/valid(/test) folders, CSV, name regex,
valid_pct splits, and verify_images on broken files."""

import warnings

import numpy as np
import pytest
from conftest import shared_dataset
from PIL import Image

from jaxfast.vision.folders import find_images, random_split, verify_images


def write_png(path, value=128, size=(10, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)
    return path


def make_class_folders(root, counts):
    for name, n in counts.items():
        for i in range(n):
            write_png(root / name / f"{name}_{i}.png", 10 * i)
    return root


def test_folder_per_class_with_seeded_valid_pct(tmp_path):
    root = make_class_folders(tmp_path / "bears", {"black": 10, "grizzly": 12, "teddy": 8})
    a = find_images(root, valid_pct=0.2, seed=0, verify=False)
    assert a.classes == ("black", "grizzly", "teddy")
    assert (len(a.train), len(a.valid)) == (24, 6) and a.test is None
    all_paths = set(a.train.paths) | set(a.valid.paths)
    assert len(all_paths) == 30 and not set(a.train.paths) & set(a.valid.paths)
    for paths, labels in [(a.train.paths, a.train.labels), (a.valid.paths, a.valid.labels)]:
        for path, label in zip(paths, labels):
            assert f"/{a.classes[label]}/" in path
    b = find_images(root, valid_pct=0.2, seed=0, verify=False)
    c = find_images(root, valid_pct=0.2, seed=1, verify=False)
    assert list(a.valid.paths) == list(b.valid.paths)
    assert set(a.valid.paths) != set(c.valid.paths)
    assert "random 20% valid (seed 0)" in a.note


def test_random_split_counts_and_bounds():
    mask = random_split(101, 0.3, 5)
    assert mask.sum() == 30 and np.array_equal(mask, random_split(101, 0.3, 5))
    with pytest.raises(ValueError, match="valid_pct"):
        random_split(10, 1.5, 0)


def test_train_val_test_folders(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"cat": 3, "dog": 4})
    make_class_folders(root / "val", {"cat": 2, "dog": 1})
    make_class_folders(root / "test", {"dog": 2})
    found = find_images(root, verify=False)
    assert (len(found.train), len(found.valid), len(found.test)) == (7, 3, 2)
    assert list(found.test.labels) == [1, 1]
    assert "train/<class>, val/<class>, test/<class>" in found.note
    with pytest.raises(ValueError, match="valid_pct=0.2 given but .*val exists"):
        find_images(root, valid_pct=0.2, verify=False)


def test_unlabelled_test_folder_is_noted_not_evaluated(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"3": 3, "7": 3})
    make_class_folders(root / "valid", {"3": 1, "7": 1})
    write_png(root / "test" / "1.png")
    found = find_images(root, verify=False)
    assert found.test is None and "has no class folders (unlabelled): not evaluated" in found.note


def test_valid_label_unseen_in_train_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root / "train", {"a": 2})
    make_class_folders(root / "valid", {"a": 1, "zebra": 1})
    with pytest.raises(ValueError, match=r"valid labels \['zebra'\] do not occur"):
        find_images(root, verify=False)


def test_csv_labels_and_is_valid_column(tmp_path):
    for i in range(6):
        write_png(tmp_path / "imgs" / f"{i}.png", 40 * i)
    lines = ["fname,breed,is_valid"] + [f"imgs/{i}.png,{'x' if i % 2 else 'y'},{int(i >= 4)}" for i in range(6)]
    lines.append("imgs/missing.png,x,0")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match=r"(?s)1 file\(s\).*missing.png: listed in labels.csv but missing"):
        found = find_images(tmp_path, csv="labels.csv", fn_col="fname", label_col="breed")
    assert found.classes == ("x", "y")
    assert [p.split("/")[-1] for p in found.valid.paths] == ["4.png", "5.png"]
    assert list(found.train.labels) == [1, 0, 1, 0]  # 0:y 1:x 2:y 3:x
    with pytest.raises(ValueError, match="no column 'label'"):
        find_images(tmp_path, csv="labels.csv", label_col="label")


def test_label_regex_names(tmp_path):
    names = ["Abyssinian_1.jpg", "Abyssinian_2.jpg", "great_pyrenees_10.jpg", "great_pyrenees_3.jpg",
             "pug_1.jpg", "pug_2.jpg", "pug_3.jpg"]
    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "Abyssinian_100.mat").write_bytes(b"MATLAB")
    with pytest.warns(UserWarning, match="Abyssinian_100.mat"):
        found = find_images(tmp_path, label_re=r"^(.+)_\d+\.jpe?g$", valid_pct=0.2, seed=0)
    assert found.classes == ("Abyssinian", "great_pyrenees", "pug")
    assert (len(found.train), len(found.valid)) == (6, 1)
    for path, label in zip(found.train.paths, found.train.labels):
        assert path.split("/")[-1].startswith(found.classes[label] + "_")


def test_verify_images_lists_broken_files_once(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 4, "b": 4})
    good = write_png(tmp_path / "data" / "a" / "big.png", 77, (40, 40)).read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "empty.jpg").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("not an image at all")
    (root / "b" / "notes.txt").write_text("readme")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_images(root, valid_pct=0.25, seed=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, messages
    for name in ["truncated.png", "empty.jpg", "text.jpg", "notes.txt"]:
        assert name in messages[0]
    assert messages[0].startswith("4 file(s)")
    kept = set(found.train.paths) | set(found.valid.paths)
    assert len(kept) == 9 and not any(n in p for p in kept for n in ["truncated", "empty", "text", "notes"])
    broken = ["a/truncated.png", "b/empty.jpg", "b/text.jpg", "b/notes.txt"]
    assert dict(found.skipped).keys() == {str(root / n) for n in broken}
    assert verify_images([str(root / "a" / "big.png")]) == {}


def test_mnist_tiny_folder_and_csv():
    root = shared_dataset("mnist_tiny")
    found = find_images(root)
    assert found.classes == ("3", "7")
    assert (len(found.train), len(found.valid)) == (709, 699)
    assert np.bincount(found.train.labels).tolist() == [346, 363]
    assert np.bincount(found.valid.labels).tolist() == [346, 353]
    assert found.test is None and "unlabelled" in found.note and not found.skipped
    by_csv = find_images(root, csv="labels.csv", valid_pct=0.2, seed=0, verify=False)
    assert (len(by_csv.train), len(by_csv.valid)) == (1127, 281)
    for path, label in zip(by_csv.train.paths[:50], by_csv.train.labels[:50]):
        assert f"/{by_csv.classes[label]}/" in path  # labels.csv agrees with the folders
