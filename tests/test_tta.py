"""TTA: view shapes and corners, flip invariance, fastai's beta blend, over a Learner's loader."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import build_model
from jaxfast.vision.tta import corner_crop, crop_size, hflip, tta_get_preds, tta_predict, tta_views

RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.normal(size=(3, 16, 12, 3)), jnp.float32)
CNN = build_model("cnn", {"body_arch": "simple_cnn", "n_classes": 4, "lin_ftrs": (8,),
                          "body_config": {"features": (8, 8)}})
VARIABLES = CNN.init(jax.random.key(0), IMAGES, train=False)


def logits(x):
    return CNN.apply(VARIABLES, x, train=False)


def test_views_shapes_and_counts():
    assert [v.shape for v in tta_views(IMAGES)] == [IMAGES.shape] * 8
    assert len(tta_views(IMAGES, flip=False)) == 4 and len(tta_views(IMAGES, corners=False)) == 1
    np.testing.assert_array_equal(tta_views(IMAGES, corners=False)[0], IMAGES[:, :, ::-1])
    assert crop_size(16, 12, 1.05) == (15, 11) and crop_size(224, 224, 1.05) == (213, 213)
    with pytest.raises(ValueError, match=r"NHWC image batch, got shape \(16, 12, 3\)"):
        tta_views(IMAGES[0])
    with pytest.raises(ValueError, match="scale must be >= 1"):
        corner_crop(IMAGES, "top_left", 0.9)


def test_corner_crops_come_from_their_corner():
    # pixel value = row * 8 + column: a corner's window holds a known range of values
    ramp = jnp.arange(64, dtype=jnp.float32).reshape(1, 8, 8, 1)
    windows = {"top_left": (0, 27), "top_right": (4, 31), "bottom_left": (32, 59), "bottom_right": (36, 63)}
    for corner, (low, high) in windows.items():
        out = corner_crop(ramp, corner, scale=2.0)
        assert out.shape == ramp.shape
        assert low - 1e-4 <= float(out.min()) and float(out.max()) <= high + 1e-4, corner
        assert float(out.max() - out.min()) > 20  # zoomed back to full size, not a constant
    np.testing.assert_array_equal(corner_crop(ramp, "bottom_right", scale=1.0), ramp)
    as_uint8 = corner_crop(jnp.asarray(ramp, jnp.uint8), "top_left", 2.0)
    assert as_uint8.dtype == jnp.uint8 and int(as_uint8.max()) <= 27


def test_flip_invariant_model_gives_the_plain_prediction():
    symmetric = lambda x: logits(x) + logits(hflip(x))  # invariant to left-right mirroring
    plain = jax.nn.softmax(symmetric(IMAGES))
    np.testing.assert_allclose(tta_predict(symmetric, IMAGES, corners=False), plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tta_predict(symmetric, IMAGES, scale=1.0), plain, rtol=1e-6, atol=1e-7)
    # the corner crops do change this model's answer: TTA is not the identity
    assert float(jnp.abs(tta_predict(symmetric, IMAGES, scale=1.3) - plain).max()) > 1e-4


def test_beta_blends_plain_and_mean_of_views():
    plain = jax.nn.softmax(logits(IMAGES))
    views = jnp.stack([jax.nn.softmax(logits(v)) for v in tta_views(IMAGES, 1.2)])
    mean = views.mean(axis=0)
    assert float(jnp.abs(mean - plain).max()) > 1e-4
    np.testing.assert_allclose(tta_predict(logits, IMAGES, beta=1.0, scale=1.2), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tta_predict(logits, IMAGES, beta=0.0, scale=1.2), mean, rtol=1e-5, atol=1e-6)
    blended = jax.jit(lambda x: tta_predict(logits, x, scale=1.2))(IMAGES)  # default beta 0.4
    np.testing.assert_allclose(blended, 0.4 * plain + 0.6 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="beta must be in"):
        tta_predict(logits, IMAGES, beta=1.5)


def test_tta_get_preds_strips_padding_and_keeps_order():
    x = RNG.normal(size=(7, 16, 12, 3)).astype(np.float32)
    y = RNG.integers(0, 4, 7).astype(np.int32)
    data = DataBunch(ArrayLoader(x, y, 4, shuffle=True, drop_last=True), ArrayLoader(x, y, 4))
    learn = Learner(CNN, data, config=TrainConfig(progress=False), log=lambda s: None)
    probs, targets = tta_get_preds(learn, beta=0.4, scale=1.2)
    assert probs.shape == (7, 4) and targets.tolist() == y.tolist()
    state_logits = lambda v: CNN.apply(learn.state.variables(), v, train=False)
    np.testing.assert_allclose(probs, tta_predict(state_logits, jnp.asarray(x), scale=1.2), rtol=1e-5, atol=1e-6)
