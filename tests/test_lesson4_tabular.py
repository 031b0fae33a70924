"""Lesson 4 tabular experiment: tiny runs on the builder's dummy data, and the real Adult data
(../shared/data/adult): the default recipe (every column, fit_one_cycle(5, 1e-2)) above 0.84
validation accuracy, the lesson's fit(1, 1e-2) on its 6 + 3 columns above 0.80."""

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from experiments import lesson4_tabular as lesson
from jaxfast import experiment
from jaxfast.data.download import check_reachable
from jaxfast.datasets import adult
from jaxfast.predict import main as predict

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DUMMY = Path(adult.__file__).parent / "dummy_data" / "adult"


def run_lesson(*args) -> dict:
    return experiment.run(lesson.main, lesson.Config(), lesson.TINY, args=list(args))


def predict_csv(export: Path, rows: Path) -> tuple[int, pd.DataFrame, str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict([str(export), str(rows)], out, err)
    return code, pd.read_csv(io.StringIO(out.getvalue())), err.getvalue()


def test_tiny_run_exports_a_predictor_and_resumes(tmp_path, capsys):
    workdir = tmp_path / "run"
    final = run_lesson("--tiny", "--data-dir", str(DUMMY), "--workdir", str(workdir))
    assert set(final) == {"valid_loss", "valid_accuracy"} and 0.0 <= final["valid_accuracy"] <= 1.0
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["final"] == final and saved["config"]["source"] == "fastai_sample"
    printed = capsys.readouterr().out
    assert "train 30 rows, valid 10 rows" in printed and "education-num_na" in printed
    assert printed.strip().splitlines()[-1].startswith("final: valid_loss=")
    code, table, _ = predict_csv(workdir / "export", DUMMY / "adult_sample" / "adult.csv")
    assert code == 0 and table.row.tolist() == list(range(1, 41))
    assert set(table.salary) <= {"<50k", ">=50k"} and table.probability.between(0.5, 1.0).all()
    again = run_lesson("--tiny", "--data-dir", str(DUMMY), "--workdir", str(workdir))
    assert again == final  # the finished run is picked up from its checkpoint, not retrained


def test_tiny_uci_layout_with_a_test_csv(tmp_path):
    final = run_lesson("--tiny", "--data-dir", str(DUMMY), "--source", "uci", "--valid-pct", "0.3",
                       "--workdir", str(tmp_path / "uci"))
    assert {"valid_accuracy", "test_accuracy", "test_loss"} <= set(final)  # adult.test beside adult.data
    final = run_lesson("--tiny", "--data-dir", str(DUMMY), "--source", "uci", "--valid-pct", "0.3",
                       "--test-csv", str(DUMMY / "adult_sample" / "adult.csv"), "--workdir", str(tmp_path / "csv"))
    metrics = json.loads((tmp_path / "csv" / "metrics.json").read_text())
    assert metrics["config"]["test_csv"].endswith("adult.csv") and "test_accuracy" in final


def test_offline_without_data_dir_fails_fast(tmp_path, capsys):
    if check_reachable(adult.FASTAI_URL):
        pytest.skip("the network is reachable: this test checks the offline message")
    with pytest.raises(SystemExit) as stop:
        run_lesson("--tiny", "--tfds-data-dir", str(tmp_path / "tfds"), "--workdir", str(tmp_path / "run"))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "'adult'" in err and "--data-dir" in err and "adult_sample/adult.csv" in err


@pytest.mark.slow
def test_real_adult_default_recipe(tmp_path):
    data = SHARED_DATA / "adult"
    if not data.exists():
        pytest.skip(f"real data set {data} is absent (it lives beside the repo in ../shared/data)")
    workdir = tmp_path / "adult"
    final = run_lesson("--data-dir", str(data), "--workdir", str(workdir), "--train.no-progress")
    assert final["valid_accuracy"] >= 0.84  # seen 0.857 (lesson's recipe: 0.836); fastai: 0.820 on 200 rows
    rows = tmp_path / "rows.csv"
    pd.read_csv(data / "adult_sample" / "adult.csv").iloc[:300].to_csv(rows, index=False)
    code, table, _ = predict_csv(workdir / "export", rows)
    truth = pd.read_csv(rows).salary
    assert code == 0 and len(table) == 300 and (table.salary == truth).mean() >= 0.75


@pytest.mark.slow
def test_real_adult_uci_file_with_its_header_line(tmp_path):
    data = SHARED_DATA / "adult"
    if not (data / "adult.data").exists():
        pytest.skip(f"real data set {data / 'adult.data'} is absent")
    lesson = ["--no-one-cycle", "--epochs", "1", "--cat-names", "workclass", "education", "marital-status",
              "occupation", "relationship", "race", "--cont-names", "age", "fnlwgt", "education-num"]
    final = run_lesson("--data-dir", str(data), "--source", "uci", "--workdir", str(tmp_path / "uci"),
                       "--train.no-progress", *lesson)
    assert final["valid_accuracy"] >= 0.80 and "test_accuracy" not in final  # this copy has no adult.test
