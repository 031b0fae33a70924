"""Kaggle's Rossmann Store Sales, joined and cleaned as fastai's lesson 6 (rossmann_data_clean)
does, as a tfds builder reading the CSVs from tfds' manual_dir.

Configs:
- `full`: train, store and the lesson's extra tables (store_states, state_names, weather,
  googletrend): store, state, weather and Google-trend joins;
- `train_store`: only train.csv and store.csv (the minimal path).
test.csv is optional in both: when present it is the `test` split, and the durations
(days since/until a promo or holiday, 7-day rolling counts) run over train and test
together, as in the lesson.

Each example is one store-day: `Date` as YYYY-MM-DD text (date parts are a proc of the
model's pipeline), the joined columns, `Sales` (NaN in test), `Id` (-1 in train). Training
rows with zero sales (closed stores) are dropped, as in the lesson.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from jaxfast.errors import MissingInput
from etils import epath

KAGGLE_URL = "https://www.kaggle.com/c/rossmann-store-sales/data"
FASTAI_TABLES_URL = "http://files.fast.ai/part2/lesson14/rossmann.tgz"
EXTRA_TABLES = ("store_states", "state_names", "googletrend", "weather")

MANUAL_INSTRUCTIONS = f"""\
Put Kaggle's Rossmann Store Sales files train.csv, store.csv and (optionally) test.csv from
{KAGGLE_URL} in the manual dir (tfds' `manual_dir`, or the experiment's --data-dir).
The `full` config also needs the lesson's extra tables store_states.csv, state_names.csv,
weather.csv and googletrend.csv, found with Kaggle's three files in fastai's
{FASTAI_TABLES_URL}.
"""

DURATION_FIELDS = ("SchoolHoliday", "StateHoliday", "Promo")
INT_FEATURES = (
    "Id", "Store", "DayOfWeek", "Promo", "SchoolHoliday", "CompetitionOpenSinceYear", "CompetitionMonthsOpen",
    "Promo2SinceYear", "Promo2Weeks",
    *(f"{when}{field}" for field in DURATION_FIELDS for when in ("After", "Before")),
    *(f"{field}_{way}" for field in DURATION_FIELDS for way in ("bw", "fw")),
)
BOOL_FEATURES = ("StateHoliday",)
TEXT_FEATURES = ("Date", "StoreType", "Assortment", "PromoInterval")
FLOAT_FEATURES = ("CompetitionDistance", "Sales")
WEATHER = (
    "Max_TemperatureC", "Mean_TemperatureC", "Min_TemperatureC", "Max_Humidity", "Mean_Humidity", "Min_Humidity",
    "Max_Wind_SpeedKm_h", "Mean_Wind_SpeedKm_h", "CloudCover",
)
FULL_TEXT_FEATURES = ("State", "Events")
FULL_FLOAT_FEATURES = (*WEATHER, "trend", "trend_DE")


@dataclasses.dataclass
class RossmannConfig(tfds.core.BuilderConfig):
    """Which tables are joined."""

    extra_tables: tuple[str, ...] = ()


def feature_columns(full: bool) -> dict[str, tuple[str, ...]]:
    """Feature names by kind ('int', 'bool', 'text', 'float') of a config."""
    return {
        "int": INT_FEATURES, "bool": BOOL_FEATURES,
        "text": TEXT_FEATURES + (FULL_TEXT_FEATURES if full else ()),
        "float": FLOAT_FEATURES + (FULL_FLOAT_FEATURES if full else ()),
    }


def read_tables(folder, names) -> dict[str, pd.DataFrame]:
    """The CSV tables `names` (plus test.csv when present) of a folder."""
    folder = epath.Path(folder)
    missing = [f"{n}.csv" for n in names if not (folder / f"{n}.csv").exists()]
    if missing:
        raise MissingInput(f"{folder}: missing {', '.join(missing)}.\n{MANUAL_INSTRUCTIONS}")
    tables = {}
    for name in [*names, "test"]:
        path = folder / f"{name}.csv"
        if name == "test" and not path.exists():
            continue
        with path.open() as f:
            tables[name] = pd.read_csv(f, low_memory=False, dtype={"StateHoliday": str})
    return tables


def _join(left, right, left_on, right_on=None, suffix="_y"):
    """The lesson's join_df: a left merge that keeps the left rows (right keys made unique)."""
    right_on = right_on or left_on
    right = right.drop_duplicates(subset=right_on)
    return left.merge(right, how="left", left_on=left_on, right_on=right_on, suffixes=("", suffix))


