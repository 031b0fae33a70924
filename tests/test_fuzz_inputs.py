"""Hostile inputs, fuzzed with Hypothesis (bounded: max_examples and a deadline per example):
random bytes as images, CSVs with wrong types, bad encodings, missing, extra or repeated
columns and huge fields (tabular predict, collab ratings, texts.csv), export.json and weight
files that do not fit each other, truncated or flipped weight files. Each must end in ONE
clear error (an InputError naming the file/row/column/parameter; exit status 2 from the
CLI when nothing is predicted) or a well-formed prediction; never a hang, a deep traceback or
a silent wrong prediction. Exports load without unpickling anything."""

import ast
import csv
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxfast import load_learner
from jaxfast.collab.data import read_ml100k, read_ratings_csv
from jaxfast.errors import InputError, JaxfastError
from jaxfast.export import export_model, load_export
from jaxfast.models.registry import build_model
from jaxfast.predict import main as predict_cli
from jaxfast.state import init_variables
from jaxfast.tabular import TabularTarget
from jaxfast.text.sources import read_texts_csv
from jaxfast.vision.predict_images import image_export_meta
from test_predict_tabular import make_export

REPO = Path(__file__).resolve().parents[1]
# JAXFAST_FUZZ_EXAMPLES=500 for a longer campaign (derandomized: the same examples every run).
FUZZ = settings(max_examples=int(os.environ.get("JAXFAST_FUZZ_EXAMPLES", "30")), deadline=10_000,
                suppress_health_check=[HealthCheck.too_slow], derandomize=True)
GOOD_ROW = {"Date": "2015-03-04", "color": "red", "size": "3.5"}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def tabular_export(scratch) -> Path:
    return make_export(scratch / "tabular_export", TabularTarget("label"))


@pytest.fixture(scope="module")
def image_export(scratch) -> Path:
    """An (untrained) greyscale MNIST ResNet export, as lesson 7 writes it."""
    config = {"widths": [4, 4, 4, 4], "n_classes": 3, "conv_lowering": "xla"}
    params, stats = init_variables(build_model("mnist_resnet", config), np.zeros((1, 28, 28, 1), np.float32), 0)
    meta = image_export_meta(("a", "b", "c"), (28, 28), ((0.1,), (0.3,)), "squish", channels=1)
    return export_model(scratch / "image_export", "mnist_resnet", config, {"params": params, "batch_stats": stats}, meta)


def new_file(folder: Path, name: str, data: bytes) -> Path:
    path = Path(tempfile.mkdtemp(dir=folder)) / name
    path.write_bytes(data)
    return path


def cli(export: Path, *inputs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict_cli([str(export), *map(str, inputs)], out, err)
    return code, out.getvalue(), err.getvalue()


def assert_probabilities(probs) -> None:
    probs = np.asarray(probs)
    assert np.isfinite(probs).all() and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-4, probs


# ---- images ------------------------------------------------------------------------------
PNG, JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0"


@FUZZ
@given(head=st.sampled_from([b"", PNG, JPEG, b"GIF89a", b"BM"]), body=st.binary(max_size=2048),
       suffix=st.sampled_from([".png", ".jpg", ".jpeg", ".bmp", ".gif"]))
def test_random_bytes_as_an_image(image_export, scratch, head, body, suffix):
    path = new_file(scratch, "photo" + suffix, head + body)
    learn = load_learner(image_export)
    try:
        label, index, probs = learn.predict(path)
    except InputError as error:
        assert str(path) in str(error)
    else:  # the bytes happened to decode: then it is a real prediction
        assert label == ("a", "b", "c")[index]
        assert_probabilities(probs)
    code, out, err = cli(image_export, path)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code in (0, 2) and len(rows) == 1 and rows[0]["path"] == str(path)
    assert (code == 2) == bool(rows[0]["error"]) and (code == 0 or str(path) in err)


@FUZZ
@given(cut=st.floats(0.0, 0.95))
def test_a_truncated_real_png(image_export, scratch, cut):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(buffer, "PNG")
    data = buffer.getvalue()
    path = new_file(scratch, "digit.png", data[: int(len(data) * cut)])
    with pytest.raises(InputError, match=str(path)):
        load_learner(image_export).predict(path)


# ---- tabular CSVs and rows ---------------------------------------------------------------
cells = st.one_of(st.sampled_from(["", "?", "nan", "inf", "-1e400", "1e400", "NaN", "red", "blue", "2015-01-01",
                                   "13/45/2015", "0", "-0.0", "1e308", '"', "\x00", "é", "\ufeff"]),
                  st.text(max_size=12), st.floats(allow_nan=True).map(repr), st.integers().map(str))
columns = st.sampled_from(["Date", "color", "size", "label", "extra", " size ", "Size", ""])


@st.composite
def hostile_csv(draw) -> bytes:
    header = draw(st.lists(columns, min_size=0, max_size=6))
    rows = draw(st.lists(st.lists(cells, min_size=0, max_size=len(header) + 2), max_size=6))
    if draw(st.booleans()):  # mostly good rows, a few bad ones
        header = ["Date", "color", "size", *header]
        rows = [[GOOD_ROW["Date"], GOOD_ROW["color"], GOOD_ROW["size"], *row] for row in rows]
    text = io.StringIO()
    csv.writer(text).writerows([header, *rows])
    data = text.getvalue()
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16", "cp1252"]))
    raw = data.encode(encoding, errors="replace")
    if draw(st.integers(0, 9)) == 0:  # a huge field
        raw += b"2015-01-01,red," + b"9" * 200_000 + b"\n"
    if draw(st.integers(0, 9)) == 0:  # random bytes somewhere
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=16)) + raw[at:]
    return raw


