"""Language-model and classifier DataBunches from a TextSource, as in fastai's lessons 3-4.

    source = load_text_source(data_dir)                    # texts.csv, aclImdb/ or tfds
    tokens = tokenize_source(source, Tokenizer())          # once, in processes (.save/.load cache)
    data_lm = lm_databunch(tokens, batch_size=64)          # every split's text, 10% held out
    data_clas = clas_databunch(tokens, data_lm.vocab)      # same vocab as the language model

As fastai, the language model reads all the text (labels ignored, test and unsup included:
that is what the lesson's `filter_by_folder(include=['train', 'test', 'unsup'])` does) and
builds the vocab from its training part; the classifier reuses that vocab, trains on
'train' and is validated on 'valid' (or 'test' when there is no valid split, as the lesson's
`split_by_folder(valid='test')`); a labelled 'test' next to a valid split is evaluated too.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxfast.data.loader import DataBunch
from jaxfast.errors import InputError
from jaxfast.text.batches import ClasLoader, LMLoader
from jaxfast.text.sources import TextSource
from jaxfast.text.tokenize import Tokenizer
from jaxfast.text.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class TextDataBunch(DataBunch):
    """DataBunch + the vocab (and class names for a classifier)."""

    vocab: Vocab | None = None
    classes: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TokenizedText:
    """Every split of a TextSource as token lists, with its labels and the tokenizer used."""

    tokens: dict[str, list[list[str]]]
    labels: dict[str, np.ndarray | None]
    classes: tuple[str, ...]
    backend: str

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v)} docs / {sum(map(len, v))} tokens" for k, v in self.tokens.items())
        return f"tokenized with {self.backend}: {sizes}"

    def save(self, path: str | Path) -> Path:
        """Cache the tokens (tokenising all of IMDB takes minutes) as one .npz: int32 ids into a
        table of every distinct token, document lengths, labels, and JSON metadata (no pickle)."""
        table: dict[str, int] = {}
        arrays = {}
        for name, docs in self.tokens.items():
            ids = [table.setdefault(t, len(table)) for d in docs for t in d]
            arrays[f"ids/{name}"] = np.asarray(ids, np.int32)
            arrays[f"lengths/{name}"] = np.asarray([len(d) for d in docs], np.int64)
            if self.labels.get(name) is not None:
                arrays[f"labels/{name}"] = np.asarray(self.labels[name], np.int32)
        meta = {"format": "jaxfast-tokens", "splits": list(self.tokens), "classes": list(self.classes),
                "backend": self.backend, "table": list(table)}
        arrays["meta"] = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), np.uint8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TokenizedText":
        """Read a cache written by `save`; errors name the file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                if meta.get("format") != "jaxfast-tokens":
                    raise InputError(f"{path} is not a jaxfast token cache")
                table = np.array(meta["table"], dtype=object)
                tokens, labels = {}, {}
                for name in meta["splits"]:
                    words = table[data[f"ids/{name}"]].tolist()
                    ends = np.cumsum(data[f"lengths/{name}"])
                    tokens[name] = [words[e - n : e] for e, n in zip(ends, data[f"lengths/{name}"])]
                    labels[name] = data[f"labels/{name}"] if f"labels/{name}" in data else None
        except FileNotFoundError:
            raise InputError(f"token cache {path} does not exist") from None
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"token cache {path} is unreadable ({err})") from None
        return cls(tokens, labels, tuple(meta["classes"]), meta["backend"])


def tokenize_source(source: TextSource, tokenizer: Tokenizer | None = None, mark_fields: bool | None = None) -> TokenizedText:
    """Tokenise every split (one process pool for all of them; order kept)."""
    tokenizer = tokenizer or Tokenizer()
    names = list(source.splits)
    docs = [d for name in names for d in source.splits[name].docs]
    tokens = tokenizer.tokenize_documents(docs, mark_fields=mark_fields)
    out, at = {}, 0
    for name in names:
        n = len(source.splits[name])
        out[name] = tokens[at : at + n]
        at += n
    labels = {name: source.splits[name].labels for name in names}
    return TokenizedText(out, labels, source.classes, tokenizer.backend)


