"""The AWD-LSTM (fastai v1's ULMFiT models): equal to a PyTorch AWD-LSTM, fastai's dropouts,
its layer groups, and a tiny language model that learns."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxfast.errors import InputError
from jaxfast.models.awd_lstm import (
    AWDLSTMEncoder, WeightDroppedLSTM, awd_lstm_clas, awd_lstm_lm, clas_layer_groups, kept_chunks, lm_layer_groups,
    locked_dropout, with_encoder)
from jaxfast.models.lstm_state import lstm_scan_from
from jaxfast.models.registry import build_model
from jaxfast.text.wt103 import encoder_params_from_fastai, lm_params_from_fastai

pytestmark = pytest.mark.usefixtures("full_precision")

TINY = dict(emb_sz=6, n_hid=10, n_layers=3)
VOCAB = 30


def _torch_state(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- LSTM with a state


@pytest.mark.parametrize("with_lengths", [False, True])
def test_lstm_from_state_gradients_match_autodiff(with_lengths):
    """The hand-written backward (inputs, weights, initial state, final state) equals autodiff;
    with `lengths`, the final state is the one after each row's last real step (padding after)."""
    keys = jax.random.split(jax.random.key(0), 8)
    t, b, d, n = 6, 3, 5, 4
    args = (jax.random.normal(keys[0], (t, b, d)), jax.random.normal(keys[1], (b, n)), jax.random.normal(keys[2], (b, n)),
            jax.random.normal(keys[3], (d, 4 * n)) * 0.5, jax.random.normal(keys[4], (n, 4 * n)) * 0.5,
            jax.random.normal(keys[5], (4 * n,)) * 0.1)
    probe_h, probe_c = jax.random.normal(keys[6], (t, b, n)), jax.random.normal(keys[7], (b, n))
    lengths = jnp.array([6, 2, 0]) if with_lengths else None
    if with_lengths:  # outputs after a row's end are padding: compared and differentiated nowhere
        probe_h = probe_h * (jnp.arange(t)[:, None] < lengths)[..., None]

    def reference(x, h0, c0, w_ih, w_hh, bias):
        """Plain scan; past a row's length the state is kept (h = m * h_new + (1 - m) * h)."""
        real = jnp.ones((t, b, 1)) if lengths is None else (jnp.arange(t)[:, None] < lengths)[..., None]

        def step(carry, inputs):
            h, c = carry
            x_t, m = inputs
            z = x_t @ w_ih + h @ w_hh + bias
            i, f, g, o = jnp.split(z, 4, axis=-1)
            c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
            return (m * h_new + (1 - m) * h, m * c_new + (1 - m) * c), h_new
        (h, c), hs = jax.lax.scan(step, (h0, c0), (x, real))
        return hs, (h, c)

    def loss(fn, *a):
        hs, (h, c) = fn(*a)
        return (hs * probe_h).sum() + (c * probe_c).sum() + (h * probe_c * 0.5).sum()

    ours_fn = lambda *a: lstm_scan_from(*a, lengths=lengths)
    (hs, final), (ref_hs, ref_final) = jax.jit(ours_fn)(*args), jax.jit(reference)(*args)
    np.testing.assert_allclose(hs * (probe_h != 0), ref_hs * (probe_h != 0), atol=1e-5)
    np.testing.assert_allclose(final, ref_final, atol=1e-5)
    ours = jax.jit(jax.grad(lambda *a: loss(ours_fn, *a), argnums=range(6)))(*args)
    theirs = jax.jit(jax.grad(lambda *a: loss(reference, *a), argnums=range(6)))(*args)
    for got, want in zip(ours, theirs):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- equal to PyTorch


