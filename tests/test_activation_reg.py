"""fastai's RNNTrainer AR/TAR (activation and temporal activation regularization): the penalty
against fastai's formula, its padding mask, and its place in the train step (gradient only)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfast.losses import activation_penalty, get_loss
from jaxfast.models.awd_lstm import awd_lstm_clas, awd_lstm_lm
from jaxfast.state import Task, create_train_state
from jaxfast.steps import train_step

pytestmark = pytest.mark.usefixtures("full_precision")

SIZES = dict(emb_sz=6, n_hid=10, n_layers=2)


def test_penalty_is_fastais_formula_when_every_position_is_real():
    """fastai: alpha * out[-1].pow(2).mean() + beta * (h[:, 1:] - h[:, :-1]).pow(2).mean()."""
    h = np.random.default_rng(0).normal(size=(4, 7, 5)).astype(np.float32)
    penalty = activation_penalty({"last_output": (jnp.asarray(h),)}, 2.0, 1.0)
    fastai = 2.0 * np.mean(h ** 2) + 1.0 * np.mean((h[:, 1:] - h[:, :-1]) ** 2)
    assert penalty.shape == (4,)
    np.testing.assert_allclose(float(penalty.mean()), fastai, rtol=1e-5)
    assert float(activation_penalty({"last_output": (jnp.asarray(h),)}, 0.0, 0.0).sum()) == 0.0


def test_penalty_ignores_padding():
    """Each row's terms are its real positions' only: padding (any values) changes nothing."""
    rng = np.random.default_rng(1)
    h = rng.normal(size=(2, 6, 3)).astype(np.float32)
    real = np.array([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]], np.float32)  # LM end padding, classifier pad_first
    noisy = np.where(real[..., None] == 1, h, 100.0 * rng.normal(size=h.shape)).astype(np.float32)
    got = activation_penalty({"last_output": (jnp.asarray(noisy),), "last_output_mask": (jnp.asarray(real),)}, 2.0, 1.0)
    for row, kept in enumerate((h[0, :4], h[1, 2:])):
        expected = 2.0 * np.mean(kept ** 2) + np.mean((kept[1:] - kept[:-1]) ** 2)
        np.testing.assert_allclose(float(got[row]), expected, rtol=1e-5)


def test_penalty_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="last_output"):
        activation_penalty({}, 2.0, 1.0)
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        activation_penalty({"last_output": (jnp.ones((2, 3)),)}, 2.0, 1.0)
    with pytest.raises(ValueError, match="activation_reg"):
        Task(get_loss("cross_entropy"), activation_reg=(-1.0, 0.0))


def _lm_batch(rng, batch_size=3, seq_len=8, vocab=30):
    token_mask = np.ones((batch_size, seq_len), np.float32)
    token_mask[1, 5:] = 0.0  # one row ends early, as an LMLoader batch's last one
    tokens = rng.integers(2, vocab, (batch_size, seq_len)).astype(np.int32)
    targets = rng.integers(2, vocab, (batch_size, seq_len)).astype(np.int32)
    return {"inputs": {"tokens": tokens, "reset": np.ones(batch_size, np.float32), "token_mask": token_mask},
            "targets": {"ids": targets, "weights": token_mask}, "mask": np.ones(batch_size, np.float32)}


def test_train_step_adds_the_penalty_to_the_gradient_not_to_the_reported_loss():
    """With SGD, the regularized step's params differ from the plain step's by exactly
    lr * grad(mean penalty); the reported loss is the task's in both (dropouts off: same forward)."""
    model = awd_lstm_lm(30, drop_mult=0.0, **SIZES)
    batch = _lm_batch(np.random.default_rng(2))
    lr = 0.5
    results = {}
    for reg in ((0.0, 0.0), (2.0, 1.0)):
        state = create_train_state(model, batch["inputs"], optax.sgd(lr), Task(get_loss("lm_cross_entropy"), (), "float32", reg))
        results[reg] = jax.jit(train_step)(state, batch)
    (plain, plain_metrics), (regularized, reg_metrics) = results[(0.0, 0.0)], results[(2.0, 1.0)]
    assert float(reg_metrics["loss"]["sum"]) == pytest.approx(float(plain_metrics["loss"]["sum"]), rel=1e-6)

    def mean_penalty(params):
        _, updates = model.apply({"params": params}, **batch["inputs"], train=True, mutable=["carry", "intermediates"])
        return activation_penalty(updates["intermediates"], 2.0, 1.0).mean()

    start = create_train_state(model, batch["inputs"], optax.sgd(lr), Task(get_loss("lm_cross_entropy"))).params
    grad = jax.grad(mean_penalty)(start)
    assert float(optax.tree.norm(grad)) > 1e-4  # the check below is not vacuous
    moved = jax.tree.map(lambda p, r: p - r, plain.params, regularized.params)
    for got, want in zip(jax.tree.leaves(moved), jax.tree.leaves(jax.tree.map(lambda g: lr * g, grad))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-3, atol=2e-6)


def test_classifier_sows_its_non_pad_positions():
    model = awd_lstm_clas(30, 2, bptt=4, max_len=8, **SIZES)
    tokens = np.array([[1, 1, 1, 5, 6, 7, 8, 9, 10, 11], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]], np.int32)
    variables = model.init(jax.random.key(0), tokens)
    _, sown = model.apply(variables, tokens, mutable=["intermediates"])
    kept = sown["intermediates"]["last_output"][0].shape[1]  # the chunks after T - max_len
    np.testing.assert_array_equal(np.asarray(sown["intermediates"]["last_output_mask"][0]), tokens[:, -kept:] != 1)
