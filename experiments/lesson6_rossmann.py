"""Lesson 6 (rossmann): daily sales of Rossmann stores, fastai's tabular model on joined tables.

The lesson: 22 categorical and 16 continuous columns after the data-cleaning notebook's joins,
FillMissing/Categorify/Normalize, log(Sales) as the target with y_range [0, log(1.2 max)],
layers [1000, 500], ps [0.001, 0.01], emb_drop 0.04, exp_rmspe, fit_one_cycle(5, 1e-3, wd=0.2):
exp_rmspe 0.1054. Validation: the most recent whole days holding len(test) rows, as the lesson.

Data: the tfds builder `rossmann` (jaxfast.datasets), prepared from --data-dir (Kaggle's
CSVs, plus the lesson's extra tables for `--tables full`) into <workdir>/tfds. With a test
split the run writes <workdir>/submission.csv (Id, Sales).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from jaxfast import experiment
from jaxfast.data.download import DatasetUnavailable
from jaxfast.errors import InputError, MissingInput
from jaxfast.experiment import Run, RunConfig
from jaxfast.learner import TrainConfig
from jaxfast.tabular import TabularProcessor, TabularTarget, tabular_databunch, tabular_learner

CAT_VARS = (
    "Store", "DayOfWeek", "Year", "Month", "Day", "StateHoliday", "CompetitionMonthsOpen", "Promo2Weeks",
    "StoreType", "Assortment", "PromoInterval", "CompetitionOpenSinceYear", "Promo2SinceYear", "State", "Week",
    "Events", "Promo_fw", "Promo_bw", "StateHoliday_fw", "StateHoliday_bw", "SchoolHoliday_fw", "SchoolHoliday_bw",
)
CONT_VARS = (
    "CompetitionDistance", "Max_TemperatureC", "Mean_TemperatureC", "Min_TemperatureC", "Max_Humidity",
    "Mean_Humidity", "Min_Humidity", "Max_Wind_SpeedKm_h", "Mean_Wind_SpeedKm_h", "CloudCover", "trend", "trend_DE",
    "AfterPromo", "BeforePromo", "AfterSchoolHoliday", "BeforeSchoolHoliday",
)
DEP_VAR = "Sales"


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 6: Rossmann sales, log target, layers [1000, 500], fit_one_cycle(5, 1e-3, wd=0.2).

    --data-dir: Kaggle's train.csv, store.csv, test.csv (+ the lesson's tables for --tables full); else a prepared
    tfds 'rossmann'. The workdir also receives tfds/ (the prepared data) and submission.csv."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig()
    tables: Literal["full", "train_store"] = "full"
    """full: the lesson's joins (states, weather, Google trends); train_store: Kaggle's train + store only."""
    valid_rows: int | None = None
    """Validation rows (rounded up to whole days); default len(test), as the lesson."""
    layers: tuple[int, ...] = (1000, 500)
    ps: tuple[float, ...] = (0.001, 0.01)
    emb_drop: float = 0.04
    batch_size: int = 64
    epochs: int = 5
    lr: float = 1e-3
    wd: float = 0.2
    """fit_one_cycle's weight decay (the lesson's wd=0.2)."""
    tfds_data_dir: str | None = None
    """Where a prepared tfds 'rossmann' is looked for without --data-dir (default ~/tensorflow_datasets)."""


TINY = Config(train=TrainConfig(progress=False), layers=(32, 16), batch_size=8, epochs=2)


def load_frames(config: Config, workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None, str]:
    """(train, test or None, note) from the tfds builder."""
    import tensorflow_datasets as tfds

    from jaxfast.datasets.rossmann import MANUAL_INSTRUCTIONS, Rossmann
    from jaxfast.tabular.data import frame_from_tfds

    data_dir = config.run.data_dir
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise MissingInput(f"--data-dir {data_dir} is not a folder.\n{MANUAL_INSTRUCTIONS}")
        builder = Rossmann(config=config.tables, data_dir=str(workdir / "tfds"))
        if not builder.is_prepared():
            if not config.train.progress:
                tfds.disable_progress_bar()
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                manual_dir=data_dir, compute_stats=tfds.download.ComputeStatsMode.SKIP))
    else:
        builder = Rossmann(config=config.tables, data_dir=config.tfds_data_dir)
        if not builder.is_prepared():
            raise DatasetUnavailable(f"Dataset 'rossmann/{config.tables}' is not prepared in {builder.data_dir} and "
                                     f"needs a manual download. Pass --data-dir with the CSVs.\n{MANUAL_INSTRUCTIONS}")
    test = frame_from_tfds(builder, "test") if "test" in builder.info.splits else None
    return frame_from_tfds(builder, "train"), test, f"rossmann/{config.tables} from tfds in {builder.data_dir}"


def split_recent(df: pd.DataFrame, n_valid: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation: every row dated on or after the n_valid-th most recent row's date."""
    dates = pd.to_datetime(df.Date)
    if not 0 < n_valid < len(df):
        raise InputError(f"valid_rows {n_valid} must be between 1 and {len(df) - 1} (the train split has {len(df)} rows)")
    cutoff = dates.sort_values(ascending=False).iloc[n_valid - 1]
    valid = dates >= cutoff
    if valid.all():
        raise InputError(f"valid_rows {n_valid}: the most recent whole days hold every training row")
    return df[~valid], df[valid]


def main(config: Config, workdir: Path) -> dict:
    df, test, note = load_frames(config, workdir)
    print(note)
    if config.valid_rows is None and test is None:
        raise InputError("no test split to size the validation set on; pass --valid-rows")
    train, valid = split_recent(df, config.valid_rows or len(test))
    full = config.tables == "full"
    cats = [c for c in CAT_VARS if full or c not in ("State", "Events")]
    conts = [c for c in CONT_VARS if c in df.columns]
    processor = TabularProcessor(cats, conts, date_fields=("Date",)).fit(train)
    target = TabularTarget(DEP_VAR, kind="regression", log=True).fit(train)
    y_range = (0.0, float(np.log(df[DEP_VAR].max() * 1.2)))
    data = tabular_databunch(processor, target, train, valid, config.batch_size, config.train.seed)
    print(f"train {len(train)} rows ({train.Date.min()} to {train.Date.max()}), valid {len(valid)} rows "
          f"({valid.Date.min()} to {valid.Date.max()})" + (f", test {len(test)} rows" if test is not None else ""))
    learn = tabular_learner(data, config.layers, metrics=["exp_rmspe"], ps=config.ps, emb_drop=config.emb_drop,
                            y_range=y_range, config=config.train, workdir=workdir)
    learn.fit_one_cycle(config.epochs, config.lr, wd=config.wd)
    results = learn.evaluate_all()
    print(", ".join(f"{k} {v:.4f}" for k, v in results.items()))
    path = learn.export(workdir / "export")
    print(f"export: {path}")
    if test is not None:
        sales = target.decode(learn.predict(processor.to_arrays(test)))[DEP_VAR]
        pd.DataFrame({"Id": test.Id.to_numpy(), DEP_VAR: sales.to_numpy()}).sort_values("Id").to_csv(
            workdir / "submission.csv", index=False)
        print(f"test predictions: {workdir / 'submission.csv'}")
    return results


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
