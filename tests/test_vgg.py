"""VGG16-bn: the Flax forward equals torchvision's vgg16_bn layout written in plain torch.nn
(random weights and BN statistics, eval mode) at every layer lesson 7 hooks, the classifier
too; torchvision-layout `.pth` import; the weights download (local HTTP server) and its
fail-fast offline error."""

import functools
import hashlib
import http.server
import socket
import threading
import time

import jax
import numpy as np
import pytest

from jaxfast.models.registry import build_model
from jaxfast.models.vgg import (FEATURE_LOSS_LAYERS, VGG16_LAYOUT, VGG, WeightsUnavailable, load_vgg16_bn,
                                max_pool_inputs, vgg16_bn_weights)

pytestmark = pytest.mark.usefixtures("full_precision")


def torch_vgg16_bn(torch, n_classes=10, hidden=64):
    """torchvision.models.vgg16_bn's module tree (features / avgpool / classifier), written here."""
    nn = torch.nn
    layers, cin = [], 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(cin, item, kernel_size=3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            cin = item

    class TorchVGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(hidden, n_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    model = TorchVGG()
    rng = np.random.default_rng(0)  # numpy draws: the same weights in every process
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if tensor.ndim > 1:  # conv / linear weights, He-scaled
                value = rng.normal(0.0, np.sqrt(2.0 / np.prod(tensor.shape[1:])), tensor.shape)
            elif name.endswith("running_var") or (name.endswith("weight") and name.startswith("features")):
                value = rng.uniform(0.5, 1.5, tensor.shape)  # BN scale and variance
            else:
                value = rng.uniform(-0.2, 0.2, tensor.shape)  # biases, BN shift and mean
            tensor.copy_(torch.from_numpy(value.astype(np.float32)))
    return model.eval()


def hooked_torch_outputs(model, x, ids):
    outputs, h = [], x
    for i, layer in enumerate(model.features):
        h = layer(h)
        if i in ids:
            outputs.append(h.clone().permute(0, 2, 3, 1).numpy())
    return outputs


def assert_close(actual, expected, tol=1e-4):
    scale = max(1.0, float(np.abs(expected).max()))
    err = float(np.abs(np.asarray(actual) - expected).max())
    assert err <= tol * scale, f"max error {err:.3g} vs scale {scale:.3g}"


def test_layout_and_lesson_hooks():
    assert max_pool_inputs() == (5, 12, 22, 32, 42)  # fastai's `blocks`
    assert FEATURE_LOSS_LAYERS == max_pool_inputs()[2:5]
    model = build_model("vgg16_bn", {})
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), np.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert [f.shape for f in jax.eval_shape(model.apply, variables, x)] == [(2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 512)]
    assert "features_41" in variables["batch_stats"]
    shallow = jax.eval_shape(VGG(hooked_layers=(22,)).init, jax.random.PRNGKey(0), x)
    assert max(int(name.split("_")[1]) for name in shallow["params"]) == 21  # nothing built after the hook


def test_features_and_classifier_equal_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    reference = torch_vgg16_bn(torch)
    weights = tmp_path / "vgg16_bn.pth"
    torch.save(reference.state_dict(), weights)
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    ids = max_pool_inputs()
    with torch.no_grad():
        expected = hooked_torch_outputs(reference, torch.from_numpy(x), ids)
        expected_logits = reference(torch.from_numpy(x)).numpy()
    nhwc = x.transpose(0, 2, 3, 1)

    model, variables, message = load_vgg16_bn(weights, VGG(hooked_layers=ids))
    assert "loaded 78 pretrained tensors" in message and "6 tensors of layers this model does not build" in message
    for got, want in zip(jax.jit(model.apply)(variables, nhwc), expected):
        assert got.shape == want.shape
        assert_close(got, want)

    top, top_variables, _ = load_vgg16_bn(weights, VGG(include_top=True, n_classes=10, hidden=64))
    assert_close(jax.jit(top.apply)(top_variables, nhwc), expected_logits)


def test_hooks_are_checked():
    x = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="increasing"):
        VGG(hooked_layers=(32, 22)).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="include_top"):
        VGG(hooked_layers=(22,), include_top=True).init(jax.random.PRNGKey(0), x)


def serve(folder):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_weights_download_cache_and_checksum(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    payload = b"not really a checkpoint, but bytes with a known digest" * 100
    (served / "vgg16_bn-test.pth").write_bytes(payload)
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    server = serve(served)
    url = f"http://127.0.0.1:{server.server_port}/vgg16_bn-test.pth"
    try:
        with pytest.raises(WeightsUnavailable, match="expected it to start with 00000000"):
            vgg16_bn_weights(cache_dir=tmp_path / "cache", url=url, sha256_prefix="00000000")
        assert list((tmp_path / "cache").iterdir()) == []  # a bad download is not kept
        path = vgg16_bn_weights(cache_dir=tmp_path / "cache", url=url, sha256_prefix=prefix)
        assert path == tmp_path / "cache" / "vgg16_bn-test.pth" and path.read_bytes() == payload
    finally:
        server.shutdown()
        server.server_close()
    # The cached copy is used without the server.
    assert vgg16_bn_weights(cache_dir=tmp_path / "cache", url=url, sha256_prefix=prefix) == path


def test_weights_offline_fails_fast_naming_the_option(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="--vgg-weights"):
        vgg16_bn_weights(cache_dir=tmp_path, url=f"http://127.0.0.1:{port}/vgg16_bn-6c64b313.pth")
    assert time.perf_counter() - start < 5
    with pytest.raises(WeightsUnavailable, match="--vgg-weights .*missing.pth: no such file"):
        vgg16_bn_weights(tmp_path / "missing.pth")
    given = tmp_path / "mine.pth"
    given.write_bytes(b"x")
    assert vgg16_bn_weights(given) == given
