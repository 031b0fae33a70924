"""Metrics and losses against independent numpy references.

Every metric is run through the real accumulate -> add_stats -> finalize path
over several batches whose last batch is padded with garbage rows (mask 0),
and must match a numpy computation on the unpadded data and a single-batch run.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast import losses, metrics

BATCH_SIZE = 8


_accumulate = jax.jit(metrics.accumulate_all, static_argnums=0)


def batched_values(chosen, outputs, targets, batch_size=BATCH_SIZE, garbage=0.0):
    """Run metrics over fixed-size batches, padding the last one with masked garbage rows."""
    total = None
    for start in range(0, len(outputs), batch_size):
        out = outputs[start:start + batch_size]
        tgt = targets[start:start + batch_size]
        real = len(out)
        pad = batch_size - real
        if pad:
            out = np.concatenate([out, np.full((pad,) + out.shape[1:], garbage, out.dtype)])
            # Padding targets are deliberately wrong-looking values too.
            tgt = np.concatenate([tgt, np.ones((pad,) + tgt.shape[1:], tgt.dtype)])
        mask = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
        total = metrics.add_stats(total, _accumulate(chosen, out, tgt, mask))
    return metrics.finalize_all(chosen, total)


def single_batch_values(chosen, outputs, targets):
    stats = _accumulate(chosen, outputs, targets, np.ones(len(outputs), np.float32))
    return metrics.finalize_all(chosen, stats)


def assert_metrics_match(chosen, outputs, targets, expected, garbage=0.0, rtol=1e-5, atol=1e-6):
    """Padded multi-batch run == single batch == numpy reference (21 rows -> 3 batches of 8)."""
    chosen = tuple(chosen)
    batched = batched_values(chosen, outputs, targets, garbage=garbage)
    single = single_batch_values(chosen, outputs, targets)
    for metric, want in zip(chosen, expected):
        np.testing.assert_allclose(batched[metric.name], want, rtol=rtol, atol=atol, err_msg=metric.name)
        np.testing.assert_allclose(single[metric.name], want, rtol=rtol, atol=atol, err_msg=metric.name)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


N = 21  # not a multiple of BATCH_SIZE, so the last batch is padded


# ---------------------------------------------------------- classification


def test_accuracy_error_rate_top_k(rng):
    outputs = rng.normal(size=(N, 10)).astype(np.float32)
    targets = rng.integers(0, 10, size=N).astype(np.int32)
    expected_acc = np.mean(outputs.argmax(-1) == targets)
    top5 = np.argsort(-outputs, axis=-1)[:, :5]
    expected_top5 = np.mean([t in row for t, row in zip(targets, top5)])

    assert_metrics_match(
        [metrics.accuracy(), metrics.error_rate(), metrics.top_k_accuracy(5)], outputs, targets,
        [expected_acc, 1 - expected_acc, expected_top5], garbage=100.0)
    assert 0 < expected_top5 < 1 and expected_acc < expected_top5


def test_accuracy_counts_every_token_of_sequences(rng):
    outputs = rng.normal(size=(N, 7, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(N, 7)).astype(np.int32)
    expected = np.mean(outputs.argmax(-1) == targets)
    assert_metrics_match([metrics.accuracy()], outputs, targets, [expected], garbage=-3.0)


def test_accuracy_thresh_multilabel(rng):
    outputs = rng.normal(size=(N, 6)).astype(np.float32)
    targets = (rng.random((N, 6)) > 0.5).astype(np.float32)
    probs = 1 / (1 + np.exp(-outputs))
    expected = np.mean((probs > 0.5) == targets.astype(bool))
    assert_metrics_match([metrics.accuracy_thresh()], outputs, targets, [expected])
    expected_raw = np.mean((outputs > 0.3) == targets.astype(bool))
    assert_metrics_match(
        [metrics.accuracy_thresh(0.3, sigmoid=False)], outputs, targets, [expected_raw])


def numpy_fbeta(outputs, targets, beta=2, thresh=0.2, eps=1e-9):
    """fastai v1 fbeta written out per sample."""
    scores = []
    for out, tgt in zip(outputs, targets):
        pred = (1 / (1 + np.exp(-out.astype(np.float64))) > thresh).astype(np.float64)
        tp = np.sum(pred * tgt)
        prec = tp / (pred.sum() + eps)
        rec = tp / (tgt.sum() + eps)
        scores.append((prec * rec) / (prec * beta**2 + rec + eps) * (1 + beta**2))
    return np.mean(scores)


def test_fbeta_is_mean_of_per_sample_scores(rng):
    outputs = rng.normal(size=(N, 8)).astype(np.float32) * 2
    targets = (rng.random((N, 8)) > 0.6).astype(np.float32)
    targets[0] = 0  # an example with no positive labels
    assert_metrics_match([metrics.fbeta()], outputs, targets, [numpy_fbeta(outputs, targets)])
    assert_metrics_match(
        [metrics.fbeta(beta=1, thresh=0.5)], outputs, targets,
        [numpy_fbeta(outputs, targets, beta=1, thresh=0.5)])


def test_accuracy_ignoring_void_pixels(rng):
    void = 4
    outputs = rng.normal(size=(N, 3, 5, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(N, 3, 5)).astype(np.int32)
    keep = targets != void
    expected = np.mean(outputs.argmax(-1)[keep] == targets[keep])
    metric = metrics.accuracy_ignoring(void)
    assert_metrics_match([metric], outputs, targets, [expected])
    # [B, H, W, 1] targets are accepted too.
    with_channel = single_batch_values((metric,), outputs, targets[..., None])
    np.testing.assert_allclose(with_channel[metric.name], expected, rtol=1e-6)


def test_dice_and_iou_on_binary_masks(rng):
    outputs = rng.normal(size=(N, 6, 6, 2)).astype(np.float32)
    targets = (rng.random((N, 6, 6)) > 0.5).astype(np.int32)
    pred = outputs.argmax(-1)
    intersect = np.sum(pred * targets)
    union = np.sum(pred + targets)
    assert_metrics_match(
        [metrics.dice(), metrics.iou()], outputs, targets,
        [2 * intersect / union, intersect / (union - intersect)], garbage=7.0)


def test_dice_with_empty_prediction_and_target_is_perfect():
    outputs = np.zeros((3, 4, 4, 2), np.float32)
    outputs[..., 0] = 1.0  # argmax is always class 0
    targets = np.zeros((3, 4, 4), np.int32)
    assert single_batch_values((metrics.dice(), metrics.iou()), outputs, targets) == {"dice": 1.0, "iou": 1.0}


# ----------------------------------------------------------- regression


@pytest.fixture
def regression_data(rng):
    targets = rng.normal(size=N).astype(np.float32) * 2 + 1
    preds = (targets + rng.normal(size=N) * 0.5).astype(np.float32)[:, None]  # [B, 1] head
    return preds, targets


def test_regression_metrics(regression_data):
    preds, targets = regression_data
    p, t = preds[:, 0].astype(np.float64), targets.astype(np.float64)
    err = p - t
    expected = {
        "mse": np.mean(err**2),
        "rmse": np.sqrt(np.mean(err**2)),
        "mae": np.mean(np.abs(err)),
        "exp_rmspe": np.sqrt(np.mean(((np.exp(t) - np.exp(p)) / np.exp(t)) ** 2)),
        "r2": 1 - np.sum((t - p) ** 2) / np.sum((t - t.mean()) ** 2),
    }
    chosen = metrics.get_metrics(expected)
    # NaN and inf padding must not leak through the mask.
    assert_metrics_match(chosen, preds, targets, list(expected.values()), garbage=np.nan, rtol=1e-4)
    assert_metrics_match(chosen, preds, targets, list(expected.values()), garbage=np.inf, rtol=1e-4)


def test_multi_output_regression_counts_every_element(rng):
    targets = rng.normal(size=(N, 3)).astype(np.float32)
    preds = rng.normal(size=(N, 3)).astype(np.float32)
    assert_metrics_match([metrics.mse_metric()], preds, targets, [np.mean((preds - targets) ** 2)])


# --------------------------------------------------------- loop helpers


def test_all_masked_gives_nan_not_zero_division(rng):
    outputs = rng.normal(size=(4, 3)).astype(np.float32)
    mask = np.zeros(4, np.float32)
    groups = [
        (["accuracy", "error_rate", "top_k_accuracy", "dice", "iou"], outputs, np.zeros(4, np.int32)),
        (["mse", "rmse", "mae", "exp_rmspe", "r2"], outputs[:, :1], outputs[:, 0]),
        (["accuracy_thresh", "fbeta"], outputs, (outputs > 0).astype(np.float32)),
    ]
    for names, group_outputs, group_targets in groups:
        chosen = metrics.get_metrics(names)
        stats = _accumulate(chosen, group_outputs, group_targets, mask)
        values = metrics.finalize_all(chosen, stats)
        assert all(math.isnan(values[name]) for name in names), values


def test_accumulate_all_under_jit_and_add_stats(rng):
    chosen = metrics.get_metrics(["accuracy", "error_rate", "top_k_accuracy"])
    outputs = rng.normal(size=(16, 10)).astype(np.float32)
    targets = rng.integers(0, 10, size=16).astype(np.int32)
    mask = np.ones(8, np.float32)
    step = jax.jit(lambda o, t, m: metrics.accumulate_all(chosen, o, t, m))
    first = step(outputs[:8], targets[:8], mask)
    second = step(outputs[8:], targets[8:], mask)
    assert set(first) == {"accuracy", "error_rate", "top_k_accuracy"}
    assert all(v.shape == () and v.dtype == jnp.float32 for v in first["accuracy"].values())
    summed = metrics.add_stats(metrics.add_stats(None, first), second)
    whole = step(outputs, targets, np.ones(16, np.float32))
    assert metrics.finalize_all(chosen, summed) == pytest.approx(metrics.finalize_all(chosen, whole))
    # add_stats also works inside jit (e.g. in a scan over eval batches).
    jitted_sum = jax.jit(metrics.add_stats)(first, second)
    assert float(jitted_sum["accuracy"]["count"]) == 16.0


def test_metric_registry():
    assert [m.name for m in metrics.get_metrics(["mse", "r2", "fbeta"])] == ["mse", "r2", "fbeta"]
    for name in metrics.METRIC_FACTORIES:
        assert metrics.get_metric(name).name == name
    with pytest.raises(ValueError, match=r"unknown metric 'foo'; known: .*accuracy"):
        metrics.get_metric("foo")


def test_metric_shape_errors():
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(5,\)"):
        metrics.accuracy().accumulate(jnp.zeros((4, 10)), jnp.zeros(5, jnp.int32), jnp.ones(4))
    with pytest.raises(ValueError, match=r"mask shape \(3,\)"):
        metrics.accuracy().accumulate(jnp.zeros((4, 10)), jnp.zeros(4, jnp.int32), jnp.ones(3))
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4,\)"):
        metrics.rmse().accumulate(jnp.zeros((4, 2)), jnp.zeros(4), jnp.ones(4))
    with pytest.raises(ValueError, match="unique"):
        metrics.accumulate_all([metrics.accuracy(), metrics.accuracy()],
                               jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), jnp.ones(4))


# --------------------------------------------------------------- losses
# Losses are called under jit, as in training (and eager op-by-op dispatch is slow).
JIT_CROSS_ENTROPY = jax.jit(losses.cross_entropy)
JIT_CROSS_ENTROPY_IGNORE = jax.jit(losses.cross_entropy_ignore, static_argnums=2)
JIT_BINARY_CROSS_ENTROPY = jax.jit(losses.binary_cross_entropy)
JIT_MSE = jax.jit(losses.mse)
JIT_L1 = jax.jit(losses.l1)


def numpy_token_ce(logits, targets):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def test_cross_entropy_per_example(rng):
    logits = rng.normal(size=(5, 10)).astype(np.float32)
    targets = rng.integers(0, 10, size=5).astype(np.int32)
    loss = JIT_CROSS_ENTROPY(jnp.asarray(logits), jnp.asarray(targets))
    assert loss.shape == (5,)
    np.testing.assert_allclose(loss, numpy_token_ce(logits, targets), rtol=1e-5)


def test_cross_entropy_sequence_mean_and_bf16(rng):
    logits = rng.normal(size=(3, 6, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 6)).astype(np.int32)
    expected = numpy_token_ce(logits, targets).mean(-1)
    np.testing.assert_allclose(JIT_CROSS_ENTROPY(jnp.asarray(logits), targets), expected, rtol=1e-5)
    bf16_loss = JIT_CROSS_ENTROPY(jnp.asarray(logits, jnp.bfloat16), targets)
    assert bf16_loss.dtype == jnp.float32 and bf16_loss.shape == (3,)
    np.testing.assert_allclose(bf16_loss, expected, rtol=3e-2)


def test_cross_entropy_ignore_index(rng):
    ignore = 255
    logits = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
    targets = rng.integers(0, 5, size=(3, 4, 4)).astype(np.int32)
    targets[0, :2] = ignore
    targets[2] = ignore  # fully ignored example
    loss = JIT_CROSS_ENTROPY_IGNORE(logits, targets, ignore)
    token = numpy_token_ce(logits, np.where(targets == ignore, 0, targets))
    for i in range(2):
        keep = targets[i] != ignore
        np.testing.assert_allclose(loss[i], token[i][keep].mean(), rtol=1e-5)
    assert float(loss[2]) == 0.0
    # With nothing ignored it equals plain cross entropy.
    clean = np.where(targets == ignore, 1, targets)
    np.testing.assert_allclose(
        JIT_CROSS_ENTROPY_IGNORE(logits, clean, ignore), JIT_CROSS_ENTROPY(logits, clean), rtol=1e-6)
    # The gradient exists and ignores ignored positions.
    grads = jax.jit(jax.grad(lambda x: losses.cross_entropy_ignore(x, targets, ignore).sum()))(logits)
    assert np.all(np.asarray(grads)[2] == 0) and np.all(np.isfinite(grads))


def test_binary_cross_entropy(rng):
    logits = rng.normal(size=(4, 6)).astype(np.float64)
    targets = (rng.random((4, 6)) > 0.5).astype(np.float32)
    probs = 1 / (1 + np.exp(-logits))
    expected = -(targets * np.log(probs) + (1 - targets) * np.log(1 - probs)).mean(-1)
    loss = JIT_BINARY_CROSS_ENTROPY(jnp.asarray(logits, jnp.float32), targets)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_mse_and_l1_losses_squeeze_trailing_axis(rng):
    preds = rng.normal(size=(6, 1)).astype(np.float32)
    targets = rng.normal(size=6).astype(np.float32)
    np.testing.assert_allclose(JIT_MSE(preds, targets), (preds[:, 0] - targets) ** 2, rtol=1e-6)
    np.testing.assert_allclose(JIT_L1(preds, targets), np.abs(preds[:, 0] - targets), rtol=1e-6)
    wide_preds = rng.normal(size=(6, 3)).astype(np.float32)
    wide_targets = rng.normal(size=(6, 3)).astype(np.float32)
    np.testing.assert_allclose(
        JIT_MSE(wide_preds, wide_targets), ((wide_preds - wide_targets) ** 2).mean(-1), rtol=1e-6)


def test_loss_errors():
    with pytest.raises(ValueError, match=r"logits shape \(4, 10\) and targets shape \(5,\) disagree"):
        losses.cross_entropy(jnp.zeros((4, 10)), jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        losses.cross_entropy(jnp.zeros((4, 10)), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4,\)"):
        losses.mse(jnp.zeros((4, 2)), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        losses.binary_cross_entropy(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    assert losses.get_loss("l1") is losses.l1
    with pytest.raises(ValueError, match=r"unknown loss 'foo'; known: binary_cross_entropy, cross_entropy"):
        losses.get_loss("foo")
