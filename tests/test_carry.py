"""A model state carried from batch to batch (an LM's hidden state) through the one Learner:
kept by the train step, reset by the batch's flag, checkpointed for an exact resume; dict
inputs reach the model as keyword arguments; the LM loss and accuracy weigh real tokens."""

import jax
import numpy as np
import pytest

from jaxfast.checkpoint import Checkpointer
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.learner import Learner, TrainConfig
from jaxfast.losses import lm_cross_entropy
from jaxfast.metrics import get_metrics
from jaxfast.models.registry import ModelSpec

TINY_LM = {"vocab_size": 12, "emb_sz": 16, "n_hid": 24, "n_layers": 2, "drop_mult": 0.0}
BS, BPTT = 4, 8


def lm_data(n_batches: int = 6) -> DataBunch:
    """A stream that counts 2..11 over and over, cut into BS rows read BPTT tokens at a time:
    batch k's row i continues batch k-1's row i (the layout of fastai's LM loader)."""
    stream = np.arange(BS * (n_batches * BPTT + 1)) % 10 + 2
    rows = stream[: BS * (n_batches * BPTT + 1)].reshape(BS, -1)
    x = np.stack([rows[:, k * BPTT:(k + 1) * BPTT] for k in range(n_batches)]).reshape(-1, BPTT)
    y = np.stack([rows[:, k * BPTT + 1:(k + 1) * BPTT + 1] for k in range(n_batches)]).reshape(-1, BPTT)
    reset = np.repeat((np.arange(n_batches) == 0).astype(np.float32), BS)
    weights = np.ones_like(x, np.float32)
    weights[-1, -3:] = 0.0  # a padded tail: its tokens must not count
    inputs = {"tokens": x.astype(np.int32), "reset": reset, "token_mask": weights}
    targets = {"ids": y.astype(np.int32), "weights": weights}
    return DataBunch(ArrayLoader(inputs, targets, BS), ArrayLoader(inputs, targets, BS))


def lm_learner(workdir=None, **config) -> Learner:
    return Learner(ModelSpec("awd_lstm_lm", TINY_LM), lm_data(), "lm_cross_entropy", ["token_accuracy"],
                   config=TrainConfig(progress=False, **config), workdir=workdir, log=lambda line: None)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_lm_loss_and_accuracy_weigh_only_real_tokens():
    logits = np.zeros((2, 3, 5), np.float32)
    logits[..., 1] = 5.0  # predicts token 1 everywhere
    targets = {"ids": np.array([[1, 1, 2], [2, 2, 2]]), "weights": np.array([[1, 1, 0], [1, 0, 0]], np.float32)}
    per_row = np.asarray(lm_cross_entropy(logits, targets))
    right, wrong = -np.log(np.exp(5) / (np.exp(5) + 4)), -np.log(1 / (np.exp(5) + 4))
    np.testing.assert_allclose(per_row, [right, wrong], rtol=1e-5)
    (accuracy,) = get_metrics(["token_accuracy"])
    stats = accuracy.accumulate(logits, targets, np.ones(2, np.float32))
    assert accuracy.finalize({k: float(v) for k, v in stats.items()}) == pytest.approx(2 / 3)


def test_the_carry_is_kept_reset_and_learned_with():
    learn = lm_learner()
    assert set(learn.state.carry) and all(not np.any(leaf) for leaf in leaves(learn.state.carry))
    before = learn.validate()
    learn.fit_one_cycle(12, 5e-2)
    after = learn.validate()  # chance: 0.1 (seen: 0.10 -> 0.70)
    assert after["loss"] < 0.7 * before["loss"] and after["token_accuracy"] > 0.5, (before, after)
    assert any(np.any(leaf) for leaf in leaves(learn.state.carry))  # the last batch's hidden state


def test_resume_restores_the_carry_exactly(tmp_path, monkeypatch):
    whole = lm_learner(tmp_path / "whole", checkpoint_every_steps=3)
    whole.fit(1, 1e-2)
    original_save = Checkpointer.save

    def save_then_stop(self, *args, **kwargs):  # the run dies right after its mid-epoch save
        original_save(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        lm_learner(tmp_path / "half", checkpoint_every_steps=3).fit(1, 1e-2)
    monkeypatch.setattr(Checkpointer, "save", original_save)
    resumed = lm_learner(tmp_path / "half", checkpoint_every_steps=3)  # from step 3, batch 3's carry restored
    resumed.fit(1, 1e-2)
    assert int(resumed.state.step) == 6
    for a, b in zip(leaves((whole.state.params, whole.state.carry)), leaves((resumed.state.params, resumed.state.carry))):
        np.testing.assert_array_equal(a, b)



def test_validation_carries_the_hidden_state_from_batch_to_batch():
    """As fastai's validate: each valid batch starts from the hidden state the previous one left
    (the loader's first batch resets it), not from zeros; training's carry is left alone."""
    from jaxfast import steps

    learn = lm_learner()
    learn.fit_one_cycle(4, 5e-2)
    trained_carry = leaves(learn.state.carry)
    step = jax.jit(steps.eval_step)

    def mean_loss(reset_every_batch: bool) -> float:
        state, sums, counts = learn.state, 0.0, 0.0
        for batch in learn.data.valid.batches(0):
            if reset_every_batch:
                batch = {**batch, "inputs": {**batch["inputs"], "reset": np.ones_like(batch["inputs"]["reset"])}}
            metrics, carry = step(state, batch)
            state = state.replace(carry=carry)
            sums, counts = sums + float(metrics["loss"]["sum"]), counts + float(metrics["loss"]["count"])
        return sums / counts

    carried, zero_start = mean_loss(False), mean_loss(True)
    assert learn.validate()["loss"] == pytest.approx(carried, rel=1e-6)
    assert abs(carried - zero_start) > 1e-4, (carried, zero_start)
    for a, b in zip(trained_carry, leaves(learn.state.carry)):
        np.testing.assert_array_equal(a, b)
