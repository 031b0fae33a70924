"""fastai v1's ULMFiT models: the AWD-LSTM language model and text classifier, in Flax linen.

As fastai/text/models/awd_lstm.py and fastai/text/learner.py (1.0.5x-1.0.61) build them:

* `AWDLSTMEncoder` (fastai's AWD_LSTM): an embedding (fastai's init U(-0.1, 0.1); the pad
  row gets no gradient through the lookup, as `padding_idx` does), `n_layers` LSTMs (the
  last one back to `emb_sz`) and five dropouts: EmbeddingDropout (whole vocabulary rows,
  the kept ones rescaled), RNNDropout on the input and between layers (one mask per
  sequence, constant over time), WeightDropout (DropConnect on each hidden-to-hidden
  matrix, one draw per call). All draw from the 'dropout' rng and are off unless `train`.
* `AWDLSTMLanguageModel`: the encoder + LinearDecoder (RNNDropout `output_p`, decoder
  tied to the embedding matrix, output bias) -> logits [B, T, vocab]. Its hidden state is
  carried across batches in the "carry" collection (`layer_{l}`: {'h', 'c'} [B, n]):
  read at the start (zeros when absent, when its batch size differs as fastai's `reset`
  on a new bs, and for the rows where `reset` is true), detached with stop_gradient as
  fastai's `to_detach`, and written back when "carry" is mutable:
  `logits, upd = model.apply({'params': p, 'carry': c}, x, reset=r, mutable=['carry'])`.
  fastai's LM batches are one continuous stream per row; jaxfast's LMLoader pads a batch's
  rows at their END to one fixed length (`token_mask` [B, T], 1 = real): given it, the carry
  is each row's state after its last real token (unchanged for a row with none), so the pad
  tokens never reach the next batch; their logits are computed and must be masked in the loss.
* `AWDLSTMClassifier`: MultiBatchEncoder (the encoder over the document in `bptt` chunks,
  the carry threaded through and detached between chunks, a fresh dropout draw per chunk;
  only the chunks starting after `T - max_len` are kept, fastai's strict `i > sl - max_len`),
  then PoolingLinearClassifier: [last, masked max, masked mean] of the last layer's kept
  outputs (fastai pads first, so the last position is real), then BN-dropout-linear blocks.

Both models `sow` the last layer's output as intermediates/'last_output' (fastai's
`raw_outputs[-1]` and `outputs[-1]`, the same tensor for the AWD-LSTM) and its real positions
as 'last_output_mask' (an LM given token_mask; a classifier's non-pad tokens) for AR/TAR
(jaxfast.losses.activation_penalty, the Learner's `activation_reg`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxfast.errors import InputError
from jaxfast.layer_groups import LayerGroups
from jaxfast.models.layers import batch_norm
from jaxfast.models.lstm_state import lstm_scan_from
from jaxfast.models.registry import register
from jaxfast.models.rnn import per_token

# fastai v1's configs (fastai/text/models/awd_lstm.py)
AWD_LSTM_LM_CONFIG = dict(emb_sz=400, n_hid=1152, n_layers=3, pad_token=1, output_p=0.1, hidden_p=0.15,
                          input_p=0.25, embed_p=0.02, weight_p=0.2, tie_weights=True, out_bias=True)
AWD_LSTM_CLAS_CONFIG = dict(emb_sz=400, n_hid=1152, n_layers=3, pad_token=1, output_p=0.4, hidden_p=0.3,
                            input_p=0.4, embed_p=0.05, weight_p=0.5)
EMBED_INIT_RANGE = 0.1  # fastai's AWD_LSTM.initrange and LinearDecoder.initrange


def uniform(limit: float):
    """U(-limit, limit): fastai's embedding init (0.1) and PyTorch's LSTM init (1/sqrt(n))."""
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)
    return init


def torch_lstm_bias(n: int):
    """PyTorch's b_ih + b_hh, each U(-1/sqrt(n), 1/sqrt(n)), as one bias."""
    def init(key, shape, dtype=jnp.float32):
        first, second = jax.random.split(key)
        return uniform(n ** -0.5)(first, shape, dtype) + uniform(n ** -0.5)(second, shape, dtype)
    return init


def dropout_mask(rng, p: float, shape, dtype=jnp.float32) -> jax.Array:
    """fastai's dropout_mask: Bernoulli(1 - p) / (1 - p)."""
    return jax.random.bernoulli(rng, 1.0 - p, shape).astype(dtype) / (1.0 - p)


