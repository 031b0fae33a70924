"""`python -m jaxfast.predict` on tabular exports: the training procs, row-numbered errors,
the reserved index for unseen categories, and kinds it does not support."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxfast.export import export_model, load_export
from jaxfast.models.registry import build_model
from jaxfast.predict import main
from jaxfast.state import init_variables
from jaxfast.tabular import TabularProcessor, TabularTarget, export_meta, model_config

REPO = Path(__file__).resolve().parents[1]
HEADER = "Date,color,size,label\n"


def training_frame(n=60, seed=0):
    rng = np.random.default_rng(seed)
    size = rng.normal(10, 3, n)
    size[::7] = np.nan
    return pd.DataFrame({
        "Date": pd.date_range("2015-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
        "color": rng.choice(["red", "green", "blue"], n), "size": size,
        "label": rng.choice(["no", "yes"], n), "amount": rng.uniform(1, 100, n),
    })


def make_export(path: Path, target: TabularTarget, seed=0) -> Path:
    """An export of an (untrained) tabular model with fitted procs: what predict must reproduce."""
    frame = training_frame()
    processor = TabularProcessor(["color", "Dayofweek"], ["size"], date_fields=["Date"]).fit(frame)
    target.fit(frame)
    arch = model_config(processor, target, [8], y_range=[0.0, 5.0] if target.kind == "regression" else None)
    model = build_model("tabular", arch)
    params, stats = init_variables(model, processor.to_arrays(frame.iloc[:4]), seed)
    return export_model(path, "tabular", arch, {"params": params, "batch_stats": stats},
                        export_meta(processor, target, na_values=["?"]))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    return make_export(tmp_path_factory.mktemp("predict") / "export", TabularTarget("label"))


def run(export: Path, *files) -> tuple[int, pd.DataFrame | None, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(export), *map(str, files)], out, err)
    text = out.getvalue()
    return code, pd.read_csv(io.StringIO(text)) if text else None, err.getvalue()


def expected(export: Path, rows: list[dict]) -> pd.DataFrame:
    """Predictions computed without the CLI: procs from the export's JSON, then the model."""
    exported = load_export(export)
    processor = TabularProcessor.from_json(exported.meta["processor"])
    target = TabularTarget.from_json(exported.meta["target"])
    return target.decode(exported.predict(processor.to_arrays(pd.DataFrame(rows))))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_predicts_with_the_training_procs(classifier, tmp_path):
    rows = write(tmp_path / "rows.csv", HEADER + "2015-03-01,red,12.5,yes\n2016-07-04,blue,,no\n2015-01-02,green,7,\n")
    code, table, err = run(classifier, rows)
    assert code == 0 and err == ""
    assert table.row.tolist() == [1, 2, 3] and list(table.columns) == ["row", "label", "probability"]
    want = expected(classifier, [
        {"Date": "2015-03-01", "color": "red", "size": 12.5}, {"Date": "2016-07-04", "color": "blue", "size": np.nan},
        {"Date": "2015-01-02", "color": "green", "size": 7.0},
    ])
    assert table.label.tolist() == want.label.tolist()
    np.testing.assert_allclose(table.probability, want.probability, rtol=1e-5)
    assert ((table.probability >= 0.5) & (table.probability <= 1)).all()


def test_unseen_category_uses_the_reserved_index(classifier, tmp_path):
    rows = write(tmp_path / "rows.csv", HEADER + "".join(
        f"2015-03-01,{color},12.5,\n" for color in ("purple", "", "?", "red")))
    code, table, err = run(classifier, rows)
    assert code == 0
    # purple (unseen), blank and '?' (missing) all get index 0: the same prediction; red differs
    assert table.probability[0] == table.probability[1] == table.probability[2] != table.probability[3]
    assert err.strip() == (f"note: {rows} row 1: color='purple' was not seen in training; "
                           "it uses the reserved index 0 (#na#)")


def test_bad_rows_are_named_and_the_rest_predicted(classifier, tmp_path):
    rows = write(tmp_path / "rows.csv", HEADER + "\n".join([
        "2015-03-01,red,12.5,yes", "2015-03-02,red", "2015-03-03,red,big,no", "someday,red,1,no",
        "2015-03-05,red,1,no,extra", "2015-03-06,green,3,no",
    ]) + "\n")
    code, table, err = run(classifier, rows)
    assert code == 1 and table.row.tolist() == [1, 6]
    lines = err.strip().splitlines()
    assert lines == [
        f"error: {rows} row 2 (line 3): missing column(s) ['size'] (2 of the header's 4 fields); skipped",
        f"error: {rows} row 3 (line 4): column 'size' value 'big' is not a number; skipped",
        f"error: {rows} row 4 (line 5): column 'Date' value 'someday' is not a date; skipped",
        f"error: {rows} row 5 (line 6): 5 fields but the header has 4; skipped",
    ]


def test_missing_column_in_the_header_stops_that_file(classifier, tmp_path):
    rows = write(tmp_path / "rows.csv", "Date,size\n2015-03-01,3\n")
    code, table, err = run(classifier, rows)
    assert code == 2 and table is None
    assert f"{rows}: column(s) ['color'] missing from the header" in err


def test_several_files_get_a_file_column(classifier, tmp_path):
    first = write(tmp_path / "a.csv", HEADER + "2015-03-01,red,1,\n")
    second = write(tmp_path / "b.csv", "color,size,Date\nblue,2,2015-03-02\ngreen,3,2015-03-03\n")
    code, table, _ = run(classifier, first, second)
    assert code == 0 and table.file.tolist() == [str(first), str(second), str(second)]
    assert table.row.tolist() == [1, 1, 2]


def test_regression_export_prints_exp_of_the_log_value(tmp_path):
    export = make_export(tmp_path / "reg", TabularTarget("amount", kind="regression", log=True))
    rows = write(tmp_path / "rows.csv", HEADER + "2015-03-01,red,12.5,\n")
    code, table, _ = run(export, rows)
    exported = load_export(export)
    processor = TabularProcessor.from_json(exported.meta["processor"])
    raw = exported.predict(processor.to_arrays(pd.DataFrame([{"Date": "2015-03-01", "color": "red", "size": 12.5}])))
    assert code == 0 and list(table.columns) == ["row", "amount"]
    assert 0.0 <= raw[0, 0] <= 5.0  # the y_range
    assert table.amount[0] == pytest.approx(np.exp(raw[0, 0]), rel=1e-5)


def test_unsupported_or_missing_exports(classifier, tmp_path):
    image = tmp_path / "image_export"
    shutil.copytree(classifier, image)
    meta = json.loads((image / "export.json").read_text())
    (image / "export.json").write_text(json.dumps({**meta, "kind": "audio"}))
    code, _, err = run(image, tmp_path / "x.wav")
    assert code == 2 and "exports of kind 'audio' are not supported yet; supported: image_classifier, tabular" in err
    code, _, err = run(tmp_path / "nowhere", tmp_path / "rows.csv")
    assert code == 2 and "is not a jaxfast export: export.json is missing" in err
    code, _, err = run(classifier, tmp_path / "absent.csv")
    assert code == 2 and "absent.csv" in err


def test_command_line(classifier, tmp_path):
    rows = write(tmp_path / "rows.csv", HEADER + "2015-03-01,red,12.5,yes\n")
    result = subprocess.run([sys.executable, "-m", "jaxfast.predict", str(classifier), str(rows)],
                            check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "row,label,probability" and result.stdout.splitlines()[1].startswith("1,")
