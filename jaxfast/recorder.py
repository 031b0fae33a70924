"""What happened during training: per-step loss/lr/momentum and the per-epoch table.

Plain Python lists (JSON-serialisable, saved in every checkpoint's meta so a resumed
run carries its history on), written out as `history.csv` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


@dataclasses.dataclass
class Recorder:
    """Step-level losses, learning rates and momentums, and one row per finished epoch."""

    losses: list = dataclasses.field(default_factory=list)
    lrs: list = dataclasses.field(default_factory=list)
    moms: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)  # dicts: epoch, train_loss, valid_loss, metrics, time

    def add_step(self, loss: float, lr: float, mom: float) -> None:
        self.losses.append(float(loss))
        self.lrs.append(float(lr))
        self.moms.append(float(mom))

    def add_epoch(self, row: dict) -> None:
        self.epochs.append(dict(row))

    @property
    def n_epochs(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recorder":
        return cls(**{f.name: list(data.get(f.name, [])) for f in dataclasses.fields(cls)})

    def smoothed_losses(self, beta: float = 0.98) -> list[float]:
        """fastai's debiased exponential moving average of the step losses."""
        avg, out = 0.0, []
        for i, loss in enumerate(self.losses, start=1):
            avg = beta * avg + (1 - beta) * loss
            out.append(avg / (1 - beta**i))
        return out

    def history_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs)

    def write_csv(self, path: str | Path) -> None:
        """Write the epoch table atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_suffix(".csv.tmp")
        self.history_frame().to_csv(tmp, index=False)
        os.replace(tmp, path)

    def plot_losses(self, path: str | Path) -> None:
        """Smoothed train loss per step, and valid loss at each epoch end."""
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(1, len(self.losses) + 1), self.smoothed_losses(), label="train (smoothed)")
        valid = [(r["step"], r["valid_loss"]) for r in self.epochs if "valid_loss" in r and "step" in r]
        if valid:
            ax.plot(*zip(*valid), "o-", label="valid")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        _save(fig, path)

    def plot_schedule(self, path: str | Path) -> None:
        """Learning rate and momentum per step (the one-cycle shape)."""
        fig, (ax_lr, ax_mom) = plt.subplots(1, 2, figsize=(10, 4))
        ax_lr.plot(self.lrs)
        ax_lr.set_xlabel("step")
        ax_lr.set_ylabel("learning rate (last group)")
        ax_mom.plot(self.moms)
        ax_mom.set_xlabel("step")
        ax_mom.set_ylabel("momentum / beta1")
        _save(fig, path)


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def format_row(row: dict, columns: list[str]) -> str:
    """One line of fastai's epoch table."""
    cells = []
    for col in columns:
        value = row.get(col, "")
        if col == "time":
            cells.append(f"{int(value) // 60:02d}:{int(value) % 60:02d}")
        elif isinstance(value, float):
            cells.append("nan" if math.isnan(value) else f"{value:.6f}")
        else:
            cells.append(str(value))
    return "  ".join(f"{c:>{max(len(col), 10)}}" for c, col in zip(cells, columns))


def format_header(columns: list[str]) -> str:
    return "  ".join(f"{col:>{max(len(col), 10)}}" for col in columns)
