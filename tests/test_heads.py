"""fastai's cnn head on a cut body: shapes, layer groups, freeze/unfreeze in a Learner, bn_final."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxfast import optim
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.heads import cnn_layer_groups
from jaxfast.models.registry import build_model
from test_resnet import numpy_variables

X = jnp.zeros((2, 32, 32, 3), jnp.float32)


def shapes(model, x=X):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def flat(tree):
    return {"/".join(str(k.key) for k in kp): np.asarray(v) for kp, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_head_layout_and_output_shapes():
    model = build_model("cnn", {"body_arch": "resnet18", "n_classes": 7})
    head = shapes(model)["params"]["head"]
    assert head["bn_0"]["scale"].shape == (1024,)  # concat pooling: max + avg of 512 channels
    assert head["lin_0"]["kernel"].shape == (1024, 512) and head["bn_1"]["scale"].shape == (512,)
    assert head["lin_1"]["kernel"].shape == (512, 7) and "bn_final" not in head
    out = jax.eval_shape(lambda v: model.apply(v, X), shapes(model))
    assert out.shape == (2, 7)
    plain = build_model("cnn", {"body_arch": "cifar_resnet20", "n_classes": 3, "concat_pool": False,
                                "lin_ftrs": (32, 16)})
    head = shapes(plain)["params"]["head"]
    assert [head[f"lin_{i}"]["kernel"].shape for i in range(3)] == [(64, 32), (32, 16), (16, 3)]


def test_layer_groups_cover_all_params_as_fastai_splits_resnet():
    model = build_model("cnn", {"body_arch": "resnet34", "n_classes": 2})
    variables = shapes(model)
    groups = cnn_layer_groups(model)
    labels = flat(optim.label_layer_groups(variables["params"], groups.group_of_path, groups.n_groups))
    assert groups.n_groups == 3 and len(labels) == len(jax.tree.leaves(variables["params"]))
    assert labels["body/conv1/kernel"] == labels["body/layer2_3/bn2/scale"] == 0
    assert labels["body/layer3_0/conv1/kernel"] == labels["body/layer4_2/conv2/kernel"] == 1
    assert {int(v) for k, v in labels.items() if k.startswith("head/")} == {2}
    assert {int(v) for k, v in labels.items() if not k.startswith("head/")} == {0, 1}


def test_freeze_trains_head_and_batchnorm_only_then_unfreeze_trains_all():
    model = build_model("cnn", {"body_arch": "simple_cnn", "n_classes": 3, "lin_ftrs": (16,),
                                "body_config": {"features": (8, 8, 8), "bn": True}})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 3, 8).astype(np.int32)
    data = DataBunch(ArrayLoader(x[:4], y[:4], 2, shuffle=True, drop_last=True), ArrayLoader(x[4:], y[4:], 2))
    learn = Learner(model, data, layer_groups=cnn_layer_groups(model), config=TrainConfig(progress=False),
                    log=lambda s: None)
    assert learn.n_groups == 3
    start = flat(learn.state.params)
    bn = flat(optim.batchnorm_mask(learn.state.params, learn.state.batch_stats))
    learn.freeze()
    learn.fit(1, 1e-2)  # two steps
    after = flat(learn.state.params)
    moved = {k for k in start if not np.array_equal(start[k], after[k])}
    body_frozen = {k for k in start if k.startswith("body/") and not bn[k]}
    assert body_frozen and not moved & body_frozen
    assert {k for k in start if k.startswith("head/")} <= moved
    assert "body/layers_0/bn/scale" in moved and "body/layers_1/bn/bias" in moved
    learn.unfreeze()
    learn.fit(1, slice(1e-4, 1e-2))
    final = flat(learn.state.params)
    assert all(not np.array_equal(after[k], final[k]) for k in body_frozen)


def test_bn_final_normalises_the_outputs():
    config = {"body_arch": "simple_cnn", "n_classes": 4, "lin_ftrs": (16,), "body_config": {"features": (8, 8)}}
    model = build_model("cnn", {**config, "bn_final": True, "ps": 0.0})
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.float32)
    variables = numpy_variables(model, x)
    assert variables["params"]["head"]["bn_final"]["scale"].shape == (4,)
    out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-2)
    dropout = build_model("cnn", config)  # ps=0.5: dropout 0.25 then 0.5 in training only
    v = numpy_variables(dropout, x)
    a, _ = dropout.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    b, _ = dropout.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(a, b)
