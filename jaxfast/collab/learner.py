"""fastai v1's `collab_learner`: EmbeddingDotBias (or EmbeddingNN with `use_nn`) for a
collab DataBunch, a thin builder of the one Learner.

    data = prepare(load_ratings("ml-100k")).bunch(64, seed=0)
    learn = collab_learner(data, n_factors=40, y_range=(0, 5.5))
    learn.fit_one_cycle(5, 5e-3)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from jaxfast.errors import InputError
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import ModelSpec


def collab_learner(
    data, n_factors: int = 40, y_range: Sequence[float] | None = (0.0, 5.5), *, use_nn: bool = False,
    layers: Sequence[int] = (256, 128), metrics: Sequence = (), config: TrainConfig = TrainConfig(),
    workdir: str | Path | None = None, log: Callable[[str], None] = print,
) -> Learner:
    """fastai's collab_learner on a DataBunch from `CollabData.bunch` (its meta holds the id
    maps): ratings squashed into `y_range`, MSE loss."""
    if data.meta.get("kind") != "collab":
        raise InputError("collab_learner needs a DataBunch from jaxfast.collab (CollabData.bunch), whose meta "
                         f"holds the id maps; got one of kind {data.meta.get('kind')!r}")
    sizes = {"n_users": data.meta["n_users"], "n_items": data.meta["n_items"],
             "y_range": None if y_range is None else [float(v) for v in y_range]}
    spec = (ModelSpec("embedding_nn", {**sizes, "layers": list(layers)}) if use_nn
            else ModelSpec("embedding_dot_bias", {**sizes, "n_factors": n_factors}))
    return Learner(spec, data, "mse", metrics, config=config, workdir=workdir, log=log, export_meta=data.meta)
