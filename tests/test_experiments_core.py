"""The three lessons that prove the core: run from the shell as documented, write their
outputs, learn for real, and fail fast and clearly when data is missing."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import shared_dataset

REPO = Path(__file__).resolve().parents[1]


def run(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def final_metrics(workdir: Path) -> dict:
    data = json.loads((workdir / "metrics.json").read_text())
    assert set(data) == {"final", "config", "seconds"}
    return data["final"]


@pytest.mark.parametrize("module", ["lesson2_sgd", "lesson5_sgd_mnist", "lesson7_human_numbers"])
def test_help_lists_every_setting(module):
    proc = run(module, "--help")
    assert proc.returncode == 0, proc.stderr
    seed = "--seed" if module == "lesson2_sgd" else "--train.seed"  # lesson 2 has no Learner, so no --train.*
    for option in ("--workdir", "--data-dir", seed, "--tiny"):
        assert option in proc.stdout


def test_lesson2_sgd_fits_the_line(tmp_path):
    proc = run("lesson2_sgd", "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    final = final_metrics(tmp_path)
    assert 5.0 < final["initial_mse"] < 12.0  # fastai: 7.94 with its own draw
    assert final["final_mse"] < 0.1  # fastai: 0.078
    assert abs(final["a0"] - 3.0) < 0.2
    assert (tmp_path / "fit.png").stat().st_size > 0 and (tmp_path / "history.csv").exists()
    assert proc.stdout.strip().splitlines()[-1].startswith("final: initial_mse=")


def test_lesson7_tiny_writes_every_output_and_rerun_resumes(tmp_path):
    proc = run("lesson7_human_numbers", "--tiny", "--workdir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    final = final_metrics(tmp_path)
    assert 0.0 < final["valid_accuracy"] <= 1.0
    for model in ("loop_rnn", "gru"):
        for name in ("history.csv", "losses.png", "schedule.png", "export/export.json"):
            assert (tmp_path / model / name).exists(), f"{model}/{name}"
    again = run("lesson7_human_numbers", "--tiny", "--workdir", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "resuming from checkpoint" in again.stdout
    assert final_metrics(tmp_path) == final


def test_lesson5_offline_without_data_dir_fails_fast(tmp_path, monkeypatch, capsys):
    import experiments.lesson5_sgd_mnist as lesson5
    from jaxfast import experiment
    from jaxfast.data import download

    monkeypatch.setattr(download, "check_reachable", lambda url, timeout=3.0: False)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    start = time.time()
    with pytest.raises(SystemExit) as exit_info:
        experiment.run(lesson5.main, lesson5.Config(), lesson5.TINY, args=["--tiny", "--workdir", str(tmp_path / "w")])
    assert exit_info.value.code == 2
    assert time.time() - start < 30
    err = capsys.readouterr().err
    assert "mnist" in err and "http" in err and "--data-dir" in err


@pytest.mark.slow
def test_lesson5_real_mnist_reaches_target(tmp_path):
    data = shared_dataset("mnist")
    proc = run("lesson5_sgd_mnist", "--data-dir", str(data), "--workdir", str(tmp_path), "--train.no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "8,000 train / 2,000 valid" in proc.stdout
    final = final_metrics(tmp_path)
    assert final["logistic_valid_accuracy"] >= 0.90
    assert final["valid_accuracy"] >= 0.92  # the MLP; fastai: 0.9635 on the full 60k


@pytest.mark.slow
def test_lesson7_lstm_reaches_target(tmp_path):
    proc = run("lesson7_human_numbers", "--models", "lstm", "--workdir", str(tmp_path), "--train.no-progress")
    assert proc.returncode == 0, proc.stderr
    assert final_metrics(tmp_path)["valid_accuracy"] >= 0.85  # fastai's GRU: 0.807


def test_workdir_lock_refuses_a_second_run_and_is_released(tmp_path):
    """While one run holds a workdir, another one there is refused at once; the lock is
    gone when the first run ends."""
    from jaxfast.experiment import WorkdirInUse, workdir_lock

    with workdir_lock(tmp_path / "w"):
        with pytest.raises(WorkdirInUse, match="in use by another run"):
            with workdir_lock(tmp_path / "w"):
                pass
    with workdir_lock(tmp_path / "w"):
        pass


def test_check_workdir_ignores_lock_and_temp_files_but_not_work(tmp_path):
    """A workdir with config.json, the lock and a stray temp file holds no work: a new
    config replaces the old; once it holds a history, a different config is refused."""
    from jaxfast.experiment import ConfigMismatch, check_workdir

    workdir = tmp_path / "w"
    check_workdir(workdir, {"lr": 0.1})
    (workdir / ".lock").touch()
    (workdir / "tmpab12.tmp").write_text("{")
    check_workdir(workdir, {"lr": 0.2})
    assert json.loads((workdir / "config.json").read_text()) == {"lr": 0.2}
    (workdir / "model").mkdir()
    (workdir / "model" / "history.csv").write_text("epoch\n")
    with pytest.raises(ConfigMismatch, match="lr"):
        check_workdir(workdir, {"lr": 0.3})
    check_workdir(workdir, {"lr": 0.2})
