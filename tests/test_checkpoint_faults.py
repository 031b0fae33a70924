"""Checkpoints on a bad day: the latest one corrupted on disk (the run says which step is
unreadable, moves it aside and resumes from the previous one, ending as an uninterrupted run
would), and a disk that fills up during a save (a clear error, the previous checkpoint intact)."""

import errno
import shutil
import subprocess

import jax
import numpy as np
import pytest

from jaxfast.checkpoint import Checkpointer, CheckpointWriteError
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.mlp import mlp
from test_learner import make_data


def learner(workdir, hidden=16, lines=None) -> Learner:
    return Learner(mlp((hidden,), 3), make_data(), "cross_entropy", ["accuracy"],
                   config=TrainConfig(progress=False), workdir=workdir,
                   log=(lines.append if lines is not None else lambda line: None))


def params(learn):
    return [np.asarray(x) for x in jax.tree.leaves(learn.state.params)]


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    straight = learner(tmp_path / "straight")
    straight.fit_one_cycle(3, 1e-2)

    damaged = learner(tmp_path / "damaged")
    damaged.fit_one_cycle(3, 1e-2)
    latest = damaged.checkpointer.latest_step()
    for path in (tmp_path / "damaged" / "checkpoints" / str(latest) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "d" in path.parent.name:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a crash or a bad disk

    lines = []
    resumed = learner(tmp_path / "damaged", lines=lines)
    said = " ".join(lines)
    assert f"checkpoint step {latest} in" in said and "unreadable" in said, lines
    assert (tmp_path / "damaged" / "checkpoints.unreadable" / str(latest)).is_dir()  # kept aside, not deleted
    assert "resuming from checkpoint at step" in said and "epoch 2" in said
    resumed.fit_one_cycle(3, 1e-2)  # retrains the last epoch from the epoch-2 checkpoint
    for a, b in zip(params(straight), params(resumed)):
        np.testing.assert_array_equal(a, b)


def test_a_full_disk_during_a_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    learn = learner(tmp_path)
    learn.fit(1, 1e-2)
    first = learn.checkpointer.latest_step()
    manager_save = type(learn.checkpointer._manager).save

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(learn.checkpointer._manager), "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=f"disk .* is full.*previous checkpoint \\(step {first}\\) is intact"):
        learn.fit(1, 1e-2)
    monkeypatch.setattr(type(learn.checkpointer._manager), "save", manager_save)
    assert Checkpointer(tmp_path / "checkpoints").latest_readable() == first


def test_a_real_full_tmpfs(tmp_path):
    """The same on a real 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        learn = learner(mount / "run", hidden=4096)  # ~0.65 MB a checkpoint with Adam's moments: one fits, two do not
        with pytest.raises(CheckpointWriteError, match="is full"):
            learn.fit(3, 1e-3)
        first = Checkpointer(mount / "run" / "checkpoints").latest_readable()
        assert first is not None  # the checkpoint written before the disk filled up reads back whole
    finally:
        subprocess.run(["umount", str(mount)], check=False)
