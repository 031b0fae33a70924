"""fastai v1's pretrained WikiText-103 AWD-LSTM (ULMFiT) into jaxfast's Flax AWD-LSTM.

fastai v1 downloads `URLs.WT103_FWD` ('https://s3.amazonaws.com/fast-ai-modelzoo/wt103-fwd',
plus '.tgz'), which unpacks to `wt103-fwd/` holding `lstm_fwd.pth` (the LM's state dict, under
'model') and `itos_wt103.pkl` (its vocabulary, a pickled list of str). `--pretrained PATH`
names such a folder (one .pth and one .pkl, as fastai globs them); without it the archive is
downloaded once into the cache (checked as fastai checks it: size and md5 of its first MiB)
or, offline, the run stops within seconds naming `--pretrained`.

`convert_weights` maps the WT103 rows onto a new vocabulary as fastai's does (a word the
pretrained vocabulary lacks gets the mean embedding row and the mean decoder bias), then
fastai's names are placed on the Flax tree of `jaxfast.models.awd_lstm`:

  encoder.weight                 -> encoder/embedding/embedding  (the tied decoder too)
  rnns.{l}.module.weight_ih_l0   -> encoder/rnns_{l}/kernel_ih (transposed)
  rnns.{l}.weight_hh_l0_raw      -> encoder/rnns_{l}/kernel_hh (transposed; WeightDropout's raw weight)
  rnns.{l}.module.bias_ih_l0 + bias_hh_l0 -> encoder/rnns_{l}/bias
  decoder.bias                   -> decoder_bias;  decoder.weight -> decoder_kernel when untied

under '0.' (language model), '0.module.' (classifier) or no prefix (fastai's save_encoder).
Ignored on purpose: encoder_dp.emb.weight (the same matrix again) and
rnns.{l}.module.weight_hh_l0 (WeightDropout's last dropped copy of the raw weight).
The itos pickle is read without unpickling any object: only lists and strings load.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from jaxfast.data.download import check_reachable
from jaxfast.errors import InputError, JaxfastError
from jaxfast.models.convert import WeightMismatch, read_state_dict

WT103_FWD_URL = "https://s3.amazonaws.com/fast-ai-modelzoo/wt103-fwd.tgz"
# fastai v1's datasets._checks[URLs.WT103_FWD]: (size in bytes, md5 of the first 2**20 bytes)
WT103_FWD_CHECK = (105067061, "7d1114cd9684bf9d1ca3c9f6a54da6f9")
WT103_FOLDER = "wt103-fwd"
ENCODER_PREFIXES = ("0.module.", "0.", "")  # classifier, language model, save_encoder


class PretrainedUnavailable(JaxfastError, RuntimeError):
    """The pretrained weights are neither given with --pretrained nor downloadable from here."""


def default_cache_dir() -> Path:
    """$JAXFAST_CACHE, else $XDG_CACHE_HOME/jaxfast, else ~/.cache/jaxfast."""
    if os.environ.get("JAXFAST_CACHE"):
        return Path(os.environ["JAXFAST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxfast"


def fastai_file_check(path: Path) -> tuple[int, str]:
    """fastai v1's _check_file: (size, md5 hex digest of the first MiB)."""
    with open(path, "rb") as f:
        return os.path.getsize(path), hashlib.md5(f.read(2**20)).hexdigest()


# ----------------------------------------------------------------------------- finding the files


