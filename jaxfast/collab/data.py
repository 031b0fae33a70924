"""MovieLens ratings for collaborative filtering (lesson 4), and id maps.

Sources: a local folder (ml-100k's `u.data` + Latin-1 `u.item`, or fastai's ml_sample
`ratings.csv`), tfds `movielens/100k-ratings`, or generated ratings (tests, --tiny).
Users and items are indexed from the TRAINING split only; index 0 is fastai's '#na#'.
Validation rows with an id training never saw map to '#na#' as in fastai, while
prediction refuses unknown ids by default, naming the row and the id.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from jaxfast.data.download import load_tfds_as_numpy
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.errors import InputError, MissingInput

NA = "#na#"
ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
DATA_DIR_HINT = "the ml-100k files (u.data, u.item) or fastai's ml_sample ratings.csv"
ITEM_KEYS = ("title", "id")


class UnknownIdError(InputError):
    """A user or item id that the training split never saw."""


@dataclasses.dataclass(frozen=True, eq=False)
class Ratings:
    """One rating per row: user and item ids as strings, ratings float32."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    note: str
    item_name: str = "item"  # what the item ids are: 'title' (ml-100k, lesson) or 'movie_id'


# ------------------------------------------------------------------ readers


def _rows(path: Path, sep: str, n_fields: int, encoding: str = "utf-8", header: bool = False):
    """(line number, fields) of a delimited text file, checking the field count."""
    with open(path, newline="", encoding=encoding) as f:
        reader = csv.reader(f, delimiter=sep, quoting=csv.QUOTE_NONE if sep != "," else csv.QUOTE_MINIMAL)
        try:
            for line, fields in enumerate(reader, start=1):
                if header and line == 1 or not fields:
                    continue
                if len(fields) < n_fields:
                    raise InputError(f"{path}, line {line}: expected {n_fields} fields, got {len(fields)}: "
                                     f"{[field[:80] for field in fields[:n_fields]]!r}")
                yield line, fields
        except UnicodeDecodeError as error:
            raise InputError(f"{path} is not {encoding} text ({error.reason}, after line {reader.line_num})") from None
        except csv.Error as error:  # e.g. a field over csv.field_size_limit()
            raise InputError(f"{path}, line {reader.line_num}: not readable ({error})") from None


def _rating(path: Path, line: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{path}, line {line}: rating {text[:80]!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{path}, line {line}: rating {text!r} is not a finite number")
    return value


def read_u_item(path: Path) -> dict[str, str]:
    """ml-100k `u.item` (pipe-separated, Latin-1): movie id -> title."""
    titles = {}
    for line, fields in _rows(path, "|", 2, encoding="latin-1"):
        titles[fields[0].strip()] = fields[1].strip()
    return titles


def _read_triples(path: Path, sep: str, header: bool = False):
    """Users, items (strings), ratings (float32) and the line number of each row."""
    users, items, ratings, lines = [], [], [], []
    for line, fields in _rows(path, sep, 3, header=header):
        users.append(fields[0].strip())
        items.append(fields[1].strip())
        ratings.append(_rating(path, line, fields[2]))
        lines.append(line)
    if not ratings:
        raise InputError(f"{path} holds no ratings")
    return np.array(users), np.array(items), np.array(ratings, np.float32), lines


def read_ml100k(folder: Path, item_key: str = "title") -> Ratings:
    """ml-100k's `u.data` (user, item, rating, timestamp; tabs), items as titles from `u.item`."""
    if item_key not in ITEM_KEYS:
        raise InputError(f"item_key must be one of {ITEM_KEYS}, got {item_key!r}")
    path = folder / "u.data"
    users, items, ratings, lines = _read_triples(path, "\t")
    if item_key == "title":
        item_path = folder / "u.item"
        if not item_path.is_file():
            raise MissingInput(f"{item_path} is missing: titles come from it (or use item_key='id')")
        titles = read_u_item(item_path)
        missing = [(line, m) for line, m in zip(lines, items.tolist()) if m not in titles]
        if missing:
            line, movie = missing[0]
            raise InputError(f"{path}, line {line}: movie id {movie!r} has no title in {item_path} "
                             f"({len(missing)} such rows)")
        items = np.array([titles[m] for m in items.tolist()])
    note = (f"ml-100k ({folder}): {len(ratings):,} ratings, {len(set(users.tolist())):,} users, "
            f"{len(set(items.tolist())):,} items by {item_key}")
    return Ratings(users, items, ratings, note, "title" if item_key == "title" else "movie_id")


def read_ratings_csv(path: Path) -> Ratings:
    """fastai's ml_sample `ratings.csv`: userId,movieId,rating,timestamp with a header."""
    users, items, ratings, _ = _read_triples(path, ",", header=True)
    note = (f"ml_sample ({path}): {len(ratings):,} ratings, {len(set(users.tolist())):,} users, "
            f"{len(set(items.tolist())):,} movies")
    return Ratings(users, items, ratings, note, "movie_id")


def load_tfds_ratings(item_key: str = "title", tfds_data_dir: str | None = None) -> Ratings:
    """tfds `movielens/100k-ratings` (fails fast offline, naming --data-dir)."""
    if item_key not in ITEM_KEYS:
        raise InputError(f"item_key must be one of {ITEM_KEYS}, got {item_key!r}")
    f = load_tfds_as_numpy("movielens/100k-ratings", "train", ML100K_URL, DATA_DIR_HINT, tfds_data_dir)
    items = _text(f["movie_title"] if item_key == "title" else f["movie_id"])
    users = _text(f["user_id"])
    note = f"tfds movielens/100k-ratings: {len(users):,} ratings, items by {item_key}"
    return Ratings(users, items, f["user_rating"].astype(np.float32), note,
                   "title" if item_key == "title" else "movie_id")


def _text(values) -> np.ndarray:
    return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values])


