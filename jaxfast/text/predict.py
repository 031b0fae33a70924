"""Predictions of text models: a classifier's label per text, and a language model's words.

- `predict_texts(exported, texts)`: fastai's (label, index, probs) per text of a
  'text_classifier' export, tokenised with the export's tokenizer and vocab as in training
  (xxbos first, the last `max_len` tokens, padded first to a length bucket so that a run
  compiles a handful of shapes); a text that is not a non-empty string gets an InputError
  in its place. `predict_text_files` is the CLI's: .txt files (one text each) and CSVs with
  a 'text' column, one output row per text, an empty or non-UTF-8 file a row-level error.
- `predict_text(learn_or_export, "I liked this movie because", n_words=40,
  temperature=0.75, seed=0)`: fastai's LanguageLearner.predict: the prompt through the LM,
  then n_words sampled one at a time from softmax ** (1 / temperature) (xxunk never), the
  hidden state carried along.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from jaxfast.errors import InputError
from jaxfast.text.batches import length_buckets
from jaxfast.text.tokenize import Tokenizer
from jaxfast.text.vocab import Vocab


def tokenizer_meta(tokenizer: Tokenizer) -> dict:
    """What rebuilds `tokenizer` at prediction time (its backend, language and rule names)."""
    return {"backend": tokenizer.kind, "lang": tokenizer.lang, "description": tokenizer.backend,
            "rules": [r.__name__ for r in tokenizer.pre_rules + tokenizer.post_rules]}


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    """The tokenizer an export was trained with (fastai's default rules; in this process)."""
    if not meta:
        raise InputError("the export records no tokenizer; it was not written by a text learner factory")
    tokenizer = Tokenizer(backend=meta.get("backend", "auto"), lang=meta.get("lang", "en"), n_workers=1)
    rules = [r.__name__ for r in tokenizer.pre_rules + tokenizer.post_rules]
    if meta.get("rules") is not None and list(meta["rules"]) != rules:
        raise InputError(f"the export's tokenizer used rules {meta['rules']}; this jaxfast's default rules are {rules}")
    return tokenizer


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _check_text(text, index: int) -> str:
    if not isinstance(text, str):
        raise InputError(f"text {index} is a {type(text).__name__}, not a string")
    if not text.strip():
        raise InputError(f"text {index} is empty")
    return text


def predict_texts(exported, texts: Sequence[str], batch_size: int = 32) -> list:
    """(label, index, probs) per text of a 'text_classifier' export, or an InputError where a
    text is not a non-empty string (see the module doc)."""
    meta = exported.meta
    if meta.get("kind") != "text_classifier":
        raise InputError(f"predict_texts needs a text_classifier export, got kind {meta.get('kind')!r}")
    vocab, classes, max_len = Vocab(meta["vocab"]), meta["classes"], int(meta["max_len"])
    results: list = [None] * len(texts)
    good = []
    for i, text in enumerate(texts):
        try:
            good.append((i, _check_text(text, i)))
        except InputError as error:
            results[i] = error
    if not good:
        return results
    tokens = tokenizer_from_meta(meta.get("tokenizer", {})).tokenize_documents([[t] for _, t in good], mark_fields=False)
    ids = [vocab.numericalize(t)[-max_len:] for t in tokens]
    buckets = length_buckets(max_len)
    widths = [int(buckets[np.searchsorted(buckets, len(d))]) for d in ids]
    pad_first = meta.get("pad_first", True)
    for width in sorted(set(widths)):
        rows = [k for k, w in enumerate(widths) if w == width]
        for at in range(0, len(rows), batch_size):
            chunk = rows[at:at + batch_size]
            batch = np.full((batch_size, width), vocab.pad_id, np.int32)  # one batch shape per width
            for r, k in enumerate(chunk):
                cols = slice(width - len(ids[k]), width) if pad_first else slice(0, len(ids[k]))
                batch[r, cols] = ids[k]
            probs = _softmax(exported.predict(batch)[:len(chunk)])
            for r, k in enumerate(chunk):
                index = int(probs[r].argmax())
                results[good[k][0]] = (classes[index], index, probs[r])
    return results


def predict_text_item(exported, text: str):
    """fastai's learn.predict(text) on a classifier export: (label, index, probs); InputError when bad."""
    result = predict_texts(exported, [text], batch_size=1)[0]
    if isinstance(result, InputError):
        raise result
    return result


def _read_inputs(path: str) -> list[tuple[str, object]]:
    """(row name, text or InputError) of one input file: a CSV's 'text' column, else the file's text."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as error:
        return [("", InputError(f"cannot read {path}: {error.strerror or error}"))]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return [("", InputError(f"{path} is not UTF-8 text (byte {error.start})"))]
    if p.suffix.lower() != ".csv":
        return [("", text if text.strip() else InputError(f"{path} is empty"))]
    reader = csv.DictReader(text.splitlines())
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        return [("", InputError(f"{path} has no 'text' column (columns: {reader.fieldnames})"))]
    rows = []
    for n, row in enumerate(reader, start=1):
        value = row.get("text") or ""
        rows.append((str(n), value if value.strip() else InputError(f"{path} row {n}: the text is empty")))
    return rows


def predict_text_files(exported, inputs: Sequence[str], out: TextIO, err: TextIO) -> int:
    """The CLI for text_classifier exports: columns file,row,prediction,probability,error;
    status 0 when every text was predicted, 1 when some were rejected, 2 when none was."""
    rows = [(path, name, item) for path in inputs for name, item in _read_inputs(path)]
    texts = [item for _, _, item in rows if isinstance(item, str)]
    predicted = iter(predict_texts(exported, texts) if texts else [])
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "row", "prediction", "probability", "error"])
    done = rejected = 0
    for path, name, item in rows:
        result = next(predicted) if isinstance(item, str) else item
        if isinstance(result, InputError):
            print(f"error: {result}", file=err)
            writer.writerow([path, name, "", "", str(result)])
            rejected += 1
        else:
            label, index, probs = result
            writer.writerow([path, name, label, f"{probs[index]:.6g}", ""])
            done += 1
    return 2 if done == 0 else 1 if rejected else 0


# ----------------------------------------------------------------------------- generation


@functools.partial(jax.jit, static_argnums=0)
def _lm_next(model, params, carry, tokens):
    """Probabilities after the last token of `tokens` [1, T], and the carry after it."""
    variables = {"params": params, **({"carry": carry} if carry else {})}
    logits, updates = model.apply(variables, tokens, train=False, mutable=["carry"])
    return jax.nn.softmax(logits[0, -1].astype(jnp.float32)), updates["carry"]


def _lm_parts(source):
    """(model, params, vocab, tokenizer meta) of a Learner, an export, a loaded learner or an export path."""
    if isinstance(source, (str, Path)):
        from jaxfast.export import load_export

        source = load_export(source)
    source = getattr(source, "exported", source)  # jaxfast.inference.LoadedLearner
    if hasattr(source, "state"):  # a Learner
        meta = source.prediction_meta()
        model, params = source.model, source.state.params
    else:
        meta, model, params = source.meta, source.model, source.variables["params"]
    if meta.get("kind") != "language_model":
        raise InputError(f"text generation needs a language model, got kind {meta.get('kind')!r}")
    return model, params, Vocab(meta["vocab"]), meta.get("tokenizer", {})


def predict_text(learn_or_export, text: str, n_words: int = 40, temperature: float = 1.0, seed: int = 0,
                 no_unk: bool = True, sep: str = " ") -> str:
    """fastai's LanguageLearner.predict: `text` followed by `n_words` sampled words."""
    model, params, vocab, tok_meta = _lm_parts(learn_or_export)
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    tokens = tokenizer_from_meta(tok_meta).tokenize_documents([[_check_text(text, 0)]], mark_fields=False)[0]
    rng = np.random.default_rng(seed)
    probs, carry = _lm_next(model, params, {}, jnp.asarray(vocab.numericalize(tokens))[None])
    new = []
    for _ in range(n_words):
        p = np.asarray(probs, np.float64)
        if no_unk:
            p[vocab.unk_id] = 0.0
        p = p ** (1.0 / temperature)
        idx = int(rng.choice(len(p), p=p / p.sum()))
        new.append(idx)
        probs, carry = _lm_next(model, params, carry, jnp.asarray([[idx]], jnp.int32))
    return text + sep + sep.join(vocab.textify(new, sep=None))
