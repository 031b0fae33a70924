"""fastai v1's text rules and special tokens (fastai/text/transform.py, 1.0.61), reproduced exactly.

Pre-rules run on the raw string before it is split into words; post-rules run on the
list of words. The special tokens are those of the last fastai v1 release, in its order
(so xxunk is id 0 and xxpad id 1 in every vocabulary).
"""

from __future__ import annotations

import html
import re
from typing import Sequence

UNK, PAD, BOS, EOS, FLD = "xxunk", "xxpad", "xxbos", "xxeos", "xxfld"
TK_MAJ, TK_UP, TK_REP, TK_WREP = "xxmaj", "xxup", "xxrep", "xxwrep"
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS, FLD, TK_MAJ, TK_UP, TK_REP, TK_WREP)

_RE_SPEC = re.compile(r"([/#\n])")
_RE_SPACES = re.compile(" {2,}")
_RE_REP = re.compile(r"(\S)(\1{3,})")
_RE_WREP = re.compile(r"(\b\w+\W+)(\1{3,})")
_RE_HTML_SPACES = re.compile(r"  +")


def spec_add_spaces(t: str) -> str:
    """Add spaces around / , # and newlines (so they become tokens of their own)."""
    return _RE_SPEC.sub(r" \1 ", t)


def rm_useless_spaces(t: str) -> str:
    """Collapse runs of spaces into one."""
    return _RE_SPACES.sub(" ", t)


def replace_rep(t: str) -> str:
    """A character repeated 4+ times becomes `xxrep n c` ("!!!!" -> " xxrep 4 ! ")."""

    def _sub(m: re.Match) -> str:
        c, cc = m.groups()
        return f" {TK_REP} {len(cc) + 1} {c} "

    return _RE_REP.sub(_sub, t)


def replace_wrep(t: str) -> str:
    """A word repeated 4+ times becomes `xxwrep n w`."""

    def _sub(m: re.Match) -> str:
        c, cc = m.groups()
        return f" {TK_WREP} {len(cc.split()) + 1} {c} "

    return _RE_WREP.sub(_sub, t)


def fix_html(x: str) -> str:
    """fastai's clean-up of HTML leftovers (<br />, &amp;, ...) and WikiText escapes."""
    x = (
        x.replace("#39;", "'").replace("amp;", "&").replace("#146;", "'").replace("nbsp;", " ")
        .replace("#36;", "$").replace("\\n", "\n").replace("quot;", "'").replace("<br />", "\n")
        .replace('\\"', '"').replace("<unk>", UNK).replace(" @.@ ", ".").replace(" @-@ ", "-")
        .replace(" @,@ ", ",").replace("\\", " \\ ")
    )
    return _RE_HTML_SPACES.sub(" ", html.unescape(x))


def replace_all_caps(x: Sequence[str]) -> list[str]:
    """An ALL-CAPS word (2+ chars) becomes `xxup` + the word in lower case."""
    res = []
    for t in x:
        if t.isupper() and len(t) > 1:
            res.append(TK_UP)
            res.append(t.lower())
        else:
            res.append(t)
    return res


def deal_caps(x: Sequence[str]) -> list[str]:
    """A Capitalised word gets `xxmaj` before it; every word is lower-cased; empty words go."""
    res = []
    for t in x:
        if t == "":
            continue
        if t[0].isupper() and len(t) > 1 and t[1:].islower():
            res.append(TK_MAJ)
        res.append(t.lower())
    return res


PRE_RULES = (fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces)
POST_RULES = (replace_all_caps, deal_caps)


def join_fields(fields: Sequence[str], mark_fields: bool = False, include_bos: bool = True,
                include_eos: bool = False) -> str:
    """One document from its text columns, as fastai's `_join_texts`:
    `xxbos [xxfld 1] col1 [xxfld 2] col2 ... [xxeos]`."""
    parts = [f"{BOS} "] if include_bos else []
    for i, field in enumerate(fields):
        if mark_fields:
            parts.append(f"{'' if i == 0 else ' '}{FLD} {i + 1} {field}")
        else:
            parts.append(f"{'' if i == 0 else ' '}{field}")
    if include_eos:
        parts.append(f" {EOS}")
    return "".join(parts)
