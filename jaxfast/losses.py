"""Per-example loss functions.

Every loss returns an array of shape [B]: all non-batch axes are reduced by
their mean, so a [B, T] language-model loss or a [B, H, W] segmentation loss
comes back as one number per example. Keeping the batch axis lets the training
loop weight rows by a padding mask before reducing. All functions are pure
jnp and jit-safe; shape checks run at trace time (shapes are static) and
raise ValueError naming the offending shapes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def _mean_over_non_batch_axes(values: jax.Array) -> jax.Array:
    """Reduce every axis except the leading batch axis by its mean."""
    return jnp.mean(values, axis=tuple(range(1, values.ndim)))


def _check_class_logits(name: str, logits: jax.Array, targets: jax.Array) -> None:
    """Logits must be [B, ..., C] with integer targets [B, ...]."""
    if logits.ndim < 2:
        raise ValueError(
            f"{name}: logits shape {tuple(logits.shape)} needs a batch axis and a class axis")
    if tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"{name}: logits shape {tuple(logits.shape)} and targets shape "
            f"{tuple(targets.shape)} disagree on the leading axes")
    if not jnp.issubdtype(targets.dtype, jnp.integer):
        raise ValueError(
            f"{name}: targets must be integer class indices, got dtype {targets.dtype}")


def _token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Unreduced cross entropy in float32 (bf16 logits lose too much precision)."""
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross entropy with integer targets, averaged per example -> [B]."""
    _check_class_logits("cross_entropy", logits, targets)
    return _mean_over_non_batch_axes(_token_cross_entropy(logits, targets))


def cross_entropy_ignore(logits: jax.Array, targets: jax.Array, ignore_index: int) -> jax.Array:
    """Cross entropy that skips positions whose target is ``ignore_index`` -> [B].

    For segmentation: [B, H, W, C] logits and [B, H, W] (or [B, H, W, 1]) targets, the
    void code as ``ignore_index``. Each example's loss is the mean over its non-ignored
    positions, and 0 when every position is ignored (so a fully-void example adds no
    gradient); the step then averages examples, so an example's weight does not depend
    on its void area (fastai's CrossEntropyFlat instead averages every pixel, void included).
    """
    if targets.ndim == logits.ndim and targets.ndim > 1 and targets.shape[-1] == 1:
        targets = targets[..., 0]  # a [B, H, W, 1] mask
    _check_class_logits("cross_entropy_ignore", logits, targets)
    keep = targets != ignore_index
    # ignore_index may be out of range (e.g. 255 or -100); give optax a valid label.
    safe_targets = jnp.where(keep, targets, 0)
    losses = jnp.where(keep, _token_cross_entropy(logits, safe_targets), 0.0)
    axes = tuple(range(1, losses.ndim))
    kept_count = jnp.sum(keep, axis=axes).astype(jnp.float32)
    return jnp.sum(losses, axis=axes) / jnp.maximum(kept_count, 1.0)


def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Multi-label sigmoid cross entropy on [B, C] logits and multi-hot targets -> [B].

    The mean over the C labels of each row; the step's mean over rows then equals
    fastai's BCEWithLogitsFlat (the mean over every element). Targets may be any
    numeric dtype (uint8 multi-hot, bool, or soft float labels).
    """
    if logits.ndim < 2 or tuple(logits.shape) != tuple(targets.shape):
        raise ValueError(
            f"binary_cross_entropy: logits shape {tuple(logits.shape)} and targets shape "
            f"{tuple(targets.shape)} must be equal and at least [B, C]")
    losses = optax.sigmoid_binary_cross_entropy(
        logits.astype(jnp.float32), targets.astype(jnp.float32))
    return _mean_over_non_batch_axes(losses)


def align_regression_shapes(name: str, preds: jax.Array, targets: jax.Array) -> jax.Array:
    """Drop a trailing size-1 axis of ``preds`` (a [B, 1] head vs [B] targets).

    Returns the (possibly squeezed) preds; raises ValueError naming both shapes
    when they still disagree, instead of silently broadcasting [B, 1] - [B]
    into a [B, B] matrix.
    """
    if preds.ndim == targets.ndim + 1 and preds.shape[-1] == 1:
        preds = preds[..., 0]
    if tuple(preds.shape) != tuple(targets.shape) or preds.ndim == 0:
        raise ValueError(
            f"{name}: preds shape {tuple(preds.shape)} and targets shape "
            f"{tuple(targets.shape)} do not match")
    return preds


def mse(preds: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error per example -> [B] (the mean over every non-batch element, e.g.
    the 2k coordinates of k points, as fastai's MSELossFlat)."""
    preds = align_regression_shapes("mse", preds, targets)
    diff = preds.astype(jnp.float32) - targets.astype(jnp.float32)
    return _mean_over_non_batch_axes(diff * diff)


def l1(preds: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean absolute error per example -> [B]."""
    preds = align_regression_shapes("l1", preds, targets)
    diff = preds.astype(jnp.float32) - targets.astype(jnp.float32)
    return _mean_over_non_batch_axes(jnp.abs(diff))


def lm_cross_entropy(logits: jax.Array, targets: dict) -> jax.Array:
    """A language model's per-row loss -> [B]: the mean token cross entropy over the tokens
    whose `targets['weights']` are 1 (a row's padding weighs 0), targets['ids'] [B, T]."""
    ids, weights = targets["ids"], targets["weights"].astype(jnp.float32)
    if logits.shape[:2] != ids.shape or weights.shape != ids.shape:
        raise ValueError(f"lm_cross_entropy: logits {tuple(logits.shape)}, ids {tuple(ids.shape)} and weights "
                         f"{tuple(weights.shape)} must agree on [B, T]")
    losses = _token_cross_entropy(logits, ids) * weights
    return losses.sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1.0)


def activation_penalty(intermediates: dict, alpha: float, beta: float) -> jax.Array:
    """fastai's RNNTrainer regularizers per row -> [B]: alpha * mean(h ** 2) (AR) + beta *
    mean((h[t] - h[t-1]) ** 2) (TAR) over the model's sown 'last_output' h [B, T, D] (the last
    LSTM's output, before the output dropout), both means over the real positions given by the
    sown 'last_output_mask' [B, T] (1 = real; all real when absent). fastai averages over the
    pad positions too; here padding (an LM batch's end, a classifier's pad_first) weighs 0."""
    if "last_output" not in intermediates:
        raise ValueError("activation_reg (AR/TAR) needs a model that sows intermediates 'last_output' "
                         f"[B, T, D] (the AWD-LSTM models do); this one sowed {sorted(intermediates)}")
    hidden = intermediates["last_output"][-1]
    if hidden.ndim != 3:
        raise ValueError(f"activation_penalty: 'last_output' must be [B, T, D], got shape {tuple(hidden.shape)}")
    real = intermediates.get("last_output_mask", (jnp.ones(hidden.shape[:2]),))[-1].astype(jnp.float32)
    width = hidden.shape[-1]
    penalty = jnp.zeros(hidden.shape[0])
    if alpha:
        squares = (jnp.square(hidden).sum(-1) * real).sum(1)
        penalty = penalty + alpha * squares / (width * jnp.maximum(real.sum(1), 1.0))
    if beta and hidden.shape[1] > 1:
        pairs = real[:, 1:] * real[:, :-1]
        steps = (jnp.square(hidden[:, 1:] - hidden[:, :-1]).sum(-1) * pairs).sum(1)
        penalty = penalty + beta * steps / (width * jnp.maximum(pairs.sum(1), 1.0))
    return penalty


LOSSES: dict[str, LossFn] = {
    "cross_entropy": cross_entropy,
    "lm_cross_entropy": lm_cross_entropy,
    "binary_cross_entropy": binary_cross_entropy,
    "mse": mse,
    "l1": l1,
}


def get_loss(name: str) -> LossFn:
    """Look a loss up by its config name."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}") from None
