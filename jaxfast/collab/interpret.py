"""Lesson 4's look inside a trained EmbeddingDotBias: item biases and the PCA of item factors.

As in the lesson, only the `top_n` most-rated items (1000 for ml-100k) are listed: rare
items have noisy factors. Counts and mean ratings use every row (train and valid), and
items the training split never saw are left out (they have no learnt factors).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxfast.collab.data import CollabData
from jaxfast.errors import InputError
from jaxfast.show import save_figure


@dataclasses.dataclass(frozen=True)
class Interpretation:
    """Lists of (value, item, mean rating) for biases, and of (score, item) per component."""

    items: list  # the top_n most-rated items, most-rated first
    lowest_bias: list
    highest_bias: list
    components: list  # one {'high': [...], 'low': [...]} per principal component
    projection: np.ndarray  # [len(items), k] item factors projected on the components
    explained: list  # share of the variance of the centred factors per component

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("projection")
        return out


def most_rated(data: CollabData, top_n: int) -> list[str]:
    """The `top_n` items with the most ratings (ties by name) among those training knows."""
    known = set(data.items.classes[1:])
    names, counts = np.unique(data.ratings.items, return_counts=True)
    order = sorted((-c, n) for n, c in zip(names.tolist(), counts.tolist()) if n in known)
    return [n for _, n in order[:top_n]]


def pca(x: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """fastai's Tensor.pca via numpy SVD: centred rows projected on the top-k directions,
    each direction's sign chosen so that its largest loading is positive; also returns
    each component's share of the variance."""
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:k]
    vt = vt * np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])[:, None]
    return centred @ vt.T, (s[:k] ** 2 / np.sum(s**2))


def extremes(values: np.ndarray, rows: list, n: int) -> tuple[list, list]:
    """The n rows with the lowest values (ascending) and the n highest (descending)."""
    order = np.argsort(values, kind="stable")
    return [rows[i] for i in order[:n]], [rows[i] for i in order[::-1][:n]]


def interpret(params: dict, data: CollabData, top_n: int = 1000, n_show: int = 15, n_comp_show: int = 10,
              k: int = 3) -> Interpretation:
    """Bias extremes and PCA component extremes of an EmbeddingDotBias's `params`."""
    if "i_bias_table" not in params or "i_weight" not in params:
        raise InputError(f"interpret needs EmbeddingDotBias params (i_bias_table, i_weight), got {sorted(params)}")
    items = most_rated(data, top_n)
    if len(items) < 2:
        raise InputError(f"interpret needs at least 2 items known to training, got {len(items)}")
    idx = data.items.encode(items)
    biases = np.asarray(params["i_bias_table"])[idx]
    means = _mean_ratings(data)
    rows = [(float(b), name, means[name]) for b, name in zip(biases, items)]
    lowest, highest = extremes(biases, rows, n_show)
    projection, explained = pca(np.asarray(params["i_weight"])[idx], k)
    components = []
    for c in range(projection.shape[1]):
        low, high = extremes(projection[:, c], [(float(v), name) for v, name in zip(projection[:, c], items)],
                             n_comp_show)
        components.append({"high": high, "low": low})
    return Interpretation(items, lowest, highest, components, projection, [float(e) for e in explained])


def _mean_ratings(data: CollabData) -> dict:
    names, inverse = np.unique(data.ratings.items, return_inverse=True)
    sums = np.bincount(inverse, weights=data.ratings.ratings)
    counts = np.bincount(inverse)
    return {n: float(s / c) for n, s, c in zip(names.tolist(), sums, counts)}


def plot_pca(interp: Interpretation, path: str | Path, n: int = 50, comps: tuple[int, int] = (0, 2)) -> Path:
    """The lesson's scatter: the `n` most-rated items at two components, labelled by title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = (min(c, interp.projection.shape[1] - 1) for c in comps)
    x, y = interp.projection[:n, a], interp.projection[:n, b]
    colours = np.random.default_rng(0).random((len(x), 3)) * 0.7
    fig, ax = plt.subplots(figsize=(15, 15))
    ax.scatter(x, y)
    for name, xi, yi, colour in zip(interp.items[:n], x, y, colours):
        ax.text(xi, yi, name, color=colour, fontsize=11)
    ax.set_xlabel(f"component {a}")
    ax.set_ylabel(f"component {b}")
    return save_figure(fig, path)


def format_report(interp: Interpretation) -> str:
    """The lists as text, one item a line."""
    lines = [f"lowest item bias (of the {len(interp.items)} most-rated; bias, item, mean rating):"]
    lines += [f"  {b:+.3f}  {name}  ({m:.2f})" for b, name, m in interp.lowest_bias]
    lines.append("highest item bias:")
    lines += [f"  {b:+.3f}  {name}  ({m:.2f})" for b, name, m in interp.highest_bias]
    for c, comp in enumerate(interp.components):
        lines.append(f"component {c} ({interp.explained[c]:.1%} of the variance), highest:")
        lines += [f"  {v:+.3f}  {name}" for v, name in comp["high"]]
        lines.append(f"component {c}, lowest:")
        lines += [f"  {v:+.3f}  {name}" for v, name in comp["low"]]
    return "\n".join(lines)
