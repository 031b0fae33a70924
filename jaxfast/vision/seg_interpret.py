"""Lesson 3's result views. Segmentation (CamVid): a confusion matrix over a split, per-class
IoU, pixel accuracy without void, the per-class IoU bar plot, and the same scores at each
image's original resolution. Points (head pose): images with true and predicted points.

`confusion_matrix(learn, loader, ...)` counts (truth, prediction) pixel pairs of every real
row. With `full_size=True` the logits are mapped back to the source image before the
argmax: the padding that resize method 'pad' added is cut off and the rest is resized
(bilinear, TF's half-pixel centres, as the loader resized the image) to the original mask's
size, which is read from the source untouched. So a model trained and run at half size is
scored against CamVid's 360x480 masks. 'crop' loses image borders, so it has no full-size
score (ValueError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxfast.show import save_figure


def _valid_region(source_hw: tuple[int, int], size: tuple[int, int], method: str) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the image inside a `size` eval output (transforms.eval_transform)."""
    if method == "squish":
        return 0, 0, size[0], size[1]
    if method != "pad":
        raise ValueError(f"full-size scores need resize method 'pad' or 'squish' (the whole image is seen), "
                         f"not {method!r}")
    scale = min(size[0] / source_hw[0], size[1] / source_hw[1])
    rh = min(max(int(np.round(source_hw[0] * scale)), 1), size[0])
    rw = min(max(int(np.round(source_hw[1] * scale)), 1), size[1])
    top, left = -int(np.floor((rh - size[0]) / 2)), -int(np.floor((rw - size[1]) / 2))
    return top, left, rh, rw


def _full_size_labels(logits: np.ndarray, source_hw, size, method: str) -> np.ndarray:
    import tensorflow as tf

    top, left, rh, rw = _valid_region(tuple(source_hw), size, method)
    region = logits[top:top + rh, left:left + rw].astype(np.float32)
    if region.shape[:2] != tuple(source_hw):
        region = tf.image.resize(region, tuple(source_hw), method="bilinear").numpy()
    return region.argmax(-1)


def confusion_matrix(learn, loader, n_classes: int, void_code: int | None = None, full_size: bool = False) -> np.ndarray:
    """int64 [n_classes, n_classes]: rows truth, columns prediction, over the real rows of
    `loader` (void pixels left out); see the module doc for `full_size`."""
    from jaxfast.vision.transforms import as_hw

    counts = np.zeros((n_classes, n_classes), np.int64)
    size = as_hw(loader.size)
    index, _ = loader.plan(0)
    row = 0
    for batch in loader.batches(0):
        real = np.flatnonzero(np.asarray(batch["mask"]) > 0)
        outputs = learn.predict(np.asarray(batch["inputs"]))  # whole batches: one compiled shape
        for i in real:
            if full_size:
                _, mask = loader.source.read(int(index[row + i]))
                truth = np.asarray(mask)[..., 0].astype(np.int64)
                predicted = _full_size_labels(np.asarray(outputs[i]), truth.shape, size, loader.resize_method)
            else:
                truth = np.asarray(batch["targets"][i]).astype(np.int64)
                predicted = np.asarray(outputs[i]).argmax(-1)
            keep = truth != void_code if void_code is not None else np.ones(truth.shape, bool)
            if truth.max(initial=0) >= n_classes:
                raise ValueError(f"mask of row {int(index[row + i])} holds class {truth.max()} >= {n_classes}")
            counts += np.bincount(truth[keep] * n_classes + predicted[keep],
                                  minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        row += len(batch["mask"])
    return counts


def scores(confusion: np.ndarray, classes: Sequence[str], void_code: int | None = None) -> dict:
    """{'accuracy': pixel accuracy without void, 'miou': mean IoU of the scored classes,
    'class_iou': {class: IoU (NaN when never present nor predicted)}} from a confusion matrix;
    `miou` agrees with jaxfast.metrics.miou (void not scored, empty unions left out)."""
    confusion = np.asarray(confusion, np.float64)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    ious = {}
    for c, name in enumerate(classes):
        ious[name] = float("nan") if c == void_code or union[c] == 0 else float(inter[c] / union[c])
    scored = [v for v in ious.values() if not np.isnan(v)]
    total = confusion.sum()
    return {"accuracy": float(inter.sum() / total) if total else float("nan"),
            "miou": float(np.mean(scored)) if scored else float("nan"), "class_iou": ious}


def plot_class_ious(class_iou: dict[str, float], path: str | Path, title: str = "per-class IoU") -> Path:
    """A horizontal bar per class (IoU in [0, 1], the value written beside it; void/absent left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in class_iou.items() if not np.isnan(v)]
    values = [class_iou[k] for k in names]
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    ax.barh(names[::-1], values[::-1], color="tab:blue")
    for y, v in enumerate(values[::-1]):
        ax.text(min(v + 0.01, 0.9), y, f"{v:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.set_title(f"{title} (mean {np.mean(values):.3f})" if values else title, fontsize=9)
    return save_figure(fig, path)


def show_point_results(learn, loader, path: str | Path, n: int = 9) -> Path:
    """The first `n` real images of `loader` with the true point(s) (green) and the predicted
    ones (red crosses); targets are (row, col) pairs in [-1, 1], as PointLoader gives them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = next(iter(loader.batches(0)))
    real = np.flatnonzero(np.asarray(batch["mask"]) > 0)[:n]
    inputs, targets = np.asarray(batch["inputs"])[real], np.asarray(batch["targets"])[real]
    outputs = np.asarray(learn.predict(inputs))
    cols = int(np.ceil(np.sqrt(len(real))))
    rows = int(np.ceil(len(real) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.3 * rows + 0.3), squeeze=False)
    mean, std = (np.zeros(3), np.ones(3)) if loader.stats is None else map(np.asarray, loader.stats)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, truth, out in zip(axes.flat, inputs, targets, outputs):
        hw = np.array(image.shape[:2])
        ax.imshow(np.clip(image * std + mean, 0, 1))
        true_px = (truth.reshape(-1, 2) + 1) / 2 * hw
        pred_px = (out.reshape(-1, 2) + 1) / 2 * hw
        ax.scatter(true_px[:, 1], true_px[:, 0], c="lime", s=30, label="truth")
        ax.scatter(pred_px[:, 1], pred_px[:, 0], c="red", marker="x", s=40, label="prediction")
        ax.set_xlim(-0.5, hw[1] - 0.5)
        ax.set_ylim(hw[0] - 0.5, -0.5)  # a prediction off the image is not drawn; its error says so
        ax.set_title(f"squared error {np.mean((out - truth) ** 2):.4f}", fontsize=8)
    axes.flat[0].legend(fontsize=6, loc="lower left")
    return save_figure(fig, path)
