"""Test-time augmentation (fastai v1's `learn.TTA`) as pure jnp functions on NHWC batches.

Views are deterministic: the four corner crops of the image zoomed in by `scale` (each
window of (H/scale, W/scale) resized back to (H, W), bilinear), of the image and, with
`flip`, of its left-right mirror (fastai's eight views); with `corners=False`, just the
mirror. The result blends the plain prediction with the mean over the views:
`beta * plain + (1 - beta) * mean(views)`, on probabilities (fastai's beta=0.4).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def _check_batch(images) -> None:
    if images.ndim != 4:
        raise ValueError(f"TTA expects an NHWC image batch, got shape {tuple(images.shape)}")


def hflip(images: jax.Array) -> jax.Array:
    """Mirror NHWC images left-right."""
    _check_batch(images)
    return images[:, :, ::-1, :]


def crop_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The (h, w) of a window zoomed in by `scale` (>= 1), at least one pixel."""
    if scale < 1.0:
        raise ValueError(f"TTA zoom scale must be >= 1, got {scale}")
    return max(1, round(height / scale)), max(1, round(width / scale))


def corner_crop(images: jax.Array, corner: str, scale: float = 1.05) -> jax.Array:
    """The `corner` window of NHWC images zoomed in by `scale`, resized back to full size."""
    _check_batch(images)
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    n, h, w, c = images.shape
    ch, cw = crop_size(h, w, scale)
    if (ch, cw) == (h, w):
        return images
    top = 0 if corner.startswith("top") else h - ch
    left = 0 if corner.endswith("left") else w - cw
    window = images[:, top : top + ch, left : left + cw, :]
    resized = jax.image.resize(window.astype(jnp.float32), (n, h, w, c), "linear")
    if jnp.issubdtype(images.dtype, jnp.integer):
        return jnp.round(resized).astype(images.dtype)
    return resized.astype(images.dtype)


def tta_views(images: jax.Array, scale: float = 1.05, flip: bool = True, corners: bool = True) -> list[jax.Array]:
    """The augmented copies of `images` (see the module doc): 8, 4 or 1 batches."""
    _check_batch(images)
    if not (flip or corners):
        raise ValueError("TTA needs at least one kind of view: flip or corners")
    bases = [images, hflip(images)] if flip else [images]
    if not corners:
        return bases[1:]
    return [corner_crop(base, corner, scale) for base in bases for corner in CORNERS]


def blend(plain: jax.Array, views_mean: jax.Array, beta: float = 0.4) -> jax.Array:
    """fastai's TTA blend: beta * plain + (1 - beta) * views_mean."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"TTA beta must be in [0, 1], got {beta}")
    return beta * plain + (1.0 - beta) * views_mean


def tta_predict(
    predict_fn: Callable[[jax.Array], jax.Array], images: jax.Array, *, beta: float = 0.4, scale: float = 1.05,
    flip: bool = True, corners: bool = True, activation: Callable = jax.nn.softmax,
) -> jax.Array:
    """Blended probabilities [N, C] of `predict_fn` (NHWC -> logits) over the TTA views; jittable."""
    plain = activation(predict_fn(images))
    views = [activation(predict_fn(view)) for view in tta_views(images, scale, flip, corners)]
    return blend(plain, jnp.mean(jnp.stack(views), axis=0), beta)


def tta_get_preds(learn, loader=None, **options) -> tuple[np.ndarray, np.ndarray]:
    """fastai's `learn.TTA()`: (blended probabilities, targets) of every real row of `loader`
    (default: the validation split); `options` go to `tta_predict`."""
    from jaxfast.steps import predict_step

    loader = loader if loader is not None else learn.data.valid
    if loader is None:
        raise ValueError("tta_get_preds: no loader given and the data has no validation split")
    step = jax.jit(lambda state, x: tta_predict(lambda v: predict_step(state, v), x, **options))
    probs, targets = [], []
    for batch in loader.batches(0):
        real = batch["mask"] > 0
        probs.append(np.asarray(step(learn.state, batch["inputs"]))[real])
        targets.append(np.asarray(batch["targets"])[real])
    return np.concatenate(probs), np.concatenate(targets)
