"""Lesson 7's restoration experiment (experiments/lesson7_superres.py) end to end on real
files: the tiny variant on fastai's CAMVID_TINY writes its outputs, exports a U-Net with the
lesson's options, its PSNR is recomputed from the export, the bicubic baseline from PIL, and a
rerun resumes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset
from jaxfast import experiment
from jaxfast.errors import InputError
from jaxfast.export import load_export
from jaxfast.gan.image_metrics import psnr
from jaxfast.vision.restoration_data import restoration_data


REPO = Path(__file__).resolve().parents[1]


def _run(workdir, data_dir, extra=()) -> tuple[dict, str]:
    """The tiny experiment in its own process, as a user runs it (a crash inside XLA's compiler then
    fails this test, not the whole suite): (metrics.json's final metrics, its stdout)."""
    command = [sys.executable, "-m", "experiments.lesson7_superres", "--tiny", "--workdir", str(workdir),
               "--data-dir", str(data_dir), *extra]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((workdir / "metrics.json").read_text())["final"], proc.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data_dir = shared_dataset("camvid_tiny")
    workdir = tmp_path_factory.mktemp("superres") / "run"
    final, stdout = _run(workdir, data_dir)
    return workdir, data_dir, final, stdout


def _pil_bicubic_psnr(pairs) -> float:
    """The baseline recomputed with PIL: each small JPEG bicubic-upscaled, as uint8."""
    values = []
    for low, target in zip(pairs["low"], pairs["targets"]):
        up = Image.fromarray(low).resize(target.shape[1::-1], Image.Resampling.BICUBIC)
        mse = np.mean((np.asarray(up, np.float64) / 255 - target) ** 2)
        values.append(10 * np.log10(1 / mse))
    return float(np.mean(values))


# Three U-Net compiles (train steps of both phases, eval) dominate: minutes on the loaded 2-core machine.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_tiny_superres_writes_outputs_its_psnr_is_real_and_it_resumes(tiny_run):
    workdir, data_dir, final, stdout = tiny_run
    for name in ("metrics.json", "history.csv", "show_results.png", "export/export.json", "config.json"):
        assert (workdir / name).is_file(), name
    assert stdout.strip().splitlines()[-1].startswith("final: ")  # the last line sums up the final metrics
    assert set(final) >= {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "input_psnr", "bicubic_gain_db"}
    export = load_export(workdir / "export")
    assert export.meta["kind"] == "restoration" and export.meta["size"] == 64
    config = export.meta["arch_config"]
    assert (config["norm_type"], config["self_attention"], config["blur"], config["y_range"]) == \
        ("weight", True, True, [-3.0, 3.0])
    # the PSNR figure, recomputed: the export's outputs on the held-out pairs, clipped, against the targets
    data = restoration_data(data_dir, 64, 4, 0, max_train=16, max_valid=8, log=lambda m: None)
    pairs = data.valid.pairs()
    outputs = np.clip(data.valid.denormalize(export.predict(data.valid.normalize(pairs["inputs"]))), 0, 1)
    assert float(np.mean(psnr(outputs, pairs["targets"]))) == pytest.approx(final["psnr"], abs=2e-3)
    assert final["output_psnr"] == pytest.approx(final["psnr"], abs=2e-3)
    assert final["bicubic_psnr"] == pytest.approx(_pil_bicubic_psnr(pairs), abs=0.3)
    assert 15 < final["bicubic_psnr"] < 40 and 0 < final["bicubic_ssim"] < 1
    again, stdout = _run(workdir, data_dir)
    assert again == pytest.approx(final)  # a finished run resumes and reports again
    assert "pixel L1 alone" in stdout  # no --vgg-weights: the run says so


def test_superres_needs_a_data_dir_and_lists_its_settings(tmp_path, capsys):
    from experiments import lesson7_superres

    with pytest.raises(SystemExit):
        experiment.parse_config(lesson7_superres.Config(), lesson7_superres.TINY, ["--help"])
    shown = capsys.readouterr().out
    assert "--vgg-weights" in shown and "--norm-type" in shown and "--size" in shown
    with pytest.raises(InputError, match="needs --data-dir"):
        lesson7_superres.main(lesson7_superres.TINY, tmp_path)
