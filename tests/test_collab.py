"""Lesson 4's collaborative filtering: model maths, id maps, readers, export, interpretation,
and the tiny experiment."""

import json

import jax
import numpy as np
import pytest

from experiments import lesson4_collab
from jaxfast import experiment
from jaxfast.collab.data import (
    NA,
    IdMap,
    Ratings,
    UnknownIdError,
    generate_ratings,
    load_collab_export,
    load_ratings,
    prepare,
    read_ml100k,
    read_ratings_csv,
    split_indices,
)
from jaxfast.collab.interpret import extremes, format_report, interpret, pca, plot_pca
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.collab import emb_sz_rule, embedding_dot_bias, embedding_nn
from jaxfast.models.registry import build_model
from jaxfast.optim import no_decay_mask
from jaxfast.state import init_variables

QUIET = TrainConfig(wd=0.1, eps=1e-8, progress=False)


def ids(n_users, n_items, batch, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_users, batch).astype(np.int32), rng.integers(0, n_items, batch).astype(np.int32))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ------------------------------------------------------------------ models


def test_embedding_dot_bias_matches_numpy():
    model = embedding_dot_bias(7, 9, n_factors=5, y_range=(0, 5.5))
    x = ids(7, 9, 12)
    params, _ = init_variables(model, x, seed=0)
    rng = np.random.default_rng(1)  # scale up from the 0.01 init so the sigmoid is not flat
    params = jax.tree.map(lambda p: rng.normal(0, 0.7, p.shape).astype(np.float32), params)
    p = {k: np.asarray(v) for k, v in params.items()}
    u, i = x
    raw = (p["u_weight"][u] * p["i_weight"][i]).sum(1) + p["u_bias_table"][u] + p["i_bias_table"][i]
    out = np.asarray(model.apply({"params": params}, x))
    assert out.shape == (12,)
    np.testing.assert_allclose(out, sigmoid(raw) * 5.5, rtol=1e-5, atol=1e-5)
    plain = embedding_dot_bias(7, 9, n_factors=5)
    np.testing.assert_allclose(np.asarray(plain.apply({"params": params}, x)), raw, rtol=1e-5, atol=1e-5)


def test_embedding_nn_matches_numpy_in_eval_mode():
    model = embedding_nn(6, 8, user_emb=3, item_emb=4, layers=(5, 4), y_range=(1, 5))
    x = ids(6, 8, 10, seed=2)
    params, stats = init_variables(model, x, seed=0)
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda a: rng.normal(0, 0.8, a.shape).astype(np.float32), params)
    stats = jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(np.float32), stats)
    assert sorted(params) == ["BatchNorm_0", "BatchNorm_1", "Dense_0", "Dense_1", "Dense_2", "i_embedding",
                              "u_embedding"]

    def bn(h, k):
        s, b = params[f"BatchNorm_{k}"], stats[f"BatchNorm_{k}"]
        return (h - b["mean"]) / np.sqrt(b["var"] + 1e-5) * s["scale"] + s["bias"]

    def dense(h, k):
        return h @ np.asarray(params[f"Dense_{k}"]["kernel"]) + np.asarray(params[f"Dense_{k}"]["bias"])

    h = np.concatenate([np.asarray(params["u_embedding"])[x[0]], np.asarray(params["i_embedding"])[x[1]]], 1)
    h = np.maximum(dense(h, 0), 0)  # fastai: no BatchNorm before the first linear layer
    h = np.maximum(dense(bn(h, 0), 1), 0)
    h = dense(bn(h, 1), 2)[:, 0]
    out = np.asarray(model.apply({"params": params, "batch_stats": stats}, x, train=False))
    np.testing.assert_allclose(out, sigmoid(h) * 4 + 1, rtol=1e-4, atol=1e-5)