def test_language_model_matches_torch_with_carried_state():
    torch = pytest.importorskip("torch", reason="the PyTorch reference AWD-LSTM needs torch")
    from torch_awd_lstm import language_model

    torch.manual_seed(0)
    reference = language_model(VOCAB, **TINY).eval()
    model = awd_lstm_lm(VOCAB, **TINY)
    params = lm_params_from_fastai(_torch_state(reference))
    batches = np.random.default_rng(0).integers(0, VOCAB, (4, 3, 7))
    apply = jax.jit(lambda variables, tokens, reset: model.apply(variables, tokens, reset=reset, mutable=["carry"]))
    sizes = (TINY["n_hid"], TINY["n_hid"], TINY["emb_sz"])
    carry = {"carry": {f"layer_{l}": {"h": jnp.zeros((3, n)), "c": jnp.zeros((3, n))} for l, n in enumerate(sizes)}}
    with torch.no_grad():
        for step, tokens in enumerate(batches):
            reset = step == 3
            if reset:
                reference[0].reset()
            want = reference(torch.as_tensor(tokens))[0].numpy()
            got, carry = apply({"params": params, **carry}, jnp.asarray(tokens), reset)
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"batch {step}")
        # reset per row: rows 0 and 2 start again, row 1 goes on
        tokens = batches[0]
        h_rows = torch.tensor([0.0, 1.0, 0.0])[None, :, None]
        reference[0].hidden = [(h * h_rows, c * h_rows) for h, c in reference[0].hidden]
        want = reference(torch.as_tensor(tokens))[0].numpy()
    got, _ = apply({"params": params, **carry}, jnp.asarray(tokens), jnp.array([True, False, True]))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # without a carry (or without 'carry' mutable) the model starts from zero, as after reset
    stateless = jax.jit(model.apply)({"params": params}, jnp.asarray(batches[3]))
    np.testing.assert_allclose(stateless, apply({"params": params, **carry}, jnp.asarray(batches[3]), True)[0], atol=1e-6)


# a short last chunk; whole chunks only; every chunk kept; fastai's strict i > sl - max_len drops the chunk at 4
def test_padded_lm_batch_carries_the_state_after_the_last_real_token():
    """Rows padded at the end (jaxfast's LMLoader, token_mask) carry on as if the row had
    stopped at its last real token: checked against PyTorch fed each row's real tokens only."""
    torch = pytest.importorskip("torch", reason="the PyTorch reference AWD-LSTM needs torch")
    from torch_awd_lstm import language_model

    torch.manual_seed(2)
    reference = language_model(VOCAB, **TINY).eval()
    model = awd_lstm_lm(VOCAB, **TINY)
    params = lm_params_from_fastai(_torch_state(reference))
    rng = np.random.default_rng(1)
    first, second = rng.integers(2, VOCAB, (3, 8)), rng.integers(2, VOCAB, (3, 5))
    lengths = np.array([8, 3, 0])
    token_mask = np.arange(8)[None, :] < lengths[:, None]
    first = np.where(token_mask, first, 1)
    apply = jax.jit(lambda v, x, m: model.apply(v, x, token_mask=m, mutable=["carry"]))
    got_first, carry = apply({"params": params}, jnp.asarray(first), jnp.asarray(token_mask))
    got_second, _ = apply({"params": params, **carry}, jnp.asarray(second), jnp.ones((3, 5), bool))
    with torch.no_grad():
        for row in range(3):
            reference[0].bs = 0  # a new batch size: fastai's reset
            if lengths[row]:
                want = reference(torch.as_tensor(first[row:row + 1, :lengths[row]]))[0].numpy()[0]
                np.testing.assert_allclose(got_first[row, :lengths[row]], want, atol=1e-5)
            else:
                reference[0].bs = 1
                reference[0].reset()
            want = reference(torch.as_tensor(second[row:row + 1]))[0].numpy()[0]
            np.testing.assert_allclose(got_second[row], want, atol=1e-5, err_msg=f"row {row}")


