"""Lesson 3's metrics and losses: segmentation accuracy and IoU with void, multi-label
accuracy/F-beta against fastai v1's definitions, per-class threshold search, BCE, pixel
cross entropy with void, point MSE.

Device metrics go through accumulate -> add_stats -> finalize over batches of different
sizes whose last batch is padded with garbage rows, and must equal one another and an
independent numpy reference (bincount confusion matrices, per-sample loops).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast import losses, metrics
from jaxfast.vision import multilabel

_accumulate = jax.jit(metrics.accumulate_all, static_argnums=0)


def run_batched(chosen, outputs, targets, batch_size):
    """Summed stats over batches of `batch_size`, the last padded with masked garbage rows."""
    total = None
    for start in range(0, len(outputs), batch_size):
        out, tgt = outputs[start:start + batch_size], targets[start:start + batch_size]
        pad = batch_size - len(out)
        mask = np.r_[np.ones(len(out)), np.zeros(pad)].astype(np.float32)
        if pad:
            out = np.concatenate([out, np.full((pad,) + out.shape[1:], 9.0, out.dtype)])
            tgt = np.concatenate([tgt, np.ones((pad,) + tgt.shape[1:], tgt.dtype)])
        batch = jax.tree.map(lambda x: np.asarray(x, np.float64), _accumulate(chosen, out, tgt, mask))
        total = metrics.add_stats(total, batch)
    return total


def values_for_splits(chosen, outputs, targets, batch_sizes=(4, 7, 32)):
    """{batch size: finalized values}; 23 rows give 6, 4 and 1 batches (two of them padded)."""
    return {bs: metrics.finalize_all(chosen, run_batched(chosen, outputs, targets, bs)) for bs in batch_sizes}


def assert_all_splits(chosen, outputs, targets, expected: dict, rtol=1e-6):
    for bs, got in values_for_splits(chosen, outputs, targets).items():
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=rtol, err_msg=f"{name}, batch size {bs}")


N = 23


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ------------------------------------------------------------------ segmentation


def segmentation_data(rng, n_classes=5, void=3):
    logits = rng.normal(size=(N, 6, 5, n_classes)).astype(np.float32)
    targets = rng.integers(0, n_classes, size=(N, 6, 5)).astype(np.int32)
    targets[0] = void  # a fully-void example
    return logits, targets


def numpy_class_ious(pred, targ, n_classes, void):
    """IoU per class from a bincount confusion matrix over non-void pixels; NaN when unscored."""
    keep = targ != void
    cm = np.bincount(targ[keep] * n_classes + pred[keep], minlength=n_classes**2).reshape(n_classes, n_classes)
    out = []
    for c in range(n_classes):
        union = cm[c, :].sum() + cm[:, c].sum() - cm[c, c]
        out.append(np.nan if c == void or union == 0 else cm[c, c] / union)
    return np.array(out)


def test_miou_matches_confusion_matrix_reference_on_every_split(rng):
    logits, targets = segmentation_data(rng)
    want = numpy_class_ious(logits.argmax(-1), targets, 5, 3)
    metric = metrics.miou(5, void_code=3)
    assert_all_splits((metric,), logits, targets, {"miou": np.nanmean(want)})
    per_class = metrics.class_ious(run_batched((metric,), logits, targets, 4)["miou"], list("abcde"))
    assert list(per_class) == list("abcde") and math.isnan(per_class["d"])
    np.testing.assert_allclose([per_class[k] for k in "abce"], want[[0, 1, 2, 4]], rtol=1e-12)


def test_miou_hand_computed():
    # 1 image, 2x3 pixels, 3 classes, void = 2 (the last column).
    targets = np.array([[[0, 1, 2], [1, 1, 2]]], np.int32)
    predicted = np.array([[[0, 0, 1], [1, 0, 0]]])
    logits = np.eye(3, dtype=np.float32)[predicted]
    stats = jax.device_get(metrics.miou(3, void_code=2).accumulate(logits, targets, np.ones(1, np.float32)))
    # class 0: predicted at (0,0),(0,1),(1,1) [non-void], target at (0,0) -> 1 / 3
    # class 1: predicted at (1,0), target at (0,1),(1,0),(1,1) -> 1 / 3
    np.testing.assert_array_equal(stats["intersection"], [1, 1, 0])
    np.testing.assert_array_equal(stats["union"], [3, 3, 0])
    assert metrics.miou(3, 2).finalize(stats) == pytest.approx(1 / 3)
    # Without a void code the last column counts: class 2 is never predicted right.
    no_void = jax.device_get(metrics.miou(3).accumulate(logits, targets, np.ones(1, np.float32)))
    np.testing.assert_array_equal(no_void["intersection"], [1, 1, 0])
    np.testing.assert_array_equal(no_void["union"], [4, 4, 2])


def test_miou_accepts_channel_targets_and_checks_classes(rng):
    logits, targets = segmentation_data(rng)
    metric = metrics.miou(5, 3)
    plain = metrics.finalize_all((metric,), run_batched((metric,), logits, targets, 8))
    channel = metrics.finalize_all((metric,), run_batched((metric,), logits, targets[..., None], 8))
    assert plain == channel
    with pytest.raises(ValueError, match="outputs have 5 classes, the metric 4"):
        metrics.miou(4).accumulate(logits, targets, np.ones(N, np.float32))


def test_pixel_accuracy_ignoring_void_on_every_split(rng):
    """accuracy_ignoring is fastai's acc_camvid over the whole dataset (non-void pixels)."""
    logits, targets = segmentation_data(rng)
    keep = targets != 3
    want = np.mean(logits.argmax(-1)[keep] == targets[keep])
    assert_all_splits((metrics.accuracy_ignoring(3),), logits, targets, {"accuracy_ignoring": want})


