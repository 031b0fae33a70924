"""What a GAN run did: every step's model and metrics, and one row per epoch.

Plain lists and dicts (JSON, saved in every GAN checkpoint's meta so a resumed run carries its
history on), written as `history.csv` and a loss-curve PNG. An epoch row holds each model's
mean loss and metrics over its steps of that epoch (`critic_loss`, `critic_wasserstein`,
`critic_accuracy`, `generator_loss`, `generator_content`, ...), the step counts of each,
the epoch's time, and `step` (steps so far, both models).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from jaxfast.show import save_figure  # noqa: E402

ROLE_NAMES = {True: "critic", False: "generator"}


@dataclasses.dataclass
class GANHistory:
    """steps: [epoch, 'critic' or 'generator', {metric: mean}] per step; epochs: the rows."""

    steps: list = dataclasses.field(default_factory=list)
    epochs: list = dataclasses.field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def n_epochs(self) -> int:
        return len(self.epochs)

    def add_step(self, epoch: int, trained_critic: bool, metrics: dict) -> None:
        self.steps.append([int(epoch), ROLE_NAMES[bool(trained_critic)], {k: float(v) for k, v in metrics.items()}])

    def end_epoch(self, epoch: int, seconds: float) -> dict:
        """Close epoch `epoch`: its row (means of each model's metrics over its steps)."""
        row: dict = {"epoch": epoch}
        for role in ROLE_NAMES.values():
            mine = [m for e, r, m in self.steps if e == epoch and r == role]
            row[f"n_{role}_steps"] = len(mine)
            for name in sorted({k for m in mine for k in m}):
                values = [m[name] for m in mine if name in m]
                row[f"{role}_{name}"] = sum(values) / len(values)
        row["time"] = float(seconds)
        row["step"] = self.n_steps
        self.epochs.append(row)
        return row

    def series(self, role: str, name: str = "loss") -> tuple[list[int], list[float]]:
        """(iterations, values) of metric `name` over `role`'s steps."""
        pairs = [(i, m[name]) for i, (_, r, m) in enumerate(self.steps) if r == role and name in m]
        return [i for i, _ in pairs], [v for _, v in pairs]

    def epoch_values(self, column: str) -> list[float]:
        """One column of the epoch table (NaN where an epoch lacks it)."""
        return [float(row.get(column, math.nan)) for row in self.epochs]

    def step_scalars(self):
        """(iteration + 1, role, metrics) of every step, for TensorBoard."""
        for i, (_, role, metrics) in enumerate(self.steps):
            yield i + 1, role, metrics

    def to_dict(self) -> dict:
        return {"steps": self.steps, "epochs": self.epochs}

    @classmethod
    def from_dict(cls, data: dict) -> GANHistory:
        return cls([list(s) for s in data.get("steps", [])], [dict(r) for r in data.get("epochs", [])])

    def write_csv(self, path: str | Path) -> None:
        pd.DataFrame(self.epochs).to_csv(path, index=False)

    def format_row(self, row: dict) -> str:
        parts = [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "step"]
        return "  ".join(parts)

    def plot(self, path: str | Path) -> Path:
        """Per-step losses of both models (and the critic's other metrics, e.g. the Wasserstein
        estimate, in a second panel), with each epoch's boundary marked."""
        extra = sorted({k for _, r, m in self.steps if r == "critic" for k in m} - {"loss"})
        fig, axes = plt.subplots(1, 1 + bool(extra), figsize=(6 + 5 * bool(extra), 4), squeeze=False)
        ax = axes[0, 0]
        for role in ROLE_NAMES.values():
            x, y = self.series(role)
            if x:
                ax.plot(x, y, label=f"{role} loss", lw=0.8)
        for row in self.epochs:
            ax.axvline(row["step"], color="grey", lw=0.4)
        ax.set_xlabel("step (both models)")
        ax.legend()
        if extra:
            ax2 = axes[0, 1]
            for name in extra:
                x, y = self.series("critic", name)
                ax2.plot(x, y, label=f"critic {name}", lw=0.8)
            ax2.set_xlabel("step (both models)")
            ax2.legend()
        return save_figure(fig, path)