def locked_dropout(module: nn.Module, x: jax.Array, p: float, train: bool) -> jax.Array:
    """fastai's RNNDropout on x [B, T, D]: one mask [B, 1, D] per sequence, the same at every step."""
    if not train or p == 0.0:
        return x
    return x * dropout_mask(module.make_rng("dropout"), p, (x.shape[0], 1, x.shape[2]), x.dtype)


class WeightDroppedLSTM(nn.Module):
    """One nn.LSTM layer wrapped in fastai's WeightDropout: when training, the hidden-to-hidden
    matrix gets element dropout `weight_p` (rescaled), one draw per call. Params as
    rnn.FusedLSTM: kernel_ih [in, 4n], kernel_hh [n, 4n], bias [4n] (PyTorch's init)."""

    features: int
    weight_p: float = 0.0

    @nn.compact
    def __call__(self, x, h0, c0, train: bool = False, lengths=None):
        n = self.features
        w_ih = self.param("kernel_ih", uniform(n ** -0.5), (x.shape[-1], 4 * n))
        w_hh = self.param("kernel_hh", uniform(n ** -0.5), (n, 4 * n))
        bias = self.param("bias", torch_lstm_bias(n), (4 * n,))
        if train and self.weight_p > 0.0:
            w_hh = w_hh * dropout_mask(self.make_rng("dropout"), self.weight_p, w_hh.shape, w_hh.dtype)
        hs, (h, c) = lstm_scan_from(x.swapaxes(0, 1), h0, c0, w_ih, w_hh, bias, lengths)
        return hs.swapaxes(0, 1), (h, c)


Carry = tuple[tuple[jax.Array, jax.Array], ...]  # ((h, c) per layer), each [B, n_l]


