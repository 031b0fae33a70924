"""Planet: Understanding the Amazon from Space (Kaggle), lesson 3's multi-label data.

A tfds builder reading tfds' manual_dir (Kaggle's files need a login), and `planet_items`
for the experiments' --data-dir. Two layouts are read:
- Kaggle's: `train_v2.csv` (`image_name,tags`, tags separated by spaces) and
  `train-jpg/<image_name>.jpg` (the lesson's `ImageList.from_csv(path, 'train_v2.csv',
  folder='train-jpg', suffix='.jpg')`);
- fastai's planet_tiny / planet_sample: `labels.csv` and `train/<image_name>.jpg`.

Every example gets its tags as class indices over the 17 competition tags (sorted) and
the same as a multi-hot uint8 vector. Kaggle publishes labels for the training images
only, so there is one split, `train`; the lesson holds out a random 20%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxfast.errors import InputError
from jaxfast.vision.multilabel import MultiLabelItems, read_multilabel_csv

TAGS = (
    "agriculture", "artisinal_mine", "bare_ground", "blooming", "blow_down", "clear", "cloudy",
    "conventional_mine", "cultivation", "habitation", "haze", "partly_cloudy", "primary", "road",
    "selective_logging", "slash_burn", "water",
)  # Kaggle's 17 tags, sorted ('artisinal' is Kaggle's spelling)
KAGGLE_URL = "https://www.kaggle.com/c/planet-understanding-the-amazon-from-space/data"
LAYOUTS = (  # (csv, image folder, suffix), in the order they are looked for
    ("train_v2.csv", "train-jpg", ".jpg"),
    ("labels.csv", "train", ".jpg"),
)
MANUAL_INSTRUCTIONS = f"""\
Put Kaggle's Planet files from {KAGGLE_URL} in the manual dir (tfds' `manual_dir`, or the
experiment's --data-dir): train_v2.csv and the folder train-jpg/ (from train-jpg.tar.7z).
fastai's planet_tiny layout (labels.csv and train/) is read too.
"""


def find_layout(root: str | Path) -> tuple[str, str, str]:
    """(csv, folder, suffix) of the first layout present under `root`."""
    root = Path(root)
    for csv, folder, suffix in LAYOUTS:
        if (root / csv).is_file() and (root / folder).is_dir():
            return csv, folder, suffix
    looked = ", ".join(f"{csv} + {folder}/" for csv, folder, _ in LAYOUTS)
    raise InputError(f"{root}: no Planet data (looked for {looked}).\n{MANUAL_INSTRUCTIONS}")


def planet_items(root: str | Path, check_files: bool = True) -> MultiLabelItems:
    """Files and multi-hot targets over the 17 tags from a local Planet folder."""
    csv, folder, suffix = find_layout(root)
    return read_multilabel_csv(root, csv, folder=folder, suffix=suffix, label_delim=" ",
                               classes=TAGS, check_files=check_files)


class Planet(tfds.core.GeneratorBasedBuilder):
    """Planet satellite chips (256x256 JPEG) with 1 to 9 of 17 weather and land-use tags."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: Kaggle's train_v2.csv and train-jpg, or fastai's planet_tiny."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "image_name": tfds.features.Text(),
                "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=list(TAGS))),
                "multi_hot": tfds.features.Tensor(shape=(len(TAGS),), dtype=np.uint8),
            }),
            supervised_keys=("image", "multi_hot"),
            homepage=KAGGLE_URL,
            citation="Planet: Understanding the Amazon from Space, Kaggle competition, Planet Labs, 2017.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples(planet_items(dl_manager.manual_dir))}

    def _generate_examples(self, items: MultiLabelItems):
        for path, targets in zip(items.paths, items.targets):
            name = Path(path).stem
            yield name, {
                "image": path,
                "image_name": name,
                "tags": [TAGS[i] for i in np.flatnonzero(targets)],
                "multi_hot": targets,
            }
