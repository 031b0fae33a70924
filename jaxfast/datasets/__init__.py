"""tfds builders of jaxfast's own, for data sets the tfds catalog lacks.

Importing this package registers them with tfds (`tfds.builder('adult')`, `'rossmann'`),
also for the command line: `tfds build adult --imports jaxfast.datasets --config uci`.
Their dummy data (for tfds-style tests) lives in dummy_data/<name>/.
"""

from jaxfast.datasets.adult import (
    Adult,
    AdultFrames,
    load_adult,
    parse_adult,
    read_adult,
)
from jaxfast.datasets.rossmann import Rossmann, clean_rossmann, read_tables

__all__ = ["Adult", "AdultFrames", "Rossmann", "clean_rossmann", "load_adult", "parse_adult", "read_adult", "read_tables"]
