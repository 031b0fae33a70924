"""Where IMDB-style text comes from: fastai's texts.csv, Stanford's aclImdb/ folders, or tfds.

Every reader returns a TextSource: named splits of documents (each document a tuple of
its text columns), integer labels where there are labels, and the sorted class names
(as fastai's CategoryList). `TextSource.describe()` lists every split found.

- `read_texts_csv`: fastai's IMDB_SAMPLE layout `label,text,is_valid` (plain or .csv.gz).
- `read_imdb_folder`: `aclImdb/{train,test}/{pos,neg}/*.txt`, plus unlabelled text in
  `train/unsup/` (Stanford) or `unsup/` (fastai's URLs.IMDB copy); an optional random
  valid split of train (fastai's split_by_rand_pct).
- `load_imdb_tfds`: tfds `imdb_reviews` (train, test, unsupervised), when prepared or
  reachable; offline it fails within seconds naming --data-dir.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxfast.data.download import require_download
from jaxfast.errors import InputError

IMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
DATA_DIR_HINT = ("fastai's texts.csv (label,text,is_valid; e.g. imdb_sample/) or Stanford's aclImdb/ folder "
                 "(train|test/pos|neg/*.txt, train/unsup/*.txt)")


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Documents (tuples of text columns), their labels (int ids, or None) and where each came from."""

    docs: list[tuple[str, ...]]
    labels: np.ndarray | None
    origins: list[str]

    def __len__(self) -> int:
        return len(self.docs)

    def subset(self, index: Sequence[int]) -> "TextSplit":
        index = list(index)
        labels = None if self.labels is None else self.labels[index]
        return TextSplit([self.docs[i] for i in index], labels, [self.origins[i] for i in index])


@dataclasses.dataclass(frozen=True)
class TextSource:
    """Named splits (train, valid, test, unsup, ...) and the class names of the labels."""

    name: str
    splits: dict[str, TextSplit]
    classes: tuple[str, ...]

    def describe(self) -> str:
        """One line per split found: size and class counts."""
        lines = [f"text source: {self.name}"]
        for split, part in self.splits.items():
            detail = "unlabelled"
            if part.labels is not None:
                counts = np.bincount(part.labels, minlength=len(self.classes))
                detail = ", ".join(f"{c} {n}" for c, n in zip(self.classes, counts))
            lines.append(f"  {split}: {len(part)} documents ({detail})")
        return "\n".join(lines)


def split_by_rand_pct(part: TextSplit, valid_pct: float, seed: int) -> tuple[TextSplit, TextSplit]:
    """(train, valid): a random `valid_pct` of `part` held out, as fastai's split_by_rand_pct."""
    if not 0.0 < valid_pct < 1.0:
        raise InputError(f"valid_pct must be between 0 and 1, got {valid_pct}")
    order = np.random.default_rng(seed).permutation(len(part))
    cut = int(valid_pct * len(part))
    if cut == 0 or cut == len(part):
        raise InputError(f"valid_pct={valid_pct} of {len(part)} documents leaves an empty split")
    return part.subset(np.sort(order[cut:])), part.subset(np.sort(order[:cut]))


def _parse_bool(value, where: str) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise InputError(f"{where}: is_valid must be True/False (or 1/0), got {value!r}")


def read_texts_csv(path: str | Path, text_cols: Sequence[str] = ("text",), label_col: str | None = "label",
                   valid_col: str | None = "is_valid") -> TextSource:
    """fastai's texts.csv: a folder holding texts.csv(.gz), or the file itself."""
    import pandas as pd

    path = Path(path)
    if path.is_dir():
        found = [path / n for n in ("texts.csv", "texts.csv.gz") if (path / n).is_file()]
        if not found:
            raise InputError(f"{path} holds no texts.csv or texts.csv.gz")
        path = found[0]
    if not path.is_file():
        raise InputError(f"text CSV {path} does not exist")
    try:
        df = pd.read_csv(path, encoding="utf-8", dtype=str, keep_default_na=False, na_values=[])
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty") from None
    except pd.errors.ParserError as err:
        raise InputError(f"{path} is not a readable CSV: {err}") from None
    wanted = list(text_cols) + [c for c in (label_col, valid_col) if c is not None]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise InputError(f"{path} lacks the column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise InputError(f"{path} has a header but no rows")
    for col in text_cols:
        empty = np.flatnonzero(df[col].str.strip().eq("").to_numpy())
        if len(empty):
            raise InputError(f"{path}: data row {empty[0]} (0-based, after the header) has an empty {col!r}")
    docs = list(zip(*(df[c].tolist() for c in text_cols)))
    origins = [f"{path.name}:row {i}" for i in range(len(df))]
    classes: tuple[str, ...] = ()
    labels = None
    if label_col is not None:
        values = df[label_col].to_numpy()
        classes = tuple(sorted(set(values)))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[v] for v in values], np.int32)
    everything = TextSplit(docs, labels, origins)
    if valid_col is None:
        return TextSource(str(path), {"train": everything}, classes)
    is_valid = np.array([_parse_bool(v, f"{path}: data row {i}") for i, v in enumerate(df[valid_col])])
    splits = {"train": everything.subset(np.flatnonzero(~is_valid))}
    if is_valid.any():
        splits["valid"] = everything.subset(np.flatnonzero(is_valid))
    return TextSource(str(path), splits, classes)


