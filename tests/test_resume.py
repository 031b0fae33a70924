"""A run killed with SIGKILL after a checkpoint and started again with the same command
ends with the same parameters and metrics as an uninterrupted run."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

REPO = Path(__file__).resolve().parents[1]
CRASH = Path(__file__).with_name("crash_after_saves.py")


def _run(args, cwd=REPO):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _params(export_dir: Path):
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(export_dir / "variables")


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, fake_mnist_dir):
    common = ["--tiny", "--data-dir", str(fake_mnist_dir), "--train.checkpoint-every-steps", "5"]
    module = "experiments.lesson5_sgd_mnist"
    straight = _run(["-m", module, *common, "--workdir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    # 3 saves: step 5 and 10 of the logistic model's first epoch, then its epoch end (16).
    killed = _run([str(CRASH), "3", module, *common, "--workdir", str(killed_dir)])
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert not (killed_dir / "metrics.json").exists()
    resumed = _run(["-m", module, *common, "--workdir", str(killed_dir)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoint" in resumed.stdout

    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())["final"]
    b = json.loads((killed_dir / "metrics.json").read_text())["final"]
    assert a == b
    for model in ("logistic", "mlp"):
        pa = _params(tmp_path / "straight" / model / "export")
        pb = _params(killed_dir / model / "export")
        for x, y in zip(_leaves(pa), _leaves(pb), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The last line sums up the final metrics.
    assert resumed.stdout.strip().splitlines()[-1].startswith("final: ")


def test_mid_epoch_kill_resumes_at_the_same_batch(tmp_path, fake_mnist_dir):
    common = ["--tiny", "--data-dir", str(fake_mnist_dir), "--train.checkpoint-every-steps", "3", "--models", "mlp"]
    module = "experiments.lesson5_sgd_mnist"
    straight = _run(["-m", module, *common, "--workdir", str(tmp_path / "straight")])
    killed = _run([str(CRASH), "1", module, *common, "--workdir", str(tmp_path / "killed")])
    assert killed.returncode == -9
    resumed = _run(["-m", module, *common, "--workdir", str(tmp_path / "killed")])
    assert straight.returncode == resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 0, batch 3" in resumed.stdout
    a = (tmp_path / "straight" / "mlp" / "history.csv").read_text().splitlines()
    b = (tmp_path / "killed" / "mlp" / "history.csv").read_text().splitlines()
    strip_time = lambda rows: [",".join(r.split(",")[:4]) for r in rows]  # noqa: E731
    assert strip_time(a) == strip_time(b)


def test_different_config_in_same_workdir_is_refused(tmp_path, fake_mnist_dir):
    common = ["-m", "experiments.lesson5_sgd_mnist", "--tiny", "--data-dir", str(fake_mnist_dir), "--models", "logistic"]
    first = _run([*common, "--workdir", str(tmp_path / "w")])
    assert first.returncode == 0, first.stderr[-2000:]
    second = _run([*common, "--workdir", str(tmp_path / "w"), "--lr-logistic", "0.5"])
    assert second.returncode == 2
    assert "different config" in second.stderr and "lr_logistic" in second.stderr


def test_run_that_stopped_before_training_does_not_lock_its_workdir(tmp_path, fake_mnist_dir):
    """A first run that fails on its data leaves only config.json; the corrected rerun
    (another --data-dir) trains in that workdir instead of being refused."""
    common = ["-m", "experiments.lesson5_sgd_mnist", "--tiny", "--models", "logistic", "--workdir", str(tmp_path / "w")]
    missing = _run([*common, "--data-dir", str(tmp_path / "no_such_dir")])
    assert missing.returncode == 2, missing.stderr[-2000:]
    assert (tmp_path / "w" / "config.json").exists()
    fixed = _run([*common, "--data-dir", str(fake_mnist_dir)])
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert str(fake_mnist_dir) in (tmp_path / "w" / "config.json").read_text()


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)
