"""UCI Adult (census income), lesson 4's data: a tfds builder and readers for local copies.

Builder configs:
- `uci`: UCI's adult.data (train, 32,561 rows) and adult.test (test, 16,281 rows);
- `fastai_sample`: fastai's adult_sample.tgz, whose adult.csv holds UCI's training rows,
  shuffled, with some blank cells (the lesson's file).

Every layout becomes the same frame: fastai's column names (`education-num`, `salary`...),
text stripped, '?' and blank cells missing, labels `<50k` / `>=50k`. Also read: the UCI
files with a header line added (as in ../shared/data/adult) and adult.test's `|1x3 Cross
validator` first line and trailing '.' on labels.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from jaxfast.errors import InputError, MissingInput
from etils import epath

COLUMNS = (
    "age", "workclass", "fnlwgt", "education", "education-num", "marital-status", "occupation",
    "relationship", "race", "sex", "capital-gain", "capital-loss", "hours-per-week", "native-country", "salary",
)
TARGET = "salary"
CONTINUOUS = ("age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week")
CATEGORICAL = tuple(c for c in COLUMNS if c not in CONTINUOUS and c != TARGET)
LABELS = ("<50k", ">=50k")
NA_VALUES = ("?",)  # besides blank cells
_LABEL_ALIASES = {"<=50K": "<50k", ">50K": ">=50k", "<50k": "<50k", ">=50k": ">=50k"}

UCI_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/adult/"
FASTAI_URL = "https://s3.amazonaws.com/fast-ai-sample/adult_sample.tgz"
DATA_DIR_HINT = (
    "a folder holding fastai's adult_sample/adult.csv (or adult.csv), or UCI's adult.data "
    "(and optionally adult.test)"
)
# checksums.tsv beside this file pins UCI's adult.data and adult.test (sha256 and size, the
# values published with the UCI files and recorded by other projects; adult.data's also
# checked here against ../shared/data/adult/adult.data without its added header line).
# fastai publishes only an md5 for adult_sample.tgz (968212 bytes, 64eb9d7e23732de0b138f7372d15492f)
# and tfds needs a sha256, which can only come from the file itself: the first online build
# records it with `tfds build adult --imports jaxfast.datasets --config fastai_sample --register_checksums`.


def parse_adult(text: str, source: str = "adult") -> pd.DataFrame:
    """Any supported layout of the Adult data as the canonical frame (see the module doc)."""
    lines = text.splitlines()
    body = [line for line in lines if line.strip() and not line.startswith("|")]
    if not body:
        raise InputError(f"{source}: no data rows")
    first = [field.strip() for field in body[0].split(",")]
    names = list(COLUMNS)
    if first[0] == "age":  # a header line: fastai's names, or the UCI files' added header
        if TARGET in first:
            missing = [c for c in COLUMNS if c not in first]
            if missing:
                raise InputError(f"{source}: header lacks the column(s) {missing}; it has {first}")
            names = first
        elif len(first) != len(COLUMNS):
            raise InputError(f"{source}: header has {len(first)} fields, UCI's layout has {len(COLUMNS)}")
        body = body[1:]
    frame = pd.read_csv(io.StringIO("\n".join(body)), header=None, names=names, dtype=str, keep_default_na=False)
    frame = frame.apply(lambda col: col.str.strip())
    frame = frame.replace({text: None for text in ("", *NA_VALUES)})[list(COLUMNS)]
    for name in CONTINUOUS:
        values = pd.to_numeric(frame[name], errors="coerce")
        bad = values.isna() & frame[name].notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            value = frame[name][bad].iloc[0]
            raise InputError(f"{source}: data row {row}: column {name!r} value {value!r} is not a number")
        frame[name] = values.astype("float64")
    labels = frame[TARGET].str.rstrip(".").map(_LABEL_ALIASES)
    if labels.isna().any():
        row = int(np.flatnonzero(labels.isna().to_numpy())[0]) + 1
        raise InputError(f"{source}: data row {row}: label {frame[TARGET].iloc[row - 1]!r} is not one of "
                         f"{sorted(_LABEL_ALIASES)}")
    frame[TARGET] = labels
    return frame


def read_adult(path: str | Path) -> pd.DataFrame:
    """Read one Adult file (adult.data, adult.test or fastai's adult.csv)."""
    path = epath.Path(path)
    if not path.exists():
        raise MissingInput(f"{path} does not exist")
    return parse_adult(path.read_text(encoding="utf-8"), str(path))


@dataclasses.dataclass(frozen=True, eq=False)
class AdultFrames:
    """The canonical frames and where they came from."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    note: str


def local_files(data_dir: str | Path, source: str) -> tuple[Path, Path | None]:
    """(train file, test file or None) of `source` in a local folder."""
    folder = Path(data_dir)
    if source == "fastai_sample":
        candidates = [folder / "adult_sample" / "adult.csv", folder / "adult.csv"]
        for path in candidates:
            if path.is_file():
                return path, None
        raise MissingInput(f"{folder}: no fastai adult.csv (looked for {', '.join(map(str, candidates))})")
    if source == "uci":
        train = folder / "adult.data"
        if not train.is_file():
            raise MissingInput(f"{folder}: no UCI adult.data")
        test = folder / "adult.test"
        return train, test if test.is_file() else None
    raise InputError(f"unknown Adult source {source!r}; use 'fastai_sample' or 'uci'")


def load_adult(
    data_dir: str | Path | None, source: str = "fastai_sample", tfds_data_dir: str | None = None,
) -> AdultFrames:
    """Adult from a local folder (`data_dir`), else from the tfds builder (downloads once)."""
    if data_dir is not None:
        train_path, test_path = local_files(data_dir, source)
        test = read_adult(test_path) if test_path is not None else None
        note = f"Adult ({source}) from {train_path}" + (f" and {test_path}" if test_path else "")
        return AdultFrames(read_adult(train_path), test, note)
    from jaxfast.data.download import require_download
    from jaxfast.tabular.data import frame_from_tfds

    builder = Adult(config=source, data_dir=tfds_data_dir)
    if not builder.is_prepared():
        require_download("adult", FASTAI_URL if source == "fastai_sample" else UCI_URL + "adult.data", DATA_DIR_HINT)
        builder.download_and_prepare()
    test = frame_from_tfds(builder, "test") if "test" in builder.info.splits else None
    return AdultFrames(frame_from_tfds(builder, "train"), test, f"Adult ({source}) from tfds in {builder.data_dir}")


def _features() -> tfds.features.FeaturesDict:
    spec = {name: np.float32 for name in CONTINUOUS}
    spec.update({name: tfds.features.Text() for name in CATEGORICAL})
    spec[TARGET] = tfds.features.ClassLabel(names=list(LABELS))
    return tfds.features.FeaturesDict(spec)


class Adult(tfds.core.GeneratorBasedBuilder):
    """UCI Adult census income: does a person earn more than $50k a year?"""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: UCI files and fastai's adult_sample."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="uci", description="UCI's adult.data (train) and adult.test (test)."),
        tfds.core.BuilderConfig(name="fastai_sample", description="fastai's adult_sample/adult.csv (train only)."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=_features(),
            homepage="https://archive.ics.uci.edu/dataset/2/adult",
            citation="Becker, B. and Kohavi, R. (1996). Adult. UCI Machine Learning Repository. "
                     "https://doi.org/10.24432/C5XW20",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        if self.builder_config.name == "uci":
            paths = dl_manager.download({"train": UCI_URL + "adult.data", "test": UCI_URL + "adult.test"})
            return {split: self._generate_examples(path) for split, path in paths.items()}
        folder = dl_manager.download_and_extract(FASTAI_URL)
        return {"train": self._generate_examples(folder / "adult_sample" / "adult.csv")}

    def _generate_examples(self, path):
        frame = read_adult(path)
        for i, row in enumerate(frame.to_dict("records")):
            example = {name: ("" if row[name] is None else row[name]) for name in CATEGORICAL}
            example.update({name: np.float32(row[name]) for name in CONTINUOUS})
            example[TARGET] = row[TARGET]
            yield i, example
