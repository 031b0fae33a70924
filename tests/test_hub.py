"""Pretrained weights by name (jaxfast.models.hub) against a real HTTP server on 127.0.0.1:
download + checksum + cache + convert once, a wrong checksum, a connection cut mid-body,
a cached second call that makes no request, and an unreachable host failing fast."""

import dataclasses
import hashlib
import http.server
import socket
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import shared_dataset
from jaxfast.errors import InputError
from jaxfast.models import hub
from jaxfast.models.convert import init_model, load_pretrained
from jaxfast.models.hub import (PRETRAINED_WEIGHTS, PretrainedUnavailable, PretrainedWeights, WeightsDownloadError,
                                cache_dir, load_pretrained_body, resolve_pretrained, source_path, weights_name)
from jaxfast.models.registry import build_model

TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


class WeightsServer:
    """http.server on a random port serving `files`; counts requests; paths in `truncate`
    announce their full length but the connection is closed after half the body."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.truncate, self.requests = files, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bool):
                path = self.path.lstrip("/")
                server.requests.append((self.command, path))
                if path not in server.files:
                    self.send_error(404)
                    return
                data = server.files[path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data[: len(data) // 2] if path in server.truncate else data)
                    self.wfile.flush()
                    self.close_connection = True

            def do_GET(self):
                self._answer(True)

            def do_HEAD(self):
                self._answer(False)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def gets(self) -> int:
        return sum(method == "GET" for method, _ in self.requests)


def template(model, size=32):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))


def torch_layout_tensors(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A random state dict of `arch` with PyTorch's key names and layouts (OIHW, (out, in))."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for collection, tree in template(build_model(arch, {})).items():
        for kp, leaf in jax.tree_util.tree_leaves_with_path(tree):
            names = [k.key for k in kp]
            shape = leaf.shape
            if len(shape) == 4:
                shape = (shape[3], shape[2], shape[0], shape[1])
            elif len(shape) == 2:
                shape = shape[::-1]
            key = ".".join(n.replace("_", ".") for n in names[:-1]) + "." + TORCH_LEAF[names[-1]]
            tensors[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return tensors


def assert_holds(variables: dict, tensors: dict[str, np.ndarray], prefix=(), skip=()):
    """Every torch tensor (but the `skip` modules) sits, in Flax layout, at its place under `prefix`."""
    for key, value in tensors.items():
        module, _, leaf = key.rpartition(".")
        if module.split(".")[0] in skip:
            continue
        path = []
        for part in module.split("."):  # layer1.0.conv1 -> layer1_0/conv1
            if part.isdigit():
                path[-1] += f"_{part}"
            else:
                path.append(part)
        collection = "batch_stats" if leaf.startswith("running_") else "params"
        node = variables[collection]
        for name in (*prefix, *path):
            node = node[name]
        names = {"weight": ("kernel", "scale"), "bias": ("bias",), "running_mean": ("mean",), "running_var": ("var",)}
        got = next(node[n] for n in names[leaf] if n in node)
        expected = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value
        np.testing.assert_array_equal(np.asarray(got), expected, err_msg=key)


@pytest.fixture(scope="module")
def r20_file():
    """Bytes of a cifar_resnet20 state dict in torch layout (safetensors) and its tensors."""
    from safetensors.numpy import save

    tensors = torch_layout_tensors("cifar_resnet20")
    return save(tensors), tensors


@pytest.fixture
def server(r20_file):
    httpd = WeightsServer({"models/r20.safetensors": r20_file[0]})
    yield httpd
    httpd.httpd.shutdown()
    httpd.httpd.server_close()


def entry(server, sha256) -> dict[str, PretrainedWeights]:
    return {"r20": PretrainedWeights("cifar_resnet20", server.url("models/r20.safetensors"), sha256, "test")}


def files_under(path) -> list:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_named_weights_are_downloaded_verified_converted_once_and_loaded(tmp_path, server, r20_file, monkeypatch):
    data, tensors = r20_file
    digest = hashlib.sha256(data).hexdigest()
    table, cache = entry(server, digest[:8]), tmp_path / "cache"
    model = build_model("cifar_resnet20", {})
    variables, message = load_pretrained_body(template(model), "r20", "cifar_resnet20", model, cache=cache, table=table)
    assert_holds(variables, tensors)
    assert "cifar_resnet20: loaded 97 pretrained tensors from r20" in message and "random" not in message
    source = source_path("r20", cache, table)
    assert source == cache / "weights" / "r20" / "r20.safetensors" and source.read_bytes() == data
    converted = cache / "converted" / f"cifar_resnet20-{digest[:16]}.safetensors"
    assert files_under(cache) == sorted([source, source.with_name("r20.safetensors.sha256"), converted])
    assert source.with_name("r20.safetensors.sha256").read_text().strip() == digest
    assert server.gets() == 1

    # Later calls read the converted file only: no request, no reading of the source file.
    def no_reading(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(hub, "read_state_dict", no_reading)
    n_requests = len(server.requests)
    again, _ = load_pretrained_body(template(model), "r20", "cifar_resnet20", model, cache=cache, table=table)
    jax.tree.map(np.testing.assert_array_equal, again, variables)
    assert resolve_pretrained("r20", "cifar_resnet20", cache=cache, table=table) == source
    no_top, message = load_pretrained_body(template(model), "r20", "cifar_resnet20", model, cache=cache, table=table,
                                           target={"ignore": ("linear",), "strict": False})
    assert "loaded 95 pretrained tensors" in message and "ignored 2" in message and "2 params keep their random" in message
    assert isinstance(no_top["params"]["linear"]["kernel"], jax.ShapeDtypeStruct)  # left as it was
    # a cnn takes the same cached weights in its body; its head keeps the random init
    monkeypatch.setitem(PRETRAINED_WEIGHTS, "r20", table["r20"])
    monkeypatch.setenv("JAXFAST_CACHE", str(cache))
    sample = np.zeros((1, 32, 32, 3), np.float32)
    cnn, loaded, message = init_model("cnn", {"body_arch": "cifar_resnet20", "n_classes": 3}, "r20", sample, seed=4)
    _, fresh, _ = init_model("cnn", {"body_arch": "cifar_resnet20", "n_classes": 3}, None, sample, seed=4)
    assert_holds(loaded, tensors, prefix=("body",), skip=("linear",))
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["head"], fresh["params"]["head"])
    assert "ignored 2: params/linear/" in message and "(the head) are randomly" in message
    assert "params/linear/bias" in message and "params/linear/kernel" in message
    by_name, _ = load_pretrained(template(model), "r20")  # convert's entry point takes names too
    jax.tree.map(np.testing.assert_array_equal, by_name, variables)
    assert len(server.requests) == n_requests


def test_timm_style_file_without_a_published_hash_records_one(tmp_path, server, r20_file, capsys):
    table, cache = entry(server, None), tmp_path / "cache"
    path = resolve_pretrained("r20", "cifar_resnet20", cache=cache, table=table)
    digest = hashlib.sha256(r20_file[0]).hexdigest()
    assert path.with_name(path.name + ".sha256").read_text().strip() == digest
    assert f"no checksum is published for {table['r20'].url}; recorded its sha256 {digest}" in capsys.readouterr().out


def test_wrong_checksum_keeps_nothing(tmp_path, server):
    cache = tmp_path / "cache"
    with pytest.raises(WeightsDownloadError, match=r"sha256 [0-9a-f]{64} does not match the published deadbeef"):
        resolve_pretrained("r20", "cifar_resnet20", cache=cache, table=entry(server, "deadbeef"))
    assert files_under(cache) == [] and server.gets() == 1


def test_http_error_keeps_nothing(tmp_path, server):
    table = {"r20": PretrainedWeights("cifar_resnet20", server.url("models/gone.safetensors"), None, "test")}
    with pytest.raises(WeightsDownloadError, match=r"download of .*/models/gone.safetensors failed .*404"):
        resolve_pretrained("r20", "cifar_resnet20", cache=tmp_path, table=table)
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("published", [True, False], ids=["with_hash", "without_hash"])
def test_interrupted_download_keeps_nothing(tmp_path, server, r20_file, published):
    server.truncate.add("models/r20.safetensors")
    sha = hashlib.sha256(r20_file[0]).hexdigest() if published else None
    cache, size = tmp_path / "cache", len(r20_file[0])
    with pytest.raises(WeightsDownloadError, match=rf"interrupted after {size // 2} of {size} bytes"):
        resolve_pretrained("r20", "cifar_resnet20", cache=cache, table=entry(server, sha))
    assert files_under(cache) == []


def test_unreachable_source_fails_fast_naming_the_ways_out(tmp_path, r20_file):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    cache = tmp_path / "cache"
    for url in (f"http://127.0.0.1:{closed_port}/r20.safetensors", "http://weights.invalid/r20.safetensors"):
        table = {"r20": PretrainedWeights("cifar_resnet20", url, None, "test")}
        start = time.perf_counter()
        with pytest.raises(PretrainedUnavailable) as err:
            resolve_pretrained("r20", "cifar_resnet20", cache=cache, table=table, timeout=2.0)
        assert time.perf_counter() - start < 5.0
        assert url in str(err.value) and "--pretrained PATH" in str(err.value)
        assert str(source_path("r20", cache, table)) in str(err.value)
    assert files_under(cache) == []
    # the advice works: a copy placed there by hand is checked and used with no network
    data, tensors = r20_file
    table["r20"] = dataclasses.replace(table["r20"], sha256=hashlib.sha256(data).hexdigest()[:8])
    placed = source_path("r20", cache, table)
    placed.parent.mkdir(parents=True)
    placed.write_bytes(data[:-1] + b"!")
    with pytest.raises(InputError, match=f"{placed}: sha256 .* does not match the published"):
        resolve_pretrained("r20", "cifar_resnet20", cache=cache, table=table)
    placed.write_bytes(data)
    model = build_model("cifar_resnet20", {})
    variables, _ = load_pretrained_body(template(model), "r20", "cifar_resnet20", model, cache=cache, table=table)
    assert_holds(variables, tensors)


def test_spec_resolution(tmp_path):
    assert weights_name(True, "resnet34") == weights_name("default", "resnet34") == "resnet34"
    assert weights_name("resnet50.a1_in1k", "resnet50") == "resnet50.a1_in1k"
    assert weights_name(None, "resnet34") is None and resolve_pretrained(None, "resnet34") is None
    local = tmp_path / "mine.pth"
    local.write_bytes(b"x")
    assert weights_name(str(local), "resnet34") is None
    assert resolve_pretrained(str(local), "resnet34") == local
    with pytest.raises(InputError, match="made for resnet50, not for resnet34"):
        weights_name("resnet50.a1_in1k", "resnet34")
    with pytest.raises(InputError, match="neither a file nor a known weights name; names for resnet18: resnet18, "):
        weights_name("resnet19", "resnet18")
    with pytest.raises(InputError, match="pretrained weights file .*nowhere.pth does not exist"):
        weights_name(str(tmp_path / "nowhere.pth"), "resnet18")
    with pytest.raises(InputError, match="no default pretrained weights for 'simple_cnn'"):
        weights_name(True, "simple_cnn")


def test_url_table_is_consistent():
    """Every name fits a registered arch; files named with a hash prefix carry that prefix."""
    for name, weights in PRETRAINED_WEIGHTS.items():
        build_model(weights.arch, {})
        filename = weights.url.rsplit("/", 1)[-1]
        if weights.url.startswith("https://huggingface.co/timm/"):
            assert weights.url == f"https://huggingface.co/timm/{name}/resolve/main/model.safetensors"
            assert weights.sha256 is None
        else:
            assert filename.rsplit(".", 1)[0].endswith("-" + weights.sha256[:8]), name
    assert all(PRETRAINED_WEIGHTS[name].arch == arch for arch, name in hub.DEFAULT_WEIGHTS.items())


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXFAST_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "jaxfast"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "jaxfast"
    monkeypatch.setenv("JAXFAST_CACHE", str(tmp_path / "jf"))
    assert cache_dir() == tmp_path / "jf" and cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_real_akamaster_file_through_the_official_entry(tmp_path):
    """The real resnet20-12fca82f.th served locally under the official table entry (only
    the host replaced): its published sha256 matches, and best_prec1 survives the cache."""
    pytest.importorskip("torch", reason="torch is not installed (reading a .th pickle needs it)")
    real = shared_dataset("cifar10_resnet_weights") / "resnet20-12fca82f.th"
    official = PRETRAINED_WEIGHTS["cifar_resnet20"]
    path = official.url.split("/", 3)[-1]
    server = WeightsServer({path: real.read_bytes()})
    try:
        table = {"cifar_resnet20": dataclasses.replace(official, url=server.url(path))}
        model = build_model("cifar_resnet20", {})
        direct, _ = load_pretrained(template(model), real)
        for _ in range(2):  # downloaded and converted, then from the converted cache
            variables, message = load_pretrained_body(template(model), True, "cifar_resnet20", model,
                                                      cache=tmp_path, table=table)
            jax.tree.map(np.testing.assert_array_equal, variables, direct)
            assert "best_prec1=91.78" in message
        assert server.gets() == 1
        assert (tmp_path / "converted" / "cifar_resnet20-12fca82f0bebc413.safetensors").is_file()
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def test_torchvision_style_resnet18_pth_into_a_cnn_body(tmp_path):
    """A full-size resnet18 state dict saved with torch.save, named like torchvision's
    files (8 hex digits of its sha256), as the default weights of resnet18 for a cnn."""
    torch = pytest.importorskip("torch", reason="torch is not installed (reading a .pth pickle needs it)")
    tensors = torch_layout_tensors("resnet18", seed=1)
    assert len(tensors) == 102 and sum(v.size for v in tensors.values()) > 11_000_000
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, tmp_path / "r18.pth")
    data = (tmp_path / "r18.pth").read_bytes()
    sha8 = hashlib.sha256(data).hexdigest()[:8]
    server = WeightsServer({f"models/resnet18-{sha8}.pth": data})
    try:
        table = {"resnet18": PretrainedWeights("resnet18", server.url(f"models/resnet18-{sha8}.pth"), sha8, "test")}
        cnn = build_model("cnn", {"body_arch": "resnet18", "n_classes": 5})
        variables, message = load_pretrained_body(template(cnn, 64), True, "resnet18", cnn,
                                                  cache=tmp_path / "cache", table=table)
        assert_holds(variables, tensors, prefix=("body",), skip=("fc",))
        assert "resnet18: loaded 100 pretrained tensors" in message and "ignored 2: params/fc/" in message
        assert (tmp_path / "cache" / "weights" / "resnet18" / f"resnet18-{sha8}.pth").is_file()
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