@pytest.mark.parametrize("seq_len", [13, 12, 6, 11])
def test_classifier_matches_torch(seq_len):
    torch = pytest.importorskip("torch", reason="the PyTorch reference AWD-LSTM needs torch")
    from torch_awd_lstm import text_classifier

    torch.manual_seed(1)
    bptt, max_len, n_class = 4, 7, 3
    reference = text_classifier(VOCAB, n_class, **TINY, bptt=bptt, max_len=max_len).eval()
    for bn in (reference[1].layers[0], reference[1].layers[4]):
        for stat in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
            stat.data.copy_(torch.rand_like(stat) + 0.5)
    state = _torch_state(reference)
    head = {}
    for block, (bn, lin) in enumerate([(0, 2), (4, 6)]):
        head[f"bn_{block}"] = {"scale": state[f"1.layers.{bn}.weight"], "bias": state[f"1.layers.{bn}.bias"]}
        head[f"linear_{block}"] = {"kernel": state[f"1.layers.{lin}.weight"].T, "bias": state[f"1.layers.{lin}.bias"]}
    stats = {f"bn_{block}": {"mean": state[f"1.layers.{bn}.running_mean"], "var": state[f"1.layers.{bn}.running_var"]}
             for block, bn in enumerate([0, 4])}
    variables = {"params": {"encoder": encoder_params_from_fastai(state), "head": head}, "batch_stats": {"head": stats}}

    tokens = np.random.default_rng(seq_len).integers(2, VOCAB, (3, seq_len))
    tokens[1, :3] = 1  # fastai pads first
    tokens[2, :seq_len - 2] = 1
    model = awd_lstm_clas(VOCAB, n_class, bptt=bptt, max_len=max_len, **TINY)
    with torch.no_grad():
        want = reference(torch.as_tensor(tokens))[0].numpy()
    got, inter = jax.jit(lambda v, x: model.apply(v, x, mutable=["intermediates"]))(variables, jnp.asarray(tokens))
    np.testing.assert_allclose(got, want, atol=1e-5)
    n_kept = sum(stop - start for start, stop, kept in kept_chunks(seq_len, bptt, max_len) if kept)
    assert inter["intermediates"]["last_output"][0].shape == (3, n_kept, TINY["emb_sz"])


def test_classifier_refuses_a_text_with_no_kept_chunk():
    model = awd_lstm_clas(VOCAB, 2, bptt=4, max_len=4, **TINY)
    with pytest.raises(InputError, match="max_len"):
        model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))


def test_classifier_trains_and_the_pad_row_gets_no_gradient_from_the_lookup():
    model = awd_lstm_clas(VOCAB, 2, bptt=4, max_len=7, emb_sz=6, n_hid=10, n_layers=2)
    tokens = jnp.asarray(np.random.default_rng(0).integers(2, VOCAB, (4, 10))).at[:2, :3].set(1)
    variables = jax.jit(model.init)(jax.random.key(0), tokens)

    def loss(params, key):
        logits, updates = model.apply({**variables, "params": params}, tokens, True, rngs={"dropout": key},
                                      mutable=["batch_stats", "intermediates"])
        return logits[:, 0].mean() - logits[:, 1].mean()

    grads = jax.jit(jax.grad(loss))(variables["params"], jax.random.key(1))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    embedding_grad = np.asarray(grads["encoder"]["embedding"]["embedding"])
    assert np.all(embedding_grad[1] == 0), "padding_idx: no gradient to the pad row"
    # chunk 0 (tokens 0-3) is not kept and the carry is detached after it, as fastai's to_detach
    kept_tokens = set(np.unique(tokens[:, 4:]).tolist()) - {1}
    only_in_chunk_0 = sorted(set(np.unique(tokens[:, :4]).tolist()) - kept_tokens - {1})
    assert only_in_chunk_0 and np.all(embedding_grad[only_in_chunk_0] == 0)
    assert (np.abs(embedding_grad[sorted(kept_tokens)]).sum(axis=1) > 0).mean() > 0.8  # embed_p drops a few rows
    for name in ("rnns_0", "rnns_1"):
        assert np.abs(grads["encoder"][name]["kernel_hh"]).max() > 0
    assert np.abs(grads["head"]["linear_1"]["kernel"]).max() > 0


# ----------------------------------------------------------------------------- dropouts


