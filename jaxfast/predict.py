"""Predictions of an exported model: `python -m jaxfast.predict EXPORT_DIR INPUT...`.

The export's `kind` (in export.json) picks the predictor in PREDICTORS; each gets the loaded
export and the inputs, writes CSV to stdout and messages to stderr, and returns the exit
status: 0 when every input row was predicted, 1 when some rows were rejected (each named on
stderr), 2 when nothing could be predicted (bad export, unsupported kind, unreadable input).

tabular: INPUT files are CSVs with a header, processed by the export's fitted procs. Output
columns: `row` (1-based data row of its file; `file` too with several inputs) and the
target's class and `probability`, or its value. A row lacking a column, or with a number or
date that does not parse, is reported with its row number and skipped; an unseen category
uses the reserved index (as missing ones do) and is reported as a note.

image_classifier: INPUTs are image files or folders (expanded to the images below them);
`--tta` averages over flips and corner crops. Output columns `path,prediction,probability,
error`: one row per image, a file that cannot be decoded gets its message in `error` (and on
stderr); the status is 0 when at least one image was predicted (see jaxfast.vision.predict_images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, TextIO

import pandas as pd

from jaxfast.errors import InputError, JaxfastError
from jaxfast.export import ExportedModel, load_export, read_description


def predict_tabular(exported: ExportedModel, inputs: list[str], out: TextIO, err: TextIO) -> int:
    """Predict every row of the CSV files `inputs` (see the module doc)."""
    from jaxfast.tabular.data import TabularTarget, read_rows_csv
    from jaxfast.tabular.procs import NA_CATEGORY, RESERVED_CODE, TabularProcessor

    processor = TabularProcessor.from_json(exported.meta["processor"])
    target = TabularTarget.from_json(exported.meta["target"])
    tables, rejected = [], 0
    for path in inputs:
        try:
            frame, problems = read_rows_csv(path, processor, exported.meta.get("na_values", ()))
        except (OSError, ValueError, UnicodeDecodeError) as error:
            print(f"error: {error}", file=err)
            rejected += 1
            continue
        for problem in problems:
            print(f"error: {path} {problem}; skipped", file=err)
        rejected += len(problems)
        for row, column, value in sorted(processor.unseen(frame), key=lambda found: found[0]):
            print(f"note: {path} row {row}: {column}={value!r} was not seen in training; "
                  f"it uses the reserved index {RESERVED_CODE} ({NA_CATEGORY})", file=err)
        if len(frame) == 0:
            if not problems:
                print(f"note: {path} has no data rows", file=err)
            continue
        outputs = exported.predict(processor.to_arrays(frame))
        table = target.decode(outputs)
        table.insert(0, "row", frame.index.to_numpy())
        if len(inputs) > 1:
            table.insert(0, "file", path)
        tables.append(table)
    if tables:
        pd.concat(tables).to_csv(out, index=False, float_format="%.6g")
    if not tables and rejected:
        return 2
    return 1 if rejected else 0


def predict_image_classifier(exported: ExportedModel, inputs: list[str], out: TextIO, err: TextIO, **options) -> int:
    """Image files and folders (see the module doc); imported lazily, it loads TensorFlow."""
    from jaxfast.vision.predict_images import predict_image_export

    return predict_image_export(exported, inputs, out, err, **options)


def predict_text_classifier(exported: ExportedModel, inputs: list[str], out: TextIO, err: TextIO, **options) -> int:
    """.txt files (one text each) or CSVs with a `text` column; imported lazily."""
    from jaxfast.text.predict import predict_text_files

    return predict_text_files(exported, inputs, out, err)


PREDICTORS: dict[str, Callable[..., int]] = {
    "tabular": predict_tabular,
    "image_classifier": predict_image_classifier,
    "text_classifier": predict_text_classifier,
}


def export_kind(export_dir: str | Path) -> str:
    """The `kind` recorded in an export's export.json (InputError when it is damaged or has none)."""
    kind = read_description(export_dir).get("kind")
    if kind is None:
        raise InputError(f"{Path(export_dir) / 'export.json'} has no 'kind'; it was exported without prediction metadata")
    return kind


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    parser = argparse.ArgumentParser(prog="python -m jaxfast.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="folder written by Learner.export (holds export.json)")
    parser.add_argument("inputs", nargs="+", help="input files (for tabular exports: CSV files with a header; "
                        "for image exports: image files or folders)")
    parser.add_argument("--tta", action="store_true", help="image exports: test-time augmentation (flips, corner crops)")
    args = parser.parse_args(argv)
    try:
        kind = export_kind(args.export_dir)
        if kind not in PREDICTORS:
            raise ValueError(f"{args.export_dir}: exports of kind {kind!r} are not supported yet; "
                             f"supported: {', '.join(sorted(PREDICTORS))}")
        if args.tta and kind != "image_classifier":
            raise ValueError(f"--tta applies to image exports only; {args.export_dir} is of kind {kind!r}")
        exported = load_export(args.export_dir)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=err)
        return 2
    options = {"tta": True} if args.tta else {}
    try:
        return PREDICTORS[kind](exported, args.inputs, out, err, **options)
    except JaxfastError as error:  # e.g. weights that do not fit the architecture of export.json
        print(f"error: {error}", file=err)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