# ------------------------------------------------------------------- multi-label


def fastai_fbeta(logits, targets, thresh=0.2, beta=2, eps=1e-9):
    """fastai v1 metrics.fbeta, line by line, on one batch (torch-free)."""
    y_pred = (1 / (1 + np.exp(-logits.astype(np.float64))) > thresh).astype(np.float64)
    tp = (y_pred * targets).sum(1)
    prec, rec = tp / (y_pred.sum(1) + eps), tp / (targets.sum(1) + eps)
    return ((prec * rec) / (prec * beta**2 + rec + eps) * (1 + beta**2)).mean()


def fastai_epoch_average(fn, logits, targets, bs):
    """fastai v1's AverageMetric: batch values weighted by batch size."""
    vals = [(fn(logits[i:i + bs], targets[i:i + bs]), len(logits[i:i + bs])) for i in range(0, len(logits), bs)]
    return sum(v * n for v, n in vals) / sum(n for _, n in vals)


def test_multilabel_metrics_equal_fastai_epoch_values(rng):
    logits = (rng.normal(size=(N, 17)) * 2).astype(np.float32)
    targets = (rng.random((N, 17)) > 0.7).astype(np.uint8)
    targets[1] = 0
    acc = lambda o, t: np.mean((1 / (1 + np.exp(-o)) > 0.2) == t.astype(bool))  # noqa: E731
    chosen = (metrics.accuracy_thresh(0.2, name="acc_02"), metrics.fbeta())
    # fastai's epoch value is the same whatever its batch size; ours too.
    want = {"acc_02": fastai_epoch_average(acc, logits, targets, 5),
            "fbeta": fastai_epoch_average(fastai_fbeta, logits, targets, 5)}
    assert want["fbeta"] == pytest.approx(fastai_epoch_average(fastai_fbeta, logits, targets, 11))
    assert_all_splits(chosen, logits, targets, want)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert multilabel.fbeta_score(probs, targets) == pytest.approx(want["fbeta"], rel=1e-12)


def test_fbeta_hand_computed():
    # predicted {0, 1}, true {1, 2}: P = 1/2, R = 1/2 -> F2 = 5 * 1/4 / (4/2 + 1/2) = 0.5
    # predicted {}, true {0}: 0.   Mean: 0.25.
    probs = np.array([[0.9, 0.3, 0.1], [0.1, 0.1, 0.1]])
    targets = np.array([[0, 1, 1], [1, 0, 0]])
    assert multilabel.fbeta_score(probs, targets) == pytest.approx(0.25, abs=1e-8)
    logits = np.log(probs / (1 - probs)).astype(np.float32)
    stats = metrics.fbeta().accumulate(logits, targets, np.ones(2, np.float32))
    assert metrics.fbeta().finalize(jax.device_get(stats)) == pytest.approx(0.25, abs=1e-6)


