"""Real stand-ins for lesson 3's Planet and BIWI data, derived in code from CamVid's masks
(neither dataset is on this machine; CamVid is).

- multi-label: an image's labels are the classes covering more than `min_share` of its
  non-void pixels ("which classes appear in this street scene"), as multi-hot rows of an
  `ImageSource` (the image loader batches them as int32 [B, C] targets);
- point regression: the centroid (row, col) of one class's pixels (e.g. Sky or Road), as a
  `PointSource`; images with fewer than `min_pixels` of that class are left out (the note
  says how many).

Both read CamVid through `jaxfast.datasets.camvid.read_camvid` (either layout) and keep its
splits (train, valid, and test when present).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast.datasets.camvid import CamvidFolder, read_camvid, read_mask
from jaxfast.errors import InputError
from jaxfast.vision.pipeline import ImageSource
from jaxfast.vision.segmentation import PointSource


@dataclasses.dataclass(frozen=True)
class ProxySplits:
    """Sources per split name ('train', 'valid', 'test'), the class names, and what was derived."""

    sources: dict
    classes: tuple[str, ...]
    note: str


def _masks(folder: CamvidFolder, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    pairs = folder.splits[split]
    images = np.array([image for image, _ in pairs], dtype=str)
    return images, [read_mask(mask, len(folder.codes))[..., 0] for _, mask in pairs]


def class_shares(mask: np.ndarray, n_classes: int, void_code: int | None) -> np.ndarray:
    """float64 [n_classes]: each class's share of the mask's non-void pixels (void's share 0)."""
    counts = np.bincount(mask.ravel(), minlength=n_classes).astype(np.float64)
    if void_code is not None:
        counts[void_code] = 0.0
    total = counts.sum()
    return counts / total if total else counts


def camvid_multilabel(data_dir: str | Path, min_share: float = 0.01, valid_pct: float = 0.2,
                      seed: int = 0) -> ProxySplits:
    """Multi-label ImageSources: labels = the classes over `min_share` of an image's labelled
    pixels. Void is never a label; classes present in no training image are dropped."""
    if not 0.0 <= min_share < 1.0:
        raise InputError(f"min_share must be in [0, 1), got {min_share}")
    folder = read_camvid(data_dir, valid_pct, seed)
    n, void = len(folder.codes), folder.void_code
    hot = {}
    paths = {}
    for split, pairs in folder.splits.items():
        if pairs:
            paths[split], masks = _masks(folder, split)
            hot[split] = np.stack([class_shares(m, n, void) > min_share for m in masks])
    keep = np.flatnonzero(hot["train"].any(axis=0))
    classes = tuple(folder.codes[c] for c in keep)
    sources = {split: ImageSource("files", paths[split], rows[:, keep].astype(np.int32), classes, f"camvid-labels:{split}")
               for split, rows in hot.items()}
    per_image = hot["train"][:, keep].sum(axis=1)
    note = (f"{folder.note}; multi-label proxy: {len(classes)} classes over {min_share:.0%} of an image's labelled "
            f"pixels, {per_image.mean():.1f} labels per training image (min {per_image.min()}, max {per_image.max()})")
    return ProxySplits(sources, classes, note)


def mask_centroid(mask: np.ndarray, code: int) -> tuple[np.ndarray | None, int]:
    """((row, col) float32 centroid of the pixels equal to `code`, in pixel coordinates; None
    when there is none), pixel count."""
    rows, cols = np.nonzero(mask == code)
    if len(rows) == 0:
        return None, 0
    return np.array([rows.mean(), cols.mean()], np.float32), len(rows)


def camvid_centroids(data_dir: str | Path, class_name: str = "Sky", min_pixels: int = 500, valid_pct: float = 0.2,
                     seed: int = 0) -> ProxySplits:
    """PointSources with one point per image: the centroid of `class_name`'s pixels."""
    folder = read_camvid(data_dir, valid_pct, seed)
    if class_name not in folder.codes:
        raise InputError(f"class {class_name!r} is not one of this CamVid's codes: {', '.join(folder.codes)}")
    code = folder.codes.index(class_name)
    sources, kept, dropped = {}, 0, 0
    for split, pairs in folder.splits.items():
        if not pairs:
            continue
        paths, masks = _masks(folder, split)
        found = [mask_centroid(m, code) for m in masks]
        rows = [i for i, (point, count) in enumerate(found) if point is not None and count >= min_pixels]
        dropped += len(found) - len(rows)
        kept += len(rows)
        if rows:
            points = np.stack([found[i][0] for i in rows])[:, None, :]
            sources[split] = PointSource("files", paths[rows], points, f"camvid-{class_name}:{split}")
    if "train" not in sources:
        raise InputError(f"no training image has {min_pixels} or more {class_name} pixels")
    note = (f"{folder.note}; point proxy: centroid of {class_name} pixels, {kept} images kept, {dropped} with fewer "
            f"than {min_pixels} such pixels left out")
    return ProxySplits(sources, (class_name,), note)