def test_init_is_fastai_trunc_normal_and_bias_tables_are_decayed():
    model = embedding_dot_bias(3000, 2000, n_factors=40)
    params, _ = init_variables(model, ids(3000, 2000, 4), seed=0)
    weights = np.asarray(params["u_weight"])
    reference = np.fmod(np.random.default_rng(0).normal(size=200_000), 2.0) * 0.01  # std ~0.0087
    assert abs(weights.std() / reference.std() - 1) < 0.03 and np.abs(weights).max() <= 0.02 + 1e-7
    assert params["u_bias_table"].shape == (3000,) and params["i_bias_table"].shape == (2000,)
    # fastai v1 decays every embedding, biases included: none is exempt here
    assert not any(jax.tree.leaves(no_decay_mask(params, {})))


def test_registry_rebuilds_from_json_config():
    config = json.loads(json.dumps({"n_users": 5, "n_items": 6, "n_factors": 3, "y_range": [0, 5.5]}))
    model = build_model("embedding_dot_bias", config)
    assert model.y_range == (0.0, 5.5) and model.n_factors == 3
    nn_model = build_model("embedding_nn", {"n_users": 944, "n_items": 1651})
    assert (nn_model.user_emb, nn_model.item_emb) == (emb_sz_rule(944), emb_sz_rule(1651))
    with pytest.raises(ValueError, match="y_range"):
        build_model("embedding_dot_bias", {"n_users": 5, "n_items": 6, "y_range": [5, 0]})


# ------------------------------------------------------------------ id maps and splits


def test_id_map_indexes_with_na_first_and_names_unknown_ids():
    ids_map = IdMap.from_values("user", np.array([10, 2, 10, 33]))
    assert ids_map.classes == (NA, "2", "10", "33")
    np.testing.assert_array_equal(ids_map.encode([33, "2", 10]), [3, 1, 2])
    assert ids_map.decode([0, 3]) == [NA, "33"]
    with pytest.raises(UnknownIdError, match=r"1 user id\(s\).*row 1: '7'"):
        ids_map.encode([2, 7, 33])
    np.testing.assert_array_equal(ids_map.encode([2, 7], unknown="na"), [1, 0])
    assert IdMap.from_json(json.loads(json.dumps(ids_map.to_json()))) == ids_map
    with pytest.raises(ValueError, match="reserved"):
        IdMap.from_values("item", ["a", NA])


def test_split_follows_fastai_and_maps_come_from_train_only():
    assert [len(a) for a in split_indices(1000, 0.1, 42)] == [900, 100]
    train, valid = split_indices(1000, 0.1, 42)
    np.testing.assert_array_equal(valid, np.random.RandomState(42).permutation(1000)[:100])
    assert len(set(train) | set(valid)) == 1000
    assert not np.array_equal(valid, split_indices(1000, 0.1, 43)[1])

    ratings = generate_ratings(n_users=20, n_items=30, seed=1)
    users, items = ratings.users.copy(), ratings.items.copy()
    _, valid = split_indices(len(users), 0.1, 42)
    users[valid[0]], items[valid[1]] = "stranger", "new movie"  # ids only the valid split has
    data = prepare(Ratings(users, items, ratings.ratings, "test"), 0.1, 42)
    assert "stranger" not in data.users.classes and "new movie" not in data.items.classes
    assert data.x_valid[0][0] == 0 and data.x_valid[1][1] == 0 and data.n_valid_unknown == 2
    assert data.x_train[0].min() >= 1 and data.x_train[1].min() >= 1
    assert data.users.decode(data.x_train[0][:5]) == users[data.train_idx[:5]].tolist()


# ------------------------------------------------------------------ readers


def write_ml100k(folder, data_lines, item_lines):
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("".join(data_lines))
    (folder / "u.item").write_bytes("".join(item_lines).encode("latin-1"))
    return folder


