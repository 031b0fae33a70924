"""fastai's DynamicUnet in Flax: the pieces (pixel shuffle, ICNR, blur, resize), the wiring
(shapes, widths, layer groups, odd sizes), equality with a PyTorch DynamicUnet, and learning
CamVid's segmentation on real data."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.models.convert import convert_state_dict
from jaxfast.models.registry import build_model
from jaxfast.models.unet import blur_shuffled, icnr_init, pixel_shuffle, resize_nearest, unet_layer_groups
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
    y = np.asarray(blur_shuffled(x))[0, :, :, 0]
    assert y.shape == (4, 4)
    assert y[2, 2] == pytest.approx((5 + 6 + 9 + 10) / 4)
    assert y[0, 0] == 0.0 and y[0, 2] == pytest.approx((1 + 2 + 1 + 2) / 4)  # replicated border


@pytest.fixture(scope="module")
def resnet18_unet():
    """A two-class ResNet-18 U-Net and its variables (the init compiles for ~9 s)."""
    model = build_model("unet", {"encoder_arch": "resnet18", "n_classes": 2})
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    return model, variables


def test_resize_nearest_reads_row_floor_of_d_times_in_over_out():
    x = jnp.arange(24.0).reshape(1, 24, 1, 1) * jnp.ones((1, 1, 3, 1))
    down = np.asarray(resize_nearest(x, (23, 3)))[0, :, 0, 0]
    np.testing.assert_array_equal(down, np.arange(23) * 24 // 23)  # PyTorch's nearest: drops row 23
    assert down[-1] == 22 and 11 in down
    up = np.asarray(resize_nearest(x[:, :12], (23, 3)))[0, :, 0, 0]
    np.testing.assert_array_equal(up, np.arange(23) * 12 // 23)
    assert resize_nearest(x, (24, 3)) is x


def test_resnet34_unet_has_fastais_layer_widths():
    model = build_model("unet", {"encoder_arch": "resnet34", "n_classes": 32})
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))["params"]
    kernel = {name: shapes[name]["conv"]["kernel"].shape for name in ("middle_0", "middle_1", "shuf", "final")}
    assert kernel == {"middle_0": (3, 3, 512, 1024), "middle_1": (3, 3, 1024, 512), "shuf": (1, 1, 96, 384),
                      "final": (1, 1, 99, 32)}
    blocks = [(shapes[f"blocks_{i}"]["shuf"]["conv"]["kernel"].shape,
               shapes[f"blocks_{i}"]["conv1"]["conv"]["kernel"].shape) for i in range(4)]
    assert blocks == [((1, 1, 512, 1024), (3, 3, 512, 512)), ((1, 1, 512, 1024), (3, 3, 384, 384)),
                      ((1, 1, 384, 768), (3, 3, 256, 256)), ((1, 1, 256, 512), (3, 3, 192, 96))]
    assert shapes["res"]["conv1"]["conv"]["kernel"].shape == (3, 3, 99, 99)


def test_unet_wiring_groups_and_sizes(resnet18_unet):
    model, variables = resnet18_unet
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    apply = jax.jit(lambda m, v, x: m.apply(v, x, train=False), static_argnums=0)
    plain, ranged = apply(model, variables, x), apply(model.clone(y_range=(-1.0, 2.0)), variables, x)
    assert plain.shape == (2, 32, 32, 2)
    np.testing.assert_allclose(ranged, jax.nn.sigmoid(plain) * 3.0 - 1.0, rtol=1e-5, atol=1e-6)
    assert float(variables["params"]["bn"]["bias"][0]) == pytest.approx(1e-3)  # fastai's batchnorm_2d
    groups = unet_layer_groups(model)
    by_group = {0: set(), 1: set(), 2: set()}
    for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]:
        names = tuple(k.key for k in path)
        by_group[groups.group_of_path(names)].add(names[1] if names[0] == "encoder" else names[0])
    assert by_group[0] == {"conv1", "bn1", "layer1_0", "layer1_1", "layer2_0", "layer2_1"}
    assert by_group[1] == {"layer3_0", "layer3_1", "layer4_0", "layer4_1"}
    assert by_group[2] == {"bn", "middle_0", "middle_1", "blocks_0", "blocks_1", "blocks_2", "blocks_3", "shuf", "res",
                           "final"}
    for px in (40, 33):  # maps resized to the skips (5x5, 3x3 at 40 px) and, at 33 px, 34 -> 33 at the end
        shape = jax.eval_shape(lambda x: model.apply(variables, x, train=False), jnp.zeros((1, px, px, 3))).shape
        assert shape == (1, px, px, 2)
    with pytest.raises(ValueError, match="cannot return its feature maps"):
        build_model("unet", {"encoder_arch": "simple_cnn"})


@pytest.mark.usefixtures("full_precision")
@pytest.mark.parametrize("encoder, blur_, px", [("resnet18", True, 33), ("resnet34", False, 64)])
def test_unet_matches_a_pytorch_dynamic_unet(encoder, blur_, px):
    torch = needs_torch()
    import torch_reference as tr

    torch.manual_seed(0)
    ref = randomise_bn(torch, tr.unet(encoder, 5, blur=blur_))
    model = build_model("unet", {"encoder_arch": encoder, "n_classes": 5, "blur": blur_})
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    variables, report = convert_state_dict(state, template(model, 64))  # strict: every weight has its place
    assert len(report.loaded) == sum(not k.endswith("num_batches_tracked") for k in state)
    x = np.random.default_rng(0).normal(size=(2, 3, px, px)).astype(np.float32)  # 33 px: every resize
    with torch.no_grad():
        expected = ref(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(jax.jit(model.apply, static_argnames="train")(variables, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                                                  train=False))
    assert got.shape == expected.shape == (2, px, px, 5)
    assert np.abs(got - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_unet_learns_camvid_tiny_with_the_learner():
    """Real data: fastai's CAMVID_TINY (100 street scenes, 32 classes), at half size (48x64,
    so the decoder resizes to 3x4 and 2x2 skip maps), 80 images to train and 20 held out.
    Lesson 3's recipe from scratch (no pretrained encoder): cross entropy ignoring Void,
    fit_one_cycle with the U-Net's layer groups (4 epochs: loss 3.5 -> 1.1, held-out pixel accuracy
    0.66 here). The majority class labels 28% of the held-out pixels; the U-Net must label over
    half of them right."""
    from PIL import Image

    from jaxfast.data.loader import ArrayLoader, DataBunch
    from jaxfast.learner import Learner, TrainConfig
    from jaxfast.losses import cross_entropy_ignore
    from jaxfast.metrics import accuracy_ignoring
    from conftest import shared_dataset

    root = shared_dataset("camvid_tiny")
    void = (root / "codes.txt").read_text().split().index("Void")
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    images = np.stack([np.asarray(Image.open(root / "images" / f"{s}.png").convert("RGB")) for s in stems])
    masks = np.stack([np.asarray(Image.open(root / "labels" / f"{s}_P.png")) for s in stems]).astype(np.int32)
    assert images.shape == (100, 96, 128, 3) and masks.shape == (100, 96, 128)
    images = (images / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]  # ImageNet statistics, as fastai
    images = images.reshape(100, 48, 2, 64, 2, 3).mean((2, 4)).astype(np.float32)  # half size
    masks = masks[:, ::2, ::2].copy()
    order = np.random.default_rng(0).permutation(100)
    train, valid = order[:80], order[80:]
    data = DataBunch(ArrayLoader(images[train], masks[train], 8, shuffle=True, drop_last=True, name="train"),
                     ArrayLoader(images[valid], masks[valid], 10, name="valid"))
    model = build_model("unet", {"encoder_arch": "resnet18", "n_classes": 32})

    def loss(logits, targets):
        return cross_entropy_ignore(logits, targets, void)

    learn = Learner(model, data, loss, [accuracy_ignoring(void)], layer_groups=unet_layer_groups(model),
                    config=TrainConfig(progress=False), log=lambda line: None)
    learn.fit_one_cycle(4, 3e-3)
    losses = learn.recorder.losses
    held_out = masks[valid]
    majority = np.bincount(masks[train][masks[train] != void]).argmax()
    baseline = float(np.mean(held_out[held_out != void] == majority))
    accuracy = learn.validate()["accuracy_ignoring"]
    print(f"CAMVID_TINY: loss {np.mean(losses[:3]):.2f} -> {np.mean(losses[-5:]):.2f}, held-out pixel accuracy "
          f"{accuracy:.3f} (majority class {baseline:.3f})")
    assert np.mean(losses[-5:]) < 0.4 * np.mean(losses[:3]), (losses[:3], losses[-5:])
    assert baseline < 0.35 and accuracy > 0.5, (baseline, accuracy)


def _decoder_convs(params) -> dict:
    """{path: the conv's param dict} of every decoder conv (the encoder left out)."""
    found = {}
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(k.key for k in path)
        if names[0] != "encoder" and "conv" in names[:-1]:
            where = names[:len(names) - 1 - names[::-1].index("conv") + 1]
            found[where] = params
            for name in where:
                found[where] = found[where][name]
    return found


def test_default_unet_has_no_lesson7_layers_and_equals_an_explicit_none():
    default = build_model("unet", {"encoder_arch": "resnet18", "n_classes": 3})
    explicit = build_model("unet", {"encoder_arch": "resnet18", "n_classes": 3, "norm_type": None,
                                    "self_attention": False})
    init = lambda m: jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    shapes = init(default)
    assert jax.tree.structure(shapes) == jax.tree.structure(init(explicit))
    convs = _decoder_convs(shapes["params"])
    assert len(convs) == 2 + 4 * 3 + 1 + 2 + 1  # middle, 4 blocks (shuf, conv1, conv2), shuf, res, final
    assert all(set(c) == {"kernel", "bias"} for c in convs.values())  # plain convs with bias, as before
    flat = ["/".join(k.key for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(shapes["params"])[0]]
    assert not [p for p in flat if "attention" in p or ("/bn/" in p and not p.startswith("encoder"))
                and not p.split("/")[-2] == "bn" or p.endswith("/scale") and "conv" in p.split("/")[-2]]


@pytest.mark.parametrize("norm", ["weight", "batch", "spectral"])
def test_lesson7_unet_options_norm_type_self_attention_y_range(norm):
    config = {"encoder_arch": "resnet18", "n_classes": 3, "norm_type": norm, "self_attention": True,
              "y_range": [-3, 3], "blur": True}
    model = build_model("unet", config)
    assert (model.norm_type, model.self_attention, model.y_range, model.blur) == (norm, True, (-3.0, 3.0), True)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    params, stats = shapes["params"], shapes.get("batch_stats", {})
    # fastai's self-attention: after the second conv of the block len(skips) - 3 = 1, and there only
    assert [k for k in params if "attention" in params[k].get("conv2", {})] == ["blocks_1"]
    assert params["blocks_1"]["conv2"]["attention"]["gamma"].shape == (1,)
    convs = _decoder_convs(params)
    expected = {"weight": {"kernel", "scale", "bias"}, "batch": {"kernel"}, "spectral": {"kernel", "bias"}}[norm]
    assert all(set(c) == expected for c in convs.values()), {k: set(c) for k, c in convs.items()}
    if norm == "batch":  # conv -> ReLU -> BatchNorm everywhere, fastai's BatchZero in the res block's second
        assert params["final"]["bn"]["scale"].shape == (3,) and "bn" in params["blocks_0"]["conv1"]
        assert "bn" in params["res"]["conv2"] and "bn" in params["shuf"]
    if norm == "spectral":
        assert stats["middle_0"]["conv"]["spectral"]["u"].shape == (1024,)
    if norm == "weight":
        assert params["middle_0"]["conv"]["scale"].shape == (1024,)


def test_weight_normed_lesson7_unet_starts_like_its_plain_kernels_and_stays_in_y_range():
    from jaxfast.models.unet import icnr_init  # noqa: F401 (the shuffle's kernel starts as ICNR)

    model = build_model("unet", {"encoder_arch": "resnet18", "n_classes": 3, "norm_type": "weight",
                                 "self_attention": True, "y_range": [-3, 3], "blur": True})
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3)) * 3
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), x, train=False)
    out = jax.jit(model.apply, static_argnames="train")(variables, x, train=False)
    assert out.shape == (2, 32, 32, 3) and float(out.min()) > -3 and float(out.max()) < 3
    assert float(jnp.std(out)) > 1e-3
    for conv in _decoder_convs(variables["params"]).values():  # g starts at ||v||: the kernel starts as v
        norm = jnp.sqrt(jnp.sum(conv["kernel"] ** 2, axis=(0, 1, 2)))
        np.testing.assert_allclose(conv["scale"], norm, rtol=1e-5)
    shuf = np.asarray(variables["params"]["blocks_0"]["shuf"]["conv"]["kernel"]).reshape(-1, 4)
    assert np.all(shuf == shuf[:, :1])  # ICNR: the 4 sub-pixel outputs of a channel start equal
    with pytest.raises(ValueError, match="norm_type must be one of"):
        build_model("unet", {"encoder_arch": "resnet18", "norm_type": "instance"})