class AWDLSTMEncoder(nn.Module):
    """fastai's AWD_LSTM (defaults: its class defaults): tokens [B, T] + carry -> (last layer's
    output [B, T, emb_sz], new carry). Params: embedding/embedding [vocab, emb_sz], rnns_{l}
    (fastai's rnns.{l})."""

    vocab_size: int
    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    pad_token: int = 1
    hidden_p: float = 0.2
    input_p: float = 0.6
    embed_p: float = 0.1
    weight_p: float = 0.5

    def layer_size(self, layer: int) -> int:
        return self.emb_sz if layer == self.n_layers - 1 else self.n_hid

    def zero_carry(self, batch_size: int) -> Carry:
        return tuple((jnp.zeros((batch_size, self.layer_size(l))),) * 2 for l in range(self.n_layers))

    def setup(self):
        self.embedding = nn.Embed(self.vocab_size, self.emb_sz, embedding_init=uniform(EMBED_INIT_RANGE))
        self.rnns = [WeightDroppedLSTM(self.layer_size(l), self.weight_p) for l in range(self.n_layers)]

    def embedding_matrix(self) -> jax.Array:
        return self.embedding.embedding

    def embed(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        """fastai's encoder_dp (EmbeddingDropout) then input_dp (RNNDropout): [B, T] -> [B, T, emb_sz]."""
        rows = jnp.asarray(self.embedding.embedding)[tokens]
        if train and self.embed_p > 0.0:  # a whole vocabulary row kept (rescaled) or dropped
            keep = dropout_mask(self.make_rng("dropout"), self.embed_p, (self.vocab_size,), rows.dtype)
            rows = rows * keep[tokens][..., None]
        # padding_idx: the pad row gets no gradient from the lookup (the tied decoder still trains it)
        rows = jnp.where((tokens == self.pad_token)[..., None], jax.lax.stop_gradient(rows), rows)
        return locked_dropout(self, rows, self.input_p, train)

    def __call__(self, tokens: jax.Array, carry: Carry, train: bool = False, lengths=None) -> tuple[jax.Array, Carry]:
        """`lengths` [B]: real tokens per row when padding follows them (the new carry is the
        state after the last real token); None: every token is real."""
        x = self.embed(tokens, train)
        new_carry = []
        for layer, rnn in enumerate(self.rnns):
            h0, c0 = carry[layer]
            x, state = rnn(x, h0, c0, train, lengths)
            new_carry.append(state)
            if layer != self.n_layers - 1:
                x = locked_dropout(self, x, self.hidden_p, train)
        return x, tuple(new_carry)


def _reset_rows(reset, batch_size: int) -> jax.Array:
    """`reset` (None, a bool, or one bool per row) as a [B, 1] bool array."""
    reset = jnp.zeros((), bool) if reset is None else jnp.asarray(reset, bool)
    if reset.ndim == 0:
        reset = jnp.broadcast_to(reset, (batch_size,))
    if reset.shape != (batch_size,):
        raise InputError(f"reset must be one bool or one per row ({batch_size}), got shape {reset.shape}")
    return reset[:, None]


class AWDLSTMLanguageModel(nn.Module):
    """fastai's get_language_model(AWD_LSTM): encoder + tied LinearDecoder -> logits [B, T, vocab]."""

    vocab_size: int
    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    pad_token: int = 1
    output_p: float = 0.1
    hidden_p: float = 0.15
    input_p: float = 0.25
    embed_p: float = 0.02
    weight_p: float = 0.2
    tie_weights: bool = True
    out_bias: bool = True

    def setup(self):
        self.encoder = AWDLSTMEncoder(self.vocab_size, self.emb_sz, self.n_hid, self.n_layers, self.pad_token,
                                      self.hidden_p, self.input_p, self.embed_p, self.weight_p)
        if not self.tie_weights:
            self.decoder_kernel = self.param("decoder_kernel", uniform(EMBED_INIT_RANGE), (self.emb_sz, self.vocab_size))
        if self.out_bias:
            self.decoder_bias = self.param("decoder_bias", nn.initializers.zeros, (self.vocab_size,))

    def read_carry(self, batch_size: int, reset) -> Carry:
        zeros = self.encoder.zero_carry(batch_size)
        reset = _reset_rows(reset, batch_size)
        carry = []
        for layer, (zero_h, zero_c) in enumerate(zeros):
            stored = self.get_variable("carry", f"layer_{layer}")
            if stored is None or stored["h"].shape != zero_h.shape:  # first batch, or a new batch size
                carry.append((zero_h, zero_c))
                continue
            h, c = (jax.lax.stop_gradient(stored[k]) for k in ("h", "c"))  # fastai's to_detach
            carry.append((jnp.where(reset, 0.0, h), jnp.where(reset, 0.0, c)))
        return tuple(carry)

    def __call__(self, tokens: jax.Array, train: bool = False, reset=None, token_mask=None) -> jax.Array:
        carry = self.read_carry(tokens.shape[0], reset)
        lengths = None if token_mask is None else jnp.asarray(token_mask).astype(jnp.int32).sum(axis=1)
        hidden, new_carry = self.encoder(tokens, carry, train, lengths)
        if self.is_mutable_collection("carry"):
            if self.is_initializing():  # `init` returns the zero state, not the state after its dummy batch
                new_carry = self.encoder.zero_carry(tokens.shape[0])
            for layer, (h, c) in enumerate(new_carry):
                self.put_variable("carry", f"layer_{layer}", {"h": jax.lax.stop_gradient(h), "c": jax.lax.stop_gradient(c)})
        self.sow("intermediates", "last_output", hidden)
        if token_mask is not None:
            self.sow("intermediates", "last_output_mask", jnp.asarray(token_mask, jnp.float32))
        hidden = locked_dropout(self, hidden, self.output_p, train)
        kernel = self.encoder.embedding_matrix().T if self.tie_weights else self.decoder_kernel
        bias = self.decoder_bias if self.out_bias else 0.0
        return per_token(lambda rows: rows @ kernel + bias, hidden)


class PoolingLinearClassifier(nn.Module):
    """fastai's PoolingLinearClassifier: [last, max, mean] over the non-pad positions (mask
    true = pad), then per block BatchNorm, Dropout(p) (left out when p = 0), Linear, ReLU
    (not after the last). `sizes` = [3 * emb_sz, *lin_ftrs, n_classes]; `ps` one per block."""

    sizes: Sequence[int]
    ps: Sequence[float]

    @nn.compact
    def __call__(self, output: jax.Array, pad_mask: jax.Array, train: bool = False) -> jax.Array:
        real = ~pad_mask[..., None]
        n_real = real.sum(axis=1)
        avg_pool = jnp.where(real, output, 0.0).sum(axis=1) / jnp.maximum(n_real, 1)
        max_pool = jnp.where(real, output, -jnp.inf).max(axis=1)
        max_pool = jnp.where(n_real > 0, max_pool, 0.0)  # an all-pad row: 0, not fastai's -inf
        x = jnp.concatenate([output[:, -1], max_pool, avg_pool], axis=-1)
        n_blocks = len(self.sizes) - 1
        for block, (n_in, n_out, p) in enumerate(zip(self.sizes[:-1], self.sizes[1:], self.ps)):
            x = batch_norm(train, name=f"bn_{block}")(x)
            if p != 0.0:
                x = nn.Dropout(p, deterministic=not train)(x)
            x = nn.Dense(n_out, kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                         bias_init=uniform(n_in ** -0.5), name=f"linear_{block}")(x)
            if block != n_blocks - 1:
                x = nn.relu(x)
        return x


def kept_chunks(seq_len: int, bptt: int, max_len: int) -> list[tuple[int, int, bool]]:
    """fastai's MultiBatchEncoder chunks: (start, stop, kept) for i in range(0, seq_len, bptt),
    kept when i > seq_len - max_len."""
    return [(i, min(i + bptt, seq_len), i > seq_len - max_len) for i in range(0, seq_len, bptt)]


class AWDLSTMClassifier(nn.Module):
    """fastai's get_text_classifier(AWD_LSTM): MultiBatchEncoder + PoolingLinearClassifier
    -> logits [B, n_classes]. Token rows are padded FIRST with `pad_token` (fastai's pad_first)."""

    vocab_size: int
    n_classes: int
    emb_sz: int = 400
    n_hid: int = 1152
    n_layers: int = 3
    pad_token: int = 1
    output_p: float = 0.4
    hidden_p: float = 0.3
    input_p: float = 0.4
    embed_p: float = 0.05
    weight_p: float = 0.5
    bptt: int = 70
    max_len: int = 70 * 20
    lin_ftrs: Sequence[int] = (50,)
    ps: Sequence[float] = (0.1,)

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False) -> jax.Array:
        batch_size, seq_len = tokens.shape
        chunks = kept_chunks(seq_len, self.bptt, self.max_len)
        if not any(kept for *_, kept in chunks):
            raise InputError(f"text of {seq_len} tokens: no bptt chunk ({self.bptt}) starts after "
                             f"seq_len - max_len ({seq_len - self.max_len}); raise max_len")
        encoder = AWDLSTMEncoder(self.vocab_size, self.emb_sz, self.n_hid, self.n_layers, self.pad_token,
                                 self.hidden_p, self.input_p, self.embed_p, self.weight_p, name="encoder")
        carry = encoder.zero_carry(batch_size)
        n_full = seq_len // self.bptt
        n_skipped = sum(1 for _, _, kept in chunks if not kept)  # the leading chunks whose outputs are dropped
        outputs = []
        if n_skipped:
            carry, _ = self._scan_chunks(encoder, carry, tokens[:, :n_skipped * self.bptt], train, keep=False)
        if n_full > n_skipped:
            kept_tokens = tokens[:, n_skipped * self.bptt:n_full * self.bptt]
            carry, out = self._scan_chunks(encoder, carry, kept_tokens, train, keep=True)
            outputs.append(out)
        if n_full * self.bptt < seq_len:  # the shorter last chunk, run on its own (static shapes)
            out, _ = encoder(tokens[:, n_full * self.bptt:], jax.lax.stop_gradient(carry), train)
            outputs.append(out)
        output = jnp.concatenate(outputs, axis=1) if len(outputs) > 1 else outputs[0]
        pad_mask = tokens[:, seq_len - output.shape[1]:] == self.pad_token
        self.sow("intermediates", "last_output", output)
        self.sow("intermediates", "last_output_mask", (~pad_mask).astype(jnp.float32))
        sizes = (3 * self.emb_sz, *self.lin_ftrs, self.n_classes)
        return PoolingLinearClassifier(sizes, (self.output_p, *self.ps), name="head")(output, pad_mask, train)

    def _scan_chunks(self, encoder, carry, tokens, train, keep: bool):
        """The encoder over [B, n * bptt] tokens as n chunks in one lax.scan; the carry is
        detached between chunks (fastai's to_detach) and each chunk draws new dropout masks."""
        batch_size = tokens.shape[0]
        chunks = tokens.reshape(batch_size, -1, self.bptt).swapaxes(0, 1)  # [n, B, bptt]

        def step(module, carry, chunk):
            out, carry = module(chunk, jax.lax.stop_gradient(carry), train)
            return carry, (out if keep else None)

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False, "dropout": True})
        carry, outs = scan(encoder, carry, chunks)
        if not keep:
            return carry, None
        return carry, outs.swapaxes(0, 1).reshape(batch_size, -1, self.emb_sz)


