"""Lesson 7's recurrent language models in Flax linen.

Every model maps int32 tokens [B, T] to next-token logits [B, T, vocab] and
starts its hidden state at zero for each batch: the pure-function version of
the lesson's stateful models (which carried ``self.h`` across batches). The
time loop is always a ``scan``, so a model jits into one compact loop
whatever the sequence length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxfast.models.registry import register


def per_token(layer, x: jnp.ndarray) -> jnp.ndarray:
    """`layer` ([N, D] -> [N, ...], e.g. the vocabulary decoder) over x [B, T, D] -> [B, T, ...],
    applied to x flattened to [B*T, D]. XLA:CPU differentiates a [B, T, D] dot by
    transposing the whole [B, T, V] gradient for the weight gradient (a 90 MB copy for an
    AWD-LSTM LM's 10k-token decoder); over rows it reads the gradient in place (that LM's
    decoder + cross entropy, fwd+bwd: 385 -> 361 ms, benchmarks/RESULTS.md)."""
    batch_shape = x.shape[:-1]
    y = layer(x.reshape(-1, x.shape[-1]))
    return y.reshape(*batch_shape, *y.shape[1:])


class LoopRNNCell(nn.Module):
    """One step of the lesson's hand-written loop: h = relu(h_h(h + emb_t))."""

    hidden: int

    @nn.compact
    def __call__(self, hidden_state: jnp.ndarray, embedded_token: jnp.ndarray):
        hidden_state = nn.relu(nn.Dense(self.hidden, name="h_h")(hidden_state + embedded_token))
        return hidden_state, hidden_state


class LoopRNN(nn.Module):
    """The lesson's Model3: embedding i_h, shared h_h applied in a loop, h_o at every step."""

    vocab_size: int
    hidden: int

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        embedded = nn.Embed(self.vocab_size, self.hidden, name="i_h")(tokens)
        # Lift the cell over time (axis 1) with the same h_h weights at every step.
        scan_over_time = nn.scan(
            LoopRNNCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )
        initial_state = jnp.zeros((tokens.shape[0], self.hidden), embedded.dtype)
        _, hidden_states = scan_over_time(self.hidden, name="loop")(initial_state, embedded)
        return per_token(nn.Dense(self.vocab_size, name="h_o"), hidden_states)


class RNNCellModel(nn.Module):
    """The lesson's Model4: the same recurrence with Flax's built-in SimpleCell (tanh)."""

    vocab_size: int
    hidden: int

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        embedded = nn.Embed(self.vocab_size, self.hidden, name="i_h")(tokens)
        hidden_states = nn.RNN(nn.SimpleCell(features=self.hidden, name="rnn"))(embedded)
        return per_token(nn.Dense(self.vocab_size, name="h_o"), hidden_states)


class GRUModel(nn.Module):
    """The lesson's Model5: stacked GRU layers, a norm on the output, linear head.

    fastai normalised the GRU output with BatchNorm1d; LayerNorm plays that
    role here without batch statistics to carry around.
    """

    vocab_size: int
    hidden: int
    n_layers: int = 2
    layer_norm: bool = True

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        activations = nn.Embed(self.vocab_size, self.hidden, name="i_h")(tokens)
        for layer in range(self.n_layers):
            activations = nn.RNN(nn.GRUCell(features=self.hidden, name=f"gru_{layer}"))(activations)
        if self.layer_norm:
            activations = nn.LayerNorm(name="norm")(activations)
        return per_token(nn.Dense(self.vocab_size, name="h_o"), activations)


class LSTMModel(nn.Module):
    """Stacked LSTM language model: dropout between layers when training, norm, linear head.

    Dropout draws from the 'dropout' rng, so ``apply(..., train=True)`` needs
    ``rngs={'dropout': key}`` whenever ``dropout > 0``. The LayerNorm before
    the head matters: on human numbers it lifted a 2x128 LSTM from ~0.77 to
    ~0.91 valid accuracy for the same training budget.
    """

    vocab_size: int
    hidden: int
    n_layers: int = 2
    dropout: float = 0.0
    layer_norm: bool = True

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        activations = nn.Embed(self.vocab_size, self.hidden, name="i_h")(tokens)
        for layer in range(self.n_layers):
            if layer > 0:
                activations = nn.Dropout(self.dropout, deterministic=not train)(activations)
            activations = FusedLSTM(self.hidden, name=f"lstm_{layer}")(activations)
        activations = nn.Dropout(self.dropout, deterministic=not train)(activations)
        if self.layer_norm:
            activations = nn.LayerNorm(name="norm")(activations)
        return per_token(nn.Dense(self.vocab_size, name="h_o"), activations)


