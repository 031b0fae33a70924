"""The benchmarks compare like with like: each PyTorch reference ResNet has exactly the
jaxfast model's weights (a strict import fills every one) and computes the same function;
the reference step runs in bf16 autocast and channels-last; the device benchmark's rows run."""

import sys
from pathlib import Path

import numpy as np
import pytest

from jaxfast.models.convert import convert_state_dict
from jaxfast.models.registry import build_model
from test_convert_torch import max_diff, needs_torch, randomise_bn, template

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytestmark = pytest.mark.usefixtures("full_precision")  # equalities to 1e-5 on GPUs too


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_reference_resnets_have_jaxfasts_weights_and_function(arch):
    torch = needs_torch()
    import torch_reference as tr

    torch.manual_seed(0)
    ref = randomise_bn(torch, getattr(tr, arch)(10))
    model = build_model(arch, {"n_classes": 10})
    variables, report = convert_state_dict({k: v.numpy() for k, v in ref.state_dict().items()}, template(model))
    assert len(report.loaded) == sum(not k.endswith("num_batches_tracked") for k in ref.state_dict())
    assert max_diff(torch, ref, model, variables) < 1e-4


def test_reference_step_in_bf16_autocast_and_channels_last_learns():
    torch = needs_torch()
    import torch_reference as tr

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 8))
    model = tr.resnet18(10)
    seen = []
    model.conv1.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    step = tr.train_step(model, torch.nn.functional.cross_entropy, (x,), y, autocast_dtype=torch.bfloat16,
                         channels_last=True, lr=1e-3)
    losses = [step() for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    images, out = seen[-1]
    assert out.dtype == torch.bfloat16  # the convolution ran in bf16 ...
    assert model.conv1.weight.dtype == torch.float32  # ... on fp32 master weights
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_device_benchmark_rows_compare_both_frameworks():
    needs_torch()
    import device_bench

    names = ["mnist_resnet_fp32", "tabular_adult", "collab_embedding_dot_bias"]
    rows = device_bench.main(["--tiny", "--steps", "2", "--only", *names])
    assert [r["workload"] for r in rows] == names  # images (NHWC -> NCHW) and tuples of inputs
    for r in rows:
        assert r["jaxfast ms"] > 0 and r["torch ms"] > 0
        assert r["speed-up"] == pytest.approx(r["torch ms"] / r["jaxfast ms"])
    assert rows[0]["jaxfast TFLOP/s"] > 0 and rows[0]["torch TFLOP/s"] > 0  # flops of the lowered step


def test_cpu_flop_count_is_the_steps_arithmetic():
    """The count used where the device gives none is the step's arithmetic: three times the
    forward convolutions' flops (taps that read only padding not counted), plus a little."""
    needs_torch()
    import device_bench

    work = device_bench.workloads(tiny=True)["mnist_resnet_fp32"]
    (images,), labels = work.make_batch(np.random.default_rng(0))
    counted = device_bench.cpu_flops(work, images, labels)

    def taps(n_in, n_out, stride):  # 3x3 taps inside the image (pad 1), along one axis
        return sum(0 <= o * stride - 1 + t < n_in for o in range(n_out) for t in range(3))

    # lesson 7's net on 28 px: (in, out, stride, cin, cout) of its 13 convs
    convs = [(28, 14, 2, 1, 8), (14, 14, 1, 8, 8), (14, 14, 1, 8, 8), (14, 7, 2, 8, 16), (7, 7, 1, 16, 16),
             (7, 7, 1, 16, 16), (7, 4, 2, 16, 32), (4, 4, 1, 32, 32), (4, 4, 1, 32, 32), (4, 2, 2, 32, 16),
             (2, 2, 1, 16, 16), (2, 2, 1, 16, 16), (2, 1, 2, 16, 10)]
    forward = sum(2 * work.batch * taps(i, o, s) ** 2 * cin * cout for i, o, s, cin, cout in convs)
    # forward + the gradients of the weights and of the activations (not the images), + BN and AdamW
    assert 2.8 * forward < counted < 3.4 * forward, counted / forward


def test_device_benchmark_names_an_unknown_workload(capsys):
    import device_bench

    with pytest.raises(SystemExit):
        device_bench.main(["--tiny", "--only", "resnet50_bf16_224px"])
    err = capsys.readouterr().err
    assert "unknown workload(s) resnet50_bf16_224px" in err and "resnet50_bf16_32px" in err


AWD_TINY = dict(emb_sz=6, n_hid=10, n_layers=3)
AWD_DROPOUTS = ("output_p", "hidden_p", "input_p", "embed_p", "weight_p")


def test_awd_lstm_training_twin_in_eval_mode_is_jaxfasts_language_model():
    """The benchmark's torch AWD-LSTM (the tests' twin plus fastai's training dropouts)
    computes jaxfast's function once its dropouts are off, hidden state carried."""
    torch = needs_torch()
    import jax.numpy as jnp
    import torch_awd_lstm_train as tt

    from jaxfast.models.awd_lstm import awd_lstm_lm
    from jaxfast.text.wt103 import lm_params_from_fastai

    torch.manual_seed(0)
    reference = tt.language_model(30, **AWD_TINY).eval()
    params = lm_params_from_fastai({k: v.numpy() for k, v in reference.model.state_dict().items()})
    model = awd_lstm_lm(30, **AWD_TINY)
    variables = {"params": params}
    for tokens in np.random.default_rng(0).integers(2, 30, (2, 3, 7)):
        with torch.no_grad():
            want = reference(torch.as_tensor(tokens)).numpy()
        got, carry = model.apply(variables, jnp.asarray(tokens), mutable=["carry"])
        variables = {"params": params, **carry}
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("dropout", AWD_DROPOUTS)
def test_awd_lstm_training_twin_applies_each_of_fastais_dropouts(dropout):
    """In training mode each of the five dropouts, alone, changes the output; all at 0 it is the eval function."""
    torch = needs_torch()
    import torch_awd_lstm_train as tt

    tokens = torch.as_tensor(np.random.default_rng(1).integers(2, 30, (3, 7)))
    train_out, eval_out = {}, {}
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        model = tt.language_model(30, **AWD_TINY, **{name: p if name == dropout else 0.0 for name in AWD_DROPOUTS})
        with torch.no_grad():
            train_out[p] = model.train()(tokens).numpy()
            model.model[0].reset()  # the hidden state the training call carried
            eval_out[p] = model.eval()(tokens).numpy()
    np.testing.assert_allclose(train_out[0.0], eval_out[0.0], atol=1e-6)
    np.testing.assert_allclose(eval_out[0.5], eval_out[0.0], atol=1e-6)  # same weights, dropout off
    # the tiny model's logits are ~0.05: a dropout moves them by ~1e-4, 100x the rounding above
    assert np.abs(train_out[0.5] - eval_out[0.5]).max() > 1e-3 * np.abs(eval_out[0.5]).max()


def test_awd_lstm_training_twin_trains_the_raw_hidden_weights():
    """WeightDropout: the raw hidden-to-hidden matrix is the trained parameter (fastai deletes the LSTM's own)."""
    torch = needs_torch()
    import torch_awd_lstm_train as tt

    torch.manual_seed(0)
    model = tt.text_classifier(30, 2, **AWD_TINY, bptt=4).train()
    tokens = torch.as_tensor(np.random.default_rng(2).integers(2, 30, (4, 10)))
    tokens[1, :3] = 1  # padded first
    model(tokens).sum().backward()
    for rnn in model.model[0].module.rnns:
        assert rnn.weight_hh_l0_raw.grad is not None and rnn.weight_hh_l0_raw.grad.abs().sum() > 0
        assert rnn.module.weight_hh_l0.grad is None and not rnn.module.weight_hh_l0.requires_grad


def test_feature_loss_twin_equals_jaxfasts_on_random_weights():
    """The benchmark's torch FeatureLoss (VGG16-bn features by hand, hooks 22/32/42, weights
    [5, 15, 2], gram x 5e3) and jaxfast's on the same random VGG: value and gradient."""
    torch = needs_torch()
    import jax
    import torch_feature_loss as tfl
    import unet_lessons_bench

    from jaxfast.gan.feature_loss import FeatureLoss

    torch.manual_seed(0)
    features = tfl.vgg16_bn_features()
    loss = FeatureLoss(unet_lessons_bench.jaxfast_vgg_variables(features))
    rng = np.random.default_rng(3)
    preds, targets = (rng.standard_normal((2, 32, 32, 3)).astype(np.float32) for _ in range(2))
    nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())  # noqa: E731
    tp = nchw(preds).requires_grad_(True)
    want = tfl.FeatureLoss(features)(tp, nchw(targets))
    want.backward()
    got, grad = jax.jit(jax.value_and_grad(lambda p: loss(p, targets).mean()))(preds)
    np.testing.assert_allclose(float(got), float(want.detach()), rtol=1e-4)
    want_grad = tp.grad.numpy().transpose(0, 2, 3, 1)
    # float32 through 13 convs and gram terms scaled by up to 1.1e6 (as tests/test_feature_loss.py)
    assert np.abs(np.asarray(grad) - want_grad).max() <= 1e-3 * np.abs(want_grad).max()
