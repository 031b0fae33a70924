"""An LSTM layer that starts from a given (h, c) and returns the final one.

rnn.py's `lstm_scan` always starts from zeros (lesson 7's stateless models). The AWD-LSTM
carries its hidden state from one language-model batch to the next and, in the classifier,
from one bptt chunk of a document to the next, so it needs the same fused layer with an
initial state in and the final state out. The forward step and gate trick are rnn.py's
(`_lstm_step`, `_gate_scales`); the backward is rnn.py's one-matmul-per-weight backward,
extended to the initial state (its gradient is the reverse scan's final carry, for free)
and to the cell states, which are outputs too (the state at a row's last real token).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxfast.models.rnn import _gate_scales, _lstm_step


def _fwd(x, h0, c0, w_ih, w_hh, bias, unroll):
    xw = x @ w_ih
    step = functools.partial(_lstm_step, w_hh, bias, *_gate_scales(w_hh.shape[0], jnp.float32))
    _, (hs, cs, gates) = jax.lax.scan(step, (c0, h0), xw, unroll=unroll)
    return (hs, cs), (x, h0, c0, w_ih, w_hh, hs, cs, gates)


def _bwd(unroll, res, cotangents):
    x, h0, c0, w_ih, w_hh, hs, cs, gates = res
    dhs, dcs_out = cotangents
    t, b, n = hs.shape
    w_hh_t = jax.lax.optimization_barrier(w_hh.T)
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    h_prev = jnp.concatenate([h0[None], hs[:-1]])
    i, f, g, o = gates[..., :n], gates[..., n:2 * n], gates[..., 2 * n:3 * n], gates[..., 3 * n:]
    tanh_c = jnp.tanh(cs)
    dc_dh = o * (1 - tanh_c * tanh_c)
    dz_dcdh = jnp.concatenate([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], axis=-1)

    def step(carry, inputs):
        dh_next, dc_next = carry
        dh_out, dc_out, dc_dh_t, dz_dcdh_t, f_t = inputs
        dh = dh_out + dh_next
        dc = dc_next + dc_out + dh * dc_dh_t
        dz = jnp.concatenate([dc, dc, dc, dh], axis=-1) * dz_dcdh_t
        return (dz @ w_hh_t, dc * f_t), (dc, dh)

    # the reverse scan's final carry is the gradient with respect to (h0, c0)
    zeros = jnp.zeros((b, n), x.dtype)
    (dh0, dc0), (dcs, dhs_total) = jax.lax.scan(
        step, (zeros, zeros), (dhs, dcs_out, dc_dh, dz_dcdh, f), reverse=True, unroll=unroll)
    dz = (jnp.concatenate([dcs, dcs, dcs, dhs_total], axis=-1) * dz_dcdh).reshape(t * b, 4 * n)
    return ((dz @ w_ih.T).reshape(x.shape), dh0, dc0, x.reshape(t * b, -1).T @ dz,
            h_prev.reshape(t * b, n).T @ dz, dz.sum(axis=0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _lstm_scan_from(x, h0, c0, w_ih, w_hh, bias, unroll):
    return _fwd(x, h0, c0, w_ih, w_hh, bias, unroll)[0]


_lstm_scan_from.defvjp(_fwd, _bwd)


def lstm_scan_from(x, h0, c0, w_ih, w_hh, bias, lengths=None, unroll: int = 1):
    """LSTM over time-major x [T, B, in] from state (h0, c0) [B, n] -> (h [T, B, n], (h, c) final).
    PyTorch's gate order (i, f, g, o): w_ih [in, 4n], w_hh [n, 4n], bias [4n] (b_ih + b_hh).
    `lengths` [B] (real steps per row, padding after them): the final state is each row's
    state after its last real step, (h0, c0) for a row of none; None: after step T."""
    hs, cs = _lstm_scan_from(x, h0, c0, w_ih, w_hh, bias, unroll)
    if lengths is None:
        return hs, (hs[-1], cs[-1])
    last = jnp.clip(lengths - 1, 0, hs.shape[0] - 1)[None, :, None]
    has_steps = (lengths > 0)[:, None]
    h = jnp.where(has_steps, jnp.take_along_axis(hs, last, axis=0)[0], h0)
    c = jnp.where(has_steps, jnp.take_along_axis(cs, last, axis=0)[0], c0)
    return hs, (h, c)
