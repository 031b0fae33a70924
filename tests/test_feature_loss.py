"""Lesson 7's feature loss equals fastai's FeatureLoss written in torch (same random VGG16-bn,
hooks on features 22/32/42, weights [5, 15, 2]), value and gradient (which reaches the
predictions only); without weights it is the pixel L1 and says so."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.errors import InputError
from jaxfast.gan.feature_loss import FeatureLoss, feature_loss_from_file, gram_matrix, make_feature_loss
from jaxfast.losses import l1
from test_vgg import torch_vgg16_bn

pytestmark = pytest.mark.usefixtures("full_precision")


def torch_feature_loss(torch, vgg, preds, targets, layer_ids=(22, 32, 42), wgts=(5, 15, 2)):
    """fastai v1 lesson7-superres FeatureLoss.forward, NCHW, hooks as forward hooks."""
    F = torch.nn.functional
    stored = {}
    hooks = [vgg.features[i].register_forward_hook(lambda m, i, o, k=k: stored.__setitem__(k, o))
             for k, i in enumerate(layer_ids)]

    def make_features(x, clone=False):
        stored.clear()
        vgg.features(x)
        return [(stored[k].clone() if clone else stored[k]) for k in range(len(layer_ids))]

    def gram(x):
        n, c, h, w = x.size()
        x = x.view(n, c, -1)
        return (x @ x.transpose(1, 2)) / (c * h * w)

    out_feat = make_features(targets, clone=True)
    in_feat = make_features(preds)
    losses = [F.l1_loss(preds, targets)]
    losses += [F.l1_loss(a, b) * w for a, b, w in zip(in_feat, out_feat, wgts)]
    losses += [F.l1_loss(gram(a), gram(b)) * w**2 * 5e3 for a, b, w in zip(in_feat, out_feat, wgts)]
    for h in hooks:
        h.remove()
    return sum(losses), losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    vgg = torch_vgg16_bn(torch)
    for p in vgg.parameters():
        p.requires_grad_(False)
    path = tmp_path_factory.mktemp("vgg") / "vgg16_bn.pth"
    torch.save(vgg.state_dict(), path)
    rng = np.random.default_rng(1)
    preds = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    targets = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    return torch, vgg, feature_loss_from_file(path), preds, targets


def test_equals_fastai_feature_loss_value_and_gradient(setup):
    torch, vgg, loss, preds, targets = setup
    assert "features (22, 32, 42)" in loss.message and "loaded 78 pretrained tensors" in loss.message
    tp = torch.from_numpy(preds.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tt = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy())
    total, terms = torch_feature_loss(torch, vgg, tp, tt)
    total.backward()
    want_grad = tp.grad.numpy().transpose(0, 2, 3, 1)
    total, terms = float(total.detach()), [float(t.detach()) for t in terms]
    alone, _ = torch_feature_loss(torch, vgg, tp[1:].detach(), tt[1:])  # example 1 on its own

    def mean_loss(variables, p, t):  # the VGG variables as an argument, to see their gradient
        frozen = FeatureLoss(variables, layer_ids=loss.layer_ids)
        parts = frozen.parts(p, t)
        return frozen(p, t).mean(), (frozen(p, t), parts)

    grad_fn = jax.jit(jax.grad(mean_loss, argnums=(0, 1, 2), has_aux=True))
    (g_vars, g_preds, g_targets), (per_example, parts) = grad_fn(loss.variables, preds, targets)
    assert per_example.shape == (2,)
    np.testing.assert_allclose(float(per_example.mean()), total, rtol=1e-4)
    np.testing.assert_allclose(float(per_example[1]), float(alone), rtol=1e-4)
    names = ["pixel", "feat_0", "feat_1", "feat_2", "gram_0", "gram_1", "gram_2"]  # fastai's LossMetrics
    assert sorted(parts) == sorted(names)
    for name, want in zip(names, terms):  # every term, not only the sum
        np.testing.assert_allclose(float(parts[name].mean()), want, rtol=1e-4, atol=1e-6 * total)
    # float32 through 13 convs with gram terms scaled by up to 1.1e6: 2e-4 of the largest entry seen
    assert np.abs(np.asarray(g_preds) - want_grad).max() <= 1e-3 * np.abs(want_grad).max()
    # Frozen VGG, fixed targets: the gradient reaches the predictions only.
    assert all(float(jnp.abs(leaf).max()) == 0.0 for leaf in jax.tree.leaves(g_vars))
    assert float(jnp.abs(g_targets).max()) == 0.0
    np.testing.assert_allclose(jax.jit(loss)(preds, targets), per_example, rtol=1e-6)  # the held variables


def test_without_weights_it_is_pixel_l1_and_says_so(caplog):
    rng = np.random.default_rng(2)
    preds, targets = (rng.normal(size=(3, 16, 16, 3)).astype(np.float32) for _ in range(2))
    with caplog.at_level("WARNING"):
        loss = make_feature_loss(None)
    assert "pixel L1 alone" in loss.message and "--vgg-weights" in loss.message
    assert loss.message in caplog.text
    np.testing.assert_allclose(loss(preds, targets), l1(preds, targets), rtol=1e-6)
    np.testing.assert_allclose(loss(preds, targets), np.abs(preds - targets).mean(axis=(1, 2, 3)), rtol=1e-6)
    assert feature_loss_from_file(None).vgg is None


def test_gram_matrix_and_shape_errors():
    x = np.random.default_rng(3).normal(size=(2, 4, 5, 3)).astype(np.float32)
    flat = x.reshape(2, 20, 3)
    np.testing.assert_allclose(gram_matrix(x), np.einsum("bpi,bpj->bij", flat, flat) / 60, rtol=1e-5)
    with pytest.raises(InputError, match=r"preds \(2, 8, 8, 3\) and targets \(2, 8, 8, 1\)"):
        make_feature_loss(None)(np.zeros((2, 8, 8, 3)), np.zeros((2, 8, 8, 1)))
    with pytest.raises(InputError, match="3 layer ids"):
        make_feature_loss(None, layer_weights=(1.0,))
