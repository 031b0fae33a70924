"""TabularModel: fastai's layer layout, size rule, y_range, dropout, registry, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import build_model
from jaxfast.models.tabular import emb_sz_rule, tabular


def inputs(n=6, seed=0):
    rng = np.random.default_rng(seed)
    x_cat = np.stack([rng.integers(0, 5, n), rng.integers(0, 4, n)], axis=1).astype(np.int32)
    return x_cat, rng.normal(size=(n, 2)).astype(np.float32)


def init(model, x, seed=0):
    """Variables of `model` for inputs `x` (jitted: eager init runs op by op)."""
    return jax.jit(lambda batch: model.init(jax.random.key(seed), batch, train=False))(x)


def test_emb_sz_rule_matches_fastai():
    # round(1.6 * n ** 0.56): 9 -> 5.48, 17 -> 7.82, 1116 (Rossmann's stores + #na#) -> 81.4, capped at 600
    assert [emb_sz_rule(n) for n in (2, 9, 17, 1116, 100_000)] == [2, 5, 8, 81, 600]


def test_layout_is_fastai_bn_drop_lin():
    model = tabular([[5, 3], [4, 2]], n_cont=2, out_sz=3, layers=[8, 4], ps=[0.1, 0.2])
    variables = init(model, inputs())
    shapes = jax.tree.map(jnp.shape, variables["params"])
    assert shapes["embeds_0"]["embedding"] == (5, 3) and shapes["embeds_1"]["embedding"] == (4, 2)
    assert shapes["linear_0"]["kernel"] == (7, 8)  # 3 + 2 embedding dims + 2 continuous
    assert shapes["linear_1"]["kernel"] == (8, 4) and shapes["linear_2"]["kernel"] == (4, 3)
    # BatchNorm on the continuous inputs and before every linear layer but the first
    assert sorted(variables["batch_stats"]) == ["bn_1", "bn_2", "bn_cont"]
    assert variables["batch_stats"]["bn_1"]["mean"].shape == (8,)
    # fastai's embedding init: N(0, 0.01) truncated at 2 std
    assert float(jnp.abs(variables["params"]["embeds_0"]["embedding"]).max()) <= 0.02 + 1e-6


def test_eval_forward_equals_hand_computation():
    model = tabular([[5, 3], [4, 2]], n_cont=2, out_sz=1, layers=[6], y_range=[0.0, 2.0])
    x_cat, x_cont = inputs()
    variables = init(model, (x_cat, x_cont), seed=1)
    variables = jax.tree.map(lambda v: v + 0.05, variables)  # non-trivial BatchNorm statistics
    p, s = variables["params"], variables["batch_stats"]

    def bn(x, params, stats):
        return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]

    x = np.concatenate([
        np.asarray(p["embeds_0"]["embedding"])[x_cat[:, 0]], np.asarray(p["embeds_1"]["embedding"])[x_cat[:, 1]],
        bn(x_cont, p["bn_cont"], s["bn_cont"]),
    ], axis=1)
    x = np.maximum(x @ p["linear_0"]["kernel"] + p["linear_0"]["bias"], 0)
    x = bn(x, p["bn_1"], s["bn_1"]) @ p["linear_1"]["kernel"] + p["linear_1"]["bias"]
    expected = 2.0 / (1 + np.exp(-x))  # (high - low) * sigmoid + low
    np.testing.assert_allclose(model.apply(variables, (x_cat, x_cont), train=False), expected, rtol=1e-5, atol=1e-6)


def test_y_range_bounds_and_dropout_only_in_training():
    model = tabular([[5, 3], [4, 2]], n_cont=2, out_sz=1, layers=[16], ps=0.5, emb_drop=0.5, y_range=[1.0, 3.0])
    x = inputs(64)
    variables = init(model, x)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    big = jax.tree.map(lambda v: v * 100.0, variables)
    out = np.asarray(apply(big, x, train=False))
    assert out.min() >= 1.0 and out.max() <= 3.0 and out.max() - out.min() > 0.5
    eval_a = apply(variables, x, train=False)
    np.testing.assert_array_equal(eval_a, apply(variables, x, train=False))
    train_a, _ = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}, mutable="batch_stats")
    train_b, _ = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)}, mutable="batch_stats")
    assert not np.allclose(train_a, train_b)


def test_registry_builds_from_json_and_checks():
    model = build_model("tabular", {"emb_szs": [[5, 3]], "n_cont": 0, "out_sz": 2, "layers": [4, 4], "ps": 0.1})
    assert model.ps == (0.1, 0.1) and model.layers == (4, 4) and model.emb_szs == ((5, 3),)
    with pytest.raises(ValueError, match=r"2 dropout rates ps=\[0.1, 0.2\] for 3 layers"):
        tabular([[5, 3]], 0, 2, layers=[4, 4, 4], ps=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"y_range must be \[low, high\]"):
        tabular([[5, 3]], 0, 1, y_range=[2.0, 1.0])
    with pytest.raises(ValueError, match="no inputs"):
        tabular([], 0, 1)
    model = tabular([[5, 3], [4, 2]], n_cont=2, out_sz=2, layers=[4])
    x_cat, x_cont = inputs()
    with pytest.raises(ValueError, match=r"x_cat shape \(6, 1\) should be \[B, 2\]"):
        model.init(jax.random.key(0), (x_cat[:, :1], x_cont))
    with pytest.raises(ValueError, match=r"x_cont shape \(6, 3\) should be \[B, 2\]"):
        model.init(jax.random.key(0), (x_cat, np.zeros((6, 3), np.float32)))


def test_learns_a_rule_that_needs_the_embeddings():
    """Class = (category a + category b) mod 2, with noise columns: only embeddings can tell."""
    rng = np.random.default_rng(0)
    n = 1200
    x_cat = np.stack([rng.integers(1, 6, n), rng.integers(1, 5, n)], axis=1).astype(np.int32)
    x_cont = rng.normal(size=(n, 2)).astype(np.float32)
    y = ((x_cat[:, 0] + x_cat[:, 1]) % 2).astype(np.int32)
    cut = 1000
    data = DataBunch(
        ArrayLoader((x_cat[:cut], x_cont[:cut]), y[:cut], 64, shuffle=True, drop_last=True),
        ArrayLoader((x_cat[cut:], x_cont[cut:]), y[cut:], 100),
    )
    learn = Learner(tabular([[6, 4], [5, 3]], 2, 2, layers=[32, 16]), data, "cross_entropy", ["accuracy"],
                    config=TrainConfig(progress=False), log=lambda s: None)
    before = learn.validate()["accuracy"]
    learn.fit_one_cycle(6, 1e-2)
    after = learn.validate()["accuracy"]
    assert before < 0.7 and after > 0.95
