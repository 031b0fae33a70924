"""Finding labelled images on disk, the layouts of fastai v1's ImageDataBunch.from_*.

- folder per class: `root/<class>/*.jpg` (split by `valid_pct` with `seed`);
- split folders: `root/train/<class>`, `root/valid/<class>` (or `val`), and
  `root/test/<class>` when present (a flat, unlabelled `root/test/` is noted and left out);
- a CSV of file names (relative to root) and labels, with an optional `is_valid` column;
- file names with a label regex (`label_re`, fastai's from_name_re, e.g. the pets).

`verify_images` (fastai's verify_images) decodes every file with the same decoder as the
pipeline; unreadable, truncated and non-image files are listed in one warning and left
out, so no epoch ever meets them.
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf

from jaxfast.vision.transforms import decode_image
from jaxfast.errors import InputError, MissingInput

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
VALID_NAMES = ("valid", "val")
DEFAULT_VALID_PCT = 0.2


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplit:
    """File paths (str) and int32 label indices of one split."""

    paths: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True, eq=False)
class ImageSplits:
    """train / valid (/ test) splits, class names, what was skipped, and how it was split."""

    classes: tuple[str, ...]
    train: ImageSplit
    valid: ImageSplit
    test: ImageSplit | None
    skipped: tuple[tuple[str, str], ...]  # (path, reason)
    note: str


def _sorted_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _sorted_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _class_folders(folder: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(path, class) of every file in `folder`/<class>/, and the non-image files found."""
    items, rejected = [], []
    for class_dir in _sorted_dirs(folder):
        for path in _sorted_files(class_dir):
            if is_image_name(path):
                items.append((str(path), class_dir.name))
            else:
                rejected.append((str(path), f"not an image file name (extension {path.suffix or 'none'})"))
    return items, rejected


def _read_csv(root: Path, csv_path: Path, fn_col: str | int, label_col: str | int, valid_col: str):
    """(path, label, is_valid or None) rows of a CSV with a header row."""
    with open(csv_path, newline="") as f:
        rows = list(csv_module.reader(f))
    if not rows:
        raise InputError(f"{csv_path}: empty CSV (expected a header row, then file name and label columns)")
    header = rows[0]

    def column(col) -> int:
        if isinstance(col, int):
            return col
        if col not in header:
            raise InputError(f"{csv_path}: no column {col!r} in header {header}")
        return header.index(col)

    fn_i, label_i = column(fn_col), column(label_col)
    valid_i = header.index(valid_col) if valid_col in header else None
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) <= max(fn_i, label_i, valid_i or 0):
            raise InputError(f"{csv_path}:{line}: expected at least {max(fn_i, label_i) + 1} columns, got {row}")
        is_valid = None if valid_i is None else row[valid_i].strip().lower() in ("1", "true", "yes")
        out.append((str(root / row[fn_i].strip()), row[label_i].strip(), is_valid))
    return out


def random_split(n: int, valid_pct: float, seed: int) -> np.ndarray:
    """Boolean mask of the validation rows: int(valid_pct * n) rows drawn with `seed`."""
    if not 0.0 < valid_pct < 1.0:
        raise InputError(f"valid_pct must be in (0, 1), got {valid_pct}")
    is_valid = np.zeros(n, bool)
    is_valid[np.random.default_rng(seed).permutation(n)[: int(valid_pct * n)]] = True
    return is_valid


def _error_reason(error: Exception) -> str:
    """The readable part of a TF decode error."""
    text = str(error).split("}}")[-1].split("[Op:")[0].strip()
    return text.splitlines()[0] if text else type(error).__name__


