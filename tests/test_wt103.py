"""fastai v1's pretrained WikiText-103 LM into the Flax AWD-LSTM: safe itos reading,
fastai's convert_weights, the name mapping (checked against a PyTorch AWD-LSTM's forward),
and the download (a local HTTP server on 127.0.0.1; offline it fails fast)."""

import functools
import http.server
import io
import os
import pickle
import sys
import tarfile
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfast.errors import InputError
from jaxfast.models.awd_lstm import awd_lstm_lm
from jaxfast.models.convert import WeightMismatch
from jaxfast.text import wt103

pytestmark = pytest.mark.usefixtures("full_precision")

TINY = dict(emb_sz=6, n_hid=10, n_layers=3)
OLD_ITOS = ["xxunk", "xxpad", "xxbos", "the", "a", "cat", "dog", "sat", "on", "mat", "ran", "far"]
NEW_ITOS = ["xxunk", "xxpad", "xxbos", "dog", "cat", "zebra", "the", "sat", "quokka"]  # zebra, quokka are new


class RunsCode:
    """Unpickling this would call os.system (what a malicious itos file could do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_read_itos_loads_lists_of_str_and_refuses_any_object(tmp_path):
    good = tmp_path / "itos.pkl"
    good.write_bytes(pickle.dumps(OLD_ITOS))
    assert wt103.read_itos(good) == OLD_ITOS
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(["the", RunsCode(marker)]))
    with pytest.raises(InputError, match="evil.pkl.*refused to load global"):
        wt103.read_itos(evil)
    assert not marker.exists()
    for name, obj in (("dict.pkl", {"the": 0}), ("ints.pkl", ["the", 3])):
        (tmp_path / name).write_bytes(pickle.dumps(obj))
        with pytest.raises(InputError, match=f"{name}: expected a pickled list of str"):
            wt103.read_itos(tmp_path / name)


def test_convert_weights_is_fastais():
    rng = np.random.default_rng(0)
    enc, bias = rng.normal(size=(len(OLD_ITOS), 4)), rng.normal(size=len(OLD_ITOS))
    state = {"0.encoder.weight": enc, "0.encoder_dp.emb.weight": enc, "1.decoder.weight": enc, "1.decoder.bias": bias}
    out = wt103.convert_weights(state, OLD_ITOS, NEW_ITOS)
    for new_index, token in enumerate(NEW_ITOS):
        if token in OLD_ITOS:
            old_index = OLD_ITOS.index(token)
            want_row, want_bias = enc[old_index], bias[old_index]
        else:
            want_row, want_bias = enc.mean(0), bias.mean()
        np.testing.assert_allclose(out["0.encoder.weight"][new_index], want_row)
        np.testing.assert_allclose(out["1.decoder.bias"][new_index], want_bias)
    for key in ("0.encoder_dp.emb.weight", "1.decoder.weight"):
        np.testing.assert_array_equal(out[key], out["0.encoder.weight"])
    with pytest.raises(WeightMismatch, match="12 rows but the itos has 3"):
        wt103.convert_weights(state, OLD_ITOS[:3], NEW_ITOS)


def _write_fastai_folder(folder, torch):
    """A fastai-layout lstm_fwd.pth ({'model': state_dict, 'opt': ...}) + itos_wt103.pkl
    made from the PyTorch reference AWD-LSTM with random weights; returns that model."""
    from torch_awd_lstm import language_model

    torch.manual_seed(0)
    reference = language_model(len(OLD_ITOS), **TINY).eval()
    with torch.no_grad():  # WeightDropout's dropped copy: must be ignored in favour of weight_hh_l0_raw
        for rnn in reference[0].rnns:
            rnn.module.weight_hh_l0.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": reference.state_dict(), "opt": {"lr": 1e-3}}, folder / "lstm_fwd.pth")
    (folder / "itos_wt103.pkl").write_bytes(pickle.dumps(OLD_ITOS))
    return reference


def test_pretrained_lm_on_a_new_vocab_matches_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="reading a PyTorch .pth needs torch")
    from torch_awd_lstm import language_model

    folder = tmp_path / "wt103-fwd"
    old = _write_fastai_folder(folder, torch)
    # the same conversion done by hand in torch: rows picked by token, the mean for new tokens
    old_state = old.state_dict()
    stoi = {token: i for i, token in enumerate(OLD_ITOS)}
    pick = lambda t: torch.stack([t[stoi[w]] if w in stoi else t.mean(0) for w in NEW_ITOS])
    reference = language_model(len(NEW_ITOS), **TINY).eval()
    new_state = {k: (pick(v) if k in ("0.encoder.weight", "0.encoder_dp.emb.weight", "1.decoder.weight",
                                      "1.decoder.bias") else v) for k, v in old_state.items()}
    reference.load_state_dict(new_state)

    model = awd_lstm_lm(len(NEW_ITOS), **TINY)
    params = jax.jit(model.init)(jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    loaded, message = wt103.load_pretrained_lm(params, NEW_ITOS, pretrained=folder)
    assert "7 of 9 tokens" in message and "12-token vocabulary" in message
    tokens = np.random.default_rng(0).integers(0, len(NEW_ITOS), (2, 8))
    with torch.no_grad():
        want = reference(torch.as_tensor(tokens))[0].numpy()
    got = jax.jit(model.apply)({"params": loaded}, jnp.asarray(tokens))
    np.testing.assert_allclose(got, want, atol=1e-5)

    with pytest.raises(WeightMismatch, match="no pretrained weights for the model's.*encoder/rnns_3"):
        deeper = awd_lstm_lm(len(NEW_ITOS), emb_sz=6, n_hid=10, n_layers=4)
        wt103.load_pretrained_lm(jax.eval_shape(deeper.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"],
                                 NEW_ITOS, pretrained=folder)
    wider = awd_lstm_lm(len(NEW_ITOS), emb_sz=6, n_hid=12, n_layers=3)
    wider_params = jax.eval_shape(wider.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"]
    mismatch = r"encoder/rnns_0/kernel_hh: pretrained shape \(10, 40\), model shape \(12, 48\)"
    with pytest.raises(WeightMismatch, match=mismatch):
        wt103.load_pretrained_lm(wider_params, NEW_ITOS, pretrained=folder)


def test_reading_the_pth_without_torch_says_torch_is_needed(tmp_path, monkeypatch):
    folder = tmp_path / "wt103-fwd"
    folder.mkdir()
    (folder / "lstm_fwd.pth").write_bytes(b"not read")
    (folder / "itos_wt103.pkl").write_bytes(pickle.dumps(OLD_ITOS))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match="pickled PyTorch checkpoint and reading it needs torch"):
        wt103.load_pretrained_lm({}, NEW_ITOS, pretrained=folder)


def test_pretrained_folder_needs_one_pth_and_one_pkl(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        wt103.wt103_files(tmp_path / "absent")
    (tmp_path / "itos_wt103.pkl").write_bytes(b"")
    with pytest.raises(InputError, match=r"expected one \.pth file, found \[\]"):
        wt103.wt103_files(tmp_path)


# ----------------------------------------------------------------------------- download


@pytest.fixture
def served(tmp_path):
    """A fastai-style wt103-fwd.tgz served over HTTP on 127.0.0.1; yields (url, check)."""
    root = tmp_path / "server"
    root.mkdir()
    payload = {"lstm_fwd.pth": os.urandom(3000), "itos_wt103.pkl": pickle.dumps(OLD_ITOS)}
    with tarfile.open(root / "wt103-fwd.tgz", "w:gz") as tar:
        for name, data in payload.items():
            info = tarfile.TarInfo(f"wt103-fwd/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/wt103-fwd.tgz"
        yield url, wt103.fastai_file_check(root / "wt103-fwd.tgz"), payload, server
    finally:
        server.shutdown()
        server.server_close()


def test_download_checks_unpacks_and_caches(tmp_path, served):
    url, check, payload, server = served
    cache = tmp_path / "cache"
    folder = wt103.download_wt103(cache, url=url, check=check)
    assert folder == cache / "wt103-fwd"
    assert (folder / "lstm_fwd.pth").read_bytes() == payload["lstm_fwd.pth"]
    assert wt103.read_itos(folder / "itos_wt103.pkl") == OLD_ITOS
    server.shutdown()  # the cached copy is used from now on, no network needed
    assert wt103.pretrained_folder(None, cache, url=url, check=check) == folder


def test_download_with_a_bad_checksum_is_not_kept(tmp_path, served):
    url, (size, _), _, _ = served
    cache = tmp_path / "cache"
    with pytest.raises(wt103.PretrainedUnavailable, match="not kept.*--pretrained PATH"):
        wt103.download_wt103(cache, url=url, check=(size, "0" * 32))
    assert list(cache.iterdir()) == []


def test_offline_fails_fast_naming_the_local_option(tmp_path):
    start = time.perf_counter()
    with pytest.raises(wt103.PretrainedUnavailable, match="cannot be reached.*--pretrained PATH"):
        wt103.download_wt103(tmp_path, url="http://127.0.0.1:9/wt103-fwd.tgz", timeout=1.0)
    assert time.perf_counter() - start < 5
    assert wt103.WT103_FWD_URL == "https://s3.amazonaws.com/fast-ai-modelzoo/wt103-fwd.tgz"  # fastai v1's URLs.WT103_FWD
