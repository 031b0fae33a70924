"""fastai v1's text learner factories (lessons 3-4, ULMFiT), thin builders of the one Learner.

    data_lm = lm_databunch(tokens, batch_size=64)
    learn = language_model_learner(data_lm, "awd_lstm", pretrained=False, drop_mult=0.3)
    learn.fit_one_cycle(1, 1e-2, moms=(0.8, 0.7))
    encoder = encoder_params(learn)                         # fastai's save_encoder
    learn_c = text_classifier_learner(data_clas, "awd_lstm", drop_mult=0.5)
    load_encoder(learn_c, encoder)                          # fastai's load_encoder
    learn_c.fit_one_cycle(1, 2e-2, moms=(0.8, 0.7))

The language model reads LMLoader's stream batches through `LMBatches`, which lays them out
as the step expects: `{"inputs": {"tokens", "reset", "token_mask"}, "targets": {"ids",
"weights"}, "mask"}` (dict inputs are the model's keyword arguments; its hidden state is
the TrainState's carry). The classifier reads ClasLoader's batches as they are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterator, Sequence

import jax
import numpy as np

from jaxfast.errors import InputError
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.awd_lstm import clas_layer_groups, lm_layer_groups, with_encoder
from jaxfast.models.registry import ModelSpec
from jaxfast.text.batches import ClasLoader, LMLoader
from jaxfast.text.databunch import TextDataBunch

ARCHS = {"awd_lstm": ("awd_lstm_lm", "awd_lstm_clas")}
SIZE_KEYS = ("emb_sz", "n_hid", "n_layers")  # what the LM and the classifier must share for the encoder


def lm_batch(batch: dict) -> dict:
    """One LMLoader batch in the step's layout (dict inputs, weighted token targets)."""
    return {
        "inputs": {"tokens": batch["inputs"], "reset": batch["reset"], "token_mask": batch["token_mask"]},
        "targets": {"ids": batch["targets"], "weights": batch["token_mask"]},
        "mask": batch["mask"],
    }