def verify_images(paths: list[str]) -> dict[str, str]:
    """{path: reason} for every file that cannot be read and decoded as an image.

    Decodes all files in parallel through tf.data (the pipeline's own decoder), then
    re-reads only the failures to say why.
    """
    if not paths:
        return {}

    def check(index):  # raises on a bad file, which ignore_errors then drops
        return index, tf.shape(decode_image(tf.io.read_file(tf.gather(paths, index))))

    ds = tf.data.Dataset.range(len(paths)).map(check, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.ignore_errors(log_warning=False)
    good = {index for index, _ in ds.as_numpy_iterator()}
    problems = {}
    for i, path in enumerate(paths):
        if i in good:
            continue
        try:
            decode_image(tf.io.read_file(path))
            problems[path] = "could not be decoded"
        except (tf.errors.OpError, ValueError) as error:
            problems[path] = _error_reason(error)
    return problems


def _warn_skipped(skipped: list[tuple[str, str]], root: Path) -> None:
    if skipped:
        lines = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        warnings.warn(
            f"{len(skipped)} file(s) under {root} are not usable images and are left out:\n{lines}",
            stacklevel=4,
        )


def find_images(
    root: str | Path,
    *,
    csv: str | None = None,
    label_re: str | None = None,
    valid_pct: float | None = None,
    seed: int = 0,
    train: str = "train",
    valid: tuple[str, ...] = VALID_NAMES,
    test: str | None = "test",
    fn_col: str | int = 0,
    label_col: str | int = 1,
    valid_col: str = "is_valid",
    verify: bool = True,
) -> ImageSplits:
    """Labelled train/valid(/test) file lists under `root`, whichever layout it has.

    `valid_pct` (default 0.2 when needed) splits with `seed` when there is no valid
    folder or column; it cannot be combined with a valid folder. `verify` decodes
    every file first (fastai's verify_images); bad files go into one warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingInput(f"image folder {root} does not exist")
    rejected: list[tuple[str, str]] = []
    test_items: list[tuple[str, str]] | None = None
    notes = []
    if csv is not None:
        rows = _read_csv(root, root / csv, fn_col, label_col, valid_col)
        items = [(p, label) for p, label, _ in rows]
        flags = [v for _, _, v in rows]
        fixed_valid = None if flags and flags[0] is None else np.array(flags, bool)
        layout = f"CSV {csv}" + ("" if fixed_valid is None else f", column {valid_col!r}")
        if fixed_valid is not None and valid_pct is not None:
            raise InputError(f"valid_pct={valid_pct} given but {csv} has a {valid_col!r} column: pass one")
        for path, _ in items:
            if not Path(path).is_file():
                rejected.append((path, f"listed in {csv} but missing"))
    elif label_re is not None:
        pattern = re.compile(label_re)
        items, fixed_valid, layout = [], None, f"file names matching {label_re!r}"
        for path in _sorted_files(root):
            match = pattern.search(path.name)
            if match and is_image_name(path):
                items.append((str(path), match.group(1)))
            else:
                rejected.append((str(path), f"name does not match {label_re!r} or is not an image"))
    elif (root / train).is_dir() and _sorted_dirs(root / train):
        items, rejected = _class_folders(root / train)
        valid_dir = next((root / name for name in valid if (root / name).is_dir()), None)
        layout = f"{train}/<class>"
        fixed_valid = None
        if valid_dir is not None:
            if valid_pct is not None:
                raise InputError(f"valid_pct={valid_pct} given but {valid_dir} exists: pass one or the other")
            valid_items, more = _class_folders(valid_dir)
            rejected += more
            fixed_valid = np.array([False] * len(items) + [True] * len(valid_items))
            items = items + valid_items
            layout += f", {valid_dir.name}/<class>"
        if test is not None and (root / test).is_dir():
            if _sorted_dirs(root / test):
                test_items, more = _class_folders(root / test)
                rejected += more
                layout += f", {test}/<class>"
            else:
                notes.append(f"{root / test} has no class folders (unlabelled): not evaluated")
    else:
        items, rejected = _class_folders(root)
        fixed_valid, layout = None, "<class>/ folders"
    if not items:
        raise MissingInput(f"no images found under {root} (layout: {layout})")

    return _build(root, items, fixed_valid, test_items, rejected, valid_pct, seed, verify, layout, notes)


def _build(root, items, fixed_valid, test_items, rejected, valid_pct, seed, verify, layout, notes) -> ImageSplits:
    """Drop bad files, split, map labels to indices, warn once."""
    test_items = test_items or []
    if fixed_valid is None:
        pct = DEFAULT_VALID_PCT if valid_pct is None else valid_pct
        fixed_valid = random_split(len(items), pct, seed)
        layout += f", random {pct:.0%} valid (seed {seed})"
    bad = {p: r for p, r in rejected}
    candidates = [p for p, _ in items + test_items if p not in bad]
    if verify:
        bad.update(verify_images(candidates))
    _warn_skipped(sorted(bad.items()), root)

    keep = np.array([p not in bad for p, _ in items], bool)
    train_items = [it for it, v, k in zip(items, fixed_valid, keep) if k and not v]
    valid_items = [it for it, v, k in zip(items, fixed_valid, keep) if k and v]
    classes = tuple(sorted({label for _, label in train_items}))
    if not train_items:
        raise InputError(f"{root}: no usable training images (layout: {layout})")

    def split(part, name) -> ImageSplit:
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({label for _, label in part if label not in index})
        if unknown:
            raise InputError(f"{root}: {name} labels {unknown} do not occur in the training images")
        return ImageSplit(
            np.array([p for p, _ in part], dtype=str),
            np.array([index[label] for _, label in part], dtype=np.int32),
        )

    test_kept = [it for it in test_items if it[0] not in bad]
    note = f"{root}: {layout}; {len(classes)} classes, {len(train_items)} train / {len(valid_items)} valid"
    if test_items:
        note += f" / {len(test_kept)} test"
    if bad:
        note += f"; {len(bad)} file(s) skipped"
    note = "; ".join([note, *notes])
    return ImageSplits(
        classes, split(train_items, "train"), split(valid_items, "valid"),
        split(test_kept, "test") if test_items else None, tuple(sorted(bad.items())), note,
    )
