"""Preemption: SIGTERM during training saves a checkpoint at the next step boundary and
stops cleanly (exit 0 from an experiment); the same command resumes exactly."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.mlp import mlp
from jaxfast.preemption import Preempted, stop_requests
from test_learner import make_data

REPO = Path(__file__).resolve().parents[1]
SIGTERM_AT = Path(__file__).with_name("sigterm_at_step.py")


def learner(workdir) -> Learner:
    return Learner(mlp((16,), 3), make_data(), "cross_entropy", ["accuracy"],
                   config=TrainConfig(progress=False), workdir=workdir, log=lambda line: None)


def test_stop_requests_set_the_flag_and_restore_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_saves_at_the_next_step_and_the_rerun_ends_identical(tmp_path):
    straight = learner(tmp_path / "straight")
    straight.fit_one_cycle(2, 1e-2)

    stopped = learner(tmp_path / "stopped")
    runner, calls = stopped.runner, []

    def train_step(state, batch):
        calls.append(1)
        if len(calls) == 7:  # mid-epoch 0 (12 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return runner.train_step(state, batch)

    stopped.runner = dataclasses.replace(runner, train_step=train_step)
    with pytest.raises(Preempted, match=r"SIGTERM after epoch 0, batch 7; checkpoint step 7 saved"):
        stopped.fit_one_cycle(2, 1e-2)

    resumed = learner(tmp_path / "stopped")
    resumed.fit_one_cycle(2, 1e-2)
    assert resumed.recorder.losses == straight.recorder.losses
    for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(resumed.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_an_experiment_exits_0_on_sigterm_and_resumes(tmp_path, fake_mnist_dir):
    common = ["--tiny", "--data-dir", str(fake_mnist_dir), "--models", "mlp"]
    module = "experiments.lesson5_sgd_mnist"
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    straight = run("-m", module, *common, "--workdir", str(tmp_path / "straight"))
    stopped = run(str(SIGTERM_AT), "5", module, *common, "--workdir", str(tmp_path / "stopped"))
    assert stopped.returncode == 0, stopped.stdout[-2000:] + stopped.stderr[-2000:]
    assert "preempted: stopped by SIGTERM after epoch 0, batch 5" in stopped.stdout
    assert not (tmp_path / "stopped" / "metrics.json").exists()
    resumed = run("-m", module, *common, "--workdir", str(tmp_path / "stopped"))
    assert straight.returncode == resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 0, batch 5" in resumed.stdout
    final = lambda name: json.loads((tmp_path / name / "metrics.json").read_text())["final"]
    assert final("stopped") == final("straight")
