"""Image exports through `python -m jaxfast.predict` and `predict_images`: one CSV row per
image, a corrupt file as a row-level error, TTA, and the same inputs as the training pipeline."""

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxfast.export import load_export
from jaxfast.learner import TrainConfig
from jaxfast.predict import main
from jaxfast.vision import ImageLoader, ImageSource, cnn_learner, sources_databunch
from jaxfast.vision.predict_images import predict_images

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("blue", "green", "red")
CHANNEL = {"red": 0, "green": 1, "blue": 2}


def coloured(name: str, n: int, rng, hw=(20, 24)) -> np.ndarray:
    """uint8 noise images [n, h, w, 3] whose `name` channel is the bright one."""
    images = rng.integers(0, 90, (n, *hw, 3))
    images[..., CHANNEL[name]] += 140
    return images.astype(np.uint8)


def pixel_source(n_per_class: int, seed: int, name: str) -> ImageSource:
    rng = np.random.default_rng(seed)
    images = np.concatenate([coloured(c, n_per_class, rng) for c in CLASSES])
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int32), n_per_class)
    return ImageSource("pixels", images, labels, CLASSES, name)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A tiny colour classifier trained through the image pipeline, exported with the meta
    cnn_learner took from the data."""
    data = sources_databunch(pixel_source(32, 0, "train"), pixel_source(8, 1, "valid"), size=16,
                             batch_size=16, tfms=None, stats="computed")
    learn = cnn_learner(data, "simple_cnn", pretrained=False, metrics=["accuracy"], lin_ftrs=(16,),
                        body_config={"features": (8, 16)}, config=TrainConfig(progress=False), log=lambda s: None)
    learn.fit_one_cycle(3, 1e-2)
    assert learn.validate()["accuracy"] == 1.0
    return learn.export(tmp_path_factory.mktemp("image_export") / "export")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two images per colour (PNG and JPEG, one in a sub-folder), a corrupt JPEG, a text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(2)
    (root / "more").mkdir()
    for name in CLASSES:
        first, second = coloured(name, 2, rng, hw=(22, 18))
        Image.fromarray(first).save(root / f"{name}_a.png")
        Image.fromarray(second).save(root / "more" / f"{name}_b.jpg", quality=95)
    (root / "broken.jpg").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("not an image")
    return root


def image_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.suffix in (".png", ".jpg"))


def truth(path: str) -> str:
    return Path(path).name.split("_")[0]


def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def cli_tta(export_dir, folder):
    return subprocess.run([sys.executable, "-m", "jaxfast.predict", str(export_dir), str(folder), "--tta"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_export_meta(export_dir):
    meta = json.loads((export_dir / "export.json").read_text())
    assert meta["kind"] == "image_classifier" and meta["classes"] == list(CLASSES)
    assert meta["input_size"] == [16, 16] and meta["resize_method"] == "crop"
    assert meta["arch"] == "cnn" and meta["arch_config"]["body_arch"] == "simple_cnn"
    assert meta["arch_config"]["n_classes"] == 3 and meta["arch_config"]["lin_ftrs"] == [16]
    mean, std = meta["stats"]
    assert len(mean) == len(std) == 3 and all(0 < m < 1 for m in mean) and all(s > 0 for s in std)


def test_cli_with_tta_gives_one_row_per_image(cli_tta, folder):
    assert cli_tta.returncode == 0, cli_tta.stderr
    rows = read_csv(cli_tta.stdout)
    assert list(rows[0]) == ["path", "prediction", "probability", "error"]
    assert [row["path"] for row in rows] == image_files(folder)  # notes.txt left out, sub-folder in
    broken = str(folder / "broken.jpg")
    for row in rows:
        if row["path"] == broken:
            assert row["prediction"] == row["probability"] == ""
            assert row["error"].startswith(f"cannot read {broken} as an image: ")
        else:
            assert row["error"] == "" and row["prediction"] == truth(row["path"])
            assert 1 / 3 < float(row["probability"]) <= 1.0
    assert f"error: cannot read {broken} as an image" in cli_tta.stderr


def test_python_call_matches_the_cli_and_the_pipeline(cli_tta, export_dir, folder):
    with_tta = predict_images(export_dir, [folder], tta=True)
    cli = read_csv(cli_tta.stdout)
    assert [r.path for r in with_tta] == [row["path"] for row in cli]
    for ours, theirs in zip(with_tta, cli):
        assert (ours.prediction or "") == theirs["prediction"] and (ours.error or "") == theirs["error"]
        if ours.probability is not None:
            assert ours.probability == pytest.approx(float(theirs["probability"]), rel=1e-5)
    # without TTA: the probabilities of the validation pipeline on the same files
    exported = load_export(export_dir)
    plain = [r for r in predict_images(exported, folder, batch_size=4) if r.error is None]  # one path, no list
    paths = np.array([r.path for r in plain])
    source = ImageSource("files", paths, np.zeros(len(paths), np.int32), CLASSES, "files")
    meta = exported.meta
    loader = ImageLoader(source, 8, size=tuple(meta["input_size"]), stats=tuple(map(tuple, meta["stats"])))
    batch = next(loader.batches(0))
    logits = exported.predict(batch["inputs"])[: len(paths)]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose([r.probability for r in plain], probs.max(axis=1), rtol=1e-4)
    assert [r.prediction for r in plain] == [CLASSES[i] for i in probs.argmax(axis=1)]
    tta_probs = {r.path: r.probability for r in with_tta if r.error is None}
    assert any(abs(tta_probs[r.path] - r.probability) > 1e-6 for r in plain)  # TTA changed something


def test_nothing_readable_is_status_2_with_a_row_each(export_dir, folder, tmp_path):
    missing = tmp_path / "missing.png"
    (tmp_path / "empty").mkdir()
    out, err = io.StringIO(), io.StringIO()
    code = main([str(export_dir), str(folder / "broken.jpg"), str(missing), str(tmp_path / "empty")], out, err)
    rows = read_csv(out.getvalue())
    assert code == 2 and [row["path"] for row in rows] == [str(folder / "broken.jpg"), str(missing),
                                                           str(tmp_path / "empty")]
    assert all(row["prediction"] == "" and row["error"] for row in rows)
    assert "missing.png" in rows[1]["error"] and "folder holds no image files" in rows[2]["error"]
    assert len(err.getvalue().strip().splitlines()) == 3


def test_tta_is_refused_for_other_kinds(export_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(export_dir, other)
    meta = json.loads((other / "export.json").read_text())
    (other / "export.json").write_text(json.dumps({**meta, "kind": "tabular"}))
    out, err = io.StringIO(), io.StringIO()
    assert main([str(other), "rows.csv", "--tta"], out, err) == 2
    assert "--tta applies to image exports only" in err.getvalue() and out.getvalue() == ""
