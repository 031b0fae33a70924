"""The im2col conv lowering equals XLA's convolution forward and backward, the choice rule
sends each shape and backend where it is measured to be fastest, and a model's explicit
`conv_lowering` reaches every conv and max-pool it builds."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.models.conv import Conv, choose_lowering, conv2d, max_pool

pytestmark = pytest.mark.usefixtures("full_precision")  # equalities to 1e-5 on GPUs too

CASES = [
    # x shape, kernel shape, strides, padding
    ((2, 5, 5, 3), (3, 3, 3, 4), (1, 1), "SAME"),
    ((2, 6, 6, 4), (3, 3, 4, 5), (2, 2), "SAME"),
    ((2, 7, 7, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),
    ((2, 4, 4, 6), (1, 1, 6, 3), (2, 2), "VALID"),
    ((1, 2, 2, 8), (3, 3, 8, 8), (1, 1), ((1, 1), (1, 1))),
    ((2, 5, 6, 3), (3, 2, 3, 2), (1, 2), "VALID"),
    # taps that only read padding are dropped by im2col: centre tap only, then 4 of 9
    ((2, 1, 1, 8), (3, 3, 8, 4), (1, 1), ((1, 1), (1, 1))),
    ((2, 2, 2, 4), (3, 3, 4, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 3, 1, 4), (3, 3, 4, 2), (1, 1), "SAME"),
]


@pytest.mark.parametrize("x_shape,k_shape,strides,padding", CASES)
def test_im2col_matches_xla_forward_and_backward(x_shape, k_shape, strides, padding):
    kx, kk, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape)
    k = jax.random.normal(kk, k_shape)

    def loss(lowering):
        def f(x, k):
            y = conv2d(x, k, strides, padding, lowering)
            return jnp.sum(y * jax.random.normal(kg, y.shape))
        return f

    y_xla = conv2d(x, k, strides, padding, "xla")
    y_mm = conv2d(x, k, strides, padding, "im2col")
    assert y_xla.shape == y_mm.shape
    np.testing.assert_allclose(y_mm, y_xla, rtol=1e-5, atol=1e-5)
    g_xla = jax.grad(loss("xla"), argnums=(0, 1))(x, k)
    g_mm = jax.grad(loss("im2col"), argnums=(0, 1))(x, k)
    for a, b in zip(g_mm, g_xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("hw,window,strides,padding", [
    (9, (3, 3), (2, 2), "SAME"), (9, (3, 3), (2, 2), "VALID"), (9, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (8, (3, 3), (2, 2), ((1, 1), (1, 1))), (7, (2, 2), (2, 2), "VALID"), (6, (3, 3), (1, 1), "SAME"),
    (7, (3, 2), (2, 3), ((1, 0), (0, 1))),
])
def test_max_pool_lowerings_agree(hw, window, strides, padding):
    x = jax.random.normal(jax.random.key(1), (2, hw, hw, 4))  # no ties: the backward is unique
    a = max_pool(x, window, strides, padding, "xla")
    b = max_pool(x, window, strides, padding, "im2col")
    np.testing.assert_array_equal(a, b)
    ct = jax.random.normal(jax.random.key(2), a.shape)
    ga = jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding, "xla") * ct))(x)
    gb = jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding, "im2col") * ct))(x)
    np.testing.assert_allclose(ga, gb, rtol=1e-6, atol=1e-7)


def test_max_pool_ties_go_to_the_first_maximum_once():
    """After a ReLU many windows tie at 0: the gradient goes to one element, as XLA's does."""
    x = jnp.zeros((1, 4, 4, 1))
    ga = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), "xla")))(x)
    gb = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), "im2col")))(x)
    np.testing.assert_array_equal(ga, gb)


