"""Torch -> Flax weight import: the Flax forward equals an independent PyTorch forward on
the same weights (eval mode, random inputs), for torchvision-layout ResNets written here
and for the real CIFAR ResNet-20 of ../shared/data; plus the error reporting."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_dataset
from jaxfast.models.convert import (WeightMismatch, convert_state_dict, init_model,
                                    load_pretrained, random_init_message, read_state_dict)
from jaxfast.models.registry import build_model
from jaxfast.state import init_variables

pytestmark = pytest.mark.usefixtures("full_precision")  # equalities to 1e-5 on GPUs too

TOL = 1e-4
CIFAR_FILES = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th",
               44: "resnet44-014dd654.th", 56: "resnet56-4bfd9763.th"}


def needs_torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0 to run this test)")


def needs_safetensors():
    return pytest.importorskip("safetensors.numpy", reason="safetensors is not installed (pip install safetensors)")


def torch_models(torch):
    """Reference PyTorch modules (torchvision and akamaster layouts), written independently."""
    nn, F = torch.nn, torch.nn.functional

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or cin != planes:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Bottle(nn.Module):
        expansion = 4

        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
            self.downsample = None
            if stride != 1 or cin != planes * 4:
                self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes * 4))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
            return F.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, block, layers, n_classes):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, n in enumerate(layers):
                blocks = []
                for j in range(n):
                    blocks.append(block(cin, 64 * 2**i, 2 if i and not j else 1))
                    cin = 64 * 2**i * block.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(cin, n_classes)

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    class CifarBlock(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
            self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
            self.pad = planes // 4 if stride != 1 or cin != planes else None

        def forward(self, x):
            out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            short = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
            return F.relu(out + short)

    class CifarResNet(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
            cin, stages = 16, []
            for i, planes in enumerate((16, 32, 64)):
                stages.append(nn.Sequential(*[CifarBlock(cin if not j else planes, planes, 2 if i and not j else 1)
                                              for j in range(n)]))
                cin = planes
            self.layer1, self.layer2, self.layer3 = stages
            self.linear = nn.Linear(64, 10)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
            return self.linear(F.avg_pool2d(x, x.size()[3]).flatten(1))

    return {"basic": Basic, "bottleneck": Bottle, "resnet": ResNet, "cifar": CifarResNet}


def randomise_bn(torch, model, seed=0):
    """Non-trivial BatchNorm weights and running statistics, so a mix-up shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model.eval()