def _split_docs(docs: list, valid_pct: float, seed: int) -> tuple[list, list]:
    order = np.random.default_rng(seed).permutation(len(docs))
    cut = int(valid_pct * len(docs))
    if not 0 < cut < len(docs):
        raise InputError(f"valid_pct={valid_pct} of {len(docs)} documents leaves an empty split")
    return [docs[i] for i in np.sort(order[cut:])], [docs[i] for i in np.sort(order[:cut])]


def lm_databunch(text: TokenizedText, batch_size: int = 64, bptt: int = 70, valid_pct: float = 0.1, seed: int = 0,
                 vocab: Vocab | None = None, max_vocab: int = 60000, min_freq: int = 2,
                 splits: Sequence[str] | None = None, random_bptt: bool = True,
                 doc_fraction: float = 1.0) -> TextDataBunch:
    """Language-model data: the documents of `splits` (default: all) with a random
    `valid_pct` held out; the vocab comes from the training part unless given.
    `random_bptt=False` trains on fixed bptt windows (no padding but in the last batch).
    `doc_fraction` < 1: a seeded random part of the documents only (a token budget)."""
    splits = list(text.tokens) if splits is None else list(splits)
    unknown = [s for s in splits if s not in text.tokens]
    if unknown:
        raise InputError(f"no split(s) {unknown} in the text; it has {list(text.tokens)}")
    if not 0.0 < doc_fraction <= 1.0:
        raise InputError(f"doc_fraction must be in (0, 1], got {doc_fraction}")
    docs = [d for s in splits for d in text.tokens[s]]
    if doc_fraction < 1.0:
        keep = np.random.default_rng([seed, 7]).permutation(len(docs))[: max(2, round(doc_fraction * len(docs)))]
        docs = [docs[i] for i in np.sort(keep)]
    train, valid = _split_docs(docs, valid_pct, seed)
    vocab = vocab or Vocab.create(train, max_vocab=max_vocab, min_freq=min_freq)
    return TextDataBunch(
        train=LMLoader([vocab.numericalize(d) for d in train], batch_size, bptt, shuffle=True, seed=seed,
                       random_bptt=random_bptt, pad_id=vocab.pad_id, name="lm train"),
        valid=LMLoader([vocab.numericalize(d) for d in valid], batch_size, bptt, shuffle=False, seed=seed,
                       pad_id=vocab.pad_id, name="lm valid"),
        vocab=vocab,
    )


def clas_databunch(text: TokenizedText, vocab: Vocab, batch_size: int = 64, seed: int = 0, max_len: int = 1400,
                   valid_split: str | None = None) -> TextDataBunch:
    """Classifier data with the language model's vocab: train, valid (or test) and the
    labelled test as an extra evaluated split."""
    if not text.classes or text.labels.get("train") is None:
        raise InputError("the text source has no labelled 'train' split to train a classifier on")
    if valid_split is None:
        valid_split = "valid" if "valid" in text.tokens else "test"
    if text.labels.get(valid_split) is None:
        raise InputError(f"no labelled {valid_split!r} split to validate on; the text has {list(text.tokens)} "
                         "(ask the source for a random valid split)")

    def loader(split: str, shuffle: bool) -> ClasLoader:
        ids = [vocab.numericalize(d) for d in text.tokens[split]]
        return ClasLoader(ids, text.labels[split], batch_size, shuffle=shuffle, seed=seed, pad_id=vocab.pad_id,
                          max_len=max_len, name=f"clas {split}")

    extra = {}
    if valid_split != "test" and text.labels.get("test") is not None:
        extra["test"] = loader("test", False)
    return TextDataBunch(train=loader("train", True), valid=loader(valid_split, False), extra=extra,
                         vocab=vocab, classes=text.classes)
