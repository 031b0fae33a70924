"""fastai v1's Vocab: token <-> id, built from token frequencies, saved as JSON.

`Vocab.create` follows fastai 1.0.61: the `max_vocab` most common tokens seen at least
`min_freq` times, fastai's special tokens moved to the front (xxunk = 0, xxpad = 1,
xxbos = 2, ...), cut to `max_vocab`, then padded with 'xxfake' to a multiple of 8 (fast
matrix shapes for the embedding and the decoder). Unknown tokens map to xxunk (id 0).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from jaxfast.errors import InputError
from jaxfast.text.rules import BOS, PAD, SPECIAL_TOKENS, UNK

FAKE = "xxfake"
FORMAT = "jaxfast-vocab"


class Vocab:
    """The correspondence between tokens (`itos`) and ids (`stoi`)."""

    def __init__(self, itos: Sequence[str]):
        itos = list(itos)
        bad = [t for t in itos if not isinstance(t, str)]
        if bad:
            raise InputError(f"vocab entries must be strings, got {bad[0]!r}")
        if not itos or itos[0] != UNK:
            raise InputError(f"a vocab must start with {UNK!r} (id 0, what unknown tokens map to), "
                             f"got {itos[:1]}")
        seen: dict[str, int] = {}
        for i, token in enumerate(itos):
            if token in seen and token != FAKE:
                raise InputError(f"vocab token {token!r} appears twice (ids {seen[token]} and {i})")
            seen.setdefault(token, i)
        self.itos = itos
        self.stoi = seen

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {' '.join(self.itos[:12])} ...)"

    @property
    def pad_id(self) -> int:
        return self.stoi[PAD]

    @property
    def bos_id(self) -> int:
        return self.stoi[BOS]

    @property
    def unk_id(self) -> int:
        return 0

    def numericalize(self, tokens: Sequence[str]) -> np.ndarray:
        """int32 ids of `tokens`; a token not in the vocab gets xxunk's id 0."""
        get = self.stoi.get
        return np.fromiter((get(t, 0) for t in tokens), dtype=np.int32, count=len(tokens))

    def textify(self, ids: Iterable[int], sep: str | None = " ") -> str | list[str]:
        """Tokens of `ids`, joined by `sep` (a list when sep is None)."""
        tokens = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise InputError(f"token id {i} is outside the vocab of {len(self.itos)} tokens")
            tokens.append(self.itos[i])
        return tokens if sep is None else sep.join(tokens)

    @classmethod
    def create(cls, token_lists: Iterable[Sequence[str]], max_vocab: int = 60000, min_freq: int = 2,
               multiple_of: int = 8) -> "Vocab":
        """fastai's Vocab.create from tokenised documents (see the module docstring)."""
        if max_vocab < len(SPECIAL_TOKENS):
            raise InputError(f"max_vocab must be at least {len(SPECIAL_TOKENS)} (the special tokens), got {max_vocab}")
        freq = collections.Counter(t for tokens in token_lists for t in tokens)
        itos = [t for t, c in freq.most_common(max_vocab) if c >= min_freq]
        for token in reversed(SPECIAL_TOKENS):
            if token in itos:
                itos.remove(token)
            itos.insert(0, token)
        itos = itos[:max_vocab]
        if len(itos) < max_vocab and multiple_of > 1:
            itos += [FAKE] * (-len(itos) % multiple_of)
        return cls(itos)

    def save(self, path: str | Path) -> Path:
        """Write the vocab as JSON ({"format", "itos"}); atomic (temp file then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "version": 1, "itos": self.itos}, ensure_ascii=False),
                       encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        """Read a vocab written by `save`; errors name the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"vocab file {path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputError(f"vocab file {path} is not a JSON vocab ({err})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("itos"), list):
            raise InputError(f"vocab file {path} is not a {FORMAT} file (expected an object with "
                             f"'format': '{FORMAT}' and an 'itos' list)")
        try:
            return cls(data["itos"])
        except InputError as err:
            raise InputError(f"vocab file {path}: {err}") from None
