"""fastai's `data.show_batch()` and `learn.show_results()` as PNG files.

Images (4-D inputs) are drawn in a grid, un-normalised with their loader's stats, titled
with their class (or classes), overlaid with their mask (segmentation) or marked with their
points; other inputs (tabular rows, collab pairs) become a table. Results add the model's
prediction beside the truth.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _loader(data, split: str):
    if split == "train":
        return data.train
    splits = data.eval_splits()
    if split not in splits:
        raise ValueError(f"no split {split!r}; the data has train and {', '.join(splits) or 'no other split'}")
    return splits[split]


def _real_rows(batch: dict, n: int) -> tuple:
    real = np.flatnonzero(np.asarray(batch["mask"]) > 0)[:n]
    pick = lambda tree: tree[real] if isinstance(tree, np.ndarray) else tuple(np.asarray(t)[real] for t in tree)
    return pick(np.asarray(batch["inputs"]) if not isinstance(batch["inputs"], (tuple, list)) else batch["inputs"]), \
        np.asarray(batch["targets"])[real]


def _label(target, classes) -> str:
    target = np.asarray(target)
    if classes is None:
        return np.array2string(target, precision=3) if target.ndim else f"{target.item():.4g}"
    if target.ndim == 0:
        return str(classes[int(target)])
    if target.ndim == 1 and target.dtype != np.float32 or set(np.unique(target)) <= {0, 1}:
        return ";".join(str(c) for c, on in zip(classes, target) if on) or "(none)"
    return np.array2string(target, precision=3)


def _draw_image(ax, image, stats, target, classes, title: str | None = None, color: str = "black") -> None:
    """One image, un-normalised; a [H, W] target is overlaid as a mask, a float [2k] target
    without classes is drawn as points, any other target is the title (unless `title`)."""
    image = np.asarray(image, np.float32)
    if stats is not None:
        image = image * np.asarray(stats[1], np.float32) + np.asarray(stats[0], np.float32)
    image = np.clip(image, 0.0, 1.0)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None)
    target = np.asarray(target)
    if target.ndim == 2 and target.shape == image.shape[:2]:  # a mask
        ax.imshow(target, cmap="tab20", alpha=0.45, interpolation="nearest", vmin=0, vmax=max(19, int(target.max())))
    elif target.ndim == 1 and target.dtype.kind == "f" and classes is None and target.size % 2 == 0:
        points = (target.reshape(-1, 2) + 1) / 2 * np.array(image.shape[:2])  # (row, col) in [-1, 1]
        ax.scatter(points[:, 1], points[:, 0], c="red", s=20)
    elif title is None:
        title = _label(target, classes)
    ax.set_title(title or "", fontsize=8, color=color)
    ax.axis("off")


def _grid(n: int):
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.4 * rows + 0.3), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _table(path: Path, header: list[str], rows: list[list[str]], title: str) -> Path:
    fig, ax = plt.subplots(figsize=(min(2 + 1.3 * len(header), 18), 0.6 + 0.3 * (len(rows) + 1)))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG (its folder made if needed) and close it. With
    several processes only process 0 writes (the others draw the same figure and drop it)."""
    from jaxfast.distributed import is_primary

    path = Path(path)
    if not is_primary():
        plt.close(fig)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _columns(data, inputs) -> tuple[list[str], list[list[str]]]:
    """Column names and cell texts of tabular/collab inputs (categories decoded when known)."""
    meta = data.meta or {}
    arrays = list(inputs) if isinstance(inputs, tuple) else [inputs]
    if meta.get("kind") == "tabular":
        from jaxfast.tabular.procs import TabularProcessor

        processor = TabularProcessor.from_json(meta["processor"])
        cats = processor.categorify.categories if processor.categorify is not None else {}
        names = processor.all_cat_names + processor.cont_names
        x_cat, x_cont = np.asarray(arrays[0]), np.asarray(arrays[1])
        cells = [[str(cats[n][c]) if n in cats and 0 <= c < len(cats[n]) else str(c) for n, c in
                  zip(processor.all_cat_names, row)] + [f"{v:.3g}" for v in cont] for row, cont in zip(x_cat, x_cont)]
        return names, cells
    if meta.get("kind") == "collab":
        maps = meta["id_maps"]
        users, items = maps["users"].get("values") or [], maps["items"].get("values") or []
        name = lambda values, i: str(values[i]) if values and 0 <= i < len(values) else str(i)
        return ["user", "item"], [[name(users, u), name(items, i)] for u, i in zip(*[np.asarray(a) for a in arrays])]
    flat = [np.asarray(a).reshape(len(a), -1) for a in arrays]
    stacked = np.concatenate(flat, axis=1)
    return [f"x{i}" for i in range(stacked.shape[1])], [[f"{v:.3g}" for v in row] for row in stacked]


def show_batch(data, path=None, rows: int = 3, split: str = "train") -> Path:
    """A PNG of the first rows x rows items of the first batch of `split` (see the module doc)."""
    loader = _loader(data, split)
    inputs, targets = _real_rows(next(iter(loader.batches(0))), rows * rows)
    path = Path(path or f"show_batch_{split}.png")
    classes = getattr(loader, "classes", None) or (data.meta or {}).get("classes")
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        fig, axes = _grid(len(inputs))
        for ax, image, target in zip(axes, inputs, targets):
            _draw_image(ax, image, getattr(loader, "stats", None), target, classes)
        return save_figure(fig, path)
    header, cells = _columns(data, inputs)
    return _table(path, header + ["target"], [c + [_label(t, None)] for c, t in zip(cells, targets)],
                  f"{split}: first {len(cells)} rows")


def show_results(learn, path=None, rows: int = 3, split: str = "valid") -> Path:
    """fastai's learn.show_results: items of `split` with their truth and the prediction."""
    loader = _loader(learn.data, split)
    batch = next(iter(loader.batches(0)))
    inputs, targets = _real_rows(batch, rows * rows)
    outputs = learn.predict(inputs)
    path = Path(path or (learn.workdir / "show_results.png" if learn.workdir is not None else "show_results.png"))
    classes = getattr(loader, "classes", None) or learn.prediction_meta().get("classes")
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
        stats = getattr(loader, "stats", None)
        if targets.ndim == 3:  # segmentation: image + truth | image + prediction
            fig, axes = plt.subplots(len(inputs), 2, figsize=(5, 2.4 * len(inputs)), squeeze=False)
            for (left, right), image, truth, out in zip(axes, inputs, targets, outputs):
                _draw_image(left, image, stats, truth, classes, "truth")
                _draw_image(right, image, stats, out.argmax(-1), classes, "prediction")
            return save_figure(fig, path)
        fig, axes = _grid(len(inputs))
        for ax, image, truth, out in zip(axes, inputs, targets, outputs):
            if classes is not None and np.ndim(truth) == 0:  # one class: "truth / prediction", red when wrong
                actual, predicted = _label(truth, classes), _label(np.argmax(out), classes)
                _draw_image(ax, image, stats, truth, classes, f"{actual} / {predicted}",
                            "green" if actual == predicted else "red")
            else:  # points, values or several classes: truth drawn, prediction in the title
                _draw_image(ax, image, stats, truth, classes, f"prediction {_label(out, None)}")
        return save_figure(fig, path)
    header, cells = _columns(learn.data, inputs)
    predicted = [_label(np.argmax(o) if classes is not None else o, classes) for o in outputs]
    truth = [_label(t, classes if np.ndim(t) == 0 else None) for t in targets]
    return _table(path, header + ["target", "prediction"], [c + [t, p] for c, t, p in zip(cells, truth, predicted)],
                  f"{split}: truth and prediction")