# ----------------------------------------------------------------------------- layer groups


def lm_layer_groups(model: AWDLSTMLanguageModel) -> LayerGroups:
    """fastai's awd_lstm_lm_split: one group per LSTM, then embedding + decoder (the head)."""
    rnns = tuple((f"rnn_{l}", f"^encoder/rnns_{l}/") for l in range(model.n_layers))
    return LayerGroups(rnns + (("embedding_decoder", "^(encoder/embedding/|decoder_)"),))


def clas_layer_groups(model: AWDLSTMClassifier) -> LayerGroups:
    """fastai's awd_lstm_clas_split: embedding, one group per LSTM, then the pooling head."""
    rnns = tuple((f"rnn_{l}", f"^encoder/rnns_{l}/") for l in range(model.n_layers))
    return LayerGroups((("embedding", "^encoder/embedding/"),) + rnns + (("head", "^head/"),))


def with_encoder(clas_params: dict, lm_params: dict) -> dict:
    """fastai's save_encoder + load_encoder: the classifier's params with the (fine-tuned)
    language model's encoder in place of its own (same vocabulary and sizes, checked)."""
    ours = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(clas_params["encoder"])}
    theirs = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(lm_params["encoder"])}
    if ours != theirs:
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise InputError("the language model's encoder does not fit the classifier's: "
                         + "; ".join(f"encoder{k}: LM {theirs.get(k)}, classifier {ours.get(k)}" for k in differ))
    return {**clas_params, "encoder": lm_params["encoder"]}