def test_best_thresholds_find_the_separating_threshold():
    rng = np.random.default_rng(1)
    n = 200
    targets = (rng.random((n, 3)) > 0.5).astype(np.uint8)
    targets[:, 0] = 1  # every row has a label
    probs = rng.random((n, 3)) * 0.3  # class 0 and 2: noise below 0.3
    # class 1 separates at 0.6: positives in [0.65, 0.95], negatives in [0.4, 0.55]
    probs[:, 1] = np.where(targets[:, 1] == 1, rng.uniform(0.65, 0.95, n), rng.uniform(0.4, 0.55, n))
    probs[:, 0] = np.where(targets[:, 0] == 1, rng.uniform(0.05, 0.1, n), 0.0)  # tiny but positive
    thresholds, score = multilabel.best_thresholds(probs, targets)
    assert 0.55 <= thresholds[1] < 0.65
    assert thresholds[0] < 0.05
    assert score == pytest.approx(multilabel.fbeta_score(probs, targets, thresholds), rel=1e-12)
    assert score > multilabel.fbeta_score(probs, targets, 0.2) + 0.05


def test_best_thresholds_no_single_class_change_improves(rng):
    probs = rng.random((60, 4))
    targets = (rng.random((60, 4)) < probs).astype(np.uint8)  # calibrated-ish
    grid = np.round(np.arange(0.05, 1.0, 0.05), 2)
    thresholds, score = multilabel.best_thresholds(probs, targets, grid=grid)
    assert score >= multilabel.fbeta_score(probs, targets, 0.2)
    for c in range(4):
        for t in grid:
            trial = thresholds.copy()
            trial[c] = t
            assert multilabel.fbeta_score(probs, targets, trial) <= score + 1e-12


def test_multilabel_top_losses_hand_computed():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    targets = np.array([[1, 0], [1, 1], [1, 0]])
    top = multilabel.multilabel_top_losses(probs, targets, ["clear", "water"], k=2, thresh=0.3)
    # row 2: -ln 0.2 - ln 0.2 = 3.2189; row 1: -2 ln 0.5 = 1.3863; row 0: 0.2107
    assert [t.row for t in top] == [2, 1]
    assert top[0].loss == pytest.approx(-2 * math.log(0.2))
    assert top[0].predicted == ("water",) and top[0].actual == ("clear",)
    assert top[1].predicted == ("clear", "water") == top[1].actual


# ------------------------------------------------------------------------ losses


def test_segmentation_cross_entropy_mean_over_non_void_pixels(rng):
    logits, targets = segmentation_data(rng)
    loss = jax.jit(losses.cross_entropy_ignore, static_argnums=2)(logits, targets, 3)
    assert loss.shape == (N,) and float(loss[0]) == 0.0
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    for i in range(1, 4):
        keep = targets[i] != 3
        token = -np.take_along_axis(log_probs[i], targets[i][..., None], -1)[..., 0]
        assert float(loss[i]) == pytest.approx(token[keep].mean(), rel=1e-5)
    np.testing.assert_allclose(losses.cross_entropy_ignore(logits, targets[..., None], 3), loss, rtol=1e-6)


def test_bce_and_point_mse_are_per_example(rng):
    logits = rng.normal(size=(4, 17)).astype(np.float32)
    targets = (rng.random((4, 17)) > 0.7).astype(np.uint8)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, targets), want, rtol=1e-5)
    # the step's masked mean of per-example losses = fastai's flat mean over all elements
    assert float(losses.binary_cross_entropy(logits, targets).mean()) == pytest.approx(want.mean(), rel=1e-5)
    points = rng.uniform(-1, 1, size=(4, 6)).astype(np.float32)  # 3 points as (row, col) pairs
    preds = points + 0.1 * np.arange(6, dtype=np.float32)
    np.testing.assert_allclose(losses.mse(preds, points), np.full(4, np.mean((0.1 * np.arange(6)) ** 2)), rtol=1e-5)
    np.testing.assert_allclose(losses.mse(preds.reshape(4, 3, 2), points.reshape(4, 3, 2)),
                               losses.mse(preds, points), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(4, 6\).*\(4, 2\)"):
        losses.mse(jnp.zeros((4, 6)), jnp.zeros((4, 2)))
