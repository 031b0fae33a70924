"""fastai v1's GAN models and layers in Flax: shapes, spectral norm (against numpy's SVD and
torch's spectral_norm), weight norm, self-attention, PyTorch's transposed convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.errors import InputError
from jaxfast.models.gan import basic_critic, basic_generator, gan_critic
from jaxfast.models.gan_layers import (ConvTranspose, NormConv, SelfAttention, conv_transpose2d,
                                       conv_transpose2d_dilated, kernel_matrix)
from jaxfast.models.registry import build_model
from jaxfast.optim import batchnorm_mask
from test_convert_torch import needs_torch


def _run_train(model, variables, x, rng=1):
    out, updates = model.apply(variables, x, train=True, rngs={"dropout": jax.random.fold_in(jax.random.key(0), rng)},
                               mutable=["batch_stats"])
    return out, {**variables, "batch_stats": updates["batch_stats"]}


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def test_basic_generator_and_critic_shapes_at_64px():
    gen = build_model("basic_generator", {"in_size": 64, "n_channels": 3, "n_extra_layers": 1},
                      module="jaxfast.models.gan")
    noise = jax.ShapeDtypeStruct((2, 1, 1, 100), jnp.float32)
    gv = jax.eval_shape(lambda x: gen.init(jax.random.key(1), x), noise)
    assert jax.eval_shape(lambda v, x: gen.apply(v, x), gv, noise).shape == (2, 64, 64, 3)
    assert jax.eval_shape(lambda v: gen.apply(v, jnp.zeros((2, 100))), gv).shape == (2, 64, 64, 3)  # [B, noise]
    # fastai's widths: 100 -> 512 (4x4) -> 256 -> 128 -> 64 (32x32) -> extra 64 -> 3
    p = _shapes(gv["params"])
    assert p["initial"]["conv"]["kernel"] == (4, 4, 100, 512) and p["up_2"]["conv"]["kernel"] == (4, 4, 128, 64)
    assert p["extra_0"]["conv"]["kernel"] == (3, 3, 64, 64) and p["final"]["kernel"] == (4, 4, 64, 3)

    critic = basic_critic(64, 3, n_extra_layers=1)
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    cv = jax.eval_shape(lambda x: critic.init(jax.random.key(2), x), images)
    assert jax.eval_shape(lambda v, x: critic.apply(v, x), cv, images).shape == (2, 1)
    c = _shapes(cv["params"])
    assert c["down_2"]["conv"]["kernel"] == (4, 4, 256, 512) and c["final"]["conv"] == {"kernel": (4, 4, 512, 1)}
    assert "bias" in c["initial"]["conv"] and "bias" not in c["down_0"]["conv"] and "bn" not in c["initial"]
    with pytest.raises(InputError, match=r"images must be \[B, 64, 64, 3\], got \(2, 32, 32, 3\)"):
        critic.apply(cv, jnp.zeros((2, 32, 32, 3)))
    with pytest.raises(InputError, match="power of 2"):
        basic_generator(48)
    with pytest.raises(InputError, match="unknown conv_lowering 'winograd'"):
        build_model("gan_critic", {"conv_lowering": "winograd"}, module="jaxfast.models.gan")


def test_small_generator_images_are_in_tanh_range_and_the_critic_scores_them():
    gen, critic = basic_generator(16, 1, 8, 8), basic_critic(16, 1, 8)
    noise = jax.random.normal(jax.random.key(0), (3, 8))

    @jax.jit
    def run(noise):
        images, _ = _run_train(gen, gen.init(jax.random.key(1), noise), noise)
        return images, critic.apply(critic.init(jax.random.key(2), images), images)

    images, scores = run(noise)
    assert images.shape == (3, 16, 16, 1) and float(jnp.abs(images).max()) <= 1.0 and float(images.std()) > 0
    assert scores.shape == (3, 1)


def test_gan_critic_shapes_dropout_and_spectral_stats():
    critic = gan_critic(n_channels=3, nf=8)
    big = jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32)
    vb = jax.eval_shape(lambda x: critic.init(jax.random.key(1), x), big)
    assert jax.eval_shape(lambda v, x: critic.apply(v, x), vb, big).shape == (2, 25)  # 128 -> 8, 4x4 conv: 5x5
    # dense res block (8 -> 16 channels), then 32, 64, 128 channels; self-attention after the first
    p = _shapes(vb["params"])
    assert p["down_0"]["conv"]["kernel"] == (4, 4, 16, 32) and p["down_0"]["attention"]["gamma"] == (1,)
    assert p["final"]["conv"] == {"kernel": (4, 4, 128, 1)} and "bias" in p["initial"]["conv"]

    small = gan_critic(n_channels=3, nf=4, n_blocks=1)  # 32 -> 16 -> 8, 4x4 conv: 5x5
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    v = jax.jit(small.init)(jax.random.key(1), x)
    infer = jax.jit(small.apply)
    assert infer(v, x).shape == (2, 25)
    # u, v of every spectral conv sit beside the kernel, never mistaken for BatchNorm params
    assert v["batch_stats"]["initial"]["conv"]["spectral"]["u"].shape == (4,)
    assert not any(jax.tree.leaves(batchnorm_mask(v["params"], v["batch_stats"])))
    # training mode: dropout draws from the rng, one power iteration updates u and v
    train = jax.jit(lambda v, x, r: _run_train(small, v, x, r))
    a, new = train(v, x, 1)
    b, _ = train(v, x, 2)
    assert not np.allclose(a, b)
    assert not np.allclose(new["batch_stats"]["initial"]["conv"]["spectral"]["u"],
                           v["batch_stats"]["initial"]["conv"]["spectral"]["u"])
    np.testing.assert_array_equal(infer(v, x), infer(v, x))  # inference: no dropout, u and v as stored


def test_spectral_norm_largest_singular_value_goes_to_one():
    conv = NormConv(16, (3, 3), norm="spectral")
    x = jnp.ones((1, 5, 5, 8))
    v = conv.init(jax.random.key(0), x)
    kernel = np.asarray(v["params"]["kernel"])
    sigma_true = np.linalg.svd(np.asarray(kernel_matrix(kernel)), compute_uv=False)[0]

    def normalised_top_sv(variables):  # the kernel the conv uses, read back through a linear probe
        u = variables["batch_stats"]["spectral"]["u"]
        vv = variables["batch_stats"]["spectral"]["v"]
        sigma = float(u @ (kernel_matrix(kernel) @ vv))
        return np.linalg.svd(np.asarray(kernel_matrix(kernel)) / sigma, compute_uv=False)[0]

    train_call = jax.jit(lambda variables: _run_train(conv, variables, x)[1])
    errors = [abs(normalised_top_sv(v) - 1)]
    for _ in range(30):  # one power iteration per training call
        v = train_call(v)
        errors.append(abs(normalised_top_sv(v) - 1))
    assert errors[0] > 0.05  # random u, v: far off at first
    assert errors[3] < errors[0] / 2 and errors[10] < 2e-2 and errors[30] < 1e-3
    # the conv's output is the conv with kernel / sigma, sigma ~ the true top singular value
    y_eval = conv.apply(v, x)
    y_plain = jax.lax.conv_general_dilated(x, jnp.asarray(kernel) / sigma_true, (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(y_eval, y_plain, rtol=2e-3, atol=1e-4)
    u_before = v["batch_stats"]["spectral"]["u"]
    _, v2 = conv.apply(v, x, mutable=["batch_stats"])  # inference leaves u unchanged
    np.testing.assert_array_equal(v2["batch_stats"]["spectral"]["u"], u_before)


def test_spectral_norm_matches_torch_spectral_norm():
    torch = needs_torch()
    conv = NormConv(6, (3, 3), padding=1, norm="spectral")
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    v = conv.init(jax.random.key(1), x)
    ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(4, 6, 3, padding=1))
    with torch.no_grad():
        ref.weight_orig.copy_(torch.from_numpy(np.asarray(v["params"]["kernel"]).transpose(3, 2, 0, 1).copy()))
        ref.bias.zero_()
        # our v is ordered (kh, kw, in); torch's (in, kh, kw)
        ref.weight_v.copy_(torch.from_numpy(np.asarray(v["batch_stats"]["spectral"]["v"]).reshape(3, 3, 4)
                                            .transpose(2, 0, 1).reshape(-1).copy()))
        ref.weight_u.copy_(torch.from_numpy(np.asarray(v["batch_stats"]["spectral"]["u"]).copy()))
    xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
    for _ in range(3):  # training calls: one power iteration each, same u and outputs
        y, v = _run_train(conv, v, x)
        yt = ref(xt).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v["batch_stats"]["spectral"]["u"], ref.weight_u.numpy(), rtol=1e-5, atol=1e-6)
    ref.eval()
    np.testing.assert_allclose(conv.apply(v, x), ref(xt).detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4,
                               atol=1e-5)


def test_weight_norm_starts_as_the_plain_kernel_and_scales_per_output_channel():
    conv = NormConv(5, (3, 3), norm="weight")
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    v = conv.init(jax.random.key(1), x)
    kernel = v["params"]["kernel"]
    np.testing.assert_allclose(v["params"]["scale"], np.linalg.norm(np.asarray(kernel).reshape(-1, 5), axis=0),
                               rtol=1e-6)
    plain = nn.Conv(5, (3, 3)).apply({"params": {"kernel": kernel, "bias": jnp.zeros(5)}}, x)
    np.testing.assert_allclose(conv.apply(v, x), plain, rtol=1e-5, atol=1e-5)
    scale = jnp.arange(1.0, 6.0)
    v2 = {"params": {**v["params"], "scale": scale}}
    unit = kernel / jnp.linalg.norm(kernel.reshape(-1, 5), axis=0)
    expected = nn.Conv(5, (3, 3)).apply({"params": {"kernel": unit * scale, "bias": jnp.zeros(5)}}, x)
    np.testing.assert_allclose(conv.apply(v2, x), expected, rtol=1e-5, atol=1e-5)


def _attention_reference(x, wq, wk, wv, gamma):
    """fastai's SelfAttention.forward in torch's [B, C, N] layout, in numpy."""
    b, h, w, c = x.shape
    xt = x.reshape(b, h * w, c).transpose(0, 2, 1)  # [B, C, N]
    f, g, hh = (np.einsum("oc,bcn->bon", m.T, xt) for m in (wq, wk, wv))
    s = np.einsum("bcn,bcm->bnm", f, g)  # f^T g: [B, N, N]
    beta = np.exp(s - s.max(axis=1, keepdims=True))
    beta = beta / beta.sum(axis=1, keepdims=True)  # softmax over dim 1
    o = gamma * np.einsum("bcn,bnm->bcm", hh, beta) + xt
    return o.transpose(0, 2, 1).reshape(x.shape)


def test_self_attention_is_identity_at_init_and_fastais_formula_after():
    att = SelfAttention()
    x = jax.random.normal(jax.random.key(0), (2, 4, 3, 16))
    v = att.init(jax.random.key(1), x)
    np.testing.assert_array_equal(att.apply(v, x), x)  # gamma starts at 0
    params = {**v["params"], "gamma": jnp.array([0.7])}
    y = att.apply({"params": params, "batch_stats": v["batch_stats"]}, x)
    # the kernels the layer uses are spectral-normalised with its stored u, v
    def used(name):
        k = params[name]["kernel"]
        st = v["batch_stats"][name]["spectral"]
        return np.asarray(k[0, 0] / (st["u"] @ (kernel_matrix(k) @ st["v"])))

    expected = _attention_reference(np.asarray(x), used("query"), used("key"), used("value"), 0.7)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,size", [(4, 2, 1, 5), (4, 1, 0, 1), (3, 1, 1, 6)])
def test_conv_transpose_matches_torch(kernel, stride, padding, size):
    torch = needs_torch()
    layer = ConvTranspose(5, kernel, stride, padding, use_bias=True,
                          kernel_init=nn.initializers.normal(0.3))
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    v = layer.init(jax.random.key(1), x)
    v = {"params": {**v["params"], "bias": jnp.linspace(-1, 1, 5)}}
    ref = torch.nn.ConvTranspose2d(3, 5, kernel, stride, padding)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.asarray(v["params"]["kernel"]).transpose(2, 3, 0, 1).copy()))
        ref.bias.copy_(torch.from_numpy(np.array(v["params"]["bias"])))
    expected = ref(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).detach().numpy()
    np.testing.assert_allclose(layer.apply(v, x), expected.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,padding,size", [(4, 2, 1, 4), (4, 1, 0, 1), (3, 1, 1, 5), (5, 3, 1, 3),
                                                        (4, 2, 1, 1)])
def test_subpixel_transposed_conv_equals_the_dilated_form_forward_and_backward(kernel, stride, padding, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 3, 4))
    fast, plain = (jax.jit(lambda x, w, f=f: f(x, w, stride, padding))
                   for f in (conv_transpose2d, conv_transpose2d_dilated))
    np.testing.assert_allclose(fast(x, w), plain(x, w), rtol=1e-5, atol=1e-5)
    cot = jax.random.normal(jax.random.key(2), plain(x, w).shape)
    g_fast = jax.grad(lambda x, w: jnp.sum(fast(x, w) * cot), argnums=(0, 1))(x, w)
    g_plain = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cot), argnums=(0, 1))(x, w)
    for a, b in zip(g_fast, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
