"""The vision lessons' tiny variants, each run as a user runs it (a subprocess) on generated
images or fake MNIST files: metrics.json, history.csv, the PNG figures, the summary line,
the export, that the tiny run learned something (its final valid metric beats chance, its
train loss fell), and a rerun of the same command that resumes instead of retraining.

The subprocesses share one JAX compilation cache, so the reruns skip XLA compilation.
"""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"black": (30, 30, 30), "grizzly": (150, 90, 40), "teddys": (230, 200, 150)}


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_cache")


def run(name: str, workdir: Path, cache: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    """`python -m experiments.NAME --tiny --workdir WORKDIR ARGS`, checked to exit with `status`."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    proc = subprocess.run([sys.executable, "-m", f"experiments.{name}", "--tiny", "--workdir", str(workdir), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == status, f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def check_run(proc, workdir: Path, epochs: int, chance: float, pngs=()) -> dict:
    """The outputs of a finished run; returns its final metrics. The run must have learned:
    its final valid accuracy beats `chance` (the share of the most frequent valid class) and,
    over several epochs, the last epoch's train loss is below the first's."""
    saved = json.loads((workdir / "metrics.json").read_text())
    final = saved["final"]
    assert {"valid_loss", "valid_accuracy"} <= set(final) and saved["seconds"] > 0
    assert all(math.isfinite(v) for v in final.values())
    assert final["valid_accuracy"] > chance, (final, chance)
    if "valid_error_rate" in final:
        assert final["valid_error_rate"] == pytest.approx(1 - final["valid_accuracy"])
    summary = "final: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()) + " ("
    assert proc.stdout.strip().splitlines()[-1].startswith(summary)
    with open(workdir / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    losses = [float(r["train_loss"]) for r in rows]
    assert all(map(math.isfinite, losses)) and (epochs == 1 or losses[-1] < losses[0]), losses
    assert float(rows[-1]["accuracy"]) == pytest.approx(final["valid_accuracy"], abs=1e-4)
    for name in ("top_losses.png", "confusion_matrix.png", "losses.png", *pngs):
        with Image.open(workdir / name) as image:
            assert image.format == "PNG" and min(image.size) >= 150, (name, image.size)
    return final


def majority_share(labels) -> float:
    """The accuracy of always answering the most frequent class."""
    return float(np.bincount(np.asarray(labels)).max() / len(labels))


def tiny_valid_labels(module_name: str, workdir: Path) -> np.ndarray:
    """The validation labels of a pets experiment's tiny run (its generated images in workdir)."""
    import importlib

    module = importlib.import_module(f"experiments.{module_name}")
    return np.asarray(module.make_data(module.TINY, workdir).valid.source.labels)


def check_resumes(name: str, workdir: Path, cache: Path, final: dict, *args: str) -> None:
    """The same command again picks up the finished run from its checkpoint: no training."""
    again = run(name, workdir, cache, *args)
    assert "resuming from checkpoint" in again.stdout and "train_loss" not in again.stdout
    assert json.loads((workdir / "metrics.json").read_text())["final"] == final


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def bear_folder(root: Path, splits: dict, seed: int = 0) -> Path:
    """root/<split>/<class>/<n>.png: noisy images whose mean colour is the class's."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for name, colour in COLOURS.items():
            for i in range(n):
                hw = (int(rng.integers(30, 50)), int(rng.integers(30, 50)))
                pixels = np.clip(rng.normal(colour, 25, (*hw, 3)), 0, 255).astype(np.uint8)
                write_png(root / split / name / f"{i}.png", pixels)
    return root


def tiny_body(path: Path) -> dict:
    """Weights of the tiny variants' body (simple_cnn 16, 32, 64 with BN) under torch names,
    saved as safetensors at `path`; returns them."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    body = {}
    for i, (c_in, c_out) in enumerate([(3, 16), (16, 32), (32, 64)]):
        body[f"layers.{i}.conv.weight"] = rng.normal(0, 0.2, (c_out, c_in, 3, 3)).astype(np.float32)
        if i < 2:
            body |= {f"layers.{i}.bn.{k}": np.full(c_out, v, np.float32)
                     for k, v in [("weight", 1.0), ("bias", 0.0), ("running_mean", 0.1), ("running_var", 2.0)]}
        else:
            body[f"layers.{i}.conv.bias"] = np.zeros(c_out, np.float32)
    save_file(body, str(path))
    return body


def test_lesson1_pets_loads_a_pretrained_body_and_resumes(tmp_path, jax_cache, capsys):
    from safetensors.numpy import save_file

    body = tiny_body(tmp_path / "body.safetensors")
    workdir = tmp_path / "pets"
    args = ("--pretrained", str(tmp_path / "body.safetensors"))
    proc = run("lesson1_pets", workdir, jax_cache, *args)
    assert f"simple_cnn: loaded 12 pretrained tensors from {tmp_path / 'body.safetensors'}" in proc.stdout
    assert "4 classes, 39 train / 9 valid" in proc.stdout  # generated pets, labels from file names
    final = check_run(proc, workdir, 2, majority_share(tiny_valid_labels("lesson1_pets", workdir)))
    assert set(final) == {"valid_loss", "valid_error_rate", "valid_accuracy"}
    meta = json.loads((workdir / "export" / "export.json").read_text())
    assert meta["kind"] == "image_classifier" and meta["classes"] == ["Abyssinian", "Bengal", "beagle", "pug"]
    check_resumes("lesson1_pets", workdir, jax_cache, final, *args)

    from experiments import lesson1_pets  # in-process: the error comes before any training
    from jaxfast import experiment

    body["layers.1.conv.weight"] = body["layers.1.conv.weight"][:, :8]
    save_file(body, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SystemExit) as stop:
        experiment.run(lesson1_pets.main, lesson1_pets.Config(), lesson1_pets.TINY,
                       ["--tiny", "--workdir", str(tmp_path / "bad"), "--pretrained", str(tmp_path / "bad.safetensors")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "bad.safetensors: shape mismatch" in err
    assert "layers.1.conv.weight (32, 8, 3, 3)" in err and "the model expects (3, 3, 16, 32)" in err


def test_lesson1_mnist_sample_from_fastai_png_folders_pretrained(tmp_path, jax_cache):
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("valid", 12)):
        for digit in ("3", "7"):
            for i in range(n):
                pixels = rng.integers(0, 40, (28, 28)).astype(np.uint8)
                if digit == "3":
                    pixels[6:22:7, 6:22] = 255  # three bars
                else:
                    pixels[6:8, 6:22], pixels[8:22, 18:21] = 255, 255  # a seven
                write_png(tmp_path / "sample" / split / digit / f"{i}.png", pixels)
    workdir = tmp_path / "run"
    tiny_body(tmp_path / "body.safetensors")
    args = ("--data-dir", str(tmp_path / "sample"), "--pretrained", str(tmp_path / "body.safetensors"))
    proc = run("lesson1_mnist_sample", workdir, jax_cache, *args)
    assert "MNIST_SAMPLE (PNG folders): 80 train / 24 valid" in proc.stdout
    assert "loaded 12 pretrained tensors" in proc.stdout and "body frozen: fit(1, slice(0.003))" in proc.stdout
    final = check_run(proc, workdir, 1, 0.5)
    assert json.loads((workdir / "export" / "export.json").read_text())["classes"] == ["3", "7"]
    check_resumes("lesson1_mnist_sample", workdir, jax_cache, final, *args)


def test_lesson2_own_images_skips_bad_files_evaluates_test_and_predicts(tmp_path, jax_cache):
    folder = bear_folder(tmp_path / "bears", {"train": 10, "valid": 4, "test": 3})
    (folder / "train" / "black" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    workdir = tmp_path / "run"
    args = ("--data-dir", str(folder))
    proc = run("lesson2_own_images", workdir, jax_cache, *args)
    assert "train/<class>, valid/<class>, test/<class>; 3 classes, 30 train / 12 valid / 9 test" in proc.stdout
    assert "broken.jpg" in proc.stderr and "left out" in proc.stderr
    # no --pretrained: the from-scratch recipe (TINY's: 3 epochs, every layer trained), and it says so
    assert "== no pretrained weights: training from scratch, simple_cnn at 32 px" in proc.stdout
    assert "fit_one_cycle(3, 0.01)" in proc.stdout and "--pretrained resnet34" in proc.stdout
    final = check_run(proc, workdir, 3, 1 / 3)
    assert {"test_loss", "test_error_rate", "test_accuracy"} <= set(final)

    from jaxfast.predict import main as predict  # what `python -m jaxfast.predict EXPORT IMAGES...` runs

    images = [str(folder / "test" / name / "0.png") for name in COLOURS] + [str(folder / "train/black/broken.jpg")]
    out, err = io.StringIO(), io.StringIO()
    assert predict([str(workdir / "export"), *images], out, err) == 0, err.getvalue()
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["path"] for r in rows] == images
    assert all(r["prediction"] in COLOURS and 0 < float(r["probability"]) <= 1 for r in rows[:3])
    assert rows[3]["prediction"] == "" and "broken.jpg" in rows[3]["error"]
    check_resumes("lesson2_own_images", workdir, jax_cache, final, *args)


def test_lesson2_own_images_fine_tunes_pretrained_weights_as_the_lesson(tmp_path, jax_cache):
    """--pretrained keeps the lesson's schedule: body frozen for epochs_frozen, lr_find, unfrozen."""
    folder = bear_folder(tmp_path / "bears", {"train": 8, "valid": 4})
    tiny_body(tmp_path / "body.safetensors")
    workdir = tmp_path / "run"
    proc = run("lesson2_own_images", workdir, jax_cache, "--data-dir", str(folder),
               "--pretrained", str(tmp_path / "body.safetensors"))
    assert "simple_cnn: loaded 12 pretrained tensors" in proc.stdout and "body frozen" in proc.stdout
    assert "training from scratch" not in proc.stdout
    check_run(proc, workdir, 2, 1 / 3, pngs=("lr_find.png",))


def test_lesson2_own_images_pretrained_name_fails_fast_offline(tmp_path, jax_cache):
    """A weights name that is neither cached nor reachable stops the run before any photo is
    read, naming the URL, the cache path and --pretrained PATH."""
    folder = bear_folder(tmp_path / "bears", {"train": 2, "valid": 1})
    env_cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.lesson2_own_images", "--workdir", str(tmp_path / "run"),
         "--data-dir", str(folder), "--pretrained", "resnet50"],
        cwd=REPO, env={**os.environ, "JAXFAST_CACHE": str(env_cache), "https_proxy": "http://127.0.0.1:9",
                       "HTTPS_PROXY": "http://127.0.0.1:9"},
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "--pretrained resnet50: the body is resnet50" in proc.stdout
    assert "download.pytorch.org/models/resnet50" in proc.stderr and str(env_cache) in proc.stderr
    assert "--pretrained PATH" in proc.stderr and "train/<class>" not in proc.stdout


def exported_tta_accuracy(workdir: Path, size: int) -> float:
    """fastai's TTA accuracy of lesson 6's export on its tiny validation images at `size`:
    the export's own model and weights, blended over tta_views, batch by batch."""
    import jax
    import jax.numpy as jnp

    from experiments import lesson6_pets_more
    from jaxfast.export import load_export
    from jaxfast.vision import databunch_with_size
    from jaxfast.vision.tta import tta_predict

    exported = load_export(workdir / "export")
    data = databunch_with_size(lesson6_pets_more.make_data(lesson6_pets_more.TINY, workdir), size)
    blended = jax.jit(lambda variables, x: tta_predict(lambda v: exported.model.apply(variables, v, train=False), x))
    correct = total = 0
    for batch in data.valid.batches(0):
        real = np.asarray(batch["mask"]) > 0
        probs = np.asarray(blended(exported.variables, jnp.asarray(batch["inputs"])))
        correct += int((probs.argmax(axis=1)[real] == np.asarray(batch["targets"])[real]).sum())
        total += int(real.sum())
    return correct / total


def test_lesson6_pets_more_figures_progressive_resizing_and_tta(tmp_path, jax_cache):
    workdir = tmp_path / "run"
    proc = run("lesson6_pets_more", workdir, jax_cache)
    assert "parameters are randomly initialised" in proc.stdout and "== size 40" in proc.stdout
    labels = tiny_valid_labels("lesson6_pets_more", workdir)
    final = check_run(proc, workdir, 3, majority_share(labels), pngs=("augmentations.png", "gradcam.png", "tta.png"))
    meta = json.loads((workdir / "export" / "export.json").read_text())
    assert meta["input_size"] == [40, 40] and meta["arch_config"]["bn_final"] is True
    # TTA recomputed here from the exported weights on the validation images at the last size
    tta_accuracy = exported_tta_accuracy(workdir, 40)
    assert final["valid_tta_accuracy"] == pytest.approx(tta_accuracy, abs=1e-6)
    assert final["valid_tta_error_rate"] == pytest.approx(1 - tta_accuracy, abs=1e-6)
    check_resumes("lesson6_pets_more", workdir, jax_cache, final)


def learn_free_predictions(loaded, splits) -> list:
    """The export's classes for the first 8 valid digits, fed as the training pipeline feeds them."""
    (mean,), (std,) = loaded.exported.meta["stats"]
    x = ((splits.x_valid[:8].astype(np.float32) / 255.0 - mean) / std)[..., None]
    return [int(i) for i in loaded.exported.predict(x).argmax(-1)]


def test_lesson7_resnet_mnist_on_fake_idx_files(tmp_path, jax_cache, fake_mnist_dir):
    from jaxfast.data.mnist import load_mnist

    workdir = tmp_path / "run"
    args = ("--data-dir", str(fake_mnist_dir))
    proc = run("lesson7_resnet_mnist", workdir, jax_cache, *args)
    assert "train 256 rows, valid 160 rows, 8 steps/epoch" in proc.stdout
    splits = load_mnist(str(fake_mnist_dir), seed=0)
    final = check_run(proc, workdir, 1, majority_share(splits.y_valid))
    assert set(final) == {"valid_loss", "valid_accuracy"}
    check_resumes("lesson7_resnet_mnist", workdir, jax_cache, final, *args)
    # The export takes greyscale PNG digits, normalised with the training digits' statistics.
    from jaxfast import load_learner

    loaded = load_learner(workdir / "export")
    assert loaded.exported.meta["channels"] == 1 and len(loaded.exported.meta["stats"][0]) == 1
    digits = [tmp_path / f"digit{i}.png" for i in range(8)]
    for path, pixels in zip(digits, splits.x_valid):
        Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    predicted = [loaded.predict(str(path))[1] for path in digits]
    direct = learn_free_predictions(loaded, splits)
    assert predicted == direct  # the file path and the arrays the run validated on agree