def _gate_scales(n: int, dtype=jnp.float32):
    """Per-column (scale, offset) that turn one sigmoid over all four gates [i, f, g, o] into
    sigmoid for i, f, o and tanh for g: tanh(z) = 2 * sigmoid(2z) - 1."""
    is_g = jnp.arange(4 * n) // n == 2
    return jnp.where(is_g, 2.0, 1.0).astype(dtype), jnp.where(is_g, -1.0, 0.0).astype(dtype)


def _lstm_step(w_hh, bias, scale, offset, carry, xw_t):
    """One LSTM step from the precomputed input projection (the bias is added here, in the
    same fused pass as the recurrent matmul's result); also returns the gates.
    All four gate activations are ONE elementwise pass over [B, 4n]: on CPU every separate
    expression inside the loop is a separate kernel launch per step (fwd scan 30 -> 22 ms
    for a 400 -> 256 layer at T 70, bs 32)."""
    c, h = carry
    n = c.shape[-1]
    z = xw_t + h @ w_hh + bias
    # in float32 even under bf16/fp16 compute: 2 * sigmoid(2z) - 1 near z = 0 would keep
    # only the narrow type's resolution around 0.5 (bf16: tanh(1e-3) -> 0)
    gates = (scale * nn.sigmoid(scale * z.astype(jnp.float32)) + offset).astype(z.dtype)
    i, f, g, o = gates[:, :n], gates[:, n:2 * n], gates[:, 2 * n:3 * n], gates[:, 3 * n:]
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), (h, c, gates)


def _lstm_fwd(x, w_ih, w_hh, bias, unroll):
    zeros = jnp.zeros((x.shape[1], w_hh.shape[0]), x.dtype)
    # every step's input projection in one matmul; the bias is added inside the loop's gate
    # pass, with no extra pass over [T, B, 4n] (three layers fwd+bwd -2% on CPU)
    xw = x @ w_ih
    step = functools.partial(_lstm_step, w_hh, bias, *_gate_scales(w_hh.shape[0], jnp.float32))
    _, (hs, cs, gates) = jax.lax.scan(step, (zeros, zeros), xw, unroll=unroll)
    return hs, (x, w_ih, w_hh, hs, cs, gates)


