"""Tabular data (lessons 4 and 6): fastai's procs, frames to arrays, and DataBunch building."""

from jaxfast.tabular.data import (
    RowProblem,
    TabularTarget,
    export_meta,
    model_config,
    read_rows_csv,
    split_random,
    tabular_databunch,
)
from jaxfast.tabular.procs import (
    NA_CATEGORY,
    RESERVED_CODE,
    AddDatepart,
    Categorify,
    FillMissing,
    Normalize,
    TabularProcessor,
    category_key,
)

__all__ = [
    "NA_CATEGORY",
    "RESERVED_CODE",
    "AddDatepart",
    "Categorify",
    "FillMissing",
    "Normalize",
    "RowProblem",
    "TabularProcessor",
    "TabularTarget",
    "category_key",
    "export_meta",
    "model_config",
    "read_rows_csv",
    "split_random",
    "tabular_databunch",
    "tabular_learner",
]


def __getattr__(attr: str):
    """`tabular_learner` is imported on first use, so that reading data or predicting from an export
    does not load the training loop."""
    if attr == "tabular_learner":
        from jaxfast.tabular.learner import tabular_learner

        return tabular_learner
    raise AttributeError(f"module 'jaxfast.tabular' has no attribute {attr!r}")