def _year_week(dates: pd.Series) -> pd.DataFrame:
    """The lesson's join keys from add_datepart: calendar Year and ISO Week."""
    return pd.DataFrame({"Year": dates.dt.year, "Week": dates.dt.isocalendar().week.astype("int64")}, index=dates.index)


def _iso_week_monday(year: pd.Series, week: pd.Series) -> pd.Series:
    """Monday of ISO week `week` of `year` (isoweek's Week(year, week).monday())."""
    jan4 = pd.to_datetime(pd.DataFrame({"year": year, "month": 1, "day": 4}))
    return jan4 - pd.to_timedelta(jan4.dt.day_of_week, unit="D") + pd.to_timedelta((week - 1) * 7, unit="D")


def _competition_and_promo(df: pd.DataFrame) -> pd.DataFrame:
    """CompetitionMonthsOpen (0..24) and Promo2Weeks (0..25) as in the lesson."""
    df = df.copy()
    df["CompetitionOpenSinceYear"] = df.CompetitionOpenSinceYear.fillna(1900).astype(np.int32)
    df["CompetitionOpenSinceMonth"] = df.CompetitionOpenSinceMonth.fillna(1).astype(np.int32)
    df["Promo2SinceYear"] = df.Promo2SinceYear.fillna(1900).astype(np.int32)
    df["Promo2SinceWeek"] = df.Promo2SinceWeek.fillna(1).astype(np.int32)
    since = pd.to_datetime(pd.DataFrame(
        {"year": df.CompetitionOpenSinceYear, "month": df.CompetitionOpenSinceMonth, "day": 15}))
    days = (df.Date - since).dt.days
    days = days.where((days >= 0) & (df.CompetitionOpenSinceYear >= 1990), 0)
    df["CompetitionMonthsOpen"] = (days // 30).clip(upper=24)
    promo_days = (df.Date - _iso_week_monday(df.Promo2SinceYear, df.Promo2SinceWeek)).dt.days
    promo_days = promo_days.where((promo_days >= 0) & (df.Promo2SinceYear >= 1990), 0)
    df["Promo2Weeks"] = (promo_days // 7).clip(0, 25)
    return df


def _durations(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per store and date: days after/before the nearest SchoolHoliday, StateHoliday, Promo
    (0 when none), and their counts over this and the 6 previous (_bw) / next (_fw) rows."""
    df = pd.concat([f[["Date", "Store", *DURATION_FIELDS]] for f in frames], ignore_index=True)
    for field in DURATION_FIELDS:
        df[field] = df[field].astype(int)
    for when, ascending in (("After", True), ("Before", False)):
        ordered = df.sort_values(["Store", "Date"], ascending=[True, ascending], kind="stable")
        for field in DURATION_FIELDS:
            last = ordered.Date.where(ordered[field] > 0).groupby(ordered.Store).ffill()
            df[when + field] = (ordered.Date - last).dt.days.reindex(df.index).fillna(0).astype(int)
    for way, ascending in (("bw", True), ("fw", False)):
        ordered = df.sort_values(["Store", "Date"], ascending=[True, ascending], kind="stable")
        sums = ordered.groupby("Store")[list(DURATION_FIELDS)].rolling(7, min_periods=1).sum()
        sums = sums.reset_index(level=0, drop=True).reindex(df.index)
        for field in DURATION_FIELDS:
            df[f"{field}_{way}"] = sums[field].astype(int)
    return df.drop(columns=list(DURATION_FIELDS))


def clean_rossmann(tables: dict[str, pd.DataFrame], full: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(train, test or None) joined and cleaned as the lesson's rossmann_data_clean notebook."""
    frames = {"train": tables["train"].copy()}
    if "test" in tables:
        frames["test"] = tables["test"].copy()
    for df in frames.values():
        df["StateHoliday"] = df.StateHoliday.astype(str) != "0"
        df["Date"] = pd.to_datetime(df.Date)
    store = tables["store"]
    if full:
        store = _join(store, tables["store_states"], "Store")
        weather = _join(tables["weather"], tables["state_names"], "file", "StateName")
        weather["Date"] = pd.to_datetime(weather.Date)
        trend = tables["googletrend"].copy()
        trend["Date"] = pd.to_datetime(trend.week.str.split(" - ", expand=True)[0])
        trend["State"] = trend.file.str.split("_").str[2]
        trend.loc[trend.State == "NI", "State"] = "HB,NI"
        trend = pd.concat([trend, _year_week(trend.Date)], axis=1)
        trend_de = trend[trend.file == "Rossmann_DE"][["Year", "Week", "trend"]]
    durations = _durations(list(frames.values()))
    for split, df in frames.items():
        df = _join(df, store, "Store")
        if full:
            df = pd.concat([df, _year_week(df.Date)], axis=1)
            df = _join(df, trend[["State", "Year", "Week", "trend"]], ["State", "Year", "Week"])
            df = _join(df, trend_de, ["Year", "Week"], suffix="_DE")
            df = _join(df, weather[["State", "Date", *WEATHER, "Events"]], ["State", "Date"])
        df = _competition_and_promo(df)
        df = _join(df, durations, ["Store", "Date"])
        if split == "train":
            df = df[df.Sales != 0]
        frames[split] = _select(df, full)
    return frames["train"], frames.get("test")


def _select(df: pd.DataFrame, full: bool) -> pd.DataFrame:
    """The feature columns, with the types of the tfds features."""
    out = pd.DataFrame(index=df.index)
    kinds = feature_columns(full)
    for name in kinds["int"]:
        out[name] = df[name].fillna(-1).astype(np.int64) if name in df else -1
    for name in kinds["bool"]:
        out[name] = df[name].astype(bool)
    for name in kinds["text"]:
        if name == "Date":
            out[name] = df.Date.dt.strftime("%Y-%m-%d")
        else:
            out[name] = df[name].astype(object).where(df[name].notna(), None)
    for name in kinds["float"]:
        out[name] = df[name].astype(np.float64) if name in df else np.nan
    return out.reset_index(drop=True)


class Rossmann(tfds.core.GeneratorBasedBuilder):
    """Rossmann Store Sales (Kaggle), joined as in fastai's lesson 6."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: the lesson's joins and cleaning."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    BUILDER_CONFIGS = [
        RossmannConfig(name="full", description="Train and store joined with states, weather and Google trends.",
                       extra_tables=EXTRA_TABLES),
        RossmannConfig(name="train_store", description="Train joined with store only (Kaggle's files alone)."),
    ]

    @property
    def _full(self) -> bool:
        return bool(self.builder_config.extra_tables)

    def _info(self) -> tfds.core.DatasetInfo:
        kinds = feature_columns(self._full)
        spec = {name: np.int32 for name in kinds["int"]}
        spec.update({name: np.bool_ for name in kinds["bool"]})
        spec.update({name: tfds.features.Text() for name in kinds["text"]})
        spec.update({name: np.float32 for name in kinds["float"]})
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__, features=tfds.features.FeaturesDict(spec),
            homepage="https://www.kaggle.com/c/rossmann-store-sales",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        tables = read_tables(dl_manager.manual_dir, ("train", "store", *self.builder_config.extra_tables))
        train, test = clean_rossmann(tables, self._full)
        splits = {"train": self._generate_examples(train, "train")}
        if test is not None:
            splits["test"] = self._generate_examples(test, "test")
        return splits

    def _generate_examples(self, frame: pd.DataFrame, split: str):
        text = set(feature_columns(self._full)["text"])
        for row in frame.to_dict("records"):
            key = f"{row['Store']}_{row['Date']}" if split == "train" else f"test_{row['Id']}"
            yield key, {name: ("" if name in text and value is None else value) for name, value in row.items()}
