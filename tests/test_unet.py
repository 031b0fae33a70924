"""fastai's DynamicUnet in Flax: the pieces (pixel shuffle, ICNR, blur), the wiring (shapes,
layer groups, bad sizes), equality with a PyTorch DynamicUnet, and learning a segmentation."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxfast.models.convert import convert_state_dict
from jaxfast.models.registry import build_model
from jaxfast.models.unet import blur, icnr_init, pixel_shuffle, unet_layer_groups
from test_convert_torch import needs_torch, randomise_bn, template

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_pixel_shuffle_is_torchs_channel_order():
    # NHWC channel c * 4 + i * 2 + j of pixel (r, q) goes to output channel c at (2r + i, 2q + j)
    x = np.arange(1 * 2 * 3 * 8, dtype=np.float32).reshape(1, 2, 3, 8)
    y = np.asarray(pixel_shuffle(jnp.asarray(x), 2))
    assert y.shape == (1, 4, 6, 2)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                np.testing.assert_array_equal(y[0, i::2, j::2, c], x[0, :, :, c * 4 + i * 2 + j])
    with pytest.raises(ValueError, match="6 channels are not a multiple of scale\\*\\*2 = 4"):
        pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)


def test_icnr_makes_the_first_shuffle_a_nearest_neighbour_upsampling():
    kernel = icnr_init(2)(jax.random.key(0), (1, 1, 5, 12))
    assert kernel.shape == (1, 1, 5, 12)
    k = np.asarray(kernel).reshape(5, 3, 4)
    assert np.all(k == k[:, :, :1]) and np.std(k[:, :, 0]) > 0.1  # 4 equal copies of a random base
    x = jax.random.normal(jax.random.key(1), (2, 3, 3, 5))
    up = pixel_shuffle(jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0]), 2)
    low = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0, :, ::4])
    np.testing.assert_allclose(up, jnp.repeat(jnp.repeat(low, 2, axis=1), 2, axis=2), rtol=1e-6)
    with pytest.raises(ValueError, match="ICNR: 6 output channels"):
        icnr_init(2)(jax.random.key(0), (1, 1, 5, 6))


def test_blur_averages_each_pixel_with_its_upper_left_neighbours():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    y = np.asarray(blur(x))[0, :, :, 0]
    assert y.shape == (4, 4)
    assert y[2, 2] == pytest.approx((5 + 6 + 9 + 10) / 4)
    assert y[0, 0] == 0.0 and y[0, 2] == pytest.approx((1 + 2 + 1 + 2) / 4)  # replicated border


@pytest.fixture(scope="module")
def resnet18_unet():
    """A two-class ResNet-18 U-Net and its variables (initialised once: the init compiles for ~9 s)."""
    model = build_model("unet", {"encoder_arch": "resnet18", "n_classes": 2})
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    return model, variables


def test_unet_wiring_groups_and_clear_errors(resnet18_unet):
    model, variables = resnet18_unet
    ranged = model.clone(y_range=(-1.0, 2.0))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    y = jax.jit(ranged.apply, static_argnames="train")(variables, x, train=False)
    assert y.shape == (2, 32, 32, 2) and float(y.min()) > -1 and float(y.max()) < 2
    groups = unet_layer_groups(model)
    by_group = {0: set(), 1: set(), 2: set()}
    for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        names = tuple(k.key for k in path)
        by_group[groups.group_of_path(names)].add(names[1] if names[0] == "encoder" else names[0])
    assert by_group[0] == {"conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1"}
    assert by_group[1] == {"layer3_0", "layer3_1", "layer4_0", "layer4_1"}
    assert by_group[2] == {"bn", "middle_0", "middle_1", "blocks_0", "blocks_1", "blocks_2", "blocks_3", "shuf", "res",
                           "final"}
    shape = jax.eval_shape(lambda x: model.apply(variables, x, train=False), jnp.zeros((1, 40, 40, 3))).shape
    assert shape == (1, 40, 40, 2)  # 40 px: skips of 5x5 and 3x3, the upsampled maps resized to them
    with pytest.raises(ValueError, match="input of 33x33 px came back as 34x34; use even sizes"):
        jax.eval_shape(lambda x: model.apply(variables, x, train=False), jnp.zeros((1, 33, 33, 3)))
    with pytest.raises(ValueError, match="cannot return its feature maps"):
        build_model("unet", {"encoder_arch": "simple_cnn"})


@pytest.mark.usefixtures("full_precision")
@pytest.mark.parametrize("encoder, blur_", [("resnet18", True), ("resnet34", False)])
def test_unet_matches_a_pytorch_dynamic_unet(encoder, blur_):
    torch = needs_torch()
    import torch_reference as tr

    torch.manual_seed(0)
    ref = randomise_bn(torch, tr.unet(encoder, 5, blur=blur_))
    model = build_model("unet", {"encoder_arch": encoder, "n_classes": 5, "blur": blur_})
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    variables, report = convert_state_dict(state, template(model, 64))  # strict: every weight has its place
    assert len(report.loaded) == sum(not k.endswith("num_batches_tracked") for k in state)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(model.apply, static_argnames="train")(variables, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                                                  train=False))
    assert got.shape == expected.shape == (2, 64, 64, 5)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_unet_learns_to_segment_squares(resnet18_unet):
    """Per-pixel cross entropy on random images with a bright square: the loss falls and the
    masks come out right."""
    rng = np.random.default_rng(0)
    n, px = 8, 32
    images = rng.normal(0, 0.3, (n, px, px, 3)).astype(np.float32)
    masks = np.zeros((n, px, px), np.int32)
    for i in range(n):
        r, c, s = rng.integers(0, 20), rng.integers(0, 20), rng.integers(6, 12)
        images[i, r:r + s, c:c + s] += 1.5
        masks[i, r:r + s, c:c + s] = 1
    model, variables = resnet18_unet
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(p):
            logits, new = model.apply({"params": p, "batch_stats": stats}, images, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, masks).mean(), new["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    losses = []
    for _ in range(15):
        params, stats, opt_state, loss = step(params, stats, opt_state)
        losses.append(float(loss))
    logits = model.apply({"params": params, "batch_stats": stats}, images, train=False)
    accuracy = float(np.mean(np.asarray(logits.argmax(-1)) == masks))
    assert losses[-1] < 0.25 * losses[0], losses
    assert accuracy > 0.95, accuracy
