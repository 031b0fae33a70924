"""The image's geometric augmentation applied to its targets: segmentation masks and points.

A mask or a point set never goes through the image's separate resize: the resize is folded
into the output->input matrix (`source_from_resized`, TF's half-pixel-centre convention), so
a mask is sampled once, nearest neighbour, straight from the original labels, with the very
matrix (flip, dihedral, rotate, zoom, warp, crop window or padding) that samples the image.
Pixels that come from outside the image get `fill` (the void / ignore code; None reflects
like the image, as fastai v1 does). Lighting never touches targets.

Points are (row, col) = (y, x) pixel coordinates of the *original* image, integer values at
pixel centres: fastai v1's `PointsItemList` order (`ImagePoints(y_first=True)`). They go the
other way through the same matrix (its inverse: input -> output pixel) and come out in
[-1, 1] per axis with the corner pixel centres at +-1 (this module's unit coordinates;
fastai divides by size/2 instead, at most one pixel apart). A point that lands outside the
output image, or behind the warp's horizon, is flagged not visible (fastai's remove_out
drops it; a fixed-size batch keeps it and flags it).
"""

from __future__ import annotations

import tensorflow as tf

from jaxfast.vision import transforms as T


def source_from_resized(source_hw: tf.Tensor, resized_hw: tf.Tensor) -> tf.Tensor:
    """float64 [3, 3]: pixel (x, y) of the resized image -> pixel of the source, as TF's resize
    places them (source = (resized + 0.5) * source_size / resized_size - 0.5)."""
    sy, sx = tf.unstack(tf.cast(source_hw, tf.float64) / tf.cast(resized_hw, tf.float64))
    zero, one = tf.constant(0.0, tf.float64), tf.constant(1.0, tf.float64)
    return tf.reshape(tf.stack([sx, zero, 0.5 * sx - 0.5, zero, sy, 0.5 * sy - 0.5, zero, zero, one]), [3, 3])


def augment_matrix(params: dict, source_hw: tf.Tensor, size, method: str = "crop") -> tf.Tensor:
    """Output pixel -> source pixel matrix of one example's `augment_params` (the image's own
    augmentation: `T.apply_augment` samples its resized copy with the right-hand factor)."""
    resized_hw = T.resized_shape(source_hw, size, method)
    window = T.place_window(params["matrix"], params["draws"], resized_hw, size)
    return source_from_resized(source_hw, resized_hw) @ window


def eval_matrix(source_hw: tf.Tensor, size, method: str = "crop") -> tf.Tensor:
    """Output pixel -> source pixel matrix of `T.eval_transform` (resize, centre crop or pad)."""
    resized_hw = T.resized_shape(source_hw, size, method)
    return source_from_resized(source_hw, resized_hw) @ T.centre_matrix(resized_hw, size)


# ---- masks ----------------------------------------------------------------------------
def sample_mask(mask: tf.Tensor, matrix: tf.Tensor, size, fill: int | None) -> tf.Tensor:
    """Integer mask [H, W, 1] -> uint8 [h, w, 1] sampled nearest at `matrix` (output -> source);
    outside the image `fill`, or reflected when fill is None."""
    if fill is not None and not 0 <= fill <= 255:
        raise ValueError(f"mask fill code must be in [0, 255], got {fill}")
    out = T.apply_projective(tf.cast(mask, tf.uint8), matrix, size, "REFLECT" if fill is None else "CONSTANT",
                             interpolation="NEAREST", fill_value=0.0 if fill is None else float(fill))
    return tf.ensure_shape(out, [*T.as_hw(size), 1])


def augment_mask(mask: tf.Tensor, params: dict, size, method: str = "crop", fill: int | None = None) -> tf.Tensor:
    """The mask of an image augmented with `T.apply_augment(image, params, size, ...)`."""
    return sample_mask(mask, augment_matrix(params, tf.shape(mask)[:2], size, method), size, fill)


def eval_mask(mask: tf.Tensor, size, method: str = "crop", fill: int | None = None) -> tf.Tensor:
    """The mask of an image passed through `T.eval_transform(image, size, method)`."""
    return sample_mask(mask, eval_matrix(tf.shape(mask)[:2], size, method), size, fill)


# ---- points ---------------------------------------------------------------------------
def map_points(points: tf.Tensor, matrix: tf.Tensor, size) -> tuple[tf.Tensor, tf.Tensor]:
    """Source (row, col) pixel points [N, 2] -> (unit (row, col) [N, 2] float32, visible [N] bool)
    through the inverse of `matrix` (output -> source pixel)."""
    out_h, out_w = T.as_hw(size)
    points = tf.cast(points, tf.float64)
    xy1 = tf.stack([points[:, 1], points[:, 0], tf.ones_like(points[:, 0])], axis=-1)
    mapped = xy1 @ tf.transpose(tf.linalg.inv(tf.cast(matrix, tf.float64)))
    w = mapped[:, 2]
    ahead = w > 1e-9
    safe_w = tf.where(ahead, w, 1.0)
    col, row = mapped[:, 0] / safe_w, mapped[:, 1] / safe_w
    visible = ahead & (row >= -0.5) & (row <= out_h - 0.5) & (col >= -0.5) & (col <= out_w - 0.5)
    unit = tf.stack([2.0 * row / max(out_h - 1, 1) - 1.0, 2.0 * col / max(out_w - 1, 1) - 1.0], axis=-1)
    return tf.cast(unit, tf.float32), visible


def augment_points(points: tf.Tensor, source_hw: tf.Tensor, params: dict, size, method: str = "crop"):
    """(unit points, visible) of an image augmented with `T.apply_augment(image, params, size, ...)`."""
    return map_points(points, augment_matrix(params, source_hw, size, method), size)


def eval_points(points: tf.Tensor, source_hw: tf.Tensor, size, method: str = "crop"):
    """(unit points, visible) of an image passed through `T.eval_transform(image, size, method)`."""
    return map_points(points, eval_matrix(source_hw, size, method), size)


def unit_to_pixels(unit, size):
    """Unit (row, col) points [..., 2] (e.g. predictions) -> (row, col) pixels of a `size` image."""
    out_h, out_w = T.as_hw(size)
    scale = tf.constant([max(out_h - 1, 1) / 2.0, max(out_w - 1, 1) / 2.0], tf.float32)
    return (tf.cast(unit, tf.float32) + 1.0) * scale
