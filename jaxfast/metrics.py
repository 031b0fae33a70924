"""Metrics as accumulated sums.

A metric never averages inside a batch. ``accumulate`` turns one batch into a
small dict of float32 scalar sums (weighted by a [B] padding mask), the
training loop adds those dicts over batches (and can ``psum`` them over
devices), and ``finalize`` turns the totals into the number on the host.
This keeps results exact when the last batch is padded and independent of how
the data was split into batches or devices.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfast.losses import align_regression_shapes

Stats = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Metric:
    """A named pair of (device-side sums, host-side finish).

    accumulate(outputs, targets, mask) -> dict of float32 sums (scalars, or fixed-shape
    arrays such as per-class counts); jit-safe.
    finalize(summed stats as numpy float64 values) -> float.
    """

    name: str
    accumulate: Callable[[jax.Array, jax.Array, jax.Array], Stats]
    finalize: Callable[[Mapping[str, float]], float]


# ----------------------------------------------------------------- helpers


def _row_mask(mask: jax.Array, values: jax.Array) -> jax.Array:
    """Reshape the [B] mask to [B, 1, ...] so it broadcasts over ``values``."""
    if mask.ndim != 1 or values.ndim == 0 or mask.shape[0] != values.shape[0]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must be [B] matching the batch axis of "
            f"shape {tuple(values.shape)}")
    return mask.astype(jnp.float32).reshape(mask.shape + (1,) * (values.ndim - 1))


def _masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Sum of ``values`` over real rows only.

    Uses ``where`` rather than a bare multiply so NaN/inf in padding rows
    (0 * nan = nan) cannot leak into the total.
    """
    row_mask = _row_mask(mask, values)
    weighted = jnp.where(row_mask > 0, values.astype(jnp.float32) * row_mask, 0.0)
    return jnp.sum(weighted)