def _lstm_bwd(unroll, res, dhs):
    """Backward scan that only carries (dh, dc). Everything that does not depend on the
    recurrence is computed for all steps at once before it, so the loop body is one
    fused expression and one matmul; the weight gradients are then ONE matmul each over
    all steps instead of T small accumulations inside the loop."""
    x, w_ih, w_hh, hs, cs, gates = res
    t, b, n = hs.shape
    # The transposed recurrent weight, made once: left to XLA, the loop's matmul reads
    # w_hh transposed at every step (~15% slower backward scan on CPU).
    w_hh_t = jax.lax.optimization_barrier(w_hh.T)
    first = jnp.zeros((1, b, n), x.dtype)
    c_prev, h_prev = jnp.concatenate([first, cs[:-1]]), jnp.concatenate([first, hs[:-1]])
    i, f, g, o = gates[..., :n], gates[..., n:2 * n], gates[..., 2 * n:3 * n], gates[..., 3 * n:]
    tanh_c = jnp.tanh(cs)
    # per step: dh = dh_out + dh_next;  dc = dc_next + dh * dc_dh;  dz = [dc, dc, dc, dh] * dz_dcdh
    dc_dh = o * (1 - tanh_c * tanh_c)
    dz_dcdh = jnp.concatenate([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tanh_c * o * (1 - o)], axis=-1)

    def step(carry, inputs):
        dh_next, dc_next = carry
        dh_out, dc_dh_t, dz_dcdh_t, f_t = inputs
        dh = dh_out + dh_next
        dc = dc_next + dh * dc_dh_t
        dz = jnp.concatenate([dc, dc, dc, dh], axis=-1) * dz_dcdh_t
        return (dz @ w_hh_t, dc * f_t), (dc, dh)

    zeros = jnp.zeros((b, n), x.dtype)
    # the loop stores (dc, dh), half the size of dz, and dz is rebuilt for all steps at once
    # (fewer bytes zero-filled and written per step: three layers fwd+bwd -3% on CPU)
    _, (dcs, dhs_total) = jax.lax.scan(step, (zeros, zeros), (dhs, dc_dh, dz_dcdh, f), reverse=True, unroll=unroll)
    dz = (jnp.concatenate([dcs, dcs, dcs, dhs_total], axis=-1) * dz_dcdh).reshape(t * b, 4 * n)
    return ((dz @ w_ih.T).reshape(x.shape), x.reshape(t * b, -1).T @ dz, h_prev.reshape(t * b, n).T @ dz,
            dz.sum(axis=0))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def lstm_scan(x, w_ih, w_hh, bias, unroll: int = 1):
    """LSTM over time-major x [T, B, in] from zero state -> h [T, B, n]; gates (i, f, g, o)
    in PyTorch's order: w_ih [in, 4n], w_hh [n, 4n], bias [4n] (PyTorch's b_ih + b_hh)."""
    return _lstm_fwd(x, w_ih, w_hh, bias, unroll)[0]


lstm_scan.defvjp(_lstm_fwd, _lstm_bwd)


class FusedLSTM(nn.Module):
    """An LSTM layer over [B, T, in] -> [B, T, features], laid out as PyTorch's nn.LSTM runs
    it on CPU: the input projection of all steps in one matmul, a scan of the recurrent
    matmul with fused gates, and a hand-written backward whose weight gradients are one
    matmul each. Same maths as nn.RNN(nn.OptimizedLSTMCell), ~1.3x faster on CPU
    (benchmarks/lstm_bench.py); params: kernel_ih, kernel_hh, bias."""

    features: int
    unroll: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n = self.features
        w_ih = self.param("kernel_ih", nn.initializers.lecun_normal(), (x.shape[-1], 4 * n))
        w_hh = self.param("kernel_hh", nn.initializers.orthogonal(), (n, 4 * n))
        bias = self.param("bias", nn.initializers.zeros, (4 * n,))
        w_ih, w_hh, bias = (w.astype(x.dtype) for w in (w_ih, w_hh, bias))
        return lstm_scan(x.swapaxes(0, 1), w_ih, w_hh, bias, self.unroll).swapaxes(0, 1)


# Name -> (module class, whether it stacks n_layers recurrent layers).
RNN_MODELS: dict[str, tuple[type[nn.Module], bool]] = {
    "loop_rnn": (LoopRNN, False),
    "rnn_cell": (RNNCellModel, False),
    "gru": (GRUModel, True),
    "lstm": (LSTMModel, True),
}


def build_rnn(name: str, vocab_size: int, hidden: int, n_layers: int = 2, **options) -> nn.Module:
    """Build a model by name; extra options (dropout, layer_norm) go to its constructor.

    'loop_rnn' and 'rnn_cell' are the lesson's single-layer models and ignore n_layers.
    """
    if name not in RNN_MODELS:
        raise ValueError(f"unknown RNN model {name!r}; choose one of {sorted(RNN_MODELS)}")
    model_class, stacks_layers = RNN_MODELS[name]
    if stacks_layers:
        return model_class(vocab_size=vocab_size, hidden=hidden, n_layers=n_layers, **options)
    return model_class(vocab_size=vocab_size, hidden=hidden, **options)


@register("rnn_lm")
def rnn_language_model(name: str, vocab_size: int, hidden: int, n_layers: int = 2, dropout: float = 0.0) -> nn.Module:
    """`build_rnn` under the registry, so exported language models can be rebuilt."""
    options = {"dropout": dropout} if name == "lstm" else {}
    return build_rnn(name, vocab_size, hidden, n_layers, **options)
