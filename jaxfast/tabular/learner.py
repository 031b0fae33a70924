"""fastai v1's `tabular_learner`: fastai's TabularModel for a tabular DataBunch, a thin
builder of the one Learner (its model spec from the data's fitted procs, its export meta).

    data = tabular_databunch(processor, target, train_df, valid_df)
    learn = tabular_learner(data, layers=[200, 100], metrics=["accuracy"])
    learn.fit(1, 1e-2)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from jaxfast.errors import InputError
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import ModelSpec
from jaxfast.tabular.data import TabularTarget, model_config
from jaxfast.tabular.procs import TabularProcessor


def tabular_learner(
    data, layers: Sequence[int] = (200, 100), *, metrics: Sequence = (), ps: Sequence[float] | None = None,
    emb_drop: float = 0.0, y_range: Sequence[float] | None = None, config: TrainConfig = TrainConfig(),
    workdir: str | Path | None = None, log: Callable[[str], None] = print,
) -> Learner:
    """fastai's tabular_learner on a DataBunch from `tabular_databunch` (whose meta holds the
    fitted procs and target): embeddings by fastai's size rule, `layers` hidden layers with
    dropout `ps`, cross entropy for classes, MSE for values."""
    if data.meta.get("kind") != "tabular":
        raise InputError("tabular_learner needs a DataBunch from jaxfast.tabular.tabular_databunch "
                         f"(its meta holds the fitted procs); got one of kind {data.meta.get('kind')!r}")
    processor = TabularProcessor.from_json(data.meta["processor"])
    target = TabularTarget.from_json(data.meta["target"])
    spec = ModelSpec("tabular", model_config(processor, target, layers, ps, emb_drop, y_range))
    return Learner(spec, data, target.loss, metrics, config=config, workdir=workdir, log=log, export_meta=data.meta)