def test_embedding_dropout_drops_whole_vocabulary_rows():
    encoder = AWDLSTMEncoder(VOCAB, 4, 5, 2, embed_p=0.5, input_p=0.0)
    tokens = jnp.tile(jnp.arange(2, VOCAB), (3, 2))  # every token at several positions and rows
    variables = jax.eval_shape(encoder.init, jax.random.key(0), tokens, encoder.zero_carry(3))
    variables = jax.tree.map(lambda a: jax.random.normal(jax.random.key(1), a.shape), variables)
    weight = variables["params"]["embedding"]["embedding"]
    rows = encoder.apply(variables, tokens, True, method=encoder.embed, rngs={"dropout": jax.random.key(3)})
    kept = np.zeros(VOCAB, bool)
    for token in range(2, VOCAB):
        at = np.asarray(rows)[np.asarray(tokens) == token]  # [n positions, D]
        if np.all(at == 0):
            continue
        np.testing.assert_allclose(at, np.broadcast_to(weight[token] * 2.0, at.shape), rtol=1e-6)
        kept[token] = True
    assert 0 < kept.sum() < VOCAB - 2, "p=0.5 over 28 tokens keeps some and drops some"
    eval_rows = encoder.apply(variables, tokens, False, method=encoder.embed)
    np.testing.assert_array_equal(eval_rows, weight[tokens])


def test_locked_dropout_mask_is_constant_over_time():
    class Locked(nn.Module):
        @nn.compact
        def __call__(self, x):
            return locked_dropout(self, x, 0.5, True)

    out = np.asarray(Locked().apply({}, jnp.ones((8, 20, 16)), rngs={"dropout": jax.random.key(0)}))
    np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))  # same mask at every step
    assert set(np.unique(out)) == {0.0, 2.0}
    assert 0.3 < (out[:, 0] == 0).mean() < 0.7
    assert not np.array_equal(out[0, 0], out[1, 0]), "each sequence has its own mask"


def test_weight_dropout_drops_hidden_to_hidden_weights_per_call():
    layer = WeightDroppedLSTM(8, weight_p=0.5)
    x, zeros = jax.random.normal(jax.random.key(0), (2, 5, 3)), jnp.zeros((2, 8))
    variables = jax.jit(layer.init)(jax.random.key(1), x, zeros, zeros)
    run = jax.jit(lambda key: layer.apply(variables, x, zeros, zeros, True, rngs={"dropout": key})[0])
    first, again, other = run(jax.random.key(2)), run(jax.random.key(2)), run(jax.random.key(3))
    eval_out = np.asarray(jax.jit(layer.apply)(variables, x, zeros, zeros)[0])
    np.testing.assert_array_equal(first, again)
    # from h0 = 0 the first step never touches the hidden-to-hidden matrix: only later steps change
    np.testing.assert_allclose(first[:, 0], eval_out[:, 0], atol=1e-6)
    np.testing.assert_allclose(other[:, 0], eval_out[:, 0], atol=1e-6)
    assert np.abs(first[:, 1:] - other[:, 1:]).max() > 1e-3
    assert np.abs(first[:, 1:] - eval_out[:, 1:]).max() > 1e-3


def test_drop_mult_scales_the_five_dropouts_and_registry_builds():
    lm = build_model("awd_lstm_lm", {"vocab_size": 100, "drop_mult": 0.5})
    assert (lm.output_p, lm.hidden_p, lm.input_p, lm.embed_p, lm.weight_p) == (0.05, 0.075, 0.125, 0.01, 0.1)
    assert (lm.emb_sz, lm.n_hid, lm.n_layers, lm.pad_token, lm.tie_weights) == (400, 1152, 3, 1, True)
    clas = build_model("awd_lstm_clas", {"vocab_size": 100, "n_classes": 2, "drop_mult": 0.5})
    assert (clas.output_p, clas.hidden_p, clas.input_p, clas.embed_p, clas.weight_p) == (0.2, 0.15, 0.2, 0.025, 0.25)
    assert (clas.bptt, clas.max_len, clas.lin_ftrs, clas.ps) == (70, 1400, (50,), (0.1,))
    with pytest.raises(InputError, match="unknown settings"):
        awd_lstm_lm(100, n_hidden=3)


# ----------------------------------------------------------------------------- layer groups


def _group_members(groups, params) -> dict[str, set[str]]:
    members = {name: set() for name in groups.names}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(p.key for p in path)
        members[groups.names[groups.group_of_path(keys)]].add("/".join(keys[:-1]))
    return members


