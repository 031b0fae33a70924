"""fastai v1's tabular procs: fitted on the training frame, applied unchanged to every other.

Each proc is a small dataclass with `fit(df)`, `apply(df) -> new frame` (the input is never
modified) and `to_json()` / `Proc.from_json()`, so a fitted pipeline goes into an export's JSON
(never pickle). `TabularProcessor` chains them the way fastai does: date parts first, then
FillMissing (whose `<col>_na` flags become categorical inputs), Categorify, Normalize.
"""

from __future__ import annotations

import dataclasses
import re
from typing import ClassVar, Sequence

import numpy as np
import pandas as pd
from jaxfast.errors import InputError

NA_CATEGORY = "#na#"
RESERVED_CODE = 0  # Categorify's index for missing and unseen categories


def _rows(labels) -> str:
    """Row labels for a message: the first few, then a count."""
    labels = list(labels)
    shown = ", ".join(str(label) for label in labels[:5])
    return shown + (f" (and {len(labels) - 5} more)" if len(labels) > 5 else "")


def require_columns(df: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    """Raise ValueError naming the columns of `columns` that `df` lacks."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{who}: column(s) {missing} missing from the frame (it has {list(df.columns)})")


def numeric_column(df: pd.DataFrame, name: str, who: str) -> pd.Series:
    """Column `name` as float64; non-numeric cells raise ValueError naming their rows."""
    column = df[name]
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.astype("float64")
    values = pd.to_numeric(column, errors="coerce").astype("float64")
    bad = values.isna() & column.notna() & (column.astype(str).str.strip() != "")
    if bad.any():
        examples = ", ".join(f"row {i}: {column[i]!r}" for i in column.index[bad][:5])
        raise InputError(f"{who}: column {name!r} has non-numeric values ({examples})")
    return values


def category_key(value) -> str | None:
    """Canonical text of a category value, so 3, 3.0, '3.0' and ' 3' agree; None when missing."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    try:  # numbers read back from text ('5.0' in a CSV) match the numbers they were
        number = float(text)
    except ValueError:
        return text or None
    return category_key(number) if np.isfinite(number) else text


def _sorted_categories(keys: set[str]) -> list[str]:
    """Numeric order when every key is a number, text order otherwise."""
    try:
        return sorted(keys, key=float)
    except ValueError:
        return sorted(keys)


class Proc:
    """Base of the procs (dataclasses): JSON of their fields, tagged with the class name."""

    def to_json(self) -> dict:
        return {"proc": type(self).__name__, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> Proc:
        """The proc named by data['proc'] (from this class or, on Proc itself, any proc)."""
        data = dict(data)
        name = data.pop("proc", None)
        target = PROCS.get(name) if cls is Proc else cls
        if target is None or name != target.__name__:
            expected = list(PROCS) if cls is Proc else cls.__name__
            raise InputError(f"tabular proc JSON names {name!r}; expected {expected}")
        return target(**data)


_PANDAS_DATE_ATTRS = {"Dayofweek": "day_of_week", "Dayofyear": "day_of_year"}


@dataclasses.dataclass
class AddDatepart(Proc):
    """fastai's add_datepart: a date column becomes Year, Month, Week (ISO), Day, Dayofweek,
    Dayofyear, Is_month_end/start, Is_quarter_end/start, Is_year_end/start and Elapsed
    (seconds since 1970), prefixed by the field name without a trailing 'Date'/'date'.
    Missing dates give missing parts. Nothing is learnt from the data."""

    field: str
    prefix: str | None = None
    drop: bool = True
    time: bool = False
    ATTRS: ClassVar[tuple[str, ...]] = (
        "Year", "Month", "Week", "Day", "Dayofweek", "Dayofyear", "Is_month_end", "Is_month_start",
        "Is_quarter_end", "Is_quarter_start", "Is_year_end", "Is_year_start",
    )

    @property
    def new_columns(self) -> list[str]:
        prefix = re.sub("[Dd]ate$", "", self.field) if self.prefix is None else self.prefix
        return [prefix + a for a in self._attrs()] + [prefix + "Elapsed"]

    def _attrs(self) -> tuple[str, ...]:
        return self.ATTRS + (("Hour", "Minute", "Second") if self.time else ())

    def fit(self, df: pd.DataFrame) -> AddDatepart:
        require_columns(df, [self.field], "AddDatepart")
        return self

    def dates(self, df: pd.DataFrame) -> pd.Series:
        """The field parsed as datetimes; unparseable cells raise ValueError naming their rows."""
        require_columns(df, [self.field], "AddDatepart")
        column = df[self.field]
        if pd.api.types.is_datetime64_any_dtype(column):
            return column
        parsed = pd.to_datetime(column, errors="coerce")
        bad = parsed.isna() & column.notna() & (column.astype(str).str.strip() != "")
        if bad.any():
            examples = ", ".join(f"row {i}: {column[i]!r}" for i in column.index[bad][:5])
            raise InputError(f"AddDatepart: column {self.field!r} has values that are not dates ({examples})")
        return parsed

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        dates = self.dates(df)
        out = df.copy()
        missing = dates.isna()
        names = self.new_columns
        for name, attr in zip(names[:-1], self._attrs()):
            if attr == "Week":
                values = dates.dt.isocalendar().week
            else:
                values = getattr(dates.dt, _PANDAS_DATE_ATTRS.get(attr, attr.lower()))
            if missing.any():  # pandas says False for is_month_end of NaT: make every part missing
                values = values.astype("float64").where(~missing)
            else:
                values = values.astype(bool if attr.startswith("Is_") else "int64")
            out[name] = values
        elapsed = (dates - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
        out[names[-1]] = elapsed.astype("float64") if missing.any() else elapsed.astype("int64")
        if self.drop:
            out = out.drop(columns=[self.field])
        return out


@dataclasses.dataclass
class FillMissing(Proc):
    """Missing continuous values become the training median; a column that had missing
    values in the training frame also gets a boolean `<col>_na` flag (a categorical input).

    fastai raises when a column without missing training values has some at test time;
    here the training median fills them (every column's median is kept), with no flag."""

    columns: list[str]
    add_col: bool = True
    medians: dict[str, float] = dataclasses.field(default_factory=dict)
    na_columns: list[str] = dataclasses.field(default_factory=list)

    @property
    def added_cat_names(self) -> list[str]:
        return [f"{c}_na" for c in self.na_columns] if self.add_col else []

    def fit(self, df: pd.DataFrame) -> FillMissing:
        require_columns(df, self.columns, "FillMissing")
        self.medians, self.na_columns = {}, []
        for name in self.columns:
            values = numeric_column(df, name, "FillMissing")
            if values.notna().sum() == 0:
                raise InputError(f"FillMissing: column {name!r} has no values in the training frame ({len(df)} rows)")
            self.medians[name] = float(values.median())
            if values.isna().any():
                self.na_columns.append(name)
        return self

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, self.columns, "FillMissing")
        out = df.copy()
        for name in self.columns:
            values = numeric_column(out, name, "FillMissing")
            if self.add_col and name in self.na_columns:
                out[f"{name}_na"] = values.isna()
            out[name] = values.fillna(self.medians[name])
        return out


@dataclasses.dataclass
class Categorify(Proc):
    """Categories of the training frame, sorted; code i+1 for the i-th, and the reserved
    code 0 ('#na#') for missing values and for categories never seen in training."""

    columns: list[str]
    categories: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def fit(self, df: pd.DataFrame) -> Categorify:
        require_columns(df, self.columns, "Categorify")
        self.categories = {}
        for name in self.columns:
            keys = {category_key(v) for v in pd.unique(df[name])} - {None}
            self.categories[name] = _sorted_categories(keys)
        return self

    def n_classes(self, name: str) -> int:
        """Embedding rows for `name`: its categories plus the reserved '#na#'."""
        return len(self.categories[name]) + 1

    def _keys(self, column: pd.Series) -> tuple[np.ndarray, list]:
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        return codes, [category_key(u) for u in uniques]

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, self.columns, "Categorify")
        out = df.copy()
        for name in self.columns:
            index = {key: i + 1 for i, key in enumerate(self.categories[name])}
            codes, keys = self._keys(df[name])
            table = np.array([index.get(k, RESERVED_CODE) for k in keys] + [RESERVED_CODE], np.int32)
            out[name] = table[codes]  # the factorize sentinel -1 picks the last entry
        return out

    def unseen(self, df: pd.DataFrame) -> list[tuple[object, str, str]]:
        """(row label, column, value) of every present value not seen in training."""
        found = []
        for name in self.columns:
            if name not in df.columns:
                continue
            known = set(self.categories[name])
            codes, keys = self._keys(df[name])
            new = {i for i, k in enumerate(keys) if k is not None and k not in known}
            found += [(label, name, keys[c]) for label, c in zip(df.index, codes) if c in new]
        return found


@dataclasses.dataclass
class Normalize(Proc):
    """(x - mean) / (1e-7 + std) with the training mean and std (pandas' ddof=1) as fastai
    does; a constant or single-row training column gets std 1 instead of blowing up."""

    columns: list[str]
    means: dict[str, float] = dataclasses.field(default_factory=dict)
    stds: dict[str, float] = dataclasses.field(default_factory=dict)

    def fit(self, df: pd.DataFrame) -> Normalize:
        require_columns(df, self.columns, "Normalize")
        self.means, self.stds = {}, {}
        for name in self.columns:
            values = numeric_column(df, name, "Normalize")
            if values.isna().any():
                rows = _rows(df.index[values.isna()])
                raise InputError(f"Normalize: column {name!r} has missing values at rows {rows}; "
                                 "put FillMissing before Normalize")
            std = float(values.std())
            self.means[name] = float(values.mean())
            self.stds[name] = std if np.isfinite(std) and std > 0 else 1.0
        return self

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, self.columns, "Normalize")
        out = df.copy()
        for name in self.columns:
            values = numeric_column(out, name, "Normalize")
            out[name] = (values - self.means[name]) / (1e-7 + self.stds[name])
        return out


