"""Multi-label images (lesson 3, planet): a CSV of names and delimited labels -> files and
multi-hot targets; F-beta on host arrays and a per-class threshold search; top losses.

`read_multilabel_csv` is fastai v1's `ImageList.from_csv(path, csv, folder=, suffix=)
.label_from_df(label_delim=' ')`: row `name,tag1 tag2` becomes the file
`root/folder/name+suffix` and a 0/1 row over the sorted set of every tag seen (or the
`classes` given). A missing file, an empty label cell or an unknown tag stops the read
with an InputError naming the CSV line.
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxfast.errors import InputError

MAX_LISTED = 5  # rows named in one error message


@dataclasses.dataclass(frozen=True, eq=False)
class MultiLabelItems:
    """File paths [N] (str), multi-hot targets [N, C] (uint8) over `classes` (sorted)."""

    paths: np.ndarray
    targets: np.ndarray
    classes: tuple[str, ...]
    note: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, rows: np.ndarray) -> MultiLabelItems:
        return MultiLabelItems(self.paths[rows], self.targets[rows], self.classes, self.note)

    def split(self, valid_pct: float = 0.2, seed: int = 0) -> tuple[MultiLabelItems, MultiLabelItems]:
        """(train, valid): int(valid_pct * N) rows drawn with `seed` (fastai's split_by_rand_pct)."""
        from jaxfast.vision.folders import random_split

        is_valid = random_split(len(self), valid_pct, seed)
        return self.subset(np.flatnonzero(~is_valid)), self.subset(np.flatnonzero(is_valid))


def multi_hot(label_lists: Sequence[Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """uint8 [N, C]: row i has 1 at the columns of its labels (KeyError names an unknown one)."""
    index = {name: i for i, name in enumerate(classes)}
    out = np.zeros((len(label_lists), len(classes)), np.uint8)
    for row, labels in enumerate(label_lists):
        for label in labels:
            if label not in index:
                raise KeyError(f"label {label!r} of row {row} is not one of the {len(classes)} classes")
            out[row, index[label]] = 1
    return out


def _column(header: list[str], col: str | int, csv_path: Path) -> int:
    if isinstance(col, int):
        if not 0 <= col < len(header):
            raise InputError(f"{csv_path}: column {col} is out of range for header {header}")
        return col
    if col not in header:
        raise InputError(f"{csv_path}: no column {col!r} in header {header}")
    return header.index(col)


def _fail(csv_path: Path, what: str, problems: list[str]) -> None:
    listed = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    raise InputError(f"{csv_path}: {len(problems)} row(s) {what}: {listed}{more}")


def read_multilabel_csv(
    root: str | Path,
    csv: str = "labels.csv",
    *,
    folder: str = "",
    suffix: str = "",
    label_delim: str = " ",
    fn_col: str | int = 0,
    label_col: str | int = 1,
    classes: Sequence[str] | None = None,
    check_files: bool = True,
) -> MultiLabelItems:
    """Files and multi-hot targets from `root/csv` (header row, then `name,labels` rows).

    Images are `root/folder/<name><suffix>`. `classes` fixes the columns (an unknown tag is
    an error); by default they are the sorted set of tags in the file. `check_files`
    requires every file to exist.
    """
    root = Path(root)
    csv_path = root / csv
    if not csv_path.is_file():
        raise InputError(f"label CSV {csv_path} does not exist")
    if not label_delim:
        raise InputError("label_delim must be a non-empty string (planet uses ' ')")
    with open(csv_path, newline="") as f:
        rows = list(csv_module.reader(f))
    if len(rows) < 2:
        raise InputError(f"{csv_path}: expected a header row and at least one data row, found {len(rows)} row(s)")
    header = [name.strip() for name in rows[0]]
    fn_i, label_i = _column(header, fn_col, csv_path), _column(header, label_col, csv_path)
    image_dir = root / folder
    paths, label_lists, short, empty = [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue  # a blank line
        if len(row) <= max(fn_i, label_i):
            short.append(f"line {line} has {len(row)} field(s) {row}")
            continue
        labels = [tag for tag in row[label_i].strip().split(label_delim) if tag.strip()]
        if not labels:
            empty.append(f"line {line} ({row[fn_i].strip()!r})")
        paths.append((line, str(image_dir / (row[fn_i].strip() + suffix))))
        label_lists.append([tag.strip() for tag in labels])
    if short:
        _fail(csv_path, f"lack the name/label columns {fn_i} and {label_i}", short)
    if empty:
        _fail(csv_path, "have no labels", empty)
    if not paths:
        raise InputError(f"{csv_path}: no data rows")
    if classes is None:
        classes = sorted({tag for labels in label_lists for tag in labels})
    else:
        known = set(classes)
        unknown = [f"line {line}: {sorted(set(labels) - known)}"
                   for (line, _), labels in zip(paths, label_lists) if not set(labels) <= known]
        if unknown:
            _fail(csv_path, f"have labels outside the {len(known)} classes", unknown)
    if check_files:
        missing = [f"line {line}: {path}" for line, path in paths if not Path(path).is_file()]
        if missing:
            _fail(csv_path, "name missing image files", missing)
    targets = multi_hot(label_lists, classes)
    note = (f"{csv_path}: {len(paths)} images in {image_dir}, {len(classes)} classes, "
            f"{targets.sum(axis=1).mean():.2f} labels per image")
    return MultiLabelItems(np.array([p for _, p in paths], dtype=str), targets, tuple(classes), note)


# ------------------------------------------------------------ host-side F-beta


def _check_probs_targets(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    probs, targets = np.asarray(probs, np.float64), np.asarray(targets, np.float64)
    if probs.ndim != 2 or probs.shape != targets.shape:
        raise InputError(f"probabilities {probs.shape} and targets {targets.shape} must both be [N, C]")
    return probs, targets


def _per_sample_fbeta(tp, n_pred, n_true, beta: float, eps: float):
    """fastai v1's per-sample formula (jaxfast.metrics.fbeta), on arrays of counts."""
    beta2 = beta**2
    precision = tp / (n_pred + eps)
    recall = tp / (n_true + eps)
    return (precision * recall) / (precision * beta2 + recall + eps) * (1 + beta2)


def fbeta_score(probs, targets, thresholds=0.2, beta: float = 2, eps: float = 1e-9) -> float:
    """Mean over samples of fastai's F-beta with predictions `probs > thresholds` (a scalar or [C])."""
    probs, targets = _check_probs_targets(probs, targets)
    predicted = (probs > np.asarray(thresholds, np.float64)).astype(np.float64)
    tp = (predicted * targets).sum(axis=1)
    return float(np.mean(_per_sample_fbeta(tp, predicted.sum(axis=1), targets.sum(axis=1), beta, eps)))


def best_thresholds(
    probs, targets, beta: float = 2, grid=None, start: float = 0.2, max_rounds: int = 10, eps: float = 1e-9,
) -> tuple[np.ndarray, float]:
    """Per-class thresholds maximising `fbeta_score` on (valid) predictions, and that score.

    Coordinate ascent, as in the planet competition notebooks: every class starts at
    `start`; each round tries every `grid` value (default 0.01 ... 0.99) for one class at a
    time with the others fixed and keeps the best (the lowest on ties, and only a strict
    gain); rounds repeat until none improves.
    """
    probs, targets = _check_probs_targets(probs, targets)
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2) if grid is None else np.asarray(grid, np.float64)
    thresholds = np.full(probs.shape[1], float(start))
    predicted = (probs > thresholds).astype(np.float64)
    n_true = targets.sum(axis=1)
    best = fbeta_score(probs, targets, thresholds, beta, eps)
    for _ in range(max_rounds):
        improved = False
        for c in range(probs.shape[1]):
            tp_rest = (predicted * targets).sum(axis=1) - predicted[:, c] * targets[:, c]
            pred_rest = predicted.sum(axis=1) - predicted[:, c]
            candidates = (probs[:, c, None] > grid[None, :]).astype(np.float64)  # [N, G]
            scores = _per_sample_fbeta(tp_rest[:, None] + candidates * targets[:, c, None],
                                       pred_rest[:, None] + candidates, n_true[:, None], beta, eps).mean(axis=0)
            g = int(np.argmax(scores))
            if scores[g] > best + 1e-12:
                best, thresholds[c], predicted[:, c] = float(scores[g]), grid[g], candidates[:, g]
                improved = True
        if not improved:
            break
    return thresholds, best


# ------------------------------------------------------------------ top losses


@dataclasses.dataclass(frozen=True)
class MultiLabelLoss:
    """One row's summed binary cross entropy and its predicted and true tag sets."""

    row: int
    loss: float
    predicted: tuple[str, ...]
    actual: tuple[str, ...]


def multilabel_top_losses(
    probs, targets, classes: Sequence[str], k: int | None = None, thresh=0.2, eps: float = 1e-7,
) -> list[MultiLabelLoss]:
    """The k rows with the largest BCE summed over labels (ties by row), with tag sets.

    `probs` are sigmoid outputs [N, C] (clipped to [eps, 1 - eps]); predicted tags are
    those with `probs > thresh` (a scalar or per-class thresholds).
    """
    probs, targets = _check_probs_targets(probs, targets)
    if len(classes) != probs.shape[1]:
        raise InputError(f"{len(classes)} class names for {probs.shape[1]} columns of probabilities")
    clipped = np.clip(probs, eps, 1.0 - eps)
    losses = -(targets * np.log(clipped) + (1.0 - targets) * np.log1p(-clipped)).sum(axis=1)
    predicted = probs > np.asarray(thresh, np.float64)
    names = np.asarray(classes, dtype=object)
    order = np.argsort(-losses, kind="stable")[:k]
    return [MultiLabelLoss(int(i), float(losses[i]), tuple(names[predicted[i]]), tuple(names[targets[i] > 0.5]))
            for i in order]
