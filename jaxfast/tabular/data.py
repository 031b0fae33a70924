"""From pandas frames to the arrays a TabularModel sees: targets, splits, DataBunch, and
row-checked CSV reading for inference.

Inputs of every batch are the tuple `(x_cat int32 [B, n_cat], x_cont float32 [B, n_cont])`.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.tabular.procs import TabularProcessor, category_key, numeric_column
from jaxfast.errors import InputError


@dataclasses.dataclass
class TabularTarget:
    """The dependent variable: class indices (classes from the training frame, sorted) or
    float values (optionally log, as fastai's FloatList(log=True))."""

    name: str
    kind: str = "classification"  # or 'regression'
    classes: list[str] = dataclasses.field(default_factory=list)
    log: bool = False

    def __post_init__(self):
        if self.kind not in ("classification", "regression"):
            raise InputError(f"TabularTarget: kind must be 'classification' or 'regression', got {self.kind!r}")

    @property
    def loss(self) -> str:
        return "cross_entropy" if self.kind == "classification" else "mse"

    @property
    def out_sz(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    def fit(self, df: pd.DataFrame) -> TabularTarget:
        """Learn the classes of the training frame (classification only)."""
        if self.name not in df.columns:
            raise InputError(f"target column {self.name!r} is missing from the training frame (it has {list(df.columns)})")
        if self.kind == "classification":
            keys = [category_key(v) for v in pd.unique(df[self.name])]
            if None in keys:
                rows = list(df.index[df[self.name].isna()][:5])
                raise InputError(f"target column {self.name!r} has missing values (rows {rows})")
            self.classes = sorted(keys)
            if len(self.classes) < 2:
                raise InputError(f"target column {self.name!r} has only the classes {self.classes}; need at least 2")
        return self

    def encode(self, df: pd.DataFrame, where: str = "frame") -> np.ndarray:
        """int32 class indices or float32 (log) values; bad rows raise ValueError naming them."""
        if self.name not in df.columns:
            raise InputError(f"{where}: target column {self.name!r} is missing (it has {list(df.columns)})")
        if self.kind == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            keys = [category_key(v) for v in df[self.name]]
            bad = [(label, k) for label, k in zip(df.index, keys) if k not in index]
            if bad:
                shown = ", ".join(f"row {label}: {k!r}" for label, k in bad[:5])
                raise InputError(f"{where}: target {self.name!r} has values outside the training classes "
                                 f"{self.classes} ({shown}; {len(bad)} rows)")
            return np.array([index[k] for k in keys], np.int32)
        values = numeric_column(df, self.name, where)
        bad = values.isna() | (values <= 0 if self.log else False)
        if bad.any():
            need = "positive numbers (log target)" if self.log else "numbers"
            raise InputError(f"{where}: target {self.name!r} must hold {need}; rows {list(df.index[bad][:5])} do not")
        return (np.log(values) if self.log else values).to_numpy(np.float32)

    def decode(self, outputs: np.ndarray) -> pd.DataFrame:
        """Predictions from model outputs: class and its probability, or the value."""
        outputs = np.asarray(outputs, np.float64)
        if self.kind == "classification":
            shifted = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
            probs = shifted / shifted.sum(axis=-1, keepdims=True)
            best = probs.argmax(axis=-1)
            return pd.DataFrame({self.name: [self.classes[i] for i in best], "probability": probs.max(axis=-1)})
        values = outputs.reshape(len(outputs), -1)[:, 0]
        return pd.DataFrame({self.name: np.exp(values) if self.log else values})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TabularTarget:
        return cls(**data)


def split_random(df: pd.DataFrame, valid_pct: float, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random (seeded) `valid_pct` share of the rows for validation, the rest for training."""
    if not 0 < valid_pct < 1:
        raise InputError(f"valid_pct must be in (0, 1), got {valid_pct}")
    n_valid = round(valid_pct * len(df))
    if n_valid < 1 or n_valid >= len(df):
        raise InputError(f"valid_pct {valid_pct} of {len(df)} rows leaves an empty split")
    order = np.random.default_rng(seed).permutation(len(df))
    valid = np.zeros(len(df), bool)
    valid[order[:n_valid]] = True
    return df[~valid], df[valid]


def arrays(processor: TabularProcessor, target: TabularTarget, df: pd.DataFrame, where: str):
    """((x_cat, x_cont), y) of a frame with targets."""
    return processor.to_arrays(df), target.encode(df, where)


def tabular_databunch(
    processor: TabularProcessor, target: TabularTarget, train: pd.DataFrame, valid: pd.DataFrame | None,
    batch_size: int = 64, seed: int = 0, extra: dict[str, pd.DataFrame] | None = None,
    na_values: Sequence[str] = (),
) -> DataBunch:
    """Training loader (shuffled, last partial batch dropped as fastai does), validation and
    extra evaluated splits (e.g. test) with the fitted `processor` and `target`; the bunch's
    meta holds both (and `na_values`, the cell texts read as missing) for tabular_learner."""
    x, y = arrays(processor, target, train, "train")
    loaders = {}
    for name, frame in [("valid", valid), *(extra or {}).items()]:
        if frame is not None:
            ex, ey = arrays(processor, target, frame, name)
            loaders[name] = ArrayLoader(ex, ey, 2 * batch_size, name=name)
    train_loader = ArrayLoader(x, y, min(batch_size, len(y)), shuffle=True, drop_last=True, seed=seed, name="train")
    return DataBunch(train_loader, loaders.pop("valid", None), loaders, export_meta(processor, target, na_values))


def model_config(processor: TabularProcessor, target: TabularTarget, layers: Sequence[int],
                 ps: Sequence[float] | None = None, emb_drop: float = 0.0,
                 y_range: Sequence[float] | None = None) -> dict:
    """The JSON config of the registered 'tabular' architecture for this data."""
    return {
        "emb_szs": processor.embedding_sizes(), "n_cont": len(processor.cont_names), "out_sz": target.out_sz,
        "layers": list(layers), "ps": None if ps is None else list(ps), "emb_drop": emb_drop,
        "y_range": None if y_range is None else [float(v) for v in y_range],
    }


def export_meta(processor: TabularProcessor, target: TabularTarget, na_values: Sequence[str] = ()) -> dict:
    """What `jaxfast.predict` needs besides the weights; `na_values` are cell texts that the
    training data's reader took as missing (besides empty cells), e.g. Adult's '?'."""
    return {"kind": "tabular", "processor": processor.to_json(), "target": target.to_json(),
            "na_values": list(na_values)}


@dataclasses.dataclass
class RowProblem:
    """A CSV row that cannot be predicted, and why."""

    row: int  # 1-based data row (the header is not counted)
    line: int  # line in the file
    message: str

    def __str__(self) -> str:
        return f"row {self.row} (line {self.line}): {self.message}"


def read_rows_csv(path: str | Path, processor: TabularProcessor,
                  na_values: Sequence[str] = ()) -> tuple[pd.DataFrame, list[RowProblem]]:
    """Read an inference CSV (with a header) for `processor`.

    Returns the rows that can be predicted, indexed by their 1-based row number, and a
    problem for each row that cannot (too few or too many fields, a number or date that
    does not parse). A column missing from the header raises ValueError. Empty cells and
    `na_values` are missing values, which the procs handle like training's missing values.
    """
    path = Path(path)
    required = processor.required_columns()
    numeric = set(processor.cont_names) - set(processor.date_fields)
    with path.open(newline="", encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first name
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            absent = [c for c in required if c not in header]
            if absent:
                raise InputError(f"{path}: column(s) {absent} missing from the header, which has {header}")
            twice = sorted({c for c in required if header.count(c) > 1})
            if twice:
                raise InputError(f"{path}: column(s) {twice} appear more than once in the header")
            rows, labels, problems = [], [], []
            for number, fields in enumerate(reader, start=1):
                if not fields:
                    continue
                problem = _check_fields(fields, header, required)
                if problem is None:
                    cells = {name: _cell(fields, header.index(name), na_values) for name in required}
                    problem = _check_cells(cells, numeric, processor.date_fields)
                if problem is not None:
                    problems.append(RowProblem(number, reader.line_num, problem))
                    continue
                rows.append(cells)
                labels.append(number)
        except UnicodeDecodeError as error:
            raise InputError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start} of a read block, "
                             f"after line {reader.line_num}); save it as UTF-8") from None
        except csv.Error as error:  # e.g. a field over csv.field_size_limit()
            raise InputError(f"{path}, line {reader.line_num}: not readable as CSV ({error})") from None
    frame = pd.DataFrame(rows, index=pd.Index(labels, name="row"), columns=required)
    for name in numeric:
        frame[name] = pd.to_numeric(frame[name]).astype("float64")
    return frame, problems


def _cell(fields: list[str], i: int, na_values: Sequence[str]):
    text = fields[i].strip() if i < len(fields) else ""
    return None if not text or text in na_values else text


def _check_fields(fields: list[str], header: list[str], required: list[str]) -> str | None:
    if len(fields) > len(header):
        return f"{len(fields)} fields but the header has {len(header)}"
    lacking = [c for c in required if header.index(c) >= len(fields)]
    if lacking:
        return f"missing column(s) {lacking} ({len(fields)} of the header's {len(header)} fields)"
    return None


def _check_cells(cells: dict, numeric: set, date_fields: Sequence[str]) -> str | None:
    for name in sorted(numeric):
        value = cells[name]
        try:
            if value is not None and not math.isfinite(float(value)):
                return f"column {name!r} value {value!r} is not a finite number"
        except ValueError:
            return f"column {name!r} value {value!r} is not a number"
    for name in date_fields:
        if cells[name] is not None and pd.isna(pd.to_datetime(cells[name], errors="coerce")):
            return f"column {name!r} value {cells[name]!r} is not a date"
    return None


def frame_from_tfds(builder, split: str) -> pd.DataFrame:
    """A prepared tfds split of scalar features as a frame: text decoded ('' is missing),
    ClassLabel indices turned back into their names."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    columns = {}
    for name in features:
        values = np.asarray(data[name])
        feature = features[name]
        if isinstance(feature, tfds.features.ClassLabel):
            columns[name] = pd.Series([feature.names[i] for i in values], dtype=object)
        elif values.dtype.kind in "OSU":
            text = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
            columns[name] = pd.Series([t if t else None for t in text], dtype=object)
        else:
            columns[name] = pd.Series(values)
    return pd.DataFrame(columns)
