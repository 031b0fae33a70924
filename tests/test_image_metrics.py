"""PSNR and SSIM against independent references (scipy's Gaussian filter over the whole
image then cropped; skimage when installed), known values, the masked Metrics, and the
bicubic baseline."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxfast.errors import InputError
from jaxfast.gan.image_metrics import (bicubic_baseline, bicubic_upscale, psnr, psnr_metric, ssim,
                                       ssim_metric)
from jaxfast.metrics import finalize_all
from jaxfast.vision.transforms import IMAGENET_STATS


def reference_ssim(x, y, data_range):
    """Per image: filter each channel over the whole image (scipy, reflect, truncate 3.5 ->
    radius 5 at sigma 1.5), crop the 5-pixel border, average the SSIM map (Wang et al.)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    out = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        values = []
        for ch in range(a.shape[-1]):
            f = lambda m: ndimage.gaussian_filter(m, 1.5, mode="reflect", truncate=3.5)[5:-5, 5:-5]  # noqa: E731
            p, q = a[..., ch], b[..., ch]
            mx, my = f(p), f(q)
            vx, vy, cxy = f(p * p) - mx**2, f(q * q) - my**2, f(p * q) - mx * my
            s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
            values.append(s.mean())
        out.append(np.mean(values))
    return np.array(out)


def image_pairs(rng, shape=(3, 24, 20, 3), scale=1.0):
    x = rng.uniform(0, 1, shape)
    x = ndimage.gaussian_filter(x, (0, 2, 2, 0))  # some structure
    y = np.clip(x + rng.normal(0, 0.05, shape), 0, 1)
    y[1] = x[1] * 0.7 + 0.1  # contrast and brightness change
    return (x * scale).astype(np.float32), (y * scale).astype(np.float32)


def test_ssim_equals_scipy_reference():
    x, y = image_pairs(np.random.default_rng(0))
    np.testing.assert_allclose(jax.jit(ssim)(x, y), reference_ssim(x, y, 1.0), atol=1e-5)
    x255, y255 = image_pairs(np.random.default_rng(1), (2, 16, 16, 1), scale=255.0)
    np.testing.assert_allclose(ssim(x255, y255, data_range=255.0), reference_ssim(x255, y255, 255.0), atol=1e-5)


def test_ssim_and_psnr_equal_skimage():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    x, y = image_pairs(np.random.default_rng(2))
    want = [metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                          data_range=1.0, channel_axis=-1) for a, b in zip(x, y)]
    np.testing.assert_allclose(ssim(x, y), want, atol=1e-5)
    want_psnr = [metrics.peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in zip(x, y)]
    np.testing.assert_allclose(psnr(x, y), want_psnr, rtol=1e-5)


def test_known_values():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(ssim(x, x), [1.0, 1.0], atol=1e-6)
    assert np.all(np.isinf(psnr(x, x))) and np.all(np.asarray(psnr(x, x)) > 0)
    np.testing.assert_allclose(psnr(x, x, max_db=60.0), [60.0, 60.0])
    noise = rng.choice([-0.1, 0.1], size=x.shape).astype(np.float32)  # mse exactly 0.01
    np.testing.assert_allclose(psnr(x + noise, x), [20.0, 20.0], rtol=1e-5)  # 10 log10(1 / 0.01)
    np.testing.assert_allclose(psnr(255 * (x + noise), 255 * x, data_range=255.0), [20.0, 20.0], rtol=1e-5)
    assert float(ssim(np.zeros_like(x) + 0.5, x)[0]) < 0.1  # a flat image keeps no structure


def test_metrics_average_real_rows_and_undo_normalisation():
    x, y = image_pairs(np.random.default_rng(4))
    y[2] = x[2]  # the padding row is perfect: it must not count
    mask = np.array([1.0, 1.0, 0.0], np.float32)
    (mean, std) = (np.array(s, np.float32) for s in IMAGENET_STATS)
    xn, yn = (x - mean) / std, (y - mean) / std
    metrics = (psnr_metric(stats=IMAGENET_STATS), ssim_metric(stats=IMAGENET_STATS))
    stats = jax.jit(lambda p, t, m: {mt.name: mt.accumulate(p, t, m) for mt in metrics})(xn, yn, mask)
    result = finalize_all(metrics, stats)
    np.testing.assert_allclose(result["psnr"], np.mean(np.asarray(psnr(x, y))[:2]), rtol=1e-4)
    np.testing.assert_allclose(result["ssim"], reference_ssim(x, y, 1.0)[:2].mean(), atol=1e-4)
    capped = psnr_metric(max_db=50.0)
    total = capped.accumulate(x, x, np.ones(3, np.float32))
    assert capped.finalize({k: float(v) for k, v in total.items()}) == 50.0


def test_shape_errors():
    x = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(InputError, match="smaller than the 11x11 window"):
        ssim(x, x)
    with pytest.raises(InputError, match=r"preds \(2, 8, 8, 3\) and targets \(2, 8, 8, 1\)"):
        psnr(x, x[..., :1])


def test_bicubic_upscale_and_baseline():
    flat = np.full((1, 6, 5, 3), 0.3, np.float32)
    up = bicubic_upscale(flat, (12, 10))
    assert up.shape == (1, 12, 10, 3)
    np.testing.assert_allclose(up, 0.3, atol=1e-6)
    ramp = np.broadcast_to(np.arange(8, dtype=np.float32)[None, None, :, None] / 8, (1, 4, 8, 1))
    up = np.asarray(bicubic_upscale(ramp, (4, 16)))[0, 0, 4:12, 0]  # cubic interpolation keeps a line
    np.testing.assert_allclose(up, (np.arange(4, 12) + 0.5) / 16 - 0.5 / 8, atol=1e-5)
    # A smooth image at half size: bicubic beats nearest-neighbour re-upscaling.
    rng = np.random.default_rng(5)
    targets = np.clip(ndimage.gaussian_filter(rng.uniform(0, 1, (2, 32, 32, 3)), (0, 3, 3, 0)) * 3 - 1, 0, 1)
    low = jax.image.resize(targets, (2, 16, 16, 3), "linear")
    scores = bicubic_baseline(low, targets)
    nearest = jax.image.resize(low, targets.shape, "nearest")
    assert scores["psnr"].shape == (2,) and np.all(scores["psnr"] > psnr(nearest, targets))
    assert np.all(scores["ssim"] > ssim(nearest, targets)) and np.all(scores["ssim"] < 1)
    assert math.isfinite(float(jnp.min(scores["psnr"])))


def test_metrics_can_clip_predictions_to_the_saved_range():
    targets = jnp.ones((2, 16, 16, 3))
    outputs = targets + 0.5  # out of range: clipped, it is the target itself
    mask = jnp.asarray([1.0, 1.0])
    score = lambda metric: metric.finalize(metric.accumulate(outputs, targets, mask))
    assert score(psnr_metric(clip=True)) == pytest.approx(100.0)  # capped at max_db
    assert score(psnr_metric()) == pytest.approx(10 * np.log10(1 / 0.25), rel=1e-5)
    assert score(ssim_metric(clip=True)) == pytest.approx(1.0)
