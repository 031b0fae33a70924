"""fastai v1's Tokenizer: rules around a word splitter, run over documents in processes.

The word splitter ('backend') is spaCy's blank English tokenizer when spaCy is installed (the `text`
extra; `spacy.blank('en')` needs no model download), as in fastai v1. Without spaCy a
regex splitter (jaxfast.text.regex_split) that mimics spaCy's English rules is used;
`Tokenizer.backend` names the one in use so that a run can print it. 'space' is
fastai's BaseTokenizer (split on spaces), for tests and pre-tokenised text.

Documents are tokenised in chunks by a pool of `n_workers` processes (forked, or spawned
once JAX runs threads here: see `default_start_method`); results keep the input order, so
the output is the same whatever the number of workers. Small inputs stay in-process.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
import os
import sys
from typing import Callable, Sequence

from jaxfast.errors import InputError
from jaxfast.text import rules
from jaxfast.text.regex_split import regex_split

BACKENDS = ("auto", "spacy", "regex", "space")


def spacy_version() -> str | None:
    """The installed spaCy version, or None when spaCy cannot be imported."""
    try:
        import spacy
    except ImportError:
        return None
    return spacy.__version__


@functools.lru_cache(maxsize=None)
def _spacy_tokenizer(lang: str):
    """spaCy's rule-based tokenizer for `lang` with fastai's special tokens kept whole."""
    import spacy
    from spacy.symbols import ORTH

    nlp = spacy.blank(lang)
    for token in rules.SPECIAL_TOKENS:
        nlp.tokenizer.add_special_case(token, [{ORTH: token}])
    return nlp.tokenizer


def _spacy_words(doc) -> list[str]:
    # spaCy 3 merges a whitespace run into one token ("\n \n "); fastai v1 (spaCy 2) gave
    # one token per newline, which is what splitting on the spaces restores.
    out = []
    for token in doc:
        if token.is_space:
            out.extend(part for part in token.text.split(" ") if part)
        else:
            out.append(token.text)
    return out


def spacy_split_many(texts: Sequence[str], lang: str = "en") -> list[list[str]]:
    """Words of each text by spaCy (batched through `tokenizer.pipe`)."""
    return [_spacy_words(doc) for doc in _spacy_tokenizer(lang).pipe(texts, batch_size=256)]


def default_start_method() -> str:
    """'fork' (no start-up cost) unless JAX has started its runtime threads in this process,
    which a fork could deadlock (JAX warns about it); then 'spawn', whose workers re-import
    the main module (so a script must keep its work under `if __name__ == "__main__":`)."""
    if sys.platform != "linux":
        return "spawn"
    bridge = sys.modules.get("jax._src.xla_bridge")
    if bridge is not None and getattr(bridge, "_backends", True):
        return "spawn"
    return "fork"


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InputError(f"tokenizer backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "spacy" if spacy_version() is not None else "regex"
    if backend == "spacy" and spacy_version() is None:
        raise InputError("tokenizer backend 'spacy' asked for but spaCy is not installed "
                         "(pip install 'jaxfast[text]' or spacy), or use backend='regex'")
    return backend


class Tokenizer:
    """fastai v1's Tokenizer: pre-rules -> word splitter -> post-rules, for many documents.

    `n_workers` processes tokenise chunks of at least `min_chunk` documents; with fewer
    documents than two chunks (or n_workers <= 1) everything runs in this process: a worker
    takes seconds to start (spaCy's import; with 'spawn' the main module's imports too),
    about what 1,000 IMDB reviews take to tokenise on one core.
    """

    def __init__(self, backend: str = "auto", lang: str = "en", pre_rules: Sequence[Callable] | None = None,
                 post_rules: Sequence[Callable] | None = None, n_workers: int | None = None, min_chunk: int = 1000,
                 start_method: str | None = None):
        self.kind = _resolve_backend(backend)
        if self.kind == "regex" and lang != "en":
            raise InputError(f"the regex tokenizer only knows English rules, got lang={lang!r}")
        self.lang = lang
        self.pre_rules = tuple(rules.PRE_RULES if pre_rules is None else pre_rules)
        self.post_rules = tuple(rules.POST_RULES if post_rules is None else post_rules)
        self.n_workers = max(1, os.cpu_count() or 1) if n_workers is None else int(n_workers)
        self.min_chunk = max(1, int(min_chunk))
        self.start_method = start_method

    @property
    def backend(self) -> str:
        """Which word splitter runs, in words (an experiment prints this)."""
        if self.kind == "spacy":
            return f"spacy {spacy_version()} (spacy.blank({self.lang!r}), rule-based, no model)"
        if self.kind == "space":
            return "space (split on single spaces only, fastai's BaseTokenizer)"
        return "regex (spaCy-like English rules; spaCy is not installed or not chosen)"

    def __repr__(self) -> str:
        names = [r.__name__ for r in self.pre_rules + self.post_rules]
        return f"Tokenizer({self.backend}; rules: {', '.join(names)}; n_workers={self.n_workers})"

    def _split_many(self, texts: Sequence[str]) -> list[list[str]]:
        if self.kind == "spacy":
            return spacy_split_many(texts, self.lang)
        if self.kind == "space":
            return [t.split(" ") for t in texts]
        return [regex_split(t) for t in texts]

    def process_text(self, text: str) -> list[str]:
        """Tokens of one document."""
        return self.process_in_process([text])[0]

    def process_in_process(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokens of every document, in this process."""
        cleaned = []
        for i, text in enumerate(texts):
            text = _as_text(text, i)
            for rule in self.pre_rules:
                text = rule(text)
            cleaned.append(text)
        out = []
        for tokens in self._split_many(cleaned):
            for rule in self.post_rules:
                tokens = rule(tokens)
            out.append(tokens)
        return out

    def process_all(self, texts: Sequence[str], n_workers: int | None = None) -> list[list[str]]:
        """Tokens of every document, in input order; in `n_workers` processes when worth it."""
        texts = [_as_text(t, i) for i, t in enumerate(texts)]
        workers = self.n_workers if n_workers is None else int(n_workers)
        workers = min(workers, len(texts) // self.min_chunk)
        if workers <= 1:
            return self.process_in_process(texts)
        size = -(-len(texts) // (4 * workers))  # a few chunks per worker evens out the load
        size = max(size, self.min_chunk)
        chunks = [texts[i:i + size] for i in range(0, len(texts), size)]
        context = multiprocessing.get_context(self.start_method or default_start_method())
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            out: list[list[str]] = []
            for part in pool.map(self.process_in_process, chunks):
                out.extend(part)
        return out

    def tokenize_documents(self, documents: Sequence[Sequence[str]], mark_fields: bool | None = None,
                           include_bos: bool = True, include_eos: bool = False) -> list[list[str]]:
        """Documents given as their text columns: joined as fastai does (xxbos, xxfld n when
        several columns, by default) and tokenised."""
        docs = [list(d) for d in documents]
        if mark_fields is None:
            mark_fields = any(len(d) > 1 for d in docs)
        joined = [rules.join_fields(d, mark_fields, include_bos, include_eos) for d in docs]
        return self.process_all(joined)


def _as_text(text, index: int) -> str:
    if not isinstance(text, str):
        raise InputError(f"document {index} is a {type(text).__name__}, not a string: {text!r:.60}")
    return text
