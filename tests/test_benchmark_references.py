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
    step = tr.train_step(model, torch.nn.functional.cross_entropy, (x,), y, autocast_dtype=torch.bfloat16,
                         channels_last=True, lr=1e-3)
    losses = [step() for _ in range(8)]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv1.weight.dtype == torch.float32  # autocast keeps fp32 params


def test_device_benchmark_rows_compare_both_frameworks():
    needs_torch()
    import device_bench

    rows = device_bench.main(["--tiny", "--steps", "2", "--only", "tabular_adult", "collab_embedding_dot_bias"])
    assert [r["workload"] for r in rows] == ["tabular_adult", "collab_embedding_dot_bias"]
    for r in rows:
        assert r["jaxfast ms"] > 0 and r["torch ms"] > 0
        assert r["speed-up"] == pytest.approx(r["torch ms"] / r["jaxfast ms"])
