"""Lesson 7's "human numbers" corpus, built in memory instead of downloaded.

fastai's HUMAN_NUMBERS dataset is the numbers 1..9999 written out in English
words: train.txt holds 1..8000 and valid.txt holds 8001..9999. Because the
text is fully determined, we generate it here, tokenise it by whitespace,
build a tiny vocabulary (~34 tokens) and lay the token stream out in fastai's
language-model batch layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from jaxfast.errors import InputError

ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
    "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
    "sixteen", "seventeen", "eighteen", "nineteen",
)
TENS = (
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
    "ninety",
)
SEPARATOR = "."
BOS_TOKEN = "xxbos"
# fastai's basic special tokens; they come first so their ids are stable.
SPECIAL_TOKENS = ("xxunk", "xxpad", BOS_TOKEN, "xxeos")

TRAIN_RANGE = (1, 8001)  # 1..8000, as fastai's train.txt
VALID_RANGE = (8001, 10000)  # 8001..9999, as fastai's valid.txt


def _below_hundred(n: int) -> list[str]:
    """Words for 1 <= n < 100 ("forty two", "fifteen")."""
    if n < 20:
        return [ONES[n]]
    tens, units = divmod(n, 10)
    return [TENS[tens]] + ([ONES[units]] if units else [])


def number_to_words(n: int) -> str:
    """Spell 0 < n < 10000 in lowercase words, no "and" and no hyphens.

    >>> number_to_words(9999)
    'nine thousand nine hundred ninety nine'
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"number_to_words expects an int, got {type(n).__name__}")
    if not 0 < n < 10000:
        raise InputError(f"number_to_words supports 0 < n < 10000, got {n}")
    thousands, rest = divmod(int(n), 1000)
    hundreds, below_hundred = divmod(rest, 100)
    words: list[str] = []
    if thousands:
        words += [ONES[thousands], "thousand"]
    if hundreds:
        words += [ONES[hundreds], "hundred"]
    if below_hundred:
        words += _below_hundred(below_hundred)
    return " ".join(words)


def human_numbers_text(start: int, stop: int) -> str:
    """The numbers start..stop-1 in words, joined by " . " like fastai's txt files."""
    if not 0 < start < stop <= 10000:
        raise InputError(f"need 0 < start < stop <= 10000, got start={start}, stop={stop}")
    return f" {SEPARATOR} ".join(number_to_words(n) for n in range(start, stop))


def tokenize(text: str) -> list[str]:
    """Whitespace tokeniser: the corpus is already lowercase words and '.'."""
    return text.split()


def build_vocab(tokens: Iterable[str]) -> list[str]:
    """Special tokens first, then the sorted unique remaining tokens."""
    words = sorted(set(tokens) - set(SPECIAL_TOKENS))
    return list(SPECIAL_TOKENS) + words


def encode(tokens: Sequence[str], vocab: Sequence[str]) -> np.ndarray:
    """Map tokens to int32 ids; an unknown token raises ValueError naming it."""
    token_to_id = {token: i for i, token in enumerate(vocab)}
    try:
        return np.fromiter((token_to_id[t] for t in tokens), dtype=np.int32, count=len(tokens))
    except KeyError as err:
        raise InputError(
            f"token {err.args[0]!r} is not in the vocabulary of {len(vocab)} tokens"
        ) from None


def decode(ids: Iterable[int], vocab: Sequence[str]) -> str:
    """Inverse of encode: ids back to a space-joined string."""
    return " ".join(vocab[int(i)] for i in ids)


@dataclass(frozen=True)
class HumanNumbers:
    """The encoded corpus: each split is one token stream starting with xxbos."""

    vocab: tuple[str, ...]
    train_ids: np.ndarray
    valid_ids: np.ndarray

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def load_human_numbers() -> HumanNumbers:
    """Build train (1..8000) and valid (8001..9999) streams with a shared vocab."""
    train_tokens = [BOS_TOKEN] + tokenize(human_numbers_text(*TRAIN_RANGE))
    valid_tokens = [BOS_TOKEN] + tokenize(human_numbers_text(*VALID_RANGE))
    vocab = build_vocab(train_tokens + valid_tokens)
    return HumanNumbers(
        vocab=tuple(vocab),
        train_ids=encode(train_tokens, vocab),
        valid_ids=encode(valid_tokens, vocab),
    )


def lm_batches(ids: np.ndarray, batch_size: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """fastai's language-model layout as arrays x, y of shape [n_windows, batch_size, seq_len].

    The stream is cut into ``batch_size`` contiguous rows (the tail that does
    not fill a row is dropped); window ``w`` is columns ``w*seq_len ..
    (w+1)*seq_len`` of every row, so row ``b`` of window ``w+1`` continues row
    ``b`` of window ``w``. ``y`` is ``x`` shifted one token to the left: the
    next-token target. Only whole windows are kept.
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise InputError(f"ids must be a 1-D token stream, got shape {ids.shape}")
    if batch_size < 1 or seq_len < 1:
        raise InputError(f"batch_size and seq_len must be positive, got {batch_size}, {seq_len}")
    row_len = len(ids) // batch_size
    n_windows = (row_len - 1) // seq_len
    if n_windows < 1:
        raise InputError(
            f"stream of {len(ids)} tokens is too short for batch_size={batch_size}, seq_len={seq_len}"
        )
    rows = ids[: batch_size * row_len].reshape(batch_size, row_len)
    used = n_windows * seq_len
    x = rows[:, :used].reshape(batch_size, n_windows, seq_len).transpose(1, 0, 2)
    y = rows[:, 1 : used + 1].reshape(batch_size, n_windows, seq_len).transpose(1, 0, 2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