def load_ratings(data_dir: str | Path | None, item_key: str = "title") -> Ratings:
    """Ratings from `data_dir` (u.data [+ u.item], or ratings.csv), else from tfds."""
    if data_dir is None:
        return load_tfds_ratings(item_key)
    folder = Path(data_dir)
    if (folder / "u.data").is_file():
        return read_ml100k(folder, item_key)
    if (folder / "ratings.csv").is_file():
        return read_ratings_csv(folder / "ratings.csv")
    raise MissingInput(f"no ratings in {folder}: looked for u.data (ml-100k, with u.item) and ratings.csv (ml_sample)")


def generate_ratings(n_users: int = 100, n_items: int = 120, n_factors: int = 3, density: float = 0.5,
                     seed: int = 0) -> Ratings:
    """Ratings 1..5 from hidden low-rank tastes and item/user biases (learnable, offline)."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(0, 0.6, (n_users, n_factors)), rng.normal(0, 0.6, (n_items, n_factors))
    ub, ib = rng.normal(0, 0.3, n_users), rng.normal(0, 0.8, n_items)
    rated = rng.random((n_users, n_items)) < density
    uu, ii = np.nonzero(rated)
    score = 3.2 + ub[uu] + ib[ii] + np.sum(u[uu] * v[ii], axis=1) + rng.normal(0, 0.3, len(uu))
    ratings = np.clip(np.round(score), 1, 5).astype(np.float32)
    note = f"generated ratings (seed {seed}): {len(uu):,} ratings, {n_users} users, {n_items} movies"
    return Ratings(np.array([f"u{i}" for i in uu]), np.array([f"movie {j:03d}" for j in ii]), ratings, note)


# ------------------------------------------------------------------ id maps


def _id_key(v: str):
    return (0, int(v), "") if v.isdigit() else (1, 0, v)


@dataclasses.dataclass(frozen=True)
class IdMap:
    """Ids (as strings) -> indices; `classes[0]` is '#na#', the rest sorted (numbers numerically)."""

    name: str
    classes: tuple[str, ...]

    @classmethod
    def from_values(cls, name: str, values) -> IdMap:
        unique = set(np.asarray(values).astype(str).tolist())
        if NA in unique:
            raise InputError(f"{name} id {NA!r} is reserved for ids the training split never saw")
        return cls(name, (NA, *sorted(unique, key=_id_key)))

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, values, unknown: str = "error") -> np.ndarray:
        """int32 indices of `values`; an unseen id raises UnknownIdError naming its row
        (unknown='error') or becomes 0, '#na#' (unknown='na', fastai's validation rule)."""
        if unknown not in ("error", "na"):
            raise InputError(f"unknown must be 'error' or 'na', got {unknown!r}")
        strings = np.asarray(values).astype(str).reshape(-1)
        codes = pd.Index(self.classes[1:]).get_indexer(strings).astype(np.int32) + 1
        bad = np.flatnonzero(codes == 0)
        if len(bad) and unknown == "error":
            shown = ", ".join(f"row {r}: {str(strings[r])!r}" for r in bad[:5])  # rows count from 0
            raise UnknownIdError(
                f"{len(bad)} {self.name} id(s) not in the training split ({len(self) - 1} known), "
                f"first {shown}; such ids have no learnt factors"
            )
        return codes

    def decode(self, indices) -> list[str]:
        return [self.classes[int(i)] for i in np.asarray(indices).reshape(-1)]

    def to_json(self) -> dict:
        return {"name": self.name, "classes": list(self.classes)}

    @classmethod
    def from_json(cls, data: dict) -> IdMap:
        if not data.get("classes") or data["classes"][0] != NA:
            raise InputError(f"id map {data.get('name')!r}: classes must start with {NA!r}")
        return cls(data["name"], tuple(data["classes"]))


# ------------------------------------------------------------------ splits


def split_indices(n: int, valid_pct: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """fastai v1 `split_by_rand_pct`: the first int(valid_pct*n) of a seeded permutation validate."""
    if not 0 < valid_pct < 1:
        raise InputError(f"valid_pct must be in (0, 1), got {valid_pct}")
    order = np.random.RandomState(seed).permutation(n)
    cut = int(valid_pct * n)
    return np.sort(order[cut:]), order[:cut]


@dataclasses.dataclass(frozen=True, eq=False)
class CollabData:
    """Encoded train/valid splits: inputs are (users, items) int32, targets float32 ratings."""

    ratings: Ratings
    train_idx: np.ndarray
    valid_idx: np.ndarray
    users: IdMap
    items: IdMap
    x_train: tuple[np.ndarray, np.ndarray]
    y_train: np.ndarray
    x_valid: tuple[np.ndarray, np.ndarray]
    y_valid: np.ndarray

    @property
    def n_valid_unknown(self) -> int:
        """Validation rows whose user or item is '#na#' (unseen in training)."""
        return int(np.sum((self.x_valid[0] == 0) | (self.x_valid[1] == 0)))

    def bunch(self, batch_size: int, seed: int) -> DataBunch:
        return DataBunch(
            train=ArrayLoader(self.x_train, self.y_train, batch_size, shuffle=True, drop_last=True, seed=seed,
                              name="train"),
            valid=ArrayLoader(self.x_valid, self.y_valid, 2 * batch_size, name="valid"),
            meta=self.export_meta(),
        )

    def export_meta(self) -> dict:
        """What an export needs to encode ids at prediction time (JSON)."""
        return {"kind": "collab", "task": "collab", "item_name": self.ratings.item_name,
                "n_users": len(self.users), "n_items": len(self.items),
                "id_maps": {"users": self.users.to_json(), "items": self.items.to_json()}}


def prepare(ratings: Ratings, valid_pct: float = 0.1, seed: int = 42) -> CollabData:
    """Split with fastai's rule, index users/items from the training rows, encode both splits."""
    train_idx, valid_idx = split_indices(len(ratings.ratings), valid_pct, seed)
    users = IdMap.from_values("user", ratings.users[train_idx])
    items = IdMap.from_values("item", ratings.items[train_idx])

    def encode(idx, unknown):
        return (users.encode(ratings.users[idx], unknown), items.encode(ratings.items[idx], unknown))

    return CollabData(ratings, train_idx, valid_idx, users, items, encode(train_idx, "error"),
                      ratings.ratings[train_idx], encode(valid_idx, "na"), ratings.ratings[valid_idx])


# ------------------------------------------------------------------ prediction


@dataclasses.dataclass(frozen=True)
class CollabPredictor:
    """An exported collab model with its id maps: ratings for (user, item) ids."""

    exported: object  # jaxfast.export.ExportedModel
    users: IdMap
    items: IdMap

    def predict(self, users: Sequence, items: Sequence, unknown: str = "error") -> np.ndarray:
        """Predicted ratings; unseen ids raise UnknownIdError (or use '#na#' with unknown='na')."""
        if len(users) != len(items):
            raise InputError(f"{len(users)} users but {len(items)} items: give one of each per row")
        x = (self.users.encode(users, unknown), self.items.encode(items, unknown))
        return self.exported.predict(x)


def load_collab_export(path: str | Path) -> CollabPredictor:
    """Load an export written by lesson4_collab (its export.json holds the id maps)."""
    from jaxfast.export import load_export

    exported = load_export(path)
    maps = exported.meta.get("id_maps")
    if exported.meta.get("task") != "collab" or not maps:
        raise InputError(f"{path} is not a collab export: export.json has no id_maps")
    return CollabPredictor(exported, IdMap.from_json(maps["users"]), IdMap.from_json(maps["items"]))

