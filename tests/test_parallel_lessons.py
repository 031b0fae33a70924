"""The lessons' tiny variants under `--parallel mesh` and `--parallel pmap` on 8 fake CPU
devices end with the final metrics of one device (tests/parallel_lessons_check.py runs the
three modes of one lesson in one subprocess).

Tolerances (rtol 1e-3, atol 1e-3 on every final metric):
- mesh runs the same global computation as one device: each batch is split over the devices,
  BatchNorm statistics are still taken over the whole global batch, dropout draws the same masks
  (JAX's partitionable threefry), and the carried LM state is split like the batch; only float
  sums are added in another order (per-device partial sums, then an all-reduce). Seen: at most
  2.3e-5 relative (MNIST sample's valid loss), most metrics identical.
- pmap matches at the same tolerance for models without BatchNorm or dropout (collab's dot
  product model, lesson 7's pure RNNs). A model with BatchNorm under pmap
  normalises each device's rows by their own statistics (as PyTorch DDP without SyncBatchNorm),
  and dropout draws per-device masks: a different, equally valid training, whose per-device
  batches here are 1-4 rows, so its metrics are only checked to exist and be finite (seen: tabular
  valid loss 1.21 vs 0.96, MNIST sample 0.54 vs 1.07). `--parallel mesh` is the exact one.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("parallel_lessons_check.py")
ADULT_DUMMY = REPO / "jaxfast" / "datasets" / "dummy_data" / "adult"
EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def run_modes(module: str, root: Path, *args: str, modes: str = "single,mesh,pmap", timeout: int = 900):
    env = {**os.environ, **EIGHT_DEVICES}
    return subprocess.run([sys.executable, str(SCRIPT), module, str(root), modes, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def finals_of(proc) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [line for line in proc.stdout.splitlines() if line.startswith("FINALS ")][-1]
    return json.loads(line[len("FINALS "):])


def check_modes(finals: dict, pmap_exact) -> None:
    """mesh equals single on every metric; pmap on the metrics `pmap_exact(key)` names, and
    finite on the others (BatchNorm per device)."""
    single = finals["single"]
    for mode in ("mesh", "pmap"):
        assert finals[mode].keys() == single.keys(), mode
        for key, value in single.items():
            got = finals[mode][key]
            assert math.isfinite(got), (mode, key, got)
            if mode == "mesh" or pmap_exact(key):
                np.testing.assert_allclose(got, value, rtol=1e-3, atol=1e-3, err_msg=f"{mode} {key}")


def write_mnist_sample(folder: Path) -> Path:
    """A learnable MNIST_SAMPLE npz: 3s have a bright band at the top, 7s at the bottom."""
    rng = np.random.default_rng(0)

    def make(n):
        digits = rng.choice([3, 7], n)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for image, digit in zip(images, digits):
            image[slice(4, 8) if digit == 3 else slice(20, 24)] = 255
        return images, digits

    (x_train, y_train), (x_valid, y_valid) = make(128), make(48)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "mnist_sample.npz", x_train=x_train, y_train=y_train, x_valid=x_valid, y_valid=y_valid)
    return folder


def test_collab_dot_product_is_the_same_on_one_device_a_mesh_and_pmap(tmp_path):
    """Lesson 4 collab's dot product model (no BatchNorm, no dropout): every mode, the same metrics.
    (Its EmbeddingNN, with BatchNorm, was seen: mesh 2e-5 relative from one device, pmap 0.59 vs 0.52.)"""
    proc = run_modes("lesson4_collab", tmp_path, "--models", "embedding_dot_bias", "--epochs", "1")
    check_modes(finals_of(proc), pmap_exact=lambda key: True)


def test_a_global_batch_that_does_not_split_over_the_devices_is_one_clear_error(tmp_path):
    proc = run_modes("lesson4_collab", tmp_path, "--models", "embedding_dot_bias", "--batch-size", "20",
                     modes="mesh", timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert "batch size 20 (global)" in error and "8 data shards" in error and "multiple of 8 (e.g. 24)" in error


@pytest.mark.slow
@pytest.mark.parametrize("module, args, pmap_exact", [
    ("lesson4_tabular", ("--data-dir", str(ADULT_DUMMY)), lambda key: False),
    ("lesson1_mnist_sample", ("--data-dir", "MNIST"), lambda key: False),
    ("lesson7_human_numbers", (), lambda key: True),  # pure RNNs, no BatchNorm, no dropout
], ids=["tabular", "mnist_sample", "human_numbers"])
def test_lesson_tiny_variants_end_the_same_on_eight_devices(tmp_path, module, args, pmap_exact):
    if "MNIST" in args:
        args = tuple(str(write_mnist_sample(tmp_path / "mnist")) if a == "MNIST" else a for a in args)
    check_modes(finals_of(run_modes(module, tmp_path / "runs", *args)), pmap_exact)


@pytest.mark.slow
def test_wgan_on_a_mesh_ends_as_on_one_device_and_pmap_is_refused(tmp_path):
    """Lesson 7's WGAN (GANTrainer: two states, its own pure steps, BatchNorm in both models) under
    --parallel mesh on 8 fake devices ends with one device's metrics (2 epochs of 4 steps: critic
    and generator steps); --parallel pmap is one clear error before any training."""
    args = ("--data-dir", str(shared_dataset("mnist_tiny")), "--epochs", "2", "--max-images", "64")
    finals = finals_of(run_modes("lesson7_wgan", tmp_path / "runs", *args, modes="single,mesh"))
    single, mesh = finals["single"], finals["mesh"]
    assert mesh.keys() == single.keys() and single["generator_steps"] >= 1 and single["critic_steps"] >= 5
    for key, value in single.items():
        np.testing.assert_allclose(mesh[key], value, rtol=1e-3, atol=1e-6, err_msg=key)
    refused = run_modes("lesson7_wgan", tmp_path / "pmap", *args, modes="pmap")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "GAN training runs under --parallel single or mesh" in refused.stderr
    assert not (tmp_path / "pmap" / "pmap" / "gan_checkpoints").exists()
