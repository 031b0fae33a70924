"""Phase-safe resume: checkpoints record the script's plan of phases; a changed script is
refused with what changed, a recorded lr_find is replayed, and a NaN in a later phase
restores the last good weights under that phase's own optimizer."""

import jax
import numpy as np
import pytest

import jaxfast.learner as learner_module
from jaxfast.checkpoint import Checkpointer
from jaxfast.errors import JaxfastError, TrainingDiverged
from jaxfast.layer_groups import LayerGroups
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.mlp import mlp
from jaxfast.phases import PhaseMismatch
from test_learner import make_data

TWO_GROUPS = LayerGroups((("body", "^Dense_0/"), ("head", "")))


def learner(workdir, **kw) -> Learner:
    return Learner(mlp((16,), 3), make_data(), "cross_entropy", ["accuracy"], layer_groups=TWO_GROUPS,
                   config=TrainConfig(progress=False, **kw), workdir=workdir, log=lambda line: None)


def leaves(tree) -> list:
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_a_changed_script_is_refused_with_what_changed(tmp_path):
    first = learner(tmp_path)
    first.freeze()
    first.fit_one_cycle(1, 1e-2)
    first.unfreeze()
    first.fit_one_cycle(1, slice(1e-4, 1e-3))

    changed = learner(tmp_path)
    changed.freeze()
    changed.fit_one_cycle(1, 1e-2)  # phase 0 as recorded: skipped
    changed.unfreeze()
    with pytest.raises(PhaseMismatch, match=r"phase 1 .*lrs: \[0\.0001, 0\.001\] recorded vs \[0\.0001, 0\.002\] now"):
        changed.fit_one_cycle(1, slice(1e-4, 2e-3))

    reordered = learner(tmp_path)
    with pytest.raises(PhaseMismatch, match="frozen_groups: 1 recorded vs 0 now") as refused:
        reordered.fit_one_cycle(1, 1e-2)  # the freeze() was dropped
    assert isinstance(refused.value, JaxfastError)

    same = learner(tmp_path)
    same.freeze()
    same.fit_one_cycle(1, 1e-2)
    same.unfreeze()
    same.fit_one_cycle(1, slice(1e-4, 1e-3))  # finished: restored, not retrained
    assert same.recorder.n_epochs == 2
    for a, b in zip(leaves(first.state.params), leaves(same.state.params)):
        np.testing.assert_array_equal(a, b)


def test_a_recorded_lr_find_is_replayed_without_running(tmp_path, monkeypatch):
    first = learner(tmp_path)
    found = first.lr_find(num_it=30)
    first.fit(1, found.lr_min)

    def must_not_run(*args, **kwargs):
        raise AssertionError("lr_find ran again on a rerun")

    monkeypatch.setattr(learner_module, "lr_find", must_not_run)
    again = learner(tmp_path)
    replayed = again.lr_find(num_it=30)
    assert replayed == found
    again.fit(1, replayed.lr_min)  # the recorded phase: nothing to train
    assert again.recorder.n_epochs == 1
    with pytest.raises(PhaseMismatch, match="num_it"):
        learner(tmp_path).lr_find(num_it=40)


def test_nan_after_unfreeze_restores_the_last_good_weights_under_the_new_optimizer(tmp_path):
    learn = learner(tmp_path)
    learn.freeze()
    learn.fit_one_cycle(1, 1e-2)
    good = leaves(Checkpointer(tmp_path / "checkpoints").restore(learn.state)[0].params)
    learn.unfreeze()
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        learn.fit(1, 1e30)  # the first epoch after unfreeze blows up
    for a, b in zip(good, leaves(learn.state.params)):
        np.testing.assert_array_equal(a, b)
    fresh = learn.state.tx.init(learn.state.params)  # the unfrozen phase's optimizer, new statistics
    assert jax.tree.structure(learn.state.opt_state) == jax.tree.structure(fresh)
    for a, b in zip(leaves(fresh), leaves(learn.state.opt_state)):
        np.testing.assert_array_equal(a, b)
    before = learn.validate()["loss"]
    learn.fit(1, 1e-3)  # and training goes on from there
    assert learn.validate()["loss"] < before
