"""fastai's tabular procs against hand-computed values, and the pipeline that chains them."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from jaxfast.tabular import (
    AddDatepart,
    Categorify,
    FillMissing,
    Normalize,
    TabularProcessor,
    TabularTarget,
    category_key,
    split_random,
)
from jaxfast.tabular.procs import Proc


def roundtrip(proc):
    """The proc rebuilt from its JSON text (what an export keeps)."""
    again = Proc.from_json(json.loads(json.dumps(proc.to_json())))
    assert again == proc and type(again).from_json(proc.to_json()) == proc
    return again


def test_proc_json_names_its_class():
    with pytest.raises(ValueError, match="tabular proc JSON names 'Pickle'"):
        Proc.from_json({"proc": "Pickle"})
    with pytest.raises(ValueError, match="names 'Normalize'; expected FillMissing"):
        FillMissing.from_json(Normalize(["a"]).to_json())


def test_category_key_canonical_forms():
    assert {category_key(v) for v in (3, 3.0, "3", " 3.0 ", np.int64(3), np.float32(3))} == {"3"}
    assert category_key(2.5) == "2.5" and category_key(True) == "True" and category_key(np.False_) == "False"
    assert category_key(" Private ") == "Private"
    for missing in (None, np.nan, "", "  ", pd.NA, pd.NaT):
        assert category_key(missing) is None


def test_fill_missing_median_and_flag():
    train = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "b": [4.0, 5.0, 6.0, 7.0]})
    proc = FillMissing(["a", "b"]).fit(train)
    assert proc.medians == {"a": 3.0, "b": 5.5}  # median of 1, 3, 10; of 4, 5, 6, 7
    assert proc.na_columns == ["a"] and proc.added_cat_names == ["a_na"]
    out = roundtrip(proc).apply(train)
    assert out.a.tolist() == [1.0, 3.0, 3.0, 10.0]
    assert out.a_na.tolist() == [False, True, False, False]
    assert "b_na" not in out.columns
    assert train.a.isna().sum() == 1  # the input frame is left alone
    # b had no missing training values: filled with its median, and no flag (fastai raises)
    test = pd.DataFrame({"a": [np.nan], "b": [np.nan]}, index=[7])
    filled = proc.apply(test)
    assert filled.a.tolist() == [3.0] and filled.a_na.tolist() == [True] and filled.b.tolist() == [5.5]


def test_fill_missing_errors_name_the_column_and_row():
    with pytest.raises(ValueError, match="column 'a' has no values in the training frame"):
        FillMissing(["a"]).fit(pd.DataFrame({"a": [np.nan, np.nan]}))
    proc = FillMissing(["a"]).fit(pd.DataFrame({"a": [1.0, 2.0]}))
    with pytest.raises(ValueError, match=r"column 'a' has non-numeric values \(row 12: 'ten'\)"):
        proc.apply(pd.DataFrame({"a": ["1", "ten"]}, index=[11, 12]))
    with pytest.raises(ValueError, match=r"FillMissing: column\(s\) \['a'\] missing"):
        proc.apply(pd.DataFrame({"b": [1.0]}))


def test_categorify_sorted_codes_reserved_zero():
    train = pd.DataFrame({"c": ["b", "a", None, "b"], "n": [10, 2, 2, 10]})
    proc = Categorify(["c", "n"]).fit(train)
    assert proc.categories == {"c": ["a", "b"], "n": ["2", "10"]}  # numbers sort as numbers
    assert proc.n_classes("c") == 3
    out = roundtrip(proc).apply(train)
    assert out.c.tolist() == [2, 1, 0, 2] and out.n.tolist() == [2, 1, 1, 2]
    test = pd.DataFrame({"c": ["z", "a", ""], "n": ["10.0", 7, np.nan]}, index=[5, 6, 7])
    coded = proc.apply(test)
    assert coded.c.tolist() == [0, 1, 0]  # unseen 'z' and empty -> reserved 0
    assert coded.n.tolist() == [2, 0, 0]  # '10.0' read from text is the category 10
    assert proc.unseen(test) == [(5, "c", "z"), (6, "n", "7")]


def test_normalize_train_mean_and_std():
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "k": [5.0, 5.0, 5.0, 5.0]})
    proc = Normalize(["x", "k"]).fit(train)
    std = math.sqrt(5 / 3)  # sum of squared deviations 5, ddof 1
    assert proc.means["x"] == 2.5 and proc.stds["x"] == pytest.approx(std)
    assert proc.stds["k"] == 1.0  # a constant column keeps its scale
    out = roundtrip(proc).apply(pd.DataFrame({"x": [2.5, 5.0], "k": [5.0, 7.0]}))
    np.testing.assert_allclose(out.x, [0.0, 2.5 / (1e-7 + std)])
    np.testing.assert_allclose(out.k, [0.0, 2.0 / (1 + 1e-7)])
    with pytest.raises(ValueError, match="column 'x' has missing values at rows 1; put FillMissing before Normalize"):
        Normalize(["x"]).fit(pd.DataFrame({"x": [1.0, np.nan]}))


def test_add_datepart_hand_computed():
    frame = pd.DataFrame({"saleDate": ["2015-01-31", "2014-12-29", "2015-12-31", None], "v": [1, 2, 3, 4]})
    proc = AddDatepart("saleDate", drop=False).fit(frame)
    out = roundtrip(proc).apply(frame)
    expected = {
        # Saturday; Monday of ISO week 1 of 2015; Thursday, ISO week 53, last day of the year
        "saleYear": [2015, 2014, 2015], "saleMonth": [1, 12, 12], "saleWeek": [5, 1, 53], "saleDay": [31, 29, 31],
        "saleDayofweek": [5, 0, 3], "saleDayofyear": [31, 363, 365],
        "saleIs_month_end": [1, 0, 1], "saleIs_month_start": [0, 0, 0], "saleIs_quarter_end": [0, 0, 1],
        "saleIs_quarter_start": [0, 0, 0], "saleIs_year_end": [0, 0, 1], "saleIs_year_start": [0, 0, 0],
        # days since 1970-01-01 (16466, 16433, 16800) times 86400
        "saleElapsed": [1422662400, 1419811200, 1451520000],
    }
    assert list(out.columns) == ["saleDate", "v", *expected]
    for name, values in expected.items():
        assert out[name].iloc[:3].tolist() == values, name
        assert np.isnan(out[name].iloc[3]), name  # a missing date has missing parts
    assert "Date" not in AddDatepart("Date").apply(frame.rename(columns={"saleDate": "Date"})).columns
    with pytest.raises(ValueError, match=r"column 'saleDate' has values that are not dates \(row 1: 'soon'\)"):
        proc.apply(pd.DataFrame({"saleDate": ["2015-01-01", "soon"]}))


def test_processor_chains_procs_like_fastai():
    train = pd.DataFrame({
        "Date": ["2015-01-31", "2015-02-01", "2015-02-01", "2015-03-02"],
        "shop": ["x", "y", "x", None], "size": [1.0, np.nan, 3.0, 10.0], "y": [1.0, 2.0, 3.0, 4.0],
    })
    proc = TabularProcessor(["shop", "Month"], ["size"], date_fields=["Date"]).fit(train)
    assert proc.all_cat_names == ["shop", "Month", "size_na"]
    assert proc.required_columns() == ["Date", "shop", "size"]
    # fastai's rule on n_categories + 1: round(1.6 * 3 ** 0.56) = round(2.96), round(1.6 * 4 ** 0.56) = round(3.48)
    assert proc.embedding_sizes() == [[3, 3], [4, 3], [3, 3]]
    x_cat, x_cont = proc.to_arrays(train)
    np.testing.assert_array_equal(x_cat, [[1, 1, 1], [2, 2, 2], [1, 2, 1], [0, 3, 1]])
    filled = np.array([1.0, 3.0, 3.0, 10.0])  # median 3 fills the gap; then normalised by train stats
    np.testing.assert_allclose(x_cont[:, 0], (filled - filled.mean()) / (1e-7 + filled.std(ddof=1)), rtol=1e-6)
    assert x_cat.dtype == np.int32 and x_cont.dtype == np.float32
    again = TabularProcessor.from_json(json.loads(json.dumps(proc.to_json())))
    new = pd.DataFrame({"Date": ["2016-07-04"], "shop": ["z"], "size": [np.nan]}, index=[9])
    np.testing.assert_array_equal(again.to_arrays(new)[0], [[0, 0, 2]])  # unseen shop and month, size missing
    assert again.unseen(new) == [(9, "shop", "z"), (9, "Month", "7")]


def test_processor_rejects_bad_setups():
    frame = pd.DataFrame({"a": [1.0, 2.0], "c": ["x", "y"]})
    with pytest.raises(ValueError, match="categorical inputs need the Categorify proc"):
        TabularProcessor(["c"], ["a"], procs=["FillMissing", "Normalize"])
    with pytest.raises(ValueError, match=r"both categorical and continuous"):
        TabularProcessor(["a"], ["a"])
    with pytest.raises(ValueError, match="call fit on the training frame before transform"):
        TabularProcessor(["c"], ["a"]).to_arrays(frame)
    with pytest.raises(ValueError, match=r"column\(s\) \['nope'\] missing from the frame"):
        TabularProcessor(["c", "nope"], ["a"]).fit(frame)
    with pytest.raises(ValueError, match=r"continuous column 'a' still has missing values at rows 1"):
        TabularProcessor([], ["a"], procs=["Normalize"]).fit(frame).to_arrays(pd.DataFrame({"a": [1.0, np.nan]}))


def test_targets_classes_and_log_values():
    train = pd.DataFrame({"y": ["no", "yes", "no"], "v": [1.0, np.e, 10.0]})
    target = TabularTarget("y").fit(train)
    assert target.classes == ["no", "yes"] and target.out_sz == 2 and target.loss == "cross_entropy"
    assert target.encode(train).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match=r"valid: target 'y' has values outside the training classes .*row 4: 'maybe'"):
        target.encode(pd.DataFrame({"y": ["no", "maybe"]}, index=[3, 4]), "valid")
    decoded = target.decode(np.array([[0.0, np.log(3.0)]]))
    assert decoded.y.tolist() == ["yes"] and decoded.probability.tolist() == pytest.approx([0.75])
    reg = TabularTarget("v", kind="regression", log=True).fit(train)
    np.testing.assert_allclose(reg.encode(train), [0.0, 1.0, np.log(10.0)], rtol=1e-6)
    assert reg.decode(np.array([[1.0]])).v.tolist() == pytest.approx([np.e])
    with pytest.raises(ValueError, match=r"positive numbers \(log target\); rows \[1\]"):
        reg.encode(pd.DataFrame({"v": [2.0, 0.0]}))


def test_split_random_is_seeded_and_disjoint():
    frame = pd.DataFrame({"i": range(100)})
    train, valid = split_random(frame, 0.2, seed=3)
    assert len(valid) == 20 and len(train) == 80 and set(train.i).isdisjoint(valid.i)
    assert split_random(frame, 0.2, seed=3)[1].i.tolist() == valid.i.tolist()
    assert split_random(frame, 0.2, seed=4)[1].i.tolist() != valid.i.tolist()
