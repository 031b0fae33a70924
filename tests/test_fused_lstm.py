"""FusedLSTM's hand-written backward equals autodiff of the same LSTM maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import linen as nn

from jaxfast.models.rnn import FusedLSTM, LSTMModel, lstm_scan, per_token

pytestmark = pytest.mark.usefixtures("full_precision")  # equalities to 1e-5 on GPUs too


def reference_lstm(x, w_ih, w_hh, bias):
    """Plain scan in PyTorch's gate order (i, f, g, o), differentiated by JAX."""
    n = w_hh.shape[0]

    def step(carry, x_t):
        c, h = carry
        z = x_t @ w_ih + h @ w_hh + bias
        i, f, g, o = jax.nn.sigmoid(z[:, :n]), jax.nn.sigmoid(z[:, n:2 * n]), jnp.tanh(z[:, 2 * n:3 * n]), \
            jax.nn.sigmoid(z[:, 3 * n:])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        return (c, h), h

    zeros = jnp.zeros((x.shape[1], n))
    return jax.lax.scan(step, (zeros, zeros), x)[1]


def test_forward_and_gradients_match_autodiff():
    keys = jax.random.split(jax.random.key(0), 5)
    t, b, d, n = 7, 3, 5, 4
    x = jax.random.normal(keys[0], (t, b, d))
    w_ih = jax.random.normal(keys[1], (d, 4 * n)) * 0.5
    w_hh = jax.random.normal(keys[2], (n, 4 * n)) * 0.5
    bias = jax.random.normal(keys[3], (4 * n,)) * 0.1
    probe = jax.random.normal(keys[4], (t, b, n))
    np.testing.assert_allclose(lstm_scan(x, w_ih, w_hh, bias, 1), reference_lstm(x, w_ih, w_hh, bias), atol=1e-5)
    grads = jax.grad(lambda *a: jnp.sum(lstm_scan(*a, 2) * probe), argnums=(0, 1, 2, 3))(x, w_ih, w_hh, bias)
    expected = jax.grad(lambda *a: jnp.sum(reference_lstm(*a) * probe), argnums=(0, 1, 2, 3))(x, w_ih, w_hh, bias)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_module_shapes():
    x = jnp.ones((2, 6, 3))
    module = FusedLSTM(5)
    params = module.init(jax.random.key(1), x)
    assert module.apply(params, x).shape == (2, 6, 5)
    assert set(params["params"]) == {"kernel_ih", "kernel_hh", "bias"}


def test_per_token_equals_the_layer_on_the_sequence():
    """per_token(dense, x) over [B, T, D] gives the same outputs and gradients as the dense
    layer applied to x directly, and LSTMModel keeps its decoder's parameter name."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 3))
    dense = nn.Dense(7)
    params = dense.init(jax.random.key(1), x)
    cotangent = jax.random.normal(jax.random.key(2), (2, 5, 7))

    def loss(apply):
        return lambda p, x: jnp.sum(apply(p, x) * cotangent)

    direct = lambda p, x: dense.apply(p, x)
    flat = lambda p, x: per_token(lambda rows: dense.apply(p, rows), x)
    np.testing.assert_allclose(flat(params, x), direct(params, x), rtol=1e-6, atol=1e-6)
    assert flat(params, x).shape == (2, 5, 7)
    for got, want in zip(jax.tree.leaves(jax.grad(loss(flat), argnums=(0, 1))(params, x)),
                         jax.tree.leaves(jax.grad(loss(direct), argnums=(0, 1))(params, x))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    general = nn.DenseGeneral((2, 3))  # several trailing output axes keep their shape
    general_params = general.init(jax.random.key(4), x)
    np.testing.assert_allclose(per_token(lambda rows: general.apply(general_params, rows), x),
                               general.apply(general_params, x), rtol=1e-6, atol=1e-6)
    model = LSTMModel(vocab_size=11, hidden=4, n_layers=1)
    variables = model.init(jax.random.key(3), jnp.zeros((2, 5), jnp.int32))
    assert variables["params"]["h_o"]["kernel"].shape == (4, 11)
    assert model.apply(variables, jnp.zeros((2, 5), jnp.int32)).shape == (2, 5, 11)
