"""tfds builders of jaxfast's own, for data sets the tfds catalog lacks.

Importing this package registers them with tfds (`tfds.builder('adult')`, `'rossmann'`,
`'camvid'`, `'planet'`, `'biwi_head_pose'`), also for the command line:
`tfds build adult --imports jaxfast.datasets --config uci`.
Their dummy data (for tfds-style tests) lives in dummy_data/<name>/.
"""

from jaxfast.datasets.adult import (
    Adult,
    AdultFrames,
    load_adult,
    parse_adult,
    read_adult,
)
from jaxfast.datasets.biwi import BiwiHeadPose, read_biwi
from jaxfast.datasets.camvid import Camvid, CamvidFolder, detect_layout, read_camvid
from jaxfast.datasets.planet import Planet, planet_items
from jaxfast.datasets.rossmann import Rossmann, clean_rossmann, read_tables

__all__ = [
    "Adult", "AdultFrames", "BiwiHeadPose", "Camvid", "CamvidFolder", "Planet", "Rossmann", "clean_rossmann",
    "detect_layout", "load_adult", "parse_adult", "planet_items", "read_adult", "read_biwi", "read_camvid",
    "read_tables",
]
