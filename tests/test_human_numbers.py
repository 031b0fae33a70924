"""Tests for lesson 7's human-numbers corpus and its recurrent language models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfast.data.human_numbers import (
    HumanNumbers,
    build_vocab,
    decode,
    encode,
    human_numbers_text,
    lm_batches,
    load_human_numbers,
    number_to_words,
)
from jaxfast.models.rnn import GRUModel, LoopRNN, LSTMModel, RNNCellModel, build_rnn


@pytest.fixture(scope="module")
def corpus() -> HumanNumbers:
    return load_human_numbers()


@pytest.mark.parametrize(
    "number, words",
    [
        (1, "one"),
        (15, "fifteen"),
        (19, "nineteen"),
        (20, "twenty"),
        (40, "forty"),
        (42, "forty two"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (110, "one hundred ten"),
        (999, "nine hundred ninety nine"),
        (1000, "one thousand"),
        (2019, "two thousand nineteen"),
        (7300, "seven thousand three hundred"),
        (8001, "eight thousand one"),
        (9999, "nine thousand nine hundred ninety nine"),
    ],
)
def test_number_to_words(number, words):
    assert number_to_words(number) == words


@pytest.mark.parametrize("number", [0, -3, 10000, 123456])
def test_number_to_words_rejects_out_of_range(number):
    with pytest.raises(ValueError):
        number_to_words(number)


def test_text_uses_dot_separators():
    assert human_numbers_text(1, 4) == "one . two . three"
    assert human_numbers_text(98, 101) == "ninety eight . ninety nine . one hundred"


def test_vocab_is_small_sorted_and_specials_first(corpus):
    vocab = list(corpus.vocab)
    assert 30 <= len(vocab) <= 40
    assert vocab[0].startswith("xx") and "xxbos" in vocab
    words = [token for token in vocab if not token.startswith("xx")]
    assert words == sorted(words) and len(set(vocab)) == len(vocab)
    assert {"one", "nineteen", "ninety", "hundred", "thousand", "."} <= set(vocab)
    assert build_vocab(["b", "a", "b"])[-2:] == ["a", "b"]


def test_encode_names_unknown_token():
    with pytest.raises(ValueError, match="'eleventy'"):
        encode(["one", "eleventy"], ["one", "two"])


def test_splits_decode_back_to_text(corpus):
    assert corpus.train_ids.dtype == np.int32 and corpus.valid_ids.dtype == np.int32
    assert decode(corpus.valid_ids, corpus.vocab) == "xxbos " + human_numbers_text(8001, 10000)
    train_text = decode(corpus.train_ids, corpus.vocab)
    assert train_text.startswith("xxbos one . two . three .")
    assert train_text.endswith("seven thousand nine hundred ninety nine . eight thousand")


def test_lm_batches_layout():
    stream = np.arange(103, dtype=np.int32)
    x, y = lm_batches(stream, batch_size=4, seq_len=5)
    row_len = 103 // 4  # 25 tokens per row, the 3-token tail is dropped
    assert x.shape == y.shape == (4, 4, 5)  # (25 - 1) // 5 whole windows
    np.testing.assert_array_equal(y, x + 1)  # y is x shifted by one token
    # Row b of window w+1 carries on where row b of window w stopped.
    np.testing.assert_array_equal(x[1, :, 0], x[0, :, -1] + 1)
    np.testing.assert_array_equal(x[0, :, 0], np.arange(4) * row_len)
    with pytest.raises(ValueError):
        lm_batches(stream, batch_size=64, seq_len=5)


@pytest.mark.parametrize("name", ["loop_rnn", "rnn_cell", "gru", "lstm"])
def test_models_output_logits_per_position(name):
    tokens = jnp.arange(14, dtype=jnp.int32).reshape(2, 7)
    model = build_rnn(name, vocab_size=34, hidden=16, n_layers=2)
    params = model.init(jax.random.key(0), tokens)
    logits = model.apply(params, tokens)
    assert logits.shape == (2, 7, 34) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_model_classes_and_registry():
    assert isinstance(build_rnn("loop_rnn", 34, 8, 1), LoopRNN)
    assert isinstance(build_rnn("rnn_cell", 34, 8, 1), RNNCellModel)
    assert isinstance(build_rnn("gru", 34, 8, 3), GRUModel)
    assert build_rnn("lstm", 34, 8, 3).n_layers == 3
    with pytest.raises(ValueError, match="gru"):
        build_rnn("transformer", 34, 8, 1)


def test_lstm_dropout_only_when_training():
    tokens = jnp.ones((2, 7), jnp.int32)
    model = LSTMModel(vocab_size=34, hidden=16, n_layers=2, dropout=0.5)
    params = model.init(jax.random.key(0), tokens)
    eval_a = model.apply(params, tokens)
    eval_b = model.apply(params, tokens, train=False)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_out = model.apply(params, tokens, train=True, rngs={"dropout": jax.random.key(1)})
    assert train_out.shape == eval_a.shape and not np.allclose(train_out, eval_a)


def test_loop_rnn_is_causal():
    """Changing a later token must not change earlier logits."""
    tokens = jnp.array([[3, 5, 7, 9, 11]], jnp.int32)
    model = LoopRNN(vocab_size=34, hidden=16)
    params = model.init(jax.random.key(0), tokens)
    changed = tokens.at[0, 3].set(20)
    np.testing.assert_allclose(model.apply(params, tokens)[:, :3], model.apply(params, changed)[:, :3])


def test_tiny_gru_learns_to_count(corpus):
    x, y = lm_batches(corpus.train_ids[:3000], batch_size=8, seq_len=32)
    model = GRUModel(corpus.vocab_size, hidden=32, n_layers=1)
    params = model.init(jax.random.key(0), x[0])
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, inputs, targets):
        logits = model.apply(params, inputs, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def train_step(params, opt_state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for step in range(100):
        window = step % len(x)
        params, opt_state, loss = train_step(params, opt_state, x[window], y[window])
        losses.append(float(loss))
    first, last = losses[0], np.mean(losses[-5:])
    assert first > 3.0  # about ln(34) = 3.5 at initialisation
    assert last < 0.4 * first, (first, last)  # reaches about 0.2 * first
