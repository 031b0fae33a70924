"""Predict image files with an exported image classifier (export kind 'image_classifier').

Each file is read and decoded on its own with the pipeline's functions (decode, resize +
centre crop to the export's input size, normalise with its stats), so a missing or
corrupt file becomes a row with an error message while the others are predicted, in
fixed-size batches (one compilation), optionally with TTA (jaxfast.vision.tta).
Folders expand to the image files below them (sorted); other paths are tried as given.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from jaxfast.export import ExportedModel, load_export
from jaxfast.vision import transforms as T
from jaxfast.vision.folders import IMAGE_EXTENSIONS, is_image_name
from jaxfast.vision.tta import tta_predict
from jaxfast.errors import InputError

KIND = "image_classifier"
COLUMNS = ("path", "prediction", "probability", "error")


@dataclasses.dataclass(frozen=True)
class ImagePrediction:
    """One input image: its predicted class and probability, or why it could not be predicted."""

    path: str
    prediction: str | None = None
    probability: float | None = None
    error: str | None = None


def image_export_meta(classes, size, stats, resize_method: str = "crop", channels: int = 3) -> dict:
    """What prediction needs besides the weights: classes, input (h, w), (mean, std) per
    channel or None, and the channels the model takes (3, or 1 for greyscale models)."""
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
    if stats is not None and (len(stats) != 2 or len(stats[0]) != channels or len(stats[1]) != channels):
        raise InputError(f"stats must be None or (mean[{channels}], std[{channels}]), got {stats!r}")
    if resize_method not in T.RESIZE_METHODS:
        raise InputError(f"resize_method must be one of {T.RESIZE_METHODS}, got {resize_method!r}")
    return {
        "kind": KIND, "classes": [str(c) for c in classes], "input_size": list(T.as_hw(size)),
        "stats": None if stats is None else [[float(v) for v in stats[0]], [float(v) for v in stats[1]]],
        "resize_method": resize_method, "channels": channels,
    }


def export_image_classifier(learn, path, arch: str, arch_config: dict, loader=None) -> Path:
    """`learn.export` with the image meta (classes, size, stats, resize method) of an
    ImageLoader (default: the learner's validation loader)."""
    loader = loader if loader is not None else learn.data.valid
    if loader is None:
        raise InputError("export_image_classifier: no loader given and the data has no validation split")
    meta = image_export_meta(loader.classes, loader.size, loader.stats, loader.resize_method)
    return learn.export(path, arch, arch_config, meta)


def expand_inputs(inputs) -> list[str]:
    """Folders -> the image files below them (sorted, hidden ones left out); files as given."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and is_image_name(p)
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            paths += [str(p) for p in found] if found else [str(item)]
        else:
            paths.append(str(item))
    return paths


def load_image(path: str, meta: dict) -> np.ndarray:
    """float32 [h, w, channels] input of the export's model for one file (raises on a bad file)."""
    if Path(path).is_dir():
        raise InputError(f"folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    image = T.decode_image(tf.io.read_file(path))
    image = T.eval_transform(image, meta["input_size"], meta.get("resize_method", "crop"))
    if meta.get("channels", 3) == 1:
        image = tf.image.rgb_to_grayscale(image)
    if meta.get("stats") is not None:
        image = T.normalize(image, *meta["stats"])
    return image.numpy()


def _reason(error: Exception) -> str:
    """The readable first line of a TF or Python error."""
    text = str(error).split("}}")[-1].split("[Op:")[0].strip()
    return (text.splitlines()[0] if text else type(error).__name__).rstrip(" .")


def predict_images(export, inputs, *, tta: bool = False, beta: float = 0.4,
                   batch_size: int = 32) -> list[ImagePrediction]:
    """One ImagePrediction per image of `inputs` (files or folders), in order.

    `export` is an export folder or a loaded ExportedModel of kind 'image_classifier'."""
    exported = export if isinstance(export, ExportedModel) else load_export(export)
    meta = exported.meta
    if meta.get("kind") != KIND:
        raise InputError(f"export of kind {meta.get('kind')!r} is not an {KIND!r}")
    classes = meta["classes"]
    paths = expand_inputs(inputs)
    images, errors = {}, {}
    for i, path in enumerate(paths):
        try:
            images[i] = load_image(path, meta)
        except (tf.errors.OpError, ValueError, OSError) as error:
            errors[i] = f"cannot read {path} as an image: {_reason(error)}"
    probs = _batched_probs(exported, [images[i] for i in sorted(images)], tta, beta, batch_size)
    index = {i: row for row, i in enumerate(sorted(images))}
    out = []
    for i, path in enumerate(paths):
        if i in errors:
            out.append(ImagePrediction(path, error=errors[i]))
            continue
        p = probs[index[i]]
        best = int(p.argmax())
        out.append(ImagePrediction(path, classes[best], float(p[best])))
    return out


def _batched_probs(exported: ExportedModel, images: list, tta: bool, beta: float, batch_size: int) -> np.ndarray:
    """Class probabilities [N, C] in batches of a fixed size (the last one padded)."""
    if not images:
        return np.zeros((0, len(exported.meta["classes"])), np.float32)
    model = exported.model

    @jax.jit
    def probs(variables, x):
        logits = lambda v: model.apply(variables, v, train=False)
        return tta_predict(logits, x, beta=beta) if tta else jax.nn.softmax(logits(x))

    size = min(batch_size, len(images))
    stacked = np.stack(images)
    out = []
    for start in range(0, len(stacked), size):
        chunk = stacked[start : start + size]
        padded = np.concatenate([chunk, np.resize(chunk, (size - len(chunk), *chunk.shape[1:]))])
        out.append(np.asarray(probs(exported.variables, jnp.asarray(padded)))[: len(chunk)])
    return np.concatenate(out)


def write_csv(rows: list[ImagePrediction], out: TextIO) -> None:
    """CSV with the header path,prediction,probability,error (empty cells where not applicable)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        probability = "" if row.probability is None else f"{row.probability:.6g}"
        writer.writerow([row.path, row.prediction or "", probability, row.error or ""])


def predict_image_export(exported: ExportedModel, inputs: list[str], out: TextIO, err: TextIO,
                         tta: bool = False) -> int:
    """`python -m jaxfast.predict` for image exports: CSV on `out`, each failed image named on
    `err` too; 0 when at least one image was predicted, 2 when none."""
    rows = predict_images(exported, inputs, tta=tta)
    write_csv(rows, out)
    for row in rows:
        if row.error is not None:
            print(f"error: {row.error}", file=err)
    return 0 if any(row.error is None for row in rows) else 2