def wt103_files(folder: str | Path) -> tuple[Path, Path]:
    """(weights .pth, itos .pkl) in `folder`: exactly one of each, as fastai globs them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--pretrained {folder}: no such folder (it must hold lstm_fwd.pth and itos_wt103.pkl)")
    found = {ext: sorted(folder.glob(f"*.{ext}")) for ext in ("pth", "pkl")}
    for ext, paths in found.items():
        if len(paths) != 1:
            raise InputError(f"--pretrained {folder}: expected one .{ext} file, found {[p.name for p in paths]}")
    return found["pth"][0], found["pkl"][0]


def download_wt103(cache_dir: str | Path | None = None, url: str = WT103_FWD_URL,
                   check: tuple[int, str] = WT103_FWD_CHECK, timeout: float = 3.0) -> Path:
    """The cached `wt103-fwd` folder, downloading and unpacking `url` first when needed.
    Offline: PretrainedUnavailable within about `timeout` s, naming --pretrained. A download
    that fails fastai's check is deleted, not kept."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / WT103_FOLDER
    if folder.is_dir():
        return folder
    if not check_reachable(url, timeout=timeout):
        raise PretrainedUnavailable(
            f"the pretrained WikiText-103 LM is not in the cache ({folder}) and {url} cannot be reached "
            f"(no network?). Download and unpack it elsewhere and pass the folder with --pretrained PATH.")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".wt103-") as tmp:
        archive = Path(tmp) / "wt103-fwd.tgz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as err:
            raise PretrainedUnavailable(
                f"downloading {url} failed ({err}); pass a local copy with --pretrained PATH") from err
        got = fastai_file_check(archive)
        if got != tuple(check):
            raise PretrainedUnavailable(f"{url}: downloaded file has (size, md5 of first MiB) {got}, expected "
                                        f"{tuple(check)}; not kept. Pass a good copy with --pretrained PATH.")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        unpacked = Path(tmp) / WT103_FOLDER
        wt103_files(unpacked)  # the archive holds what fastai expects
        os.replace(unpacked, folder)
    return folder


def pretrained_folder(pretrained: str | Path | None = None, cache_dir: str | Path | None = None, **download) -> Path:
    """`pretrained` (--pretrained PATH) when given, else the cached or downloaded WT103 folder."""
    return Path(pretrained) if pretrained is not None else download_wt103(cache_dir, **download)


# ----------------------------------------------------------------------------- the vocabulary


class _ListOfStrUnpickler(pickle.Unpickler):
    """Builds lists and strings only: any global (class, function) is refused, so a pickle
    cannot run code."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")


def read_itos(path: str | Path) -> list[str]:
    """fastai's itos pickle (index -> token) read safely: a list of str or an InputError."""
    path = Path(path)
    try:
        itos = _ListOfStrUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InputError(f"{path}: not a pickled list of tokens ({err})") from None
    if not isinstance(itos, list) or not all(isinstance(token, str) for token in itos):
        raise InputError(f"{path}: expected a pickled list of str, found {type(itos).__name__}")
    return itos


# ----------------------------------------------------------------------------- weights


def convert_weights(state: dict[str, np.ndarray], old_itos: list[str], new_itos: list[str]) -> dict[str, np.ndarray]:
    """fastai's convert_weights on a language model's state dict: rows reordered for `new_itos`,
    the mean row (and mean bias) for tokens `old_itos` lacks; decoder.weight = the new embedding."""
    if "0.encoder.weight" not in state:
        raise WeightMismatch("not a fastai AWD-LSTM language model state dict: no '0.encoder.weight'")
    enc = state["0.encoder.weight"]
    if enc.shape[0] != len(old_itos):
        raise WeightMismatch(f"0.encoder.weight has {enc.shape[0]} rows but the itos has {len(old_itos)} tokens")
    stoi = {token: index for index, token in enumerate(old_itos)}
    rows = np.array([stoi.get(token, -1) for token in new_itos])
    known = (rows >= 0)[:, None]
    state = dict(state)
    state["0.encoder.weight"] = np.where(known, enc[np.maximum(rows, 0)], enc.mean(0))
    if "0.encoder_dp.emb.weight" in state:
        state["0.encoder_dp.emb.weight"] = state["0.encoder.weight"].copy()
    state["1.decoder.weight"] = state["0.encoder.weight"].copy()
    if "1.decoder.bias" in state:
        bias = state["1.decoder.bias"]
        state["1.decoder.bias"] = np.where(known[:, 0], bias[np.maximum(rows, 0)], bias.mean(0))
    return state


def _encoder_prefix(state) -> str:
    for prefix in ENCODER_PREFIXES:
        if f"{prefix}encoder.weight" in state:
            return prefix
    expected = [prefix + "encoder.weight" for prefix in ENCODER_PREFIXES]
    raise WeightMismatch(f"no AWD-LSTM encoder in the state dict: none of {expected}")


