"""fastai v1's ClassificationInterpretation: top losses, confusion matrix, most confused.

Built from a Learner and a loader (`from_learner`: probabilities, targets and per-example
losses of every real row, via `Learner.get_preds`), or from arrays (`from_outputs` takes
logits). Images for `plot_top_losses` come from an array, or are read back from the
loader for just the rows shown. Plots are PNG files written with matplotlib's Agg backend.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from jaxfast.show import save_figure


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (computed in float64, returned as float32)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def denormalize(images: np.ndarray, stats=None) -> np.ndarray:
    """Images ready for imshow: undo (x - mean) / std when `stats`, uint8 -> [0, 1], clipped."""
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.integer):
        images = images.astype(np.float32) / 255.0
    elif stats is not None:
        mean, std = (np.asarray(s, np.float32) for s in stats)
        images = images * std + mean
    return np.clip(images, 0.0, 1.0)


def agg_pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image: np.ndarray) -> None:
    if image.ndim == 2 or image.shape[-1] == 1:
        ax.imshow(image.reshape(image.shape[:2]), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    ax.axis("off")


@dataclasses.dataclass(frozen=True, eq=False)
class ClassificationInterpretation:
    """Probabilities [N, C], int targets [N], per-example losses [N], class names, and where
    the images are: `images` [N, ...] or `loader` (rows in `get_preds` order); `stats`
    (mean, std) undo the normalisation for display."""

    probs: np.ndarray
    targets: np.ndarray
    losses: np.ndarray
    classes: tuple[str, ...] | None = None
    images: np.ndarray | None = None
    stats: tuple | None = None
    loader: object = None

    def __post_init__(self):
        probs, targets, losses = np.asarray(self.probs), np.asarray(self.targets), np.asarray(self.losses)
        if probs.ndim != 2:
            raise ValueError(f"probs must be [N, n_classes], got shape {probs.shape}")
        n, c = probs.shape
        if targets.shape != (n,) or losses.shape != (n,):
            raise ValueError(f"targets {targets.shape} and losses {losses.shape} must both be ({n},) "
                             f"like probs {probs.shape}")
        if n and (targets.min() < 0 or targets.max() >= c):
            raise ValueError(f"targets must be class indices in [0, {c}), got range [{targets.min()}, {targets.max()}]")
        classes = tuple(str(i) for i in range(c)) if self.classes is None else tuple(self.classes)
        if len(classes) != c:
            raise ValueError(f"{len(classes)} class names for {c} columns of probs")
        if self.images is not None and len(self.images) != n:
            raise ValueError(f"{len(self.images)} images for {n} predictions")
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "targets", targets.astype(np.int64))
        object.__setattr__(self, "losses", losses)
        object.__setattr__(self, "classes", classes)

    @classmethod
    def from_outputs(cls, outputs, targets, losses, images=None, classes=None, stats=None):
        """From model outputs (logits [N, C], softmaxed here), targets, losses and optional images."""
        return cls(softmax(outputs), targets, losses, classes, images, stats)

    @classmethod
    def from_learner(cls, learn, loader=None, classes=None, stats=None):
        """Predictions of `learn` on `loader` (default: valid); class names and stats are taken
        from the loader (`classes`, `stats` attributes) unless given."""
        loader = loader if loader is not None else learn.data.valid
        if loader is None:
            raise ValueError("from_learner: no loader given and the data has no validation split")
        outputs, targets, losses = learn.get_preds(loader)
        classes = classes if classes is not None else getattr(loader, "classes", None)
        stats = stats if stats is not None else getattr(loader, "stats", None)
        return cls(softmax(outputs), targets, losses, classes, None, stats, loader)

    # ---- numbers ---------------------------------------------------------------------
    @property
    def preds(self) -> np.ndarray:
        """Predicted class index of every row."""
        return self.probs.argmax(axis=1)

    def top_losses(self, k: int | None = None, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(losses, row indices) of the k largest (or smallest) losses, in that order; ties by row."""
        order = np.argsort(-self.losses if largest else self.losses, kind="stable")[:k]
        return self.losses[order], order

    def confusion_matrix(self) -> np.ndarray:
        """Counts [C, C]: row = actual class, column = predicted class."""
        c = len(self.classes)
        return np.bincount(self.targets * c + self.preds, minlength=c * c).reshape(c, c)

    def most_confused(self, min_val: int = 1) -> list[tuple[str, str, int]]:
        """(actual, predicted, count) of the off-diagonal cells with count >= min_val, by count
        descending (ties in row-major order)."""
        cm = self.confusion_matrix()
        cells = [(self.classes[i], self.classes[j], int(cm[i, j]))
                 for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] >= min_val]
        return sorted(cells, key=lambda cell: -cell[2])

    def images_at(self, indices) -> np.ndarray:
        """The images of rows `indices` (from `images`, or read back from the loader)."""
        indices = [int(i) for i in indices]
        if self.images is not None:
            return np.asarray(self.images)[indices]
        if self.loader is None:
            raise ValueError("no images: build the interpretation with `images` or from a learner and loader")
        wanted, found, row = set(indices), {}, 0
        for batch in self.loader.batches(0):
            real = np.asarray(batch["inputs"])[np.asarray(batch["mask"]) > 0]
            for image in real:
                if row in wanted:
                    found[row] = image
                row += 1
            if len(found) == len(wanted):
                break
        missing = sorted(wanted - set(found))
        if missing:
            raise IndexError(f"rows {missing[:5]} are beyond the loader's {row} rows")
        return np.stack([found[i] for i in indices])

    # ---- plots ---------------------------------------------------------------------------
    def plot_top_losses(self, k: int, path: str | Path, ncols: int = 3, largest: bool = True) -> Path:
        """The k top-loss images titled 'predicted/actual / loss / probability of actual'."""
        plt = agg_pyplot()
        losses, rows = self.top_losses(k, largest)
        images = denormalize(self.images_at(rows), self.stats)
        nrows = max(1, -(-len(rows) // ncols))
        fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.3 * nrows), squeeze=False)
        fig.suptitle("prediction/actual / loss / probability")
        for ax in axes.flat:
            ax.axis("off")
        for ax, image, loss, row in zip(axes.flat, images, losses, rows):
            actual, pred = self.targets[row], self.preds[row]
            _show(ax, image)
            ax.set_title(f"{self.classes[pred]}/{self.classes[actual]} / {loss:.2f} / {self.probs[row, actual]:.2f}",
                         fontsize=9)
        return save_figure(fig, path)

    def plot_confusion_matrix(self, path: str | Path, normalize: bool = False, cmap: str = "Blues") -> Path:
        """The confusion matrix as a heat map with the counts (or row shares) written in."""
        plt = agg_pyplot()
        cm = self.confusion_matrix().astype(np.float64)
        if normalize:
            cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
        c = len(self.classes)
        side = max(4.0, 0.5 * c + 2.0)
        fig, ax = plt.subplots(figsize=(side, side))
        ax.imshow(cm, interpolation="nearest", cmap=cmap)
        ax.set_title("Confusion matrix")
        ax.set_xticks(range(c), self.classes, rotation=90)
        ax.set_yticks(range(c), self.classes)
        threshold = cm.max() / 2.0
        for i in range(c):
            for j in range(c):
                text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                ax.text(j, i, text, ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
        ax.set_xlabel("Predicted")
        ax.set_ylabel("Actual")
        return save_figure(fig, path)
