"""Orbax checkpoints: latest + best N kept, meta round trip, unrankable saves, restore."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfast.checkpoint import Checkpointer
from jaxfast.losses import get_loss
from jaxfast.models.mlp import mlp
from jaxfast.state import Task, create_train_state


def make_state(step=0):
    state = create_train_state(mlp((4,), 2), jnp.zeros((1, 3)), optax.adam(1e-3), Task(get_loss("cross_entropy")))
    return state.replace(step=jnp.asarray(step, jnp.int32))


def test_keeps_latest_and_best_by_metric(tmp_path):
    ckpt = Checkpointer(tmp_path, monitor="accuracy", mode="max", keep_best=2)
    accuracies = {10: 0.5, 20: 0.9, 30: 0.7, 40: 0.8, 50: 0.6}
    for step, acc in accuracies.items():
        ckpt.save(make_state(step), {"epoch": step // 10}, {"accuracy": acc})
    assert ckpt.all_steps() == [20, 40, 50]  # best two (0.9, 0.8) + the two latest
    assert ckpt.best_step() == 20 and ckpt.latest_step() == 50
    assert ckpt.read_meta(20) == {"epoch": 2}


def test_min_mode_and_unrankable_saves(tmp_path):
    ckpt = Checkpointer(tmp_path, monitor="valid_loss", mode="min", keep_best=1)
    ckpt.save(make_state(1), {}, {"valid_loss": 0.3})
    ckpt.save(make_state(2), {}, {"valid_loss": 0.1})
    ckpt.save(make_state(3), {}, None)  # a mid-epoch save: kept only while it is the latest
    ckpt.save(make_state(4), {}, {"valid_loss": float("nan")})
    assert ckpt.all_steps() == [2, 3, 4]  # the best, and the two latest (3 is dropped at the next save)
    assert ckpt.best_step() == 2


def test_restore_round_trip_and_missing(tmp_path):
    ckpt = Checkpointer(tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(make_state())
    state = make_state(7)
    state = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))
    ckpt.save(state, {"phase": 0})
    restored, meta = ckpt.restore(make_state())
    assert int(restored.step) == 7 and meta == {"phase": 0}
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_mode_is_named(tmp_path):
    with pytest.raises(ValueError, match="'min' or 'max'"):
        Checkpointer(tmp_path, monitor="accuracy", mode="maximum")


def test_best_survives_a_restart(tmp_path):
    first = Checkpointer(tmp_path, monitor="accuracy", mode="max", keep_best=1)
    first.save(make_state(1), {}, {"accuracy": 0.9})
    first.save(make_state(2), {}, {"accuracy": 0.5})
    first.close()
    second = Checkpointer(tmp_path, monitor="accuracy", mode="max", keep_best=1)  # a resumed run
    second.save(make_state(3), {}, {"accuracy": 0.6})
    second.save(make_state(4), {}, {"accuracy": 0.7})
    assert second.all_steps() == [1, 3, 4] and second.best_step() == 1
