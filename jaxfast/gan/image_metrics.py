"""Image-restoration quality: PSNR and SSIM per example, as jaxfast Metrics, and the bicubic
re-upscale baseline a restoration model has to beat.

- `psnr`: 10 log10(range^2 / MSE) per image (all pixels and channels); identical images give
  +inf, or `max_db` when given.
- `ssim`: Wang et al.'s SSIM with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  population (co)variances, computed per channel on the "valid" part of the image (no border
  padding) and averaged: skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)` and torchmetrics' default SSIM.

Both take NHWC images in [0, data_range] and are pure jnp (jit-safe, [B] out). The Metrics
average the per-image values over the real rows of every batch (the [B] padding mask), with
`stats=(mean, std)` undoing a normalisation first (e.g. IMAGENET_STATS for lesson 7's
outputs); the PSNR Metric caps each image at `max_db` so a perfect image cannot make the
mean infinite.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxfast.errors import InputError
from jaxfast.metrics import Metric

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _check_images(name: str, preds: jax.Array, targets: jax.Array, min_size: int = 1) -> None:
    if preds.ndim != 4 or preds.shape != targets.shape:
        raise InputError(f"{name}: preds {tuple(preds.shape)} and targets {tuple(targets.shape)} must be equal "
                         "[B, H, W, C] image batches")
    if min(preds.shape[1:3]) < min_size:
        raise InputError(f"{name}: images {tuple(preds.shape[1:3])} are smaller than the {min_size}x{min_size} window")


def psnr(preds: jax.Array, targets: jax.Array, data_range: float = 1.0, max_db: float | None = None) -> jax.Array:
    """Peak signal-to-noise ratio in dB per image -> [B]."""
    _check_images("psnr", preds, targets)
    diff = preds.astype(jnp.float32) - targets.astype(jnp.float32)
    mse = jnp.mean(diff * diff, axis=(1, 2, 3))
    value = 10.0 * jnp.log10(jnp.float32(data_range) ** 2 / mse)  # mse 0 -> +inf
    return value if max_db is None else jnp.minimum(value, jnp.float32(max_db))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The normalised 1-D Gaussian of an SSIM window (the 2-D window is its outer product)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def _valid_gaussian_filter(maps: jax.Array, window: np.ndarray) -> jax.Array:
    """Separable Gaussian filter of every channel of [B, H, W, K], 'valid' (no padding)."""
    k = maps.shape[-1]
    size = window.shape[0]

    def conv(x, kernel):  # depthwise: one kernel per channel
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=k, precision=jax.lax.Precision.HIGHEST)

    column = jnp.broadcast_to(jnp.asarray(window).reshape(size, 1, 1, 1), (size, 1, 1, k))
    row = jnp.broadcast_to(jnp.asarray(window).reshape(1, size, 1, 1), (1, size, 1, k))
    return conv(conv(maps, column), row)


def ssim(preds: jax.Array, targets: jax.Array, data_range: float = 1.0, win_size: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA, k1: float = SSIM_K1, k2: float = SSIM_K2) -> jax.Array:
    """Mean structural similarity per image -> [B] (1 for identical images)."""
    _check_images("ssim", preds, targets, min_size=win_size)
    x, y = preds.astype(jnp.float32), targets.astype(jnp.float32)
    c = x.shape[-1]
    filtered = _valid_gaussian_filter(jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1),
                                      gaussian_window(win_size, sigma))
    mu_x, mu_y, e_xx, e_yy, e_xy = (filtered[..., i * c:(i + 1) * c] for i in range(5))
    var_x, var_y, cov = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return jnp.mean(ssim_map, axis=(1, 2, 3))


def denormalize(images: jax.Array, stats: tuple[Sequence[float], Sequence[float]] | None) -> jax.Array:
    """images * std + mean per channel (the inverse of `normalize(stats)`); None: unchanged."""
    if stats is None:
        return images
    mean, std = (jnp.asarray(s, jnp.float32) for s in stats)
    return images.astype(jnp.float32) * std + mean


def _per_image_metric(name: str, per_image, stats, clip: float | None = None) -> Metric:
    def accumulate(outputs, targets, mask):
        outputs = denormalize(outputs, stats)
        if clip is not None:  # the image as it would be saved: pixels in [0, data_range]
            outputs = jnp.clip(outputs, 0.0, clip)
        values = per_image(outputs, denormalize(targets, stats))
        if mask.shape != values.shape:
            raise InputError(f"{name}: mask {tuple(mask.shape)} must be [B] for {values.shape[0]} images")
        real = mask > 0
        return {"sum": jnp.sum(jnp.where(real, values * mask, 0.0)), "count": jnp.sum(jnp.where(real, mask, 0.0))}

    def finalize(s):
        return float(s["sum"] / s["count"]) if s["count"] else float("nan")

    return Metric(name, accumulate, finalize)


def psnr_metric(data_range: float = 1.0, stats=None, max_db: float = 100.0, clip: bool = False) -> Metric:
    """Mean per-image PSNR (dB), each image capped at `max_db`; `clip`: the (denormalised)
    predictions clipped to [0, data_range] first, as the saved images would be."""
    return _per_image_metric("psnr", lambda p, t: psnr(p, t, data_range, max_db), stats, data_range if clip else None)


def ssim_metric(data_range: float = 1.0, stats=None, clip: bool = False) -> Metric:
    """Mean per-image SSIM (Gaussian 11x11 window, sigma 1.5); `clip` as psnr_metric's."""
    return _per_image_metric("ssim", lambda p, t: ssim(p, t, data_range), stats, data_range if clip else None)


def bicubic_upscale(images: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """[B, h, w, C] -> [B, H, W, C] by bicubic interpolation (Keys, a = -0.5, as PIL's)."""
    if images.ndim != 4:
        raise InputError(f"bicubic_upscale: images {tuple(images.shape)} must be [B, H, W, C]")
    h, w = (size, size) if isinstance(size, int) else size
    return jax.image.resize(images.astype(jnp.float32), (images.shape[0], h, w, images.shape[3]), method="bicubic")


def bicubic_baseline(low_res: jax.Array, targets: jax.Array, data_range: float = 1.0) -> dict[str, jax.Array]:
    """Per-image PSNR and SSIM of the low-res images bicubic-upscaled to the targets' size,
    clipped to [0, data_range]: the score a restoration model must beat."""
    up = jnp.clip(bicubic_upscale(low_res, tuple(targets.shape[1:3])), 0.0, data_range)
    return {"psnr": psnr(up, targets, data_range), "ssim": ssim(up, targets, data_range)}