def test_read_ml100k_decodes_latin1_titles_and_names_bad_rows(tmp_path):
    items = ["1|Toy Story (1995)|01-Jan-1995||url|0|1\n", "2|Misérables, Les (1995)|01-Jan-1995||url|0|0\n"]
    folder = write_ml100k(tmp_path / "ok", ["196\t1\t3\t881250949\n", "22\t2\t5\t878887116\n"], items)
    ratings = load_ratings(folder)
    assert ratings.items.tolist() == ["Toy Story (1995)", "Misérables, Les (1995)"]
    assert ratings.users.tolist() == ["196", "22"] and ratings.ratings.tolist() == [3.0, 5.0]
    assert read_ml100k(folder, "id").items.tolist() == ["1", "2"]

    bad = write_ml100k(tmp_path / "bad", ["196\t1\t3\t0\n", "22\t9\t5\t0\n"], items)
    with pytest.raises(ValueError, match=r"u.data, line 2: movie id '9' has no title"):
        read_ml100k(bad)
    worse = write_ml100k(tmp_path / "worse", ["196\t1\t3\t0\n", "22\t2\tfive\t0\n"], items)
    with pytest.raises(ValueError, match=r"u.data, line 2: rating 'five' is not a number"):
        read_ml100k(worse)


def test_read_ratings_csv_and_missing_folder(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n73,1097,4.0,1\n561,924,3.5,2\n")
    ratings = read_ratings_csv(tmp_path / "ratings.csv")
    assert ratings.users.tolist() == ["73", "561"] and ratings.ratings.tolist() == [4.0, 3.5]
    assert load_ratings(tmp_path).items.tolist() == ["1097", "924"]
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "ratings.csv").write_text("userId,movieId,rating\n1,2\n")
    with pytest.raises(ValueError, match=r"ratings.csv, line 2: expected 3 fields"):
        load_ratings(tmp_path / "short")
    with pytest.raises(FileNotFoundError, match="u.data.*ratings.csv"):
        load_ratings(tmp_path / "short" / "nowhere")


# ------------------------------------------------------------------ a tiny fit


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
    data = prepare(generate_ratings(n_users=80, n_items=60, seed=0), 0.1, 42)
    model = embedding_dot_bias(len(data.users), len(data.items), n_factors=8, y_range=(0, 5.5))
    learn = Learner(model, data.bunch(32, 0), "mse", ["mse"], config=QUIET, log=lambda s: None)
    before = learn.validate()["mse"]
    learn.fit_one_cycle(4, 1e-2)
    return data, learn, before


def test_tiny_fit_learns_and_export_predicts_by_id(tiny_fit, tmp_path):
    data, learn, before = tiny_fit
    after = learn.validate()["mse"]
    assert after < 0.5 * float(np.var(data.y_valid)) and after < 0.35 * before
    path = learn.export(tmp_path / "export", "embedding_dot_bias",
                        {"n_users": len(data.users), "n_items": len(data.items), "n_factors": 8,
                         "y_range": [0, 5.5]}, data.export_meta())
    predictor = load_collab_export(path)
    users, items = data.ratings.users[data.valid_idx[:6]], data.ratings.items[data.valid_idx[:6]]
    np.testing.assert_allclose(predictor.predict(users, items), learn.predict(
        (data.x_valid[0][:6], data.x_valid[1][:6])), rtol=1e-6)
    with pytest.raises(UnknownIdError, match=r"item id\(s\).*row 1: 'Nope \(2024\)'"):
        predictor.predict(users[:2], [items[0], "Nope (2024)"])
    assert predictor.predict([users[0]], ["Nope (2024)"], unknown="na").shape == (1,)


