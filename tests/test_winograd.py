"""The Winograd F(4x4, 3x3) lowering equals XLA's convolution forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.models.conv import conv2d
from jaxfast.models.winograd import winograd_conv3x3

pytestmark = pytest.mark.usefixtures("full_precision")  # equalities to 1e-5 on GPUs too


@pytest.mark.parametrize("x_shape,cout", [
    ((2, 8, 8, 3), 4),      # whole tiles
    ((3, 7, 5, 4), 6),      # partial tiles on both axes: the overhang is cropped
    ((1, 1, 1, 2), 3),      # a single pixel: one tile, mostly padding
    ((2, 4, 13, 8), 8),
])
def test_winograd_matches_xla_forward_and_backward(x_shape, cout):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    k = jax.random.normal(kk, (3, 3, x_shape[-1], cout))
    pad = ((1, 1), (1, 1))
    y_xla = conv2d(x, k, (1, 1), pad, "xla")
    y_wino = jax.jit(winograd_conv3x3)(x, k)
    assert y_wino.shape == y_xla.shape and y_wino.dtype == jnp.float32
    scale = float(jnp.abs(y_xla).max())
    # the transforms' coefficients (up to 8 and 1/24) cost a few float32 ulps of the output scale
    np.testing.assert_allclose(y_wino, y_xla, rtol=0, atol=1e-5 * scale)
    ct = jax.random.normal(kg, y_xla.shape)
    g_xla = jax.grad(lambda x, k: jnp.sum(conv2d(x, k, (1, 1), pad, "xla") * ct), (0, 1))(x, k)
    g_wino = jax.jit(jax.grad(lambda x, k: jnp.sum(conv2d(x, k, (1, 1), pad, "winograd") * ct), (0, 1)))(x, k)
    for a, b in zip(g_wino, g_xla):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_winograd_second_order_gradients_match():
    """The hand-written backward is itself differentiable (e.g. for gradient penalties)."""
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
    k = jax.random.normal(jax.random.key(2), (3, 3, 3, 2))

    def grad_norm(lowering):
        def f(k):
            g = jax.grad(lambda x: jnp.sum(jnp.tanh(conv2d(x, k, (1, 1), "SAME", lowering))))(x)
            return jnp.sum(g ** 2)
        return jax.grad(f)(k)

    np.testing.assert_allclose(grad_norm("winograd"), grad_norm("xla"), rtol=1e-3, atol=1e-3)


def test_winograd_refuses_convs_it_does_not_compute():
    x = jnp.zeros((1, 8, 8, 4))
    with pytest.raises(ValueError, match="winograd lowering needs a 3x3 kernel, stride 1"):
        conv2d(x, jnp.zeros((3, 3, 4, 4)), (2, 2), "SAME", "winograd")
    with pytest.raises(ValueError, match="winograd lowering needs"):
        conv2d(x, jnp.zeros((3, 3, 4, 4)), (1, 1), "VALID", "winograd")
    with pytest.raises(ValueError, match="winograd lowering needs"):
        conv2d(x, jnp.zeros((5, 5, 4, 4)), (1, 1), "SAME", "winograd")


def test_a_resnet_block_trains_the_same_through_winograd():
    """A 3x3 conv layer of 64 channels on 8x8 maps, batch 16 (the rule picks Winograd on
    CPU), gives the same loss and gradients through both lowerings."""
    from jaxfast.models.conv import Conv, choose_lowering

    x = jax.random.normal(jax.random.key(3), (16, 8, 8, 64))
    assert choose_lowering(x.shape, (3, 3, 64, 64), (1, 1), "SAME", "cpu") == "winograd"
    params = Conv(64, (3, 3), lowering="xla").init(jax.random.key(4), x)

    def loss(lowering):
        return lambda p: jnp.mean(jax.nn.relu(Conv(64, (3, 3), lowering=lowering).apply(p, x)) ** 2)

    lx, gx = jax.value_and_grad(loss("xla"))(params)
    lw, gw = jax.value_and_grad(loss("winograd"))(params)
    np.testing.assert_allclose(lw, lx, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(gw), jax.tree.leaves(gx)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))


def test_winograd_error_stays_small_at_many_channels():
    """The rounding grows slowly with the contraction: bounded at 256 channels, as ResNets use."""
    x = jax.random.normal(jax.random.key(5), (2, 8, 8, 256))
    k = jax.random.normal(jax.random.key(6), (3, 3, 256, 256)) / 48.0
    y_xla = conv2d(x, k, (1, 1), "SAME", "xla")
    y_wino = jax.jit(winograd_conv3x3)(x, k)
    np.testing.assert_allclose(y_wino, y_xla, rtol=0, atol=3e-5 * float(jnp.abs(y_xla).max()))


def test_winograd_refuses_other_dtypes_and_the_rule_avoids_them():
    x, k = jnp.zeros((2, 8, 8, 64), jnp.bfloat16), jnp.zeros((3, 3, 64, 64), jnp.float32)
    with pytest.raises(ValueError, match="float32 only; got input bfloat16, kernel float32"):
        conv2d(x, k, (1, 1), "SAME", "winograd")
    # the rule sends a Winograd-shaped conv elsewhere when input and kernel dtypes differ
    # (conv2d passes dtype=None then) or are not float32
    from jaxfast.models.conv import choose_lowering

    shape = ((32, 16, 16, 64), (3, 3, 64, 64), (1, 1), "SAME", "cpu")
    assert choose_lowering(*shape) == "winograd"
    assert choose_lowering(*shape, dtype=None) == "xla"
    assert choose_lowering(*shape, dtype=jnp.bfloat16) == "xla"
