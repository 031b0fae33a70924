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
]
