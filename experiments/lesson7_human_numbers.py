"""Lesson 7 (lesson7-human-numbers): next-token language models on numbers written in words.

The corpus is generated in code (1..8000 train, 8001..9999 valid, fastai's layout and a
vocab of ~38 tokens). The lesson's models are trained in order: the hand-written loop RNN,
an RNN cell, a multi-layer GRU, and, last, a multi-layer LSTM. fastai's 2-layer GRU
reached 0.807 accuracy with stateful hidden state; the models here are pure (the state
starts at zero every sequence) and see longer sequences instead.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast import experiment
from jaxfast.data.human_numbers import load_human_numbers
from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.errors import InputError
from jaxfast.experiment import Run, RunConfig
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import ModelSpec


@dataclasses.dataclass(frozen=True)
class Config:
    """Lesson 7: human-numbers language models (loop RNN, RNN cell, GRU, LSTM).

    The workdir holds one sub-folder per model (checkpoints, history.csv, plots, export) and metrics.json;
    --data-dir is unused: the corpus is generated in code."""

    run: Run = RunConfig()
    train: TrainConfig = TrainConfig(wd=0.1, clip=1.0)
    models: tuple[str, ...] = ("loop_rnn", "rnn_cell", "gru", "lstm")
    """Trained in this order; the last one's valid accuracy is the final figure."""
    hidden: int = 128
    n_layers: int = 2
    dropout: float = 0.2
    """Dropout between the LSTM layers and before its head."""
    batch_size: int = 32
    seq_len: int = 64
    train_stride: int = 16
    """Training windows of seq_len tokens start every N tokens."""
    valid_windows: int = 8
    """Valid is cut into this many equal windows (no overlap; 8 x 1,627 tokens covers all 13,016 valid
    targets), so every token is predicted with the context a stateful model carries between batches."""
    epochs_early: int = 2
    """Epochs for every model but the last (the lesson's stepping stones)."""
    epochs_last: int = 8
    lr: float = 1e-2
    max_train_tokens: int | None = None
    """Use only the first N training tokens (the tiny variant)."""


TINY = Config(train=TrainConfig(wd=0.1, clip=1.0, progress=False), models=("loop_rnn", "gru"), hidden=16, seq_len=16,
              batch_size=16, valid_windows=8, epochs_early=1, epochs_last=1, max_train_tokens=4000)


def rows(ids: np.ndarray, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `seq_len` tokens starting every `stride` tokens, and their next tokens.

    A pure model restarts its hidden state every row, so overlapping windows (stride <
    seq_len) give it many more distinct contexts than fastai's contiguous layout."""
    starts = np.arange(0, len(ids) - seq_len, stride)
    if len(starts) == 0:
        raise InputError(f"{len(ids)} tokens are too few for windows of {seq_len}")
    index = starts[:, None] + np.arange(seq_len)[None, :]
    return ids[index].astype(np.int32), ids[index + 1].astype(np.int32)


def make_data(config: Config):
    corpus = load_human_numbers()
    train_ids = corpus.train_ids[: config.max_train_tokens] if config.max_train_tokens else corpus.train_ids
    x_train, y_train = rows(train_ids, config.seq_len, config.train_stride)
    valid_len = (len(corpus.valid_ids) - 1) // config.valid_windows
    x_valid, y_valid = rows(corpus.valid_ids, valid_len, valid_len)
    data = DataBunch(
        ArrayLoader(x_train, y_train, config.batch_size, shuffle=True, drop_last=True, seed=config.train.seed,
                    name="train"),
        ArrayLoader(x_valid, y_valid, config.valid_windows, name="valid"),
    )
    return data, corpus


def main(config: Config, workdir: Path) -> dict:
    data, corpus = make_data(config)
    print(f"vocab {corpus.vocab_size} tokens; train {data.train.num_rows} windows of {config.seq_len} tokens, "
          f"valid {data.valid.num_rows} windows of {data.valid.inputs.shape[1]} tokens")
    final = {}
    for i, name in enumerate(config.models):
        arch_config = {"name": name, "vocab_size": corpus.vocab_size, "hidden": config.hidden,
                       "n_layers": config.n_layers, "dropout": config.dropout}
        learn = Learner(ModelSpec("rnn_lm", arch_config), data, "cross_entropy", ["accuracy"], config=config.train,
                        workdir=workdir / name, export_meta={"kind": "language_model", "vocab": list(corpus.vocab)})
        epochs = config.epochs_last if i == len(config.models) - 1 else config.epochs_early
        print(f"== {name}: {epochs} epochs")
        learn.fit_one_cycle(epochs, config.lr)
        results = learn.evaluate_all()
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        final.update({f"{name}_{k}": v for k, v in results.items()})
        learn.export(workdir / name / "export")
    final["valid_accuracy"] = final[f"{config.models[-1]}_valid_accuracy"]
    return final


if __name__ == "__main__":
    experiment.run(main, Config(), TINY)