def test_choice_rule():
    # the rule measured by benchmarks/conv_bench.py on CPU: Winograd for float32 3x3 stride-1
    # convs with >= 4x4 outputs, >= 64 channels and >= 64 tiles; im2col for <= 2x2 outputs,
    # small batches of small maps with >= 128 channels, tiny contractions and wide 1x1 convs;
    # XLA everywhere else
    assert choose_lowering((32, 16, 16, 64), (3, 3, 64, 64), (1, 1), "SAME", "cpu") == "winograd"
    assert choose_lowering((32, 8, 8, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), "cpu") == "winograd"
    assert choose_lowering((64, 7, 7, 64), (3, 3, 64, 64), (1, 1), "SAME", "cpu") == "winograd"
    assert choose_lowering((32, 56, 56, 64), (3, 3, 64, 64), (1, 1), "SAME", "cpu") == "winograd"  # large maps
    assert choose_lowering((8, 128, 128, 99), (3, 3, 99, 99), (1, 1), "SAME", "cpu") == "winograd"  # U-Net
    assert choose_lowering((32, 8, 8, 128), (3, 3, 128, 128), (1, 1), "SAME", "cpu", jnp.bfloat16) == "xla"
    assert choose_lowering((32, 4, 4, 256), (3, 3, 256, 256), (1, 1), "SAME", "cpu") == "xla"  # 32 tiles
    assert choose_lowering((16, 64, 64, 32), (3, 3, 32, 32), (1, 1), "SAME", "cpu") == "xla"  # 32 channels
    assert choose_lowering((128, 7, 7, 16), (3, 3, 16, 16), (1, 1), "SAME", "cpu") == "xla"  # 16 channels
    assert choose_lowering((128, 4, 4, 32), (3, 3, 32, 32), (1, 1), "SAME", "cpu") == "xla"  # 32 channels
    assert choose_lowering((32, 2, 2, 512), (3, 3, 512, 512), (1, 1), "SAME", "cpu") == "im2col"
    assert choose_lowering((32, 1, 1, 512), (3, 3, 512, 512), (1, 1), "SAME", "cpu") == "im2col"
    assert choose_lowering((32, 4, 4, 256), (3, 3, 256, 512), (2, 2), "SAME", "cpu") == "im2col"
    assert choose_lowering((8, 4, 4, 512), (3, 3, 512, 1024), (1, 1), "SAME", "cpu") == "im2col"  # 128 rows
    assert choose_lowering((16, 4, 4, 256), (3, 3, 256, 256), (1, 1), "SAME", "cpu") == "im2col"  # 256 rows
    assert choose_lowering((17, 4, 4, 256), (3, 3, 256, 256), (1, 1), "SAME", "cpu") == "xla"  # 272 rows
    assert choose_lowering((8, 8, 8, 256), (3, 3, 256, 512), (2, 2), "SAME", "cpu") == "im2col"  # strided, 128 rows
    assert choose_lowering((8, 4, 4, 64), (3, 3, 64, 64), (1, 1), "SAME", "cpu") == "xla"  # 64 channels
    assert choose_lowering((128, 4, 4, 32), (3, 3, 32, 16), (2, 2), ((1, 1), (1, 1)), "cpu") == "im2col"
    assert choose_lowering((128, 28, 28, 1), (3, 3, 1, 8), (2, 2), ((1, 1), (1, 1)), "cpu") == "im2col"
    assert choose_lowering((32, 16, 16, 64), (1, 1, 64, 128), (2, 2), "VALID", "cpu") == "im2col"
    assert choose_lowering((32, 8, 8, 256), (3, 3, 256, 512), (2, 2), "SAME", "cpu") == "xla"
    assert choose_lowering((32, 4, 4, 256), (3, 3, 256, 256), (1, 1), "SAME", "cpu") == "xla"
    assert choose_lowering((32, 16, 16, 64), (3, 3, 64, 128), (2, 2), "SAME", "cpu") == "xla"
    assert choose_lowering((128, 14, 14, 8), (3, 3, 8, 8), (1, 1), "SAME", "cpu") == "xla"
    assert choose_lowering((32, 64, 64, 3), (7, 7, 3, 64), (2, 2), "SAME", "cpu") == "xla"
    # accelerators keep XLA's convolution
    for backend in ("gpu", "tpu"):
        assert choose_lowering((32, 2, 2, 512), (3, 3, 512, 512), (1, 1), "SAME", backend) == "xla"


def test_conv_module_is_a_drop_in_for_nn_conv():
    import flax.linen as nn

    x = jax.random.normal(jax.random.key(2), (2, 4, 4, 8))
    ours = Conv(6, (3, 3), (2, 2), lowering="im2col")
    theirs = nn.Conv(6, (3, 3), (2, 2))
    params = ours.init(jax.random.key(3), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, theirs.init(jax.random.key(3), x))
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)


def primitive_counts(closed_jaxpr) -> Counter:
    """How often each primitive occurs in a jaxpr, nested jaxprs (custom_vjp, pjit) included."""
    counts = Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            counts[eqn.primitive.name] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(closed_jaxpr.jaxpr)
    return counts