PROCS = {cls.__name__: cls for cls in (AddDatepart, FillMissing, Categorify, Normalize)}
DEFAULT_PROCS = ("FillMissing", "Categorify", "Normalize")


@dataclasses.dataclass
class TabularProcessor:
    """The fitted preprocessing of a tabular model's inputs, from a raw frame to arrays.

    `cat_names` and `cont_names` are the model's inputs as named before FillMissing adds
    its flags; date parts (from `date_fields`) may be among them. `procs` are names in
    PROCS applied in order after the date parts (fastai's [FillMissing, Categorify,
    Normalize]); Categorify is required when there are categorical inputs.
    """

    cat_names: list[str]
    cont_names: list[str]
    procs: Sequence[str] = DEFAULT_PROCS
    date_fields: Sequence[str] = ()
    steps: list = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.cat_names, self.cont_names = list(self.cat_names), list(self.cont_names)
        self.procs, self.date_fields = list(self.procs), list(self.date_fields)
        unknown = [p for p in self.procs if p not in PROCS or p == "AddDatepart"]
        if unknown:
            raise InputError(f"TabularProcessor: unknown procs {unknown}; use FillMissing, Categorify, Normalize "
                             "(dates go in date_fields)")
        overlap = set(self.cat_names) & set(self.cont_names)
        if overlap:
            raise InputError(f"TabularProcessor: columns {sorted(overlap)} are both categorical and continuous")
        if self.cat_names and "Categorify" not in self.procs:
            raise InputError("TabularProcessor: categorical inputs need the Categorify proc")

    @property
    def fitted(self) -> bool:
        return bool(self.steps)

    @property
    def all_cat_names(self) -> list[str]:
        """The categorical inputs in model order: cat_names, then FillMissing's flags."""
        extra = [n for s in self.steps if isinstance(s, FillMissing) for n in s.added_cat_names]
        return self.cat_names + extra

    @property
    def categorify(self) -> Categorify | None:
        return next((s for s in self.steps if isinstance(s, Categorify)), None)

    def required_columns(self) -> list[str]:
        """The raw columns an input frame must have (date fields replace their parts)."""
        made = {c for s in self.steps if isinstance(s, AddDatepart) for c in s.new_columns}
        made |= {c for s in self.steps if isinstance(s, FillMissing) for c in s.added_cat_names}
        return list(self.date_fields) + [c for c in self.cat_names + self.cont_names if c not in made]

    def fit(self, df: pd.DataFrame) -> TabularProcessor:
        """Fit every step on the training frame `df`, in order."""
        if len(df) == 0:
            raise InputError("TabularProcessor.fit: the training frame is empty")
        self.steps = []
        frame = df
        for field in self.date_fields:
            frame = self._fit_step(AddDatepart(field), frame)
        require_columns(frame, self.cat_names + self.cont_names, "TabularProcessor")
        for name in self.procs:
            if name == "FillMissing":
                step = FillMissing(list(self.cont_names))
            elif name == "Categorify":
                step = Categorify(self.all_cat_names)
            else:
                step = Normalize(list(self.cont_names))
            frame = self._fit_step(step, frame)
        return self

    def _fit_step(self, step, frame: pd.DataFrame) -> pd.DataFrame:
        step.fit(frame)
        self.steps.append(step)
        return step.apply(frame)

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        """Apply the fitted steps to `df` (any split, or inference rows)."""
        if not self.fitted:
            raise InputError("TabularProcessor: call fit on the training frame before transform")
        frame = df
        for step in self.steps:
            frame = step.apply(frame)
        return frame

    def unseen(self, df: pd.DataFrame) -> list[tuple[object, str, str]]:
        """(row label, column, value) of the categories of `df` that training never saw
        (date parts included); they get the reserved code."""
        frame = df
        for step in self.steps:
            if isinstance(step, Categorify):
                return step.unseen(frame)
            frame = step.apply(frame)
        return []

    def to_arrays(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(x_cat int32 [N, n_cat], x_cont float32 [N, n_cont]) of the raw frame `df`."""
        frame = self.transform(df)
        cats = self.all_cat_names
        x_cat = np.zeros((len(frame), len(cats)), np.int32)
        for j, name in enumerate(cats):
            if not pd.api.types.is_integer_dtype(frame[name]):
                raise InputError(f"TabularProcessor: categorical column {name!r} is not integer codes after the procs")
            x_cat[:, j] = frame[name].to_numpy()
        x_cont = np.zeros((len(frame), len(self.cont_names)), np.float32)
        for j, name in enumerate(self.cont_names):
            values = numeric_column(frame, name, "TabularProcessor")
            if values.isna().any():
                raise InputError(f"TabularProcessor: continuous column {name!r} still has missing values at rows "
                                 f"{_rows(frame.index[values.isna()])} (no FillMissing proc?)")
            x_cont[:, j] = values.to_numpy()
        return x_cat, x_cont

    def embedding_sizes(self, rule=None) -> list[list[int]]:
        """[n_categories + 1, width] per categorical input (fastai's size rule by default)."""
        from jaxfast.models.tabular import emb_sz_rule

        rule = rule or emb_sz_rule
        categorify = self.categorify
        if categorify is None:
            return []
        return [[categorify.n_classes(n), rule(categorify.n_classes(n))] for n in self.all_cat_names]

    def to_json(self) -> dict:
        return {
            "cat_names": self.cat_names, "cont_names": self.cont_names, "procs": self.procs,
            "date_fields": self.date_fields, "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: dict) -> TabularProcessor:
        data = dict(data)
        steps = [Proc.from_json(s) for s in data.pop("steps", [])]
        return cls(**data, steps=steps)