def encoder_params_from_fastai(state: dict[str, np.ndarray]) -> dict:
    """fastai AWD_LSTM weights (any of ENCODER_PREFIXES) as the Flax encoder's params."""
    prefix = _encoder_prefix(state)
    params = {"embedding": {"embedding": state[f"{prefix}encoder.weight"]}}
    layer = 0
    while f"{prefix}rnns.{layer}.weight_hh_l0_raw" in state:
        rnn = f"{prefix}rnns.{layer}."
        needed = [rnn + "module.weight_ih_l0", rnn + "module.bias_ih_l0", rnn + "module.bias_hh_l0"]
        missing = [key for key in needed if key not in state]
        if missing:
            raise WeightMismatch(f"fastai AWD-LSTM state dict lacks {missing}")
        params[f"rnns_{layer}"] = {"kernel_ih": state[needed[0]].T, "kernel_hh": state[rnn + "weight_hh_l0_raw"].T,
                                  "bias": state[needed[1]] + state[needed[2]]}
        layer += 1
    return params


def lm_params_from_fastai(state: dict[str, np.ndarray], tie_weights: bool = True) -> dict:
    """A fastai language model's state dict ('0.'/'1.' names) as AWDLSTMLanguageModel params."""
    params = {"encoder": encoder_params_from_fastai(state)}
    if "1.decoder.bias" in state:
        params["decoder_bias"] = state["1.decoder.bias"]
    if not tie_weights:
        params["decoder_kernel"] = state["1.decoder.weight"].T
    return params


def place(new: dict, target: dict) -> dict:
    """`target` (a Flax params tree) with the leaves of `new` put in, every key and shape
    checked (all mismatches named at once); leaves of `target` that `new` lacks are kept
    (e.g. a classifier's head)."""
    problems = []

    def merge(new, target, path):
        out = dict(target)
        for key in sorted(set(new) - set(target)):
            problems.append(f"{path}{key}: in the pretrained weights, not in the model")
        for key in set(new) & set(target):
            if isinstance(new[key], dict):
                out[key] = merge(new[key], target[key], f"{path}{key}/")
            elif np.shape(new[key]) != np.shape(target[key]):
                problems.append(f"{path}{key}: pretrained shape {np.shape(new[key])}, model shape {np.shape(target[key])}")
            else:
                out[key] = np.asarray(new[key], dtype=target[key].dtype)
        return out

    placed = merge(new, target, "")
    if problems:
        raise WeightMismatch("pretrained weights do not fit the model: " + "; ".join(sorted(problems)))
    return placed


def _leaf_paths(tree: dict, path: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        paths |= _leaf_paths(value, f"{path}{key}/") if isinstance(value, dict) else {path + key}
    return paths


def load_pretrained_lm(params: dict, new_itos: list[str], pretrained: str | Path | None = None,
                       cache_dir: str | Path | None = None, tie_weights: bool = True, **download) -> tuple[dict, str]:
    """(params with the WT103 weights mapped to `new_itos`, a one-line report), as fastai's
    language_model_learner(pretrained=True) does; `pretrained` is the --pretrained folder."""
    folder = pretrained_folder(pretrained, cache_dir, **download)
    weights_path, itos_path = wt103_files(folder)
    state, _ = read_state_dict(weights_path)
    old_itos = read_itos(itos_path)
    state = convert_weights(state, old_itos, list(new_itos))
    loaded = lm_params_from_fastai(state, tie_weights)
    missing = sorted(_leaf_paths(params) - _leaf_paths(loaded))
    if missing:
        raise WeightMismatch(f"{weights_path}: no pretrained weights for the model's {missing}")
    params = place(loaded, params)
    n_known = len(set(new_itos) & set(old_itos))
    return params, (f"awd_lstm_lm: pretrained weights from {weights_path}; {n_known} of {len(new_itos)} tokens "
                    f"found in its {len(old_itos)}-token vocabulary, the others start from the mean embedding")