class LMBatches:
    """An LMLoader as a jaxfast Loader of `lm_batch` layouts (same length, order and shapes)."""

    def __init__(self, loader: LMLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_rows(self) -> int:
        return self.loader.num_rows

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    @property
    def name(self) -> str:
        return self.loader.name

    def batches(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        """The epoch's batches from `start`; the hidden state resets at the epoch's first batch
        only: a resumed run (start > 0) goes on from the carry its checkpoint restored."""
        for b, batch in enumerate(self.loader.batches(epoch, start), start=start):
            batch["reset"] = np.full_like(batch["reset"], float(b == 0))
            yield lm_batch(batch)

    def sample_inputs(self) -> dict:
        tokens = self.loader.sample_inputs()
        return {"tokens": tokens, "reset": np.ones(tokens.shape[0], np.float32),
                "token_mask": np.ones(tokens.shape, np.float32)}


def _lm_data(data: TextDataBunch) -> TextDataBunch:
    """`data` with its LMLoaders wrapped (already wrapped loaders are kept)."""
    if data.vocab is None:
        raise InputError("a language model needs a TextDataBunch with its vocab (from jaxfast.text.lm_databunch)")
    wrap = lambda l: LMBatches(l) if isinstance(l, LMLoader) else l  # noqa: E731
    if not isinstance(data.train, (LMLoader, LMBatches)):
        raise InputError(f"language_model_learner needs LM data (lm_databunch), got a {type(data.train).__name__}")
    return dataclasses.replace(data, train=wrap(data.train), valid=wrap(data.valid) if data.valid is not None else None,
                               extra={k: wrap(v) for k, v in data.extra.items()})


def _arch(arch: str, which: int) -> str:
    if arch not in ARCHS:
        raise InputError(f"unknown text architecture {arch!r}; known: {sorted(ARCHS)}")
    return ARCHS[arch][which]


def language_model_learner(
    data: TextDataBunch, arch: str = "awd_lstm", pretrained: bool | str = False, *, drop_mult: float = 1.0,
    metrics: Sequence = ("token_accuracy",), config: TrainConfig = TrainConfig(), workdir: str | Path | None = None,
    log: Callable[[str], None] = print, tokenizer: dict | None = None, alpha: float = 2.0, beta: float = 1.0,
    **arch_config,
) -> Learner:
    """fastai's language_model_learner: an AWD-LSTM LM over `data.vocab` (`arch_config`
    overrides its sizes and dropouts, the dropouts times `drop_mult`), trained with the
    weighted token cross entropy plus fastai's AR (`alpha`) and TAR (`beta`). `pretrained`: a WT103 folder (or True: fastai's download,
    cached) mapped onto the vocab; the body is then frozen as fastai does. False: from scratch.
    `tokenizer`: the tokenizer's description, kept in the export (for `predict_text`)."""
    data = _lm_data(data)
    vocab = data.vocab
    spec = ModelSpec(_arch(arch, 0), {"vocab_size": len(vocab), "drop_mult": drop_mult,
                                      "pad_token": vocab.pad_id, **arch_config})
    model = spec.build()
    meta = {"kind": "language_model", "vocab": list(vocab.itos), "tokenizer": dict(tokenizer or {})}
    learn = Learner(spec, data, "lm_cross_entropy", metrics, layer_groups=lm_layer_groups(model), config=config,
                    workdir=workdir, log=log, export_meta=meta, activation_reg=(alpha, beta))
    if pretrained is False or pretrained is None:
        log(f"{spec.arch}: no pretrained weights, the language model starts from scratch (random init)")
        return learn
    from jaxfast.text.wt103 import load_pretrained_lm

    params, message = load_pretrained_lm(jax.device_get(learn.state.params), vocab.itos,
                                         None if pretrained is True else pretrained,
                                         tie_weights=model.tie_weights)
    log(message)
    learn.state = learn.state.replace(params=jax.tree.map(np.asarray, params))
    learn.freeze()
    return learn


def text_classifier_learner(
    data: TextDataBunch, arch: str = "awd_lstm", *, drop_mult: float = 1.0, bptt: int = 70, max_len: int = 70 * 20,
    lin_ftrs: Sequence[int] = (50,), ps: Sequence[float] = (0.1,), metrics: Sequence = ("accuracy",),
    config: TrainConfig = TrainConfig(), workdir: str | Path | None = None, log: Callable[[str], None] = print,
    tokenizer: dict | None = None, alpha: float = 2.0, beta: float = 1.0, **arch_config,
) -> Learner:
    """fastai's text_classifier_learner: MultiBatchEncoder + pooling head over `data` (from
    clas_databunch, the LM's vocab), AR/TAR (`alpha`, `beta`: fastai's RNNLearner defaults),
    layer groups for gradual unfreezing; the export records
    what `predict_texts` needs (vocab, classes, tokenizer, max_len)."""
    if data.vocab is None or not data.classes:
        raise InputError("text_classifier_learner needs a TextDataBunch with its vocab and classes (clas_databunch)")
    if not isinstance(data.train, ClasLoader):
        raise InputError(f"text_classifier_learner needs classifier data (clas_databunch), got {type(data.train).__name__}")
    vocab = data.vocab
    spec = ModelSpec(_arch(arch, 1), {"vocab_size": len(vocab), "n_classes": len(data.classes), "drop_mult": drop_mult,
                                      "bptt": bptt, "max_len": max_len, "lin_ftrs": list(lin_ftrs), "ps": list(ps),
                                      "pad_token": vocab.pad_id, **arch_config})
    model = spec.build()
    meta = {"kind": "text_classifier", "vocab": list(vocab.itos), "classes": list(data.classes),
            "tokenizer": dict(tokenizer or {}), "max_len": max_len, "pad_first": data.train.pad_first}
    return Learner(spec, data, "cross_entropy", metrics, layer_groups=clas_layer_groups(model), config=config,
                   workdir=workdir, log=log, export_meta=meta, activation_reg=(alpha, beta))


def encoder_params(learn: Learner) -> dict:
    """fastai's save_encoder, functionally: the (LM or classifier) learner's encoder params, on the host."""
    params = learn.state.params
    if "encoder" not in params:
        raise InputError(f"this learner's model has no encoder params (top-level: {sorted(params)})")
    return jax.tree.map(np.asarray, jax.device_get(params["encoder"]))


def save_encoder(learn: Learner, path: str | Path) -> Path:
    """fastai's learn.save_encoder: the encoder params as an Orbax checkpoint folder."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, encoder_params(learn), force=True)
    return path


def load_encoder(learn: Learner, encoder: dict | str | Path) -> None:
    """fastai's learn.load_encoder: the classifier's encoder replaced by `encoder` (params from
    `encoder_params`, or a folder from `save_encoder`); sizes and vocab are checked."""
    if not isinstance(encoder, dict):
        import orbax.checkpoint as ocp

        path = Path(encoder).absolute()
        if not path.exists():
            raise InputError(f"no saved encoder at {path}")
        with ocp.StandardCheckpointer() as checkpointer:
            encoder = checkpointer.restore(path)
    params = with_encoder(jax.device_get(learn.state.params), {"encoder": encoder})
    learn.state = learn.state.replace(params=jax.tree.map(np.asarray, params))
