"""tfds builders for Adult and Rossmann, tested the tfds way on their dummy data, plus the
readers and the lesson's Rossmann cleaning against hand-checked values."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

from jaxfast.datasets import adult, rossmann
from jaxfast.tabular.data import frame_from_tfds

DUMMY = Path(adult.__file__).parent / "dummy_data"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
UCI_ROW = ("39, State-gov, 77516, Bachelors, 13, Never-married, ?, Not-in-family, White, Male, 2174, 0, 40, "
           "United-States, <=50K")


class AdultUciTest(tfds.testing.DatasetBuilderTestCase):
    """adult/uci from dummy adult.data (12 rows) and adult.test (6 rows); UCI checksums pinned."""

    DATASET_CLASS = adult.Adult
    BUILDER_CONFIG_NAMES_TO_TEST = ["uci"]
    EXAMPLE_DIR = str(DUMMY / "adult")
    SPLITS = {"train": 12, "test": 6}
    DL_EXTRACT_RESULT = {"train": "adult.data", "test": "adult.test"}


class AdultFastaiSampleTest(tfds.testing.DatasetBuilderTestCase):
    """adult/fastai_sample from a dummy adult_sample/adult.csv (40 rows)."""

    DATASET_CLASS = adult.Adult
    BUILDER_CONFIG_NAMES_TO_TEST = ["fastai_sample"]
    EXAMPLE_DIR = str(DUMMY / "adult")
    SPLITS = {"train": 40}
    SKIP_CHECKSUMS = True  # fastai publishes only an md5 of adult_sample.tgz (see adult.py)


class RossmannTest(tfds.testing.DatasetBuilderTestCase):
    """Both configs from the dummy manual dir: 42 train rows of which 6 closed, 6 test rows."""

    DATASET_CLASS = rossmann.Rossmann
    EXAMPLE_DIR = str(DUMMY / "rossmann")
    SPLITS = {"train": 36, "test": 6}


def test_checksums_pin_the_uci_files():
    infos = adult.Adult.url_infos
    data = infos[adult.UCI_URL + "adult.data"]
    assert (int(data.size), data.checksum) == (3974305, "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d")
    assert int(infos[adult.UCI_URL + "adult.test"].size) == 2003153


def test_shared_adult_data_is_the_uci_file_plus_a_header():
    import hashlib

    path = SHARED_DATA / "adult" / "adult.data"
    if not path.exists():
        pytest.skip(f"real data set {path} is absent")
    content = path.read_bytes()
    body = content[content.index(b"\n") + 1:]
    info = adult.Adult.url_infos[adult.UCI_URL + "adult.data"]
    assert len(body) == int(info.size)
    assert hashlib.sha256(body).hexdigest() == info.checksum


def test_prepared_adult_frames_match_the_reader(tmp_path, monkeypatch):
    """The tfds split read back as a frame equals reading the file directly."""
    builder = adult.Adult(config="uci", data_dir=str(tmp_path))
    files = {"train": DUMMY / "adult" / "adult.data", "test": DUMMY / "adult" / "adult.test"}
    monkeypatch.setattr(tfds.download.DownloadManager, "download", lambda self, urls: files)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    direct = adult.read_adult(files["test"])
    built = frame_from_tfds(builder, "test")[list(adult.COLUMNS)]
    key = ["age", "fnlwgt"]
    direct, built = direct.sort_values(key).reset_index(drop=True), built.sort_values(key).reset_index(drop=True)
    for name in adult.COLUMNS:
        if name in adult.CONTINUOUS:
            np.testing.assert_allclose(built[name], direct[name], err_msg=name)
        else:
            assert built[name].tolist() == direct[name].tolist(), name


def test_parse_adult_layouts_agree():
    uci = UCI_ROW + "\n\n"
    header = ",".join(adult.COLUMNS).replace("salary", "income")
    test_file = "|1x3 Cross validator\n" + uci.replace("<=50K", "<=50K.")
    fastai = ",".join(adult.COLUMNS) + (
        "\n39, State-gov,77516, Bachelors,13.0, Never-married,, Not-in-family, White, Male,2174,0,40, United-States,<50k\n")
    frames = [adult.parse_adult(t) for t in (uci, header + "\n" + uci, test_file, fastai)]
    for frame in frames:
        assert frame.shape == (1, 15) and frame.salary[0] == "<50k"
        assert frame.occupation.isna()[0] and frame["education-num"][0] == 13.0 and frame.workclass[0] == "State-gov"
        pd.testing.assert_frame_equal(frame, frames[0])


def test_parse_adult_names_bad_rows():
    good = UCI_ROW
    with pytest.raises(ValueError, match=r"rows.csv: data row 2: column 'age' value 'old'"):
        adult.parse_adult(good + "\n" + good.replace("39", "old", 1), "rows.csv")
    with pytest.raises(ValueError, match=r"data row 1: label 'rich'"):
        adult.parse_adult(good.replace("<=50K", "rich"), "rows.csv")


def test_local_files_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fastai adult.csv"):
        adult.local_files(tmp_path, "fastai_sample")
    with pytest.raises(FileNotFoundError, match="no UCI adult.data"):
        adult.local_files(tmp_path, "uci")


def test_rossmann_cleaning_hand_checked():
    tables = rossmann.read_tables(DUMMY / "rossmann", ("train", "store", *rossmann.EXTRA_TABLES))
    train, test = rossmann.clean_rossmann(tables, full=True)
    assert len(train) == 36 and (train.Sales > 0).all() and len(test) == 6
    row = train[(train.Store == 2) & (train.Date == "2015-07-14")].iloc[0]
    # store 2: competition since 2007-11-15 -> far more than 24 months; Promo2 since ISO week 13
    # of 2010 (Monday 2010-03-29) -> capped at 25 weeks; state TH.
    assert row.CompetitionMonthsOpen == 24 and row.Promo2Weeks == 25 and row.State == "TH"
    # promo ran on July 6-10: on the 14th it ended 4 days ago; store 2 is not in test, so no
    # later promo: BeforePromo is the lesson's fillna(0). Store 1 has a test promo on the 16th.
    assert row.AfterPromo == 4 and row.BeforePromo == 0
    assert train[(train.Store == 1) & (train.Date == "2015-07-14")].BeforePromo.iloc[0] == -2
    # the state holiday of store 2 on July 3: 11 days before the 14th; counts over 7 rows
    assert row.AfterStateHoliday == 11 and row.StateHoliday_bw == 0
    store3 = train[(train.Store == 3) & (train.Date == "2015-07-14")].iloc[0]
    assert store3.CompetitionMonthsOpen == 0 and np.isnan(store3.CompetitionDistance)
    # 7-row windows over train and test together (closed days included): on July 10, rows
    # July 4-10 hold 5 promo days (6..10); rows July 10-16 hold the 10th and test's 16th.
    day10 = train[(train.Store == 1) & (train.Date == "2015-07-10")].iloc[0]
    assert day10.Promo_bw == 5 and day10.Promo_fw == 2
    # googletrend week starting Sunday 2015-07-05 is ISO week 27: joined to July 1-5 (week 27)
    trend = tables["googletrend"]
    he_week27 = trend[(trend.file == "Rossmann_DE_HE") & trend.week.str.startswith("2015-07-05")].trend.iloc[0]
    assert train[(train.Store == 1) & (train.Date == "2015-07-02")].trend.iloc[0] == he_week27


def test_rossmann_train_store_config_needs_only_two_files(tmp_path):
    for name in ("train", "store"):
        (tmp_path / f"{name}.csv").write_text((DUMMY / "rossmann" / f"{name}.csv").read_text())
    tables = rossmann.read_tables(tmp_path, ("train", "store"))
    train, test = rossmann.clean_rossmann(tables, full=False)
    assert test is None and len(train) == 36 and "State" not in train.columns
    with pytest.raises(FileNotFoundError, match="missing store_states.csv, state_names.csv"):
        rossmann.read_tables(tmp_path, ("train", "store", *rossmann.EXTRA_TABLES))


def test_lesson6_rossmann_tiny_run_on_the_dummy_data(tmp_path):
    """The lesson 6 experiment end to end on the builder's dummy manual dir, and its export
    predicting the cleaned test rows exactly as the run's submission.csv."""
    import io

    from experiments import lesson6_rossmann as lesson
    from jaxfast import experiment
    from jaxfast.predict import main as predict

    workdir = tmp_path / "run"
    final = experiment.run(lesson.main, lesson.Config(), lesson.TINY,
                           args=["--tiny", "--data-dir", str(DUMMY / "rossmann"), "--workdir", str(workdir)])
    assert set(final) == {"valid_loss", "valid_exp_rmspe"} and np.isfinite(final["valid_exp_rmspe"])
    export = json.loads((workdir / "export" / "export.json").read_text())
    assert export["arch_config"]["layers"] == [32, 16] and export["arch_config"]["ps"] == [0.001, 0.01]
    assert export["arch_config"]["emb_drop"] == 0.04 and export["target"] == {
        "name": "Sales", "kind": "regression", "classes": [], "log": True}
    train = frame_from_tfds(rossmann.Rossmann(config="full", data_dir=str(workdir / "tfds")), "train")
    assert export["arch_config"]["y_range"] == pytest.approx([0.0, np.log(train.Sales.max() * 1.2)])
    submission = pd.read_csv(workdir / "submission.csv")
    assert submission.Id.tolist() == [1, 2, 3, 4, 5, 6] and (submission.Sales > 0).all()
    test = frame_from_tfds(rossmann.Rossmann(config="full", data_dir=str(workdir / "tfds")), "test")
    rows = tmp_path / "test_rows.csv"
    test.to_csv(rows, index=False)
    out, err = io.StringIO(), io.StringIO()
    assert predict([str(workdir / "export"), str(rows)], out, err) == 0, err.getvalue()
    predicted = pd.read_csv(io.StringIO(out.getvalue()))
    by_id = dict(zip(submission.Id, submission.Sales))
    np.testing.assert_allclose(predicted.Sales, [by_id[i] for i in test.Id], rtol=1e-5)