# ----------------------------------------------------------------------------- factories


def _scaled(config: dict, drop_mult: float) -> dict:
    """fastai multiplies every '*_p' setting by drop_mult."""
    return {k: v * drop_mult if k.endswith("_p") else v for k, v in config.items()}


@register("awd_lstm_lm")
def awd_lstm_lm(vocab_size: int, drop_mult: float = 1.0, **config) -> AWDLSTMLanguageModel:
    """fastai's language_model_learner model: awd_lstm_lm_config, overridden by `config`
    (emb_sz, n_hid, n_layers, pad_token, output_p, hidden_p, input_p, embed_p, weight_p,
    tie_weights, out_bias), dropouts times `drop_mult`."""
    unknown = set(config) - set(AWD_LSTM_LM_CONFIG)
    if unknown:
        raise InputError(f"awd_lstm_lm: unknown settings {sorted(unknown)}; known: {sorted(AWD_LSTM_LM_CONFIG)}")
    return AWDLSTMLanguageModel(vocab_size, **_scaled({**AWD_LSTM_LM_CONFIG, **config}, drop_mult))


@register("awd_lstm_clas")
def awd_lstm_clas(vocab_size: int, n_classes: int, drop_mult: float = 1.0, bptt: int = 70, max_len: int = 70 * 20,
                  lin_ftrs: Sequence[int] = (50,), ps: Sequence[float] = (0.1,), **config) -> AWDLSTMClassifier:
    """fastai's text_classifier_learner model: awd_lstm_clas_config overridden by `config`,
    its dropouts (output_p is the head's first dropout) times `drop_mult`; head
    [3 * emb_sz, *lin_ftrs, n_classes] with dropouts [output_p, *ps] (ps not scaled, as fastai)."""
    unknown = set(config) - set(AWD_LSTM_CLAS_CONFIG)
    if unknown:
        raise InputError(f"awd_lstm_clas: unknown settings {sorted(unknown)}; known: {sorted(AWD_LSTM_CLAS_CONFIG)}")
    if len(ps) != len(lin_ftrs):
        raise InputError(f"awd_lstm_clas: ps {list(ps)} needs one dropout per lin_ftrs layer {list(lin_ftrs)}")
    return AWDLSTMClassifier(vocab_size, n_classes, **_scaled({**AWD_LSTM_CLAS_CONFIG, **config}, drop_mult),
                             bptt=bptt, max_len=max_len, lin_ftrs=tuple(lin_ftrs), ps=tuple(ps))
