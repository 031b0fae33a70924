"""fastai's `load_learner(path).predict(item)` on a jaxfast export, without training code.

    learn = load_learner("runs/lesson2_own_images/export")
    label, index, probs = learn.predict("some.jpg")

The export's `kind` says what an item is: an image file (image_classifier, segmentation),
a row (tabular: a dict or a pandas Series/one-row frame), a (user, item) pair (collab), a text (text_classifier).
`predict` returns fastai's triple: (label, index, probabilities) for classes; (value,
value, [value]) for a regression; (mask, mask, per-pixel probabilities) for segmentation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast.errors import InputError
from jaxfast.export import ExportedModel, load_export

KINDS = ("image_classifier", "segmentation", "tabular", "collab", "text_classifier")


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class LoadedLearner:
    """An export ready to predict single items (see the module docstring)."""

    exported: ExportedModel
    path: Path

    @property
    def kind(self) -> str:
        return self.exported.meta["kind"]

    @property
    def classes(self) -> list | None:
        target = self.exported.meta.get("target", {})
        return self.exported.meta.get("classes") or target.get("classes")

    def predict(self, item):
        """fastai's (label, index, probabilities) for one item (see the module docstring)."""
        predict = {"image_classifier": self._predict_image, "segmentation": self._predict_mask,
                   "tabular": self._predict_row, "collab": self._predict_pair,
                   "text_classifier": self._predict_text}[self.kind]
        return predict(item)

    # ---- per kind ---------------------------------------------------------------------
    def _image(self, item) -> np.ndarray:
        from jaxfast.vision.predict_images import _reason, load_image

        if isinstance(item, np.ndarray):
            return item.astype(np.float32)
        try:
            return load_image(str(item), self.exported.meta)
        except Exception as error:  # noqa: BLE001 - TF and PIL raise many kinds; all mean "not an image"
            raise InputError(f"cannot read {item} as an image: {_reason(error)}") from error

    def _predict_image(self, item):
        probs = _softmax(self.exported.predict(self._image(item)[None])[0])
        index = int(probs.argmax())
        return self.classes[index], index, probs

    def _predict_mask(self, item):
        probs = _softmax(self.exported.predict(self._image(item)[None])[0])
        mask = probs.argmax(axis=-1)
        return mask, mask, probs

    def _predict_row(self, row):
        import pandas as pd

        from jaxfast.tabular.data import TabularTarget
        from jaxfast.tabular.procs import TabularProcessor

        processor = TabularProcessor.from_json(self.exported.meta["processor"])
        target = TabularTarget.from_json(self.exported.meta["target"])
        frame = row.to_frame().T if isinstance(row, pd.Series) else pd.DataFrame([row]) if isinstance(row, dict) else row
        if not isinstance(frame, pd.DataFrame) or len(frame) != 1:
            raise InputError(f"tabular predict takes one row (a dict, a pandas Series or a one-row frame), "
                             f"got {type(row).__name__}")
        missing = [c for c in processor.required_columns() if c not in frame.columns]
        if missing:
            raise InputError(f"the row lacks column(s) {missing}; the model needs {processor.required_columns()}")
        frame = frame[processor.required_columns()].copy()
        for name in processor.required_columns():
            value = frame[name].iloc[0]
            if not (value is None or isinstance(value, (str, int, float, bool, np.number, np.bool_, pd.Timestamp))):
                raise InputError(f"column {name!r} value {value!r} is a {type(value).__name__}, not a single value")
        for name in sorted(set(processor.cont_names) - set(processor.date_fields)):
            try:
                frame[name] = pd.to_numeric(frame[name]).astype("float64")
            except (TypeError, ValueError) as error:
                raise InputError(f"column {name!r} value {frame[name].iloc[0]!r} is not a number") from error
            if np.isinf(frame[name].iloc[0]):
                raise InputError(f"column {name!r} value {frame[name].iloc[0]!r} is not a finite number")
        outputs = self.exported.predict(processor.to_arrays(frame))[0]
        if target.kind == "classification":
            probs = _softmax(np.asarray(outputs, np.float64))
            index = int(probs.argmax())
            return target.classes[index], index, probs
        value = float(target.decode(outputs[None]).iloc[0, 0])
        return value, value, np.array([value])

    def _predict_text(self, text: str):
        from jaxfast.text.predict import predict_text_item

        return predict_text_item(self.exported, text)

    def _predict_pair(self, pair):
        from jaxfast.collab.data import IdMap

        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"collab predict takes a (user, item) pair, got {pair!r}")
        maps = self.exported.meta["id_maps"]
        users, items = IdMap.from_json(maps["users"]), IdMap.from_json(maps["items"])
        x = (users.encode([pair[0]], "error"), items.encode([pair[1]], "error"))
        value = float(self.exported.predict(x)[0])
        return value, value, np.array([value])


def load_learner(path: str | Path) -> LoadedLearner:
    """Load an export written by `Learner.export` (or an experiment's `export/`) for prediction."""
    exported = load_export(path)
    kind = exported.meta.get("kind")
    if kind not in KINDS:
        raise InputError(f"{path}: exports of kind {kind!r} cannot be predicted here; known kinds: {', '.join(KINDS)}")
    return LoadedLearner(exported, Path(path))