def test_interpretation_of_tiny_fit(tiny_fit, tmp_path):
    data, learn, _ = tiny_fit
    interp = interpret(learn.state.params, data, top_n=40, n_show=5, n_comp_show=4)
    assert len(interp.items) == 40 and interp.projection.shape == (40, 3)
    biases = [b for b, _, _ in interp.lowest_bias]
    assert biases == sorted(biases) and interp.highest_bias[0][0] > biases[-1]
    # learnt item biases follow the items' mean ratings
    idx = data.items.encode(interp.items)
    learnt = np.asarray(learn.state.params["i_bias_table"])[idx]
    means = [np.mean(data.ratings.ratings[data.ratings.items == name]) for name in interp.items]
    assert np.corrcoef(learnt, means)[0, 1] > 0.7
    low_means = np.mean([m for _, _, m in interp.lowest_bias])
    high_means = np.mean([m for _, _, m in interp.highest_bias])
    assert high_means > low_means + 1.0
    assert interp.explained == sorted(interp.explained, reverse=True)
    report = format_report(interp)
    assert interp.highest_bias[0][1] in report and "component 2" in report
    png = plot_pca(interp, tmp_path / "pca.png", n=20)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_most_rated_order_and_pca_against_a_reference():
    data = prepare(generate_ratings(n_users=50, n_items=30, seed=4), 0.1, 42)
    names, counts = np.unique(data.ratings.items, return_counts=True)
    params = {"i_bias_table": np.zeros(len(data.items)), "i_weight": np.random.default_rng(0).normal(
        size=(len(data.items), 6))}
    interp = interpret(params, data, top_n=10, n_show=3, n_comp_show=3, k=2)
    got = [dict(zip(names, counts))[n] for n in interp.items]
    assert got == sorted(got, reverse=True) and got[0] == counts.max()
    x = np.random.default_rng(5).normal(size=(50, 6)) * np.arange(1, 7)  # variance grows with the column
    proj, explained = pca(x, 2)
    centred = x - x.mean(0)
    eigval, eigvec = np.linalg.eigh(centred.T @ centred)
    reference = centred @ eigvec[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(proj), np.abs(reference), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(explained, eigval[::-1][:2] / eigval.sum(), rtol=1e-6)
    assert extremes(np.array([3.0, 1.0, 2.0]), ["a", "b", "c"], 2) == (["b", "c"], ["a", "c"])


# ------------------------------------------------------------------ the experiment


def test_tiny_experiment_runs_exports_and_resumes(tmp_path, capsys):
    args = ["--tiny", "--workdir", str(tmp_path)]
    final = experiment.run(lesson4_collab.main, lesson4_collab.Config(), lesson4_collab.TINY, args)
    out = capsys.readouterr().out
    data = lesson4_collab.make_data(lesson4_collab.TINY)
    assert final["valid_mse"] == final["embedding_dot_bias_valid_mse"] < 0.6 * float(np.var(data.y_valid))
    assert final["embedding_nn_valid_mse"] < float(np.var(data.y_valid))
    assert out.strip().splitlines()[-1].startswith("final: ") and "lowest item bias" in out
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final"]["valid_mse"] == pytest.approx(final["valid_mse"])
    interp = json.loads((tmp_path / "embedding_dot_bias" / "interpretation.json").read_text())
    assert len(interp["lowest_bias"]) == 5 and len(interp["components"]) == 3
    assert (tmp_path / "embedding_dot_bias" / "pca.png").stat().st_size > 0
    for name in lesson4_collab.MODELS:
        meta = load_collab_export(tmp_path / name / "export").exported.meta
        assert meta["arch"] == name and meta["id_maps"]["items"]["classes"][0] == NA
    again = experiment.run(lesson4_collab.main, lesson4_collab.Config(), lesson4_collab.TINY, args)
    assert again["valid_mse"] == pytest.approx(final["valid_mse"], rel=1e-6)


def test_experiment_names_missing_data(tmp_path, capsys):
    args = ["--data-dir", str(tmp_path / "empty"), "--workdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stop:
        experiment.run(lesson4_collab.main, lesson4_collab.Config(), lesson4_collab.TINY, args)
    assert stop.value.code == 2 and "u.data" in capsys.readouterr().err
