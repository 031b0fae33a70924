"""Dataset loaders: local files first (--data-dir), tfds as a fail-fast fallback."""

from jaxfast.data.download import (
    DatasetUnavailable,
    check_reachable,
    load_tfds_as_numpy,
    require_download,
)
from jaxfast.data.mnist import MnistSplits, load_mnist, load_mnist_sample, read_idx

__all__ = [
    "DatasetUnavailable",
    "MnistSplits",
    "check_reachable",
    "load_mnist",
    "load_mnist_sample",
    "load_tfds_as_numpy",
    "read_idx",
    "require_download",
]
