"""fastai's ImageCleaner (lesson 2): the top-loss files of a labelled image folder, and the
user's decisions about them (keep, relabel, delete) in a CSV that the next run honours.

    python -m jaxfast.vision.cleaner EXPORT_DIR DATA_FOLDER --top 20 [--out cleaned.csv]
        [--relabel PATH=CLASS ...] [--delete PATH ...]

prints the `--top` files whose label the exported classifier finds least likely (loss =
-log p(label), labels from the folder layout through `find_images`) and writes `--out`
(`path,label,action`; paths relative to DATA_FOLDER): every listed file gets a row, `keep`
until the user edits the row (action `relabel` with the new class in `label`, or `delete`)
or passes `--relabel`/`--delete`. Earlier rows of the CSV are kept. The same decisions can
be taken on a web page: `python -m jaxfast.serve EXPORT_DIR --clean-folder DATA_FOLDER`.
Nothing on disk is ever deleted or moved: `apply_cleaning(splits, csv, root)` (or
`image_databunch(..., cleaned=csv)`) leaves deleted files out and moves relabelled ones.
"""

from __future__ import annotations

import argparse
import csv as csv_module
import dataclasses
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from jaxfast.errors import InputError, JaxfastError
from jaxfast.vision.folders import ImageSplit, ImageSplits, find_images