def template(model, size=32):
    """The model's variables as shapes only (no compilation): what an import fills in."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def max_diff(torch, torch_model, flax_model, variables, size=32):
    """Largest |flax - torch| output difference in eval mode on a random batch of 2."""
    x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    got = flax_model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
    diff = float(np.abs(np.asarray(got) - expected).max())
    print(f"{type(flax_model).__name__}: max abs diff {diff:.2e} (|out| max {np.abs(expected).max():.2f})")
    return diff


def test_resnet18_matches_torch_from_safetensors_and_pth(tmp_path):
    torch = needs_torch()
    torch.manual_seed(0)
    models = torch_models(torch)
    ref = randomise_bn(torch, models["resnet"](models["basic"], [2, 2, 2, 2], 10))
    save_file = needs_safetensors().save_file
    save_file({k: v.numpy() for k, v in ref.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    # DataParallel-style keys in a wrapping dict, as training scripts save them
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3},
               tmp_path / "r18.pth")
    model = build_model("resnet18", {"n_classes": 10})
    from_st, report_st = load_pretrained(template(model), tmp_path / "r18.safetensors")
    from_pth, report_pth = load_pretrained(template(model), tmp_path / "r18.pth")
    jax.tree.map(np.testing.assert_array_equal, from_st, from_pth)
    assert max_diff(torch, ref, model, from_pth) < TOL
    n_tensors = sum(not k.endswith("num_batches_tracked") for k in ref.state_dict())
    assert len(report_pth.loaded) == len(report_st.loaded) == n_tensors
    assert report_pth.extras == {"epoch": 3} and report_st.extras == {}


def test_bottleneck_resnet_matches_torch(tmp_path):
    """The resnet50 block (Bottleneck, stride on the 3x3) on a 1-block-per-stage net."""
    torch = needs_torch()
    torch.manual_seed(1)
    models = torch_models(torch)
    ref = randomise_bn(torch, models["resnet"](models["bottleneck"], [1, 1, 1, 1], 7))
    torch.save(ref.state_dict(), tmp_path / "bottleneck.pth")
    model = build_model("resnet50", {"n_classes": 7}).clone(stage_sizes=(1, 1, 1, 1))
    variables, _ = load_pretrained(template(model), tmp_path / "bottleneck.pth")
    assert max_diff(torch, ref, model, variables) < TOL


def test_cifar_resnet20_real_weights_match_torch():
    torch = needs_torch()
    path = shared_dataset("cifar10_resnet_weights") / CIFAR_FILES[20]
    ref = torch_models(torch)["cifar"](3)
    stored = torch.load(path, map_location="cpu", weights_only=True)
    ref.load_state_dict({k.removeprefix("module."): v for k, v in stored["state_dict"].items()})
    model = build_model("cifar_resnet20", {})
    variables, report = load_pretrained(template(model), path)
    assert max_diff(torch, ref.eval(), model, variables) < TOL
    assert len(report.loaded) == 97 and not report.missing and not report.unexpected
    assert report.extras["best_prec1"] == pytest.approx(stored["best_prec1"]) == pytest.approx(91.78)
    assert "best_prec1=91.78" in report.message("cifar_resnet20")


@pytest.mark.parametrize("depth", [32, 44, 56])
def test_all_cifar_resnets_load_strictly(depth):
    needs_torch()
    path = shared_dataset("cifar10_resnet_weights") / CIFAR_FILES[depth]
    variables, report = load_pretrained(template(build_model(f"cifar_resnet{depth}", {})), path)
    tensors, extras = read_state_dict(path)
    np.testing.assert_array_equal(variables["params"]["linear"]["kernel"], tensors["linear.weight"].T)
    assert len(report.loaded) == len(tensors) == 2 + 5 * (1 + 2 * 3 * (depth - 2) // 6)
    assert 90 < extras["best_prec1"] < 95 and "best_prec1=" in report.message("cifar")


def test_reading_a_torch_pickle_without_torch_says_so(tmp_path, monkeypatch):
    path = tmp_path / "weights.th"
    path.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match="needs torch, which is not installed"):
        read_state_dict(path)


def test_errors_name_the_parameter_at_fault(tmp_path):
    variables = template(build_model("cifar_resnet20", {}))
    good = {"module.conv1.weight": np.ones((16, 3, 3, 3), np.float32), "linear.bias": np.arange(10.0)}
    out, report = convert_state_dict(good, variables, strict=False)
    np.testing.assert_array_equal(out["params"]["conv1"]["kernel"], np.ones((3, 3, 3, 16)))
    np.testing.assert_array_equal(out["params"]["linear"]["bias"], np.arange(10.0))
    assert "params/layer1_0/conv1/kernel" in report.missing and "batch_stats/bn1/mean" in report.missing
    with pytest.raises(WeightMismatch, match=r"layer1\.0\.conv2\.weight \(16, 8, 3, 3\).*expects \(3, 3, 16, 16\)"):
        convert_state_dict({"layer1.0.conv2.weight": np.zeros((16, 8, 3, 3))}, variables, strict=False)
    with pytest.raises(WeightMismatch, match=r"unexpected.*'fc\.weight'.*"):
        convert_state_dict({**good, "fc.weight": np.zeros((10, 64))}, variables)
    with pytest.raises(WeightMismatch, match="missing in the file.*params/layer3_2/bn2/scale"):
        convert_state_dict(good, variables)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_state_dict(tmp_path / "nowhere.pth")


def test_cnn_body_import_and_messages(tmp_path):
    """A cnn's body takes the file's weights, its cut top ('linear') is ignored, the head keeps its init."""
    save_file = needs_safetensors().save_file
    rng = np.random.default_rng(0)
    tensors = {}
    donor = template(build_model("cifar_resnet20", {}))
    for collection, rename in (("params", {"kernel": "weight", "scale": "weight"}),
                               ("batch_stats", {"mean": "running_mean", "var": "running_var"})):
        for kp, leaf in jax.tree_util.tree_leaves_with_path(donor[collection]):
            names = [k.key for k in kp]
            shape = leaf.shape[::-1] if len(leaf.shape) == 2 else leaf.shape  # (in, out) -> (out, in)
            shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape  # HWIO -> OIHW
            key = ".".join(n.replace("_", ".") for n in names[:-1]) + "." + rename.get(names[-1], names[-1])
            tensors[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    save_file(tensors, str(tmp_path / "r20.safetensors"))
    sample = np.zeros((1, 32, 32, 3), np.float32)
    config = {"body_arch": "cifar_resnet20", "n_classes": 4}
    model, loaded, message = init_model("cnn", config, tmp_path / "r20.safetensors", sample, seed=5)
    fresh = dict(zip(("params", "batch_stats"), init_variables(model, sample, seed=5)))
    np.testing.assert_array_equal(loaded["params"]["body"]["layer2_0"]["conv1"]["kernel"],
                                  tensors["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(loaded["batch_stats"]["body"]["bn1"]["var"], tensors["bn1.running_var"])
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["head"], fresh["params"]["head"])
    assert f"loaded {len(tensors) - 2} pretrained tensors" in message and "ignored 2: linear." in message
    assert "linear.weight" in message and "linear.bias" in message
    assert init_model("simple_cnn", {}, None, sample)[2] == random_init_message("simple_cnn")
    assert "no --pretrained weights given; parameters are randomly initialised" in random_init_message("x")