def test_layer_groups_are_fastais_splits():
    lm = awd_lstm_lm(VOCAB, **TINY)
    params = jax.eval_shape(lm.init, jax.random.key(0), jnp.ones((1, 3), jnp.int32))["params"]
    assert _group_members(lm_layer_groups(lm), params) == {
        "rnn_0": {"encoder/rnns_0"}, "rnn_1": {"encoder/rnns_1"}, "rnn_2": {"encoder/rnns_2"},
        "embedding_decoder": {"encoder/embedding", ""}}  # '' = the top-level decoder_bias
    clas = awd_lstm_clas(VOCAB, 2, bptt=4, **TINY)
    params = jax.eval_shape(clas.init, jax.random.key(0), jnp.ones((1, 9), jnp.int32))["params"]
    assert _group_members(clas_layer_groups(clas), params) == {
        "embedding": {"encoder/embedding"}, "rnn_0": {"encoder/rnns_0"}, "rnn_1": {"encoder/rnns_1"},
        "rnn_2": {"encoder/rnns_2"}, "head": {"head/bn_0", "head/bn_1", "head/linear_0", "head/linear_1"}}


def test_with_encoder_moves_the_language_models_encoder_into_the_classifier():
    lm, clas = awd_lstm_lm(VOCAB, **TINY), awd_lstm_clas(VOCAB, 2, bptt=4, **TINY)
    lm_params = jax.jit(lm.init)(jax.random.key(0), jnp.ones((1, 3), jnp.int32))["params"]
    clas_params = jax.eval_shape(clas.init, jax.random.key(1), jnp.ones((1, 9), jnp.int32))["params"]
    moved = with_encoder(clas_params, lm_params)
    assert moved["encoder"] is lm_params["encoder"] and moved["head"] is clas_params["head"]
    other = awd_lstm_clas(VOCAB + 1, 2, bptt=4, **TINY)
    other_params = jax.eval_shape(other.init, jax.random.key(1), jnp.ones((1, 9), jnp.int32))["params"]
    with pytest.raises(InputError, match=r"encoder\['embedding'\]\['embedding'\]: LM \(30, 6\), classifier \(31, 6\)"):
        with_encoder(other_params, lm_params)


# ----------------------------------------------------------------------------- it learns


def test_tiny_language_model_perplexity_falls():
    """A repeating 9-token pattern, fed as fastai's LM batches (one continuous stream per row,
    the carry passed on): validation perplexity must fall below a quarter of its start."""
    start = time.perf_counter()
    vocab, batch, bptt, steps = 12, 8, 10, 150
    pattern = np.array([2, 3, 4, 5, 6, 7, 8, 9, 10])
    stream = np.tile(pattern, 200)
    rows = np.stack([np.roll(stream, -k) for k in range(batch)])  # row k starts k tokens into the pattern
    model = awd_lstm_lm(vocab, emb_sz=16, n_hid=32, n_layers=2, drop_mult=0.2)
    params = model.init(jax.random.key(0), jnp.zeros((batch, bptt), jnp.int32))["params"]
    optimizer = optax.adam(3e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, carry, x, y, reset, key):
        logits, updates = model.apply({"params": params, **carry}, x, train=True, reset=reset,
                                      rngs={"dropout": key}, mutable=["carry"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

    @jax.jit
    def train_step(params, opt_state, carry, x, y, reset, key):
        (loss, carry), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, carry, x, y, reset, key)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, carry, loss

    @jax.jit
    def valid_perplexity(params):
        x, y = jnp.asarray(rows[:, 1000:1060]), jnp.asarray(rows[:, 1001:1061])
        return jnp.exp(optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": params}, x), y).mean())

    before = float(valid_perplexity(params))
    carry = {"carry": model.init(jax.random.key(0), jnp.zeros((batch, bptt), jnp.int32))["carry"]}  # zeros
    for step in range(steps):
        i = (step * bptt) % 900
        x, y = jnp.asarray(rows[:, i:i + bptt]), jnp.asarray(rows[:, i + 1:i + bptt + 1])
        params, opt_state, carry, loss = train_step(params, opt_state, carry, x, y, jnp.asarray(i == 0),
                                                    jax.random.key(step))
    after = float(valid_perplexity(params))
    assert after < before / 4, (before, after)  # seen: 12.0 -> about 1.2
    print(f"tiny LM: valid perplexity {before:.2f} -> {after:.2f} in {time.perf_counter() - start:.1f} s")