@FUZZ
@given(data=hostile_csv())
def test_hostile_csvs_through_the_predict_cli(tabular_export, scratch, data):
    path = new_file(scratch, "rows.csv", data)
    code, out, err = cli(tabular_export, path)
    assert code in (0, 1, 2)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert all(str(path) in line for line in errors), errors  # every error names the file
    assert (code == 0) == (not errors)
    if out:
        table = list(csv.DictReader(io.StringIO(out)))
        assert code in (0, 1) and table
        for row in table:
            assert row["label"] in ("no", "yes") and 0.5 <= float(row["probability"]) <= 1.0, row
        reported = {int(line.split(" row ")[1].split()[0]) for line in errors if " row " in line}
        assert not reported & {int(r["row"]) for r in table}  # a rejected row is never also predicted
    else:
        assert code == 2 and errors


@FUZZ
@given(values=st.fixed_dictionaries({}, optional={
    "Date": st.one_of(cells, st.none(), st.integers()), "color": st.one_of(cells, st.none(), st.lists(cells, max_size=2)),
    "size": st.one_of(cells, st.none(), st.floats(), st.integers(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)),
    "extra": cells}))
def test_hostile_rows_through_load_learner(tabular_export, values):
    learn = load_learner(tabular_export)
    try:
        label, index, probs = learn.predict(values)
    except InputError as error:
        assert any(name in str(error) for name in ("Date", "color", "size")), error
    else:
        assert label == ("no", "yes")[index]
        assert_probabilities(probs)


# ---- collab ratings and texts.csv --------------------------------------------------------
@FUZZ
@given(data=hostile_csv(), layout=st.sampled_from(["ratings.csv", "u.data"]))
def test_hostile_ratings_files(scratch, data, layout):
    path = new_file(scratch, layout, data if layout == "ratings.csv" else data.replace(b",", b"\t"))
    try:
        ratings = read_ratings_csv(path) if layout == "ratings.csv" else read_ml100k(path.parent, "id")
    except InputError as error:
        assert str(path) in str(error), error
    else:
        assert np.isfinite(ratings.ratings).all() and len(ratings.users) == len(ratings.items) == len(ratings.ratings)


@FUZZ
@given(data=hostile_csv())
def test_hostile_texts_csv(scratch, data):
    path = new_file(scratch, "texts.csv", data.replace(b"Date", b"label").replace(b"color", b"text"))
    try:
        source = read_texts_csv(path)
    except InputError as error:
        assert str(path) in str(error), error
    else:
        assert all(isinstance(t, str) and t for split in source.splits.values() for t in split.texts)


# ---- exports that do not fit together ----------------------------------------------------
def damaged_copy(export: Path, scratch: Path) -> Path:
    copy = Path(tempfile.mkdtemp(dir=scratch)) / "export"
    shutil.copytree(export, copy)
    return copy


@FUZZ
@given(key=st.sampled_from(["layers", "out_sz", "n_cont", "emb_szs"]),
       value=st.one_of(st.integers(-2, 40), st.lists(st.integers(1, 12), max_size=3),
                       st.lists(st.lists(st.integers(1, 9), min_size=2, max_size=2), max_size=4), st.none(), st.text(max_size=3)))
def test_export_json_whose_architecture_does_not_fit_the_weights(tabular_export, scratch, key, value):
    export = damaged_copy(tabular_export, scratch)
    meta = json.loads((export / "export.json").read_text())
    original = meta["arch_config"][key]
    meta["arch_config"][key] = value
    (export / "export.json").write_text(json.dumps(meta))
    try:
        learn = load_learner(export)
        learn.predict(GOOD_ROW)
    except InputError as error:
        assert str(export) in str(error), error
    else:  # only a config that rebuilds the same shapes may predict
        assert value == original or (key == "n_cont" and value == original), (key, value)
    code, _, err = cli(export, new_file(scratch, "rows.csv", b"Date,color,size\n2015-01-01,red,3\n"))
    assert code == 2 or value == original, err
    assert code == 0 or str(export) in err