def read_text_file(path: Path) -> str:
    """The UTF-8 text of one review file; empty or undecodable files raise InputError naming it."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise InputError(f"{path} is empty")
    return text


def _read_folder(folders: dict[str, Path]) -> tuple[list[tuple[str, ...]], list[str], list[str]]:
    docs, origins, names = [], [], []
    for name, folder in folders.items():
        for file in sorted(folder.glob("*.txt")):
            docs.append((read_text_file(file),))
            origins.append(str(file))
            names.append(name)
    return docs, origins, names


def read_imdb_folder(path: str | Path, valid_pct: float | None = None, seed: int = 0,
                     classes: Sequence[str] = ("neg", "pos")) -> TextSource:
    """Stanford's aclImdb/ layout (or fastai's imdb/ copy): train, test, unsup (+ valid if asked)."""
    path = Path(path)
    root = path / "aclImdb" if (path / "aclImdb").is_dir() else path
    if not (root / "train").is_dir():
        raise InputError(f"{path} is not an IMDB folder: expected {root / 'train'} with {'/'.join(classes)} subfolders")
    splits: dict[str, TextSplit] = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            continue
        folders = {c: root / split / c for c in classes}
        absent = [str(f) for f in folders.values() if not f.is_dir()]
        if absent:
            raise InputError(f"IMDB folder {root}: missing class folder(s) {absent}")
        docs, origins, names = _read_folder(folders)
        if not docs:
            raise InputError(f"IMDB folder {root / split} holds no .txt reviews")
        labels = np.array([classes.index(n) for n in names], np.int32)
        splits[split] = TextSplit(docs, labels, origins)
    unsup = [f for f in (root / "train" / "unsup", root / "unsup") if f.is_dir()]
    if unsup:
        docs, origins, _ = _read_folder({"unsup": unsup[0]})
        if docs:
            splits["unsup"] = TextSplit(docs, None, origins)
    if valid_pct:
        splits["train"], splits["valid"] = split_by_rand_pct(splits["train"], valid_pct, seed)
    order = [s for s in ("train", "valid", "test", "unsup") if s in splits]
    return TextSource(str(root), {s: splits[s] for s in order}, tuple(classes))


def load_imdb_tfds(tfds_data_dir: str | None = None, valid_pct: float | None = None, seed: int = 0) -> TextSource:
    """tfds `imdb_reviews/plain_text`: train, test and unsupervised (as 'unsup')."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("imdb_reviews/plain_text", data_dir=tfds_data_dir)
    if not builder.is_prepared():
        require_download("imdb_reviews", IMDB_URL, DATA_DIR_HINT)
        builder.download_and_prepare()
    splits: dict[str, TextSplit] = {}
    for split, name in (("train", "train"), ("test", "test"), ("unsupervised", "unsup")):
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        docs = [(t.decode("utf-8"),) for t in data["text"]]
        labels = None if name == "unsup" else np.asarray(data["label"], np.int32)
        splits[name] = TextSplit(docs, labels, [f"tfds imdb_reviews/{split}:{i}" for i in range(len(docs))])
    if valid_pct:
        splits["train"], splits["valid"] = split_by_rand_pct(splits["train"], valid_pct, seed)
    order = [s for s in ("train", "valid", "test", "unsup") if s in splits]
    classes = tuple(builder.info.features["label"].names)
    return TextSource("tfds imdb_reviews", {s: splits[s] for s in order}, classes)


def load_text_source(data_dir: str | Path | None, valid_pct: float | None = None, seed: int = 0,
                     tfds_data_dir: str | None = None) -> TextSource:
    """texts.csv (file or folder), an aclImdb/ folder, or (no data_dir) tfds imdb_reviews.

    `valid_pct` makes a random valid split of train where the source has none."""
    if data_dir is None:
        return load_imdb_tfds(tfds_data_dir, valid_pct, seed)
    path = Path(data_dir)
    if not path.exists():
        raise InputError(f"--data-dir {path} does not exist")
    if path.is_file() or any((path / n).is_file() for n in ("texts.csv", "texts.csv.gz")):
        source = read_texts_csv(path)
        if valid_pct and "valid" not in source.splits:
            train, valid = split_by_rand_pct(source.splits["train"], valid_pct, seed)
            source = dataclasses.replace(source, splits={"train": train, "valid": valid})
        return source
    if (path / "train").is_dir() or (path / "aclImdb").is_dir():
        return read_imdb_folder(path, valid_pct, seed)
    raise InputError(f"--data-dir {path} holds neither texts.csv nor an IMDB folder; expected {DATA_DIR_HINT}")