def _masked_count(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Number of elements of ``values`` in real rows (mask-weighted)."""
    _row_mask(mask, values)
    per_row = math.prod(values.shape[1:])
    return jnp.sum(mask.astype(jnp.float32)) * jnp.float32(per_row)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN (not ZeroDivisionError) for an empty total."""
    if denominator == 0:
        return float("nan")
    return float(numerator / denominator)


def _class_targets(name: str, outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Check [B, ..., C] outputs against [B, ...] integer targets.

    A trailing size-1 target axis ([B, H, W, 1] masks) is dropped first.
    """
    if targets.ndim == outputs.ndim and targets.ndim > 1 and targets.shape[-1] == 1:
        targets = targets[..., 0]
    if outputs.ndim < 2 or tuple(outputs.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"{name}: outputs shape {tuple(outputs.shape)} and targets shape "
            f"{tuple(targets.shape)} disagree on the leading axes")
    return targets


def _same_shape(name: str, outputs: jax.Array, targets: jax.Array) -> None:
    """Multi-label metrics compare outputs and targets element by element."""
    if outputs.ndim < 2 or tuple(outputs.shape) != tuple(targets.shape):
        raise ValueError(
            f"{name}: outputs shape {tuple(outputs.shape)} and targets shape "
            f"{tuple(targets.shape)} must be equal and at least [B, C]")


def _probabilities(outputs: jax.Array, sigmoid: bool) -> jax.Array:
    outputs = outputs.astype(jnp.float32)
    return jax.nn.sigmoid(outputs) if sigmoid else outputs


# ------------------------------------------------------ classification


def _accuracy_stats(name: str) -> Callable[[jax.Array, jax.Array, jax.Array], Stats]:
    def accumulate(outputs, targets, mask):
        targets = _class_targets(name, outputs, targets)
        correct = jnp.argmax(outputs, axis=-1) == targets
        return {"correct": _masked_sum(correct, mask), "count": _masked_count(correct, mask)}

    return accumulate


def accuracy() -> Metric:
    """Fraction of positions whose argmax equals the target; every token of [B, T, C] counts."""
    return Metric(
        name="accuracy",
        accumulate=_accuracy_stats("accuracy"),
        finalize=lambda s: _ratio(s["correct"], s["count"]),
    )


def error_rate() -> Metric:
    """1 - accuracy."""
    return Metric(
        name="error_rate",
        accumulate=_accuracy_stats("error_rate"),
        finalize=lambda s: 1.0 - _ratio(s["correct"], s["count"]),
    )


def top_k_accuracy(k: int = 5) -> Metric:
    """Fraction of positions whose target is among the ``k`` highest outputs."""
    if k < 1:
        raise ValueError(f"top_k_accuracy: k must be >= 1, got {k}")

    def accumulate(outputs, targets, mask):
        targets = _class_targets("top_k_accuracy", outputs, targets)
        top_indices = jax.lax.top_k(outputs, min(k, outputs.shape[-1]))[1]
        correct = jnp.any(top_indices == targets[..., None], axis=-1)
        return {"correct": _masked_sum(correct, mask), "count": _masked_count(correct, mask)}

    return Metric("top_k_accuracy", accumulate, lambda s: _ratio(s["correct"], s["count"]))


def accuracy_thresh(thresh: float = 0.5, sigmoid: bool = True, name: str = "accuracy_thresh") -> Metric:
    """fastai multi-label accuracy: mean over all elements of (p > thresh) == y.

    fastai v1 averages each batch's element mean weighted by batch size; with C labels per
    row that is the dataset-wide element mean computed here. `name` tells apart two
    thresholds in one run (the planet lesson's `acc_02`).
    """

    def accumulate(outputs, targets, mask):
        _same_shape("accuracy_thresh", outputs, targets)
        predicted = _probabilities(outputs, sigmoid) > thresh
        # fastai compares against y_true.byte(), i.e. truncation to an integer.
        correct = predicted.astype(jnp.int32) == targets.astype(jnp.int32)
        return {"correct": _masked_sum(correct, mask), "count": _masked_count(correct, mask)}

    return Metric(name, accumulate, lambda s: _ratio(s["correct"], s["count"]))


def fbeta(beta: float = 2, thresh: float = 0.2, sigmoid: bool = True, eps: float = 1e-9,
          name: str = "fbeta") -> Metric:
    """fastai v1 multi-label F-beta: computed per sample, then averaged over samples.

    Per sample: P = TP/(n_pred + eps), R = TP/(n_true + eps),
    F = (1 + beta^2) P R / (beta^2 P + R + eps); a sample with no true and no predicted
    label scores 0, as in fastai. `fbeta_score` in jaxfast.vision.multilabel is the same
    formula on host arrays (for threshold search).
    """
    beta2 = beta**2

    def accumulate(outputs, targets, mask):
        _same_shape("fbeta", outputs, targets)
        predicted = (_probabilities(outputs, sigmoid) > thresh).astype(jnp.float32)
        actual = targets.astype(jnp.float32)
        label_axes = tuple(range(1, outputs.ndim))
        true_positives = jnp.sum(predicted * actual, axis=label_axes)
        precision = true_positives / (jnp.sum(predicted, axis=label_axes) + eps)
        recall = true_positives / (jnp.sum(actual, axis=label_axes) + eps)
        per_sample = (precision * recall) / (precision * beta2 + recall + eps) * (1 + beta2)
        return {"fbeta_sum": _masked_sum(per_sample, mask), "count": _masked_count(per_sample, mask)}

    return Metric(name, accumulate, lambda s: _ratio(s["fbeta_sum"], s["count"]))


def accuracy_ignoring(void_code: int) -> Metric:
    """CamVid ``acc_camvid``: pixel accuracy over pixels whose target != void_code.

    Outputs are channel-last [B, H, W, C]; targets [B, H, W] (or [B, H, W, 1]). The ratio
    is over every non-void pixel of the dataset; fastai v1 averages per-batch ratios
    weighted by batch size, which differs slightly when batches hold different numbers
    of void pixels (and depends on how the data was split into batches).
    """

    def accumulate(outputs, targets, mask):
        targets = _class_targets("accuracy_ignoring", outputs, targets)
        counted = targets != void_code
        correct = (jnp.argmax(outputs, axis=-1) == targets) & counted
        return {"correct": _masked_sum(correct, mask), "count": _masked_sum(counted, mask)}

    return Metric("accuracy_ignoring", accumulate, lambda s: _ratio(s["correct"], s["count"]))


def _per_class_counts(labels: jax.Array, n_classes: int, keep: jax.Array, mask: jax.Array) -> jax.Array:
    """[C] float32: how many kept positions of real rows have each label (one-hot sums)."""
    hits = (labels[..., None] == jnp.arange(n_classes)) & keep[..., None]
    per_row = jnp.sum(hits, axis=tuple(range(1, hits.ndim - 1)), dtype=jnp.float32)  # [B, C]
    row_mask = mask.astype(jnp.float32)[:, None]
    return jnp.sum(jnp.where(row_mask > 0, per_row * row_mask, 0.0), axis=0)


def miou(n_classes: int, void_code: int | None = None, name: str = "miou") -> Metric:
    """Mean intersection-over-union of `n_classes` segmentation classes, void excluded.

    Stats are per-class sums over the dataset's non-void pixels: `intersection[c]`
    (predicted c and target c) and `union[c]` (predicted c or target c). The void class,
    if in range, is not scored; classes with an empty union (never predicted, never
    present) are left out of the mean. `class_ious(stats)` gives the per-class values.
    Outputs [B, H, W, C] (C == n_classes), targets [B, H, W] (or [B, H, W, 1]).
    """
    if n_classes < 1:
        raise ValueError(f"miou: n_classes must be >= 1, got {n_classes}")

    def accumulate(outputs, targets, mask):
        targets = _class_targets(name, outputs, targets).astype(jnp.int32)
        if outputs.shape[-1] != n_classes:
            raise ValueError(f"{name}: outputs have {outputs.shape[-1]} classes, the metric {n_classes}")
        keep = jnp.ones(targets.shape, bool) if void_code is None else targets != void_code
        predicted = jnp.argmax(outputs, axis=-1)
        both = jnp.where(predicted == targets, targets, -1)  # -1 matches no class
        intersection = _per_class_counts(both, n_classes, keep, mask)
        predicted_count = _per_class_counts(predicted, n_classes, keep, mask)
        target_count = _per_class_counts(targets, n_classes, keep, mask)
        scored = jnp.arange(n_classes) != (-1 if void_code is None else void_code)
        return {
            "intersection": jnp.where(scored, intersection, 0.0),
            "union": jnp.where(scored, predicted_count + target_count - intersection, 0.0),
        }

    def finalize(s):
        values = list(class_ious(s).values())
        scored = [v for v in values if not math.isnan(v)]
        return float(np.mean(scored)) if scored else float("nan")

    return Metric(name, accumulate, finalize)


def class_ious(stats: Mapping[str, np.ndarray], classes: Sequence[str] | None = None) -> dict[str, float]:
    """{class name: IoU} from a `miou` metric's summed stats (e.g. `stats['miou']`).

    NaN for the void class and for classes with an empty union. `classes` names the
    columns (default '0', '1', ...).
    """
    intersection = np.asarray(stats["intersection"], np.float64)
    union = np.asarray(stats["union"], np.float64)
    names = [str(i) for i in range(len(union))] if classes is None else list(classes)
    if len(names) != len(union):
        raise ValueError(f"class_ious: {len(names)} class names for {len(union)} classes")
    return {name: (float(i / u) if u > 0 else float("nan")) for name, i, u in zip(names, intersection, union)}


def _overlap_stats(name: str) -> Callable[[jax.Array, jax.Array, jax.Array], Stats]:
    """Dataset-wide intersect = sum(pred*targ), union = sum(pred+targ), pred = argmax."""

    def accumulate(outputs, targets, mask):
        targets = _class_targets(name, outputs, targets)
        predicted = jnp.argmax(outputs, axis=-1).astype(jnp.float32)
        actual = targets.astype(jnp.float32)
        return {
            "intersect": _masked_sum(predicted * actual, mask),
            "union": _masked_sum(predicted + actual, mask),
            "count": _masked_count(actual, mask),
        }

    return accumulate


def _overlap_finalize(iou: bool) -> Callable[[Mapping[str, float]], float]:
    def finalize(s):
        if s["count"] == 0:
            return float("nan")
        if s["union"] == 0:  # fastai: nothing predicted and nothing there is a perfect score
            return 1.0
        if iou:
            return float(s["intersect"] / (s["union"] - s["intersect"]))
        return float(2.0 * s["intersect"] / s["union"])

    return finalize


def dice() -> Metric:
    """fastai v1 dice on binary masks: 2*intersect/union over the whole dataset."""
    return Metric("dice", _overlap_stats("dice"), _overlap_finalize(iou=False))


def iou() -> Metric:
    """fastai v1 ``dice(iou=True)``: intersect/(union - intersect) over the whole dataset."""
    return Metric("iou", _overlap_stats("iou"), _overlap_finalize(iou=True))


# ------------------------------------------------------------ regression


def _regression_inputs(name: str, outputs: jax.Array, targets: jax.Array):
    preds = align_regression_shapes(name, outputs, targets)
    return preds.astype(jnp.float32), targets.astype(jnp.float32)


def _mean_of(name: str, per_element: Callable[[jax.Array, jax.Array], jax.Array]):
    """Accumulator for metrics that are a mean of an elementwise error."""

    def accumulate(outputs, targets, mask):
        preds, actual = _regression_inputs(name, outputs, targets)
        errors = per_element(preds, actual)
        return {"error_sum": _masked_sum(errors, mask), "count": _masked_count(errors, mask)}

    return accumulate


def mse_metric() -> Metric:
    """Mean squared error (metric name 'mse')."""
    return Metric(
        "mse",
        _mean_of("mse", lambda p, t: (t - p) ** 2),
        lambda s: _ratio(s["error_sum"], s["count"]),
    )


def rmse() -> Metric:
    """Root mean squared error over the whole dataset (not a mean of batch RMSEs)."""
    return Metric(
        "rmse",
        _mean_of("rmse", lambda p, t: (t - p) ** 2),
        lambda s: math.sqrt(_ratio(s["error_sum"], s["count"])),
    )


def mae() -> Metric:
    """Mean absolute error."""
    return Metric(
        "mae",
        _mean_of("mae", lambda p, t: jnp.abs(t - p)),
        lambda s: _ratio(s["error_sum"], s["count"]),
    )


def exp_rmspe() -> Metric:
    """fastai Rossmann metric: preds and targets are logs; sqrt(mean(((e^t - e^p)/e^t)^2))."""
    return Metric(
        "exp_rmspe",
        # (e^t - e^p)/e^t == 1 - e^(p - t): one exp, no overflow from large sales.
        _mean_of("exp_rmspe", lambda p, t: (1.0 - jnp.exp(p - t)) ** 2),
        lambda s: math.sqrt(_ratio(s["error_sum"], s["count"])),
    )


def r2_score() -> Metric:
    """Coefficient of determination 1 - SSres/SStot from dataset-wide sums."""

    def accumulate(outputs, targets, mask):
        preds, actual = _regression_inputs("r2", outputs, targets)
        return {
            "target_sum": _masked_sum(actual, mask),
            "target_sq_sum": _masked_sum(actual * actual, mask),
            "residual_sq_sum": _masked_sum((actual - preds) ** 2, mask),
            "count": _masked_count(actual, mask),
        }

    def finalize(s):
        if s["count"] == 0:
            return float("nan")
        total_sq = s["target_sq_sum"] - s["target_sum"] ** 2 / s["count"]
        if total_sq == 0:
            return float("nan")
        return float(1.0 - s["residual_sq_sum"] / total_sq)

    return Metric("r2", accumulate, finalize)


# -------------------------------------------------------------- registry

def token_accuracy() -> Metric:
    """A language model's next-token accuracy over the weighted tokens (targets {'ids',
    'weights'} [B, T], as `losses.lm_cross_entropy`): correct tokens / real tokens."""

    def accumulate(outputs, targets, mask):
        weights = targets["weights"].astype(jnp.float32) * _row_mask(mask, targets["weights"])
        correct = (jnp.argmax(outputs, axis=-1) == targets["ids"]).astype(jnp.float32)
        return {"correct": jnp.sum(correct * weights), "count": jnp.sum(weights)}

    return Metric("token_accuracy", accumulate, lambda s: _ratio(s["correct"], s["count"]))


METRIC_FACTORIES: dict[str, Callable[[], Metric]] = {
    "accuracy": accuracy,
    "token_accuracy": token_accuracy,
    "error_rate": error_rate,
    "top_k_accuracy": top_k_accuracy,
    "accuracy_thresh": accuracy_thresh,
    "fbeta": fbeta,
    "dice": dice,
    "iou": iou,
    "mse": mse_metric,
    "rmse": rmse,
    "mae": mae,
    "exp_rmspe": exp_rmspe,
    "r2": r2_score,
}


def get_metric(name: str) -> Metric:
    """Build a metric with its default settings from its config name."""
    try:
        factory = METRIC_FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown metric {name!r}; known: {', '.join(sorted(METRIC_FACTORIES))}") from None
    return factory()


def get_metrics(names: Iterable[str | Metric]) -> tuple[Metric, ...]:
    """Build several metrics by name, in order; a Metric (e.g. `accuracy_ignoring(30)`, which
    takes a setting) is used as it is."""
    return tuple(name if isinstance(name, Metric) else get_metric(name) for name in names)


# ------------------------------------------------ training-loop helpers


def accumulate_all(
    metrics: Sequence[Metric], outputs: jax.Array, targets: jax.Array, mask: jax.Array
) -> dict[str, Stats]:
    """One batch's sums for every metric, keyed by metric name (jit-safe)."""
    names = [metric.name for metric in metrics]
    if len(set(names)) != len(names):
        raise ValueError(f"metric names must be unique, got {names}")
    return {metric.name: metric.accumulate(outputs, targets, mask) for metric in metrics}


def add_stats(total, batch_stats):
    """Add two stats trees leaf by leaf; ``None`` is the empty starting total.

    Works on device arrays, tracers and numpy values alike. For very large
    datasets pass host numpy float64 values (``jax.device_get``) so counts
    beyond 2**24 stay exact.
    """
    if total is None:
        return batch_stats
    if batch_stats is None:
        return total
    return jax.tree.map(operator.add, total, batch_stats)


def finalize_all(metrics: Sequence[Metric], stats: Mapping[str, Mapping[str, jax.Array]]) -> dict[str, float]:
    """Turn summed stats into final metric values on the host, in float64."""
    results = {}
    for metric in metrics:
        host_stats = {key: np.float64(np.asarray(value)) for key, value in stats[metric.name].items()}
        results[metric.name] = float(metric.finalize(host_stats))
    return results