ACTIONS = ("keep", "relabel", "delete")
CSV_COLUMNS = ("path", "label", "action")
SPLITS = ("all", "train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Suspect:
    """One labelled file ranked by its loss: `path` relative to the data folder (POSIX)."""

    path: str
    label: str
    predicted: str
    probability: float  # of `predicted`
    loss: float  # -log p(label)


@dataclasses.dataclass(frozen=True)
class Decision:
    label: str
    action: str


def relative_name(path: str | Path, root: str | Path) -> str:
    """`path` relative to `root`, with '/' separators (InputError when it is outside root)."""
    root = Path(root).absolute()
    path = Path(path) if Path(path).is_absolute() else root / path
    try:
        return path.absolute().relative_to(root).as_posix()
    except ValueError:
        raise InputError(f"{path} is not inside the data folder {root}") from None


def labelled_files(splits: ImageSplits, split: str = "all") -> list[tuple[str, str]]:
    """(path, class name) of the files of one split of `find_images`' result, or of all."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    parts = {"train": [splits.train], "valid": [splits.valid], "test": [splits.test] if splits.test else []}
    chosen = [p for name in ("train", "valid", "test") if split in ("all", name) for p in parts[name]]
    return [(str(path), splits.classes[label]) for part in chosen for path, label in zip(part.paths, part.labels)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def file_losses(learner, files: list[tuple[str, str]], batch_size: int = 32):
    """(probabilities [N, C], losses [N], skipped [(path, reason)]) of the readable `files`.

    Images are read one by one with the export's preprocessing and predicted in batches of
    one fixed size (one compilation; the last batch is padded), never all held at once."""
    from jaxfast.vision.predict_images import load_image

    if learner.kind != "image_classifier":
        raise InputError(f"{learner.path}: the cleaner needs an image_classifier export, not {learner.kind!r}")
    classes = list(learner.classes)
    unknown = sorted({label for _, label in files} - set(classes))
    if unknown:
        raise InputError(f"folder labels {unknown} are not classes of the export ({', '.join(classes)})")
    size = max(1, min(batch_size, len(files)))
    probs, kept, skipped = [], [], []
    batch: list[np.ndarray] = []

    def flush():
        stacked = np.stack(batch)
        padded = np.concatenate([stacked, np.repeat(stacked[:1], size - len(batch), axis=0)])
        probs.append(_softmax(np.asarray(learner.exported.predict(padded), np.float64))[: len(batch)])
        batch.clear()

    for index, (path, _) in enumerate(files):
        try:
            batch.append(load_image(path, learner.exported.meta))
        except Exception as error:  # noqa: BLE001 - TF/PIL raise many kinds; all mean "unreadable"
            skipped.append((path, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__))
            continue
        kept.append(index)
        if len(batch) == size:
            flush()
    if batch:
        flush()
    probs = np.concatenate(probs) if probs else np.zeros((0, len(classes)))
    targets = np.array([classes.index(files[i][1]) for i in kept], np.int64)
    losses = -np.log(np.maximum(probs[np.arange(len(kept)), targets], 1e-12))
    return probs, losses, [files[i] for i in kept], skipped


def top_losses(learner, folder: str | Path, top: int, split: str = "all", batch_size: int = 32) -> list[Suspect]:
    """The `top` files of `folder` (labels from its layout) with the highest loss, highest first."""
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    splits = find_images(folder, verify=False)
    probs, losses, files, skipped = file_losses(learner, labelled_files(splits, split), batch_size)
    if skipped:
        warnings.warn(f"{len(skipped)} file(s) could not be read and are not ranked: "
                      + "; ".join(f"{p}: {r}" for p, r in skipped), stacklevel=2)
    classes = list(learner.classes)
    order = np.argsort(-losses, kind="stable")[:top]
    return [Suspect(relative_name(files[i][0], folder), files[i][1], classes[int(probs[i].argmax())],
                    float(probs[i].max()), float(losses[i])) for i in order]


# ---- the decisions CSV ------------------------------------------------------------------
def read_decisions(csv_path: str | Path) -> dict[str, Decision]:
    """{path: Decision} of a decisions CSV (an absent file is empty); bad rows name their line."""
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return {}
    with open(csv_path, newline="") as f:
        rows = list(csv_module.reader(f))
    if not rows or tuple(c.strip() for c in rows[0][:3]) != CSV_COLUMNS:
        raise InputError(f"{csv_path}: the header must start with {','.join(CSV_COLUMNS)}")
    decisions = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < 3:
            raise InputError(f"{csv_path}:{line}: expected path,label,action, got {row}")
        path, label, action = (cell.strip() for cell in row[:3])
        if action not in ACTIONS:
            raise InputError(f"{csv_path}:{line}: action {action!r} is not one of {', '.join(ACTIONS)}")
        if action == "relabel" and not label:
            raise InputError(f"{csv_path}:{line}: relabel needs the new class in the label column")
        decisions[path] = Decision(label, action)
    return decisions


def write_decisions(csv_path: str | Path, decisions: dict[str, Decision]) -> Path:
    """Write the CSV atomically (a temporary file renamed over the old one)."""
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cleaned-", suffix=".csv", dir=csv_path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv_module.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for path, decision in decisions.items():
            writer.writerow([path, decision.label, decision.action])
    os.replace(tmp, csv_path)
    return csv_path


def decide(decisions: dict[str, Decision], path: str, action: str, label: str, classes) -> None:
    """Record one decision after checking it (the action, and the class of a relabel)."""
    if action not in ACTIONS:
        raise InputError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if action == "relabel" and label not in classes:
        raise InputError(f"cannot relabel {path} as {label!r}: the classes are {', '.join(classes)}")
    decisions[path] = Decision(label, action)


def apply_cleaning(splits: ImageSplits, csv: str | Path | None, root: str | Path) -> ImageSplits:
    """`splits` (of `find_images(root)`) with the decisions of `csv` applied: deleted files left
    out, relabelled files given their new class in the same split. `csv=None` returns `splits`."""
    if csv is None:
        return splits
    if not Path(csv).is_file():
        raise InputError(f"cleaning CSV {csv} does not exist")
    decisions = read_decisions(csv)
    index = {c: i for i, c in enumerate(splits.classes)}
    for path, decision in decisions.items():
        if decision.action == "relabel" and decision.label not in index:
            raise InputError(f"{csv}: {path} is relabelled {decision.label!r}, not one of the classes {splits.classes}")
    seen, counts = set(), {"delete": 0, "relabel": 0}

    def clean(part: ImageSplit | None) -> ImageSplit | None:
        if part is None:
            return None
        paths, labels = [], []
        for path, label in zip(part.paths, part.labels):
            decision = decisions.get(relative_name(path, root))
            if decision is not None:
                seen.add(relative_name(path, root))
                if decision.action != "keep":
                    counts[decision.action] += 1
                if decision.action == "delete":
                    continue
                if decision.action == "relabel":
                    label = index[decision.label]
            paths.append(str(path))
            labels.append(int(label))
        return ImageSplit(np.array(paths, dtype=str), np.array(labels, dtype=np.int32))

    train, valid, test = clean(splits.train), clean(splits.valid), clean(splits.test)
    missing = sorted(set(decisions) - seen)
    if missing:
        warnings.warn(f"{csv}: {len(missing)} row(s) name files that are not in {root}'s splits "
                      f"(ignored): {', '.join(missing[:5])}", stacklevel=2)
    note = f"{splits.note}; cleaned by {csv}: {counts['delete']} deleted, {counts['relabel']} relabelled"
    return dataclasses.replace(splits, train=train, valid=valid, test=test, note=note)


# ---- command line -----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxfast.vision.cleaner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="an image_classifier export (learn.export / an experiment's export/)")
    parser.add_argument("data_folder", help="the labelled image folder the model was trained on")
    parser.add_argument("--top", type=int, default=20, help="how many suspect files to list (default 20)")
    parser.add_argument("--out", default="cleaned.csv", help="decisions CSV, created or updated (default cleaned.csv)")
    parser.add_argument("--split", choices=SPLITS, default="all", help="which files to rank (default all)")
    parser.add_argument("--relabel", action="append", default=[], metavar="PATH=CLASS",
                        help="relabel a file (path relative to DATA_FOLDER); repeatable")
    parser.add_argument("--delete", action="append", default=[], metavar="PATH",
                        help="leave a file out of the next runs; repeatable")
    args = parser.parse_args(argv)
    try:
        from jaxfast.inference import load_learner

        learner = load_learner(args.export_dir)
        suspects = top_losses(learner, args.data_folder, args.top, args.split)
        decisions = read_decisions(args.out)
        print(f"{'rank':>4}  {'loss':>7}  label -> predicted (p)  path")
        for rank, s in enumerate(suspects, start=1):
            print(f"{rank:>4}  {s.loss:7.3f}  {s.label} -> {s.predicted} ({s.probability:.3f})  {s.path}")
            decisions.setdefault(s.path, Decision(s.label, "keep"))
        files = {relative_name(p, args.data_folder): label
                 for p, label in labelled_files(find_images(args.data_folder, verify=False))}
        flags = [(p, "delete", "") for p in args.delete]
        for spec in args.relabel:
            if "=" not in spec:
                raise InputError(f"--relabel takes PATH=CLASS, got {spec!r}")
            path, label = spec.rsplit("=", 1)
            flags.append((path, "relabel", label))
        for path, action, label in flags:
            name = relative_name(path, args.data_folder)
            if name not in files:
                raise InputError(f"{path} is not a labelled image of {args.data_folder}")
            decide(decisions, name, action, label or files[name], learner.classes)
        write_decisions(args.out, decisions)
    except JaxfastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = {a: sum(d.action == a for d in decisions.values()) for a in ACTIONS}
    print(f"wrote {args.out}: {len(decisions)} row(s) ({', '.join(f'{n} {a}' for a, n in counts.items())}); "
          f"edit its action column (keep|relabel|delete) and train again with it (apply_cleaning / cleaned=)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