@FUZZ
@given(pick=st.integers(0, 10_000), cut=st.floats(0.0, 1.0), flip=st.booleans())
def test_truncated_or_flipped_weight_files(tabular_export, scratch, pick, cut, flip):
    export = damaged_copy(tabular_export, scratch)
    files = sorted(p for p in (export / "variables").rglob("*") if p.is_file())
    target = files[pick % len(files)]
    data = bytearray(target.read_bytes())
    at = min(int(len(data) * cut), max(len(data) - 1, 0))
    if flip and data:
        data[at] ^= 0xFF
    else:
        data = data[:at]
    target.write_bytes(bytes(data))
    want = load_learner(tabular_export).predict(GOOD_ROW)[2]
    try:
        got = load_learner(export).predict(GOOD_ROW)[2]
    except InputError as error:
        assert str(export) in str(error), error
    else:  # the damage missed everything that matters: the same prediction, bit for bit
        np.testing.assert_array_equal(got, want)


def test_weights_swapped_between_architectures_are_refused(tabular_export, image_export, scratch):
    export = damaged_copy(tabular_export, scratch)
    shutil.rmtree(export / "variables")
    shutil.copytree(image_export / "variables", export / "variables")
    with pytest.raises(InputError, match="checksum"):
        load_learner(export)
    meta = json.loads((export / "export.json").read_text())
    del meta["variables_sha256"]  # an export written before checksums: the shapes still say it
    (export / "export.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"do not fit the architecture 'tabular'"):
        load_learner(export).predict(GOOD_ROW)


@pytest.mark.parametrize("text", ["", "[1, 2]", "{}", '{"format_version": 1, "arch": 3, "arch_config": {}}',
                                  '{"format_version": 1, "arch": "tabular", "arch_config": [], "kind": "tabular"}',
                                  '{"format_version": 1, "arch": "tabular", "arch_module": "jaxfast.nowhere", '
                                  '"arch_config": {}, "kind": "tabular"}',
                                  '{"format_version": 1, "arch": "nope", "arch_module": "os", "arch_config": {}}'])
def test_broken_export_json_is_one_error_naming_it(tabular_export, scratch, text):
    export = damaged_copy(tabular_export, scratch)
    (export / "export.json").write_text(text)
    with pytest.raises(JaxfastError, match="export.json"):
        load_export(export)
    code, _, err = cli(export, new_file(scratch, "rows.csv", b"Date,color,size\n2015-01-01,red,3\n"))
    assert code == 2 and "export.json" in err and "Traceback" not in err


# ---- no code runs on load ------------------------------------------------------------------
LOAD_PATH = ["jaxfast/export.py", "jaxfast/inference.py", "jaxfast/predict.py", "jaxfast/models/registry.py",
             "jaxfast/tabular/procs.py", "jaxfast/tabular/data.py", "jaxfast/collab/data.py",
             "jaxfast/vision/predict_images.py", "jaxfast/text/predict.py"]
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def test_the_load_path_has_no_pickle_nor_eval():
    for name in LOAD_PATH:
        tree = ast.parse((REPO / name).read_text(), name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not UNSAFE_MODULES & {m.split(".")[0] for m in modules}, (name, node.lineno)
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                assert func not in {"eval", "exec", "__import__"}, (name, node.lineno)
                assert not (isinstance(node.func, ast.Attribute) and func == "load"
                            and getattr(node.func.value, "id", "") == "torch"), (name, node.lineno)
                for keyword in node.keywords:
                    assert not (keyword.arg == "allow_pickle" and getattr(keyword.value, "value", False)), (name, node.lineno)


def test_loading_and_predicting_never_unpickles(tabular_export, image_export, scratch, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled while loading an export")

    original_np_load = np.load

    def np_load(*args, allow_pickle=False, **kwargs):
        if allow_pickle:
            refuse()
        return original_np_load(*args, allow_pickle=False, **kwargs)

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", np_load)
    assert load_learner(tabular_export).predict(GOOD_ROW)[0] in ("no", "yes")
    png = new_file(scratch, "digit.png", b"")
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    assert load_learner(image_export).predict(png)[0] in ("a", "b", "c")
    assert cli(tabular_export, new_file(scratch, "rows.csv", b"Date,color,size\n2015-01-01,red,3\n"))[0] == 0