MODELS = [  # registered name, config, input shape
    ("resnet18", {"n_classes": 5}, (2, 32, 32, 3)),
    ("cifar_resnet20", {}, (2, 16, 16, 3)),
    ("simple_cnn", {"features": (8, 8, 4), "bn": True}, (2, 16, 16, 3)),
    ("mnist_resnet", {}, (2, 28, 28, 1)),
    ("cnn", {"body_arch": "resnet18", "n_classes": 3}, (2, 32, 32, 3)),
    ("unet", {"encoder_arch": "resnet18", "n_classes": 3}, (2, 32, 32, 3)),
]


@pytest.mark.parametrize("arch,config,x_shape", MODELS, ids=[m[0] for m in MODELS])
def test_model_conv_lowering_reaches_every_conv_and_pool(arch, config, x_shape):
    """'xla': one conv_general_dilated per Conv kernel (4-D) and a dot_general only per Dense
    kernel (2-D); 'im2col': no XLA conv at all, one matmul per Conv; max-pools follow."""
    from jaxfast.models.registry import build_model

    x = jnp.zeros(x_shape)
    variables = jax.eval_shape(build_model(arch, config).init, jax.random.key(0), x)
    kernels = Counter(leaf.ndim for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
                      if jax.tree_util.keystr(path).endswith("['kernel']"))
    n_pools = 1 if "resnet18" in (arch, config.get("body_arch"), config.get("encoder_arch")) else 0
    counts = {}
    for lowering in ("xla", "im2col"):
        model = build_model(arch, {**config, "conv_lowering": lowering})
        counts[lowering] = primitive_counts(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x))
    assert kernels[4] > 0
    assert counts["xla"]["conv_general_dilated"] == kernels[4]
    assert counts["xla"]["dot_general"] == kernels[2]
    assert counts["xla"]["reduce_window_max"] == n_pools
    assert counts["im2col"]["conv_general_dilated"] == 0
    assert counts["im2col"]["dot_general"] == kernels[4] + kernels[2]
    assert counts["im2col"]["reduce_window_max"] == 0


def test_resnet18_outputs_agree_across_lowerings():
    from jaxfast.models.resnet import resnet18

    x = jax.random.normal(jax.random.key(5), (2, 32, 32, 3))
    shapes = jax.eval_shape(resnet18(10).init, jax.random.key(0), x)
    rng = np.random.default_rng(0)
    # numpy draws (jax's RNG would compile per layer); BN variances stay positive
    variables = jax.tree_util.tree_map_with_path(
        lambda path, s: np.abs(rng.standard_normal(s.shape)).astype(np.float32) + 0.5
        if jax.tree_util.keystr(path).endswith("['var']") else
        (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes)
    outputs = {lowering: np.asarray(jax.jit(resnet18(10, conv_lowering=lowering).apply)(variables, x))
               for lowering in ("auto", "xla", "im2col")}
    assert np.abs(outputs["xla"]).max() > 1e-3
    np.testing.assert_allclose(outputs["im2col"], outputs["xla"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs["auto"], outputs["xla"], rtol=1e-4, atol=1e-4)


def test_unknown_lowerings_raise_naming_them():
    from jaxfast.errors import InputError
    from jaxfast.models.registry import build_model
    from jaxfast.models.resnet import ResNet

    for arch, config in (("resnet18", {}), ("mnist_resnet", {}), ("unet", {"encoder_arch": "resnet18"}),
                         ("cnn", {"body_arch": "resnet18", "n_classes": 2})):
        with pytest.raises(InputError, match="conv_lowering 'fft'"):
            build_model(arch, {**config, "conv_lowering": "fft"})
    with pytest.raises(InputError, match="conv_lowering 'winograd'"):  # not every conv of a model fits it
        build_model("resnet18", {"conv_lowering": "winograd"})
    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(InputError, match="ResNet: unknown conv_lowering 'fft'"):
        jax.eval_shape(ResNet((1, 1), conv_lowering="fft").init, jax.random.key(0), x)
    with pytest.raises(InputError, match="max-pool lowering 'fft'"):
        max_pool(x, lowering="fft")
    with pytest.raises(InputError, match="conv lowering 'fft'"):
        conv2d(x, jnp.zeros((3, 3, 3, 4)), lowering="fft")
