"""ResNet-18/34/50, the CIFAR ResNets, fastai's simple_cnn and lesson 7's MNIST ResNet:
layouts (parameter counts and names of the PyTorch originals), shapes, BatchNorm updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.models.registry import build_model, known_architectures

# Parameter counts of the PyTorch originals: torchvision's model docs (ImageNet, 1000
# classes) and akamaster/pytorch_resnet_cifar10's README (CIFAR-10).
TORCH_PARAM_COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "cifar_resnet20": 269_722, "cifar_resnet32": 464_154, "cifar_resnet44": 658_586, "cifar_resnet56": 853_018,
}


def shapes(model, x_shape=(2, 32, 32, 3), dtype=jnp.float32):
    """Variables and output as shapes only (nothing is compiled or run)."""
    x = jnp.zeros(x_shape, dtype)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    return variables, out


def numpy_variables(model, x, seed=0):
    """Variables drawn with numpy (kaiming-normal kernels, unit BN scale/var, zero bias/mean):
    jax's RNG compiles once per shape, which costs seconds per layer on a small CPU."""
    rng = np.random.default_rng(seed)

    def fill(keypath, leaf):
        name, shape = keypath[-1].key, leaf.shape
        if name == "kernel":
            return jnp.asarray(rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape), jnp.float32)
        return jnp.full(shape, 1.0 if name in ("scale", "var") else 0.0, jnp.float32)

    template = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return jax.tree_util.tree_map_with_path(fill, template)


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch", sorted(TORCH_PARAM_COUNTS))
def test_param_counts_match_pytorch(arch):
    assert arch in known_architectures()
    variables, out = shapes(build_model(arch, {}))
    assert count(variables["params"]) == TORCH_PARAM_COUNTS[arch]
    assert out.shape == (2, 1000 if arch.startswith("resnet") else 10)


def test_layout_follows_torchvision_names():
    params = shapes(build_model("resnet50", {}))[0]["params"]
    assert params["conv1"]["kernel"].shape == (7, 7, 3, 64) and "bias" not in params["conv1"]
    block = params["layer2_0"]
    assert block["conv2"]["kernel"].shape == (3, 3, 128, 128)  # v1.5: the 3x3 conv takes the stride
    assert block["downsample_0"]["kernel"].shape == (1, 1, 256, 512) and "scale" in block["downsample_1"]
    assert "downsample_0" not in params["layer2_1"] and params["fc"]["kernel"].shape == (2048, 1000)
    cifar = shapes(build_model("cifar_resnet20", {}))[0]["params"]
    assert set(cifar["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2"}  # option A: no shortcut params


@pytest.mark.parametrize("arch, features", [("resnet18", (2, 1, 1, 512)), ("resnet50", (2, 1, 1, 2048)),
                                            ("cifar_resnet20", (2, 8, 8, 64))])
def test_include_top_false_is_the_body(arch, features):
    variables, out = shapes(build_model(arch, {"include_top": False}))
    assert out.shape == features
    assert not {"fc", "linear"} & set(variables["params"])


def test_resnet_trains_batchnorm_and_predicts():
    model = build_model("resnet18", {"n_classes": 5}).clone(stage_sizes=(1, 1, 1, 1))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = numpy_variables(model, x)
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert out.shape == (2, 5) and bool(jnp.isfinite(out).all())
    old, new = variables["batch_stats"]["layer3_0"]["bn2"]["mean"], updates["batch_stats"]["layer3_0"]["bn2"]["mean"]
    assert not np.allclose(old, new)
    np.testing.assert_allclose(model.apply(variables, x), model.apply(variables, x, train=False))


def test_option_a_shortcut_subsamples_and_zero_pads():
    """With its convs' BatchNorm zeroed, a CIFAR downsampling block outputs relu(shortcut)."""
    from jaxfast.models.resnet import CifarBlock

    block = CifarBlock(32, 2)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 16)), jnp.float32)
    variables = numpy_variables(block, x)
    variables = jax.tree_util.tree_map_with_path(
        lambda kp, v: jnp.zeros_like(v) if kp[-1].key == "scale" else v, variables)
    out = np.asarray(block.apply(variables, x))
    np.testing.assert_allclose(out[..., 8:24], np.maximum(np.asarray(x)[:, ::2, ::2, :], 0), atol=1e-6)
    np.testing.assert_array_equal(out[..., :8], 0)
    np.testing.assert_array_equal(out[..., 24:], 0)


def test_simple_cnn_is_fastais():
    model = build_model("simple_cnn", {"features": (16, 16, 2), "bn": True})
    variables, out = shapes(model, (2, 28, 28, 3))
    assert out.shape == (2, 2)
    params = variables["params"]
    assert "bn" in params["layers_0"] and "bn" in params["layers_1"] and "bn" not in params["layers_2"]
    assert "bias" not in params["layers_0"]["conv"] and "bias" in params["layers_2"]["conv"]
    features = shapes(build_model("simple_cnn", {"include_top": False}), (2, 28, 28, 3))[1]
    assert features.shape == (2, 4, 4, 2)


def test_mnist_resnet_is_lesson7s():
    model = build_model("mnist_resnet", {})
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    variables = numpy_variables(model, images)
    kernels = [(name, v["conv"]["kernel"].shape) for name, v in variables["params"].items() if name.startswith("conv2")]
    assert [k[-2:] for _, k in kernels] == [(1, 8), (8, 16), (16, 32), (32, 16), (16, 10)]
    assert variables["params"]["res_block_2"]["conv2"]["conv"]["kernel"].shape == (3, 3, 32, 32)
    out = model.apply(variables, images)
    assert out.shape == (2, 10)
    np.testing.assert_allclose(out, model.apply(variables, images[..., None].astype(np.float32) / 255), atol=1e-5)
    # fastai's res_block zero-initialises its second BatchNorm: at init it is the identity
    from jaxfast.models.simple_cnn import ResBlock

    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 7, 7, 16)), jnp.float32)
    block_vars = ResBlock(16).init(jax.random.key(0), x)  # the real initialisers
    np.testing.assert_allclose(ResBlock(16).apply(block_vars, x), x, atol=1e-6)
