"""BIWI Kinect head pose, as fastai's `biwi_head_pose` (lesson 3's point regression).

Layout (fastai converted the images to JPEG): one folder per recording `01` ... `24`,
each holding `frame_XXXXX_rgb.jpg`, its `frame_XXXXX_pose.txt` (a 3x3 rotation, then the
head centre in camera millimetres) and the camera calibration `rgb.cal` (the 3x3
intrinsics first). The target is the head centre projected to a pixel, exactly as the
lesson (lesson3-head-pose.ipynb) computes it:

    cal = np.genfromtxt(path/'01'/'rgb.cal', skip_footer=6)
    ctr = np.genfromtxt(pose_file, skip_header=3)
    c1 = ctr[0]*cal[0][0]/ctr[2] + cal[0][2];  c2 = ctr[1]*cal[1][1]/ctr[2] + cal[1][2]
    point = (c2, c1)   # (row, col), fastai v1's ImagePoints order

Configs: `lesson` projects every frame with folder 01's rgb.cal, as the notebook does;
`own_calibration` uses each recording's own rgb.cal. Splits follow the lesson: recording
13 is `validation`, the rest `train`; every example also carries its `person` folder.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jaxfast.errors import InputError

FASTAI_URL = "https://s3.amazonaws.com/fast-ai-imagelocal/biwi_head_pose.tgz"
HOMEPAGE = "https://icu.ee.ethz.ch/research/datsets.html"
VALID_PERSON = "13"  # the lesson's split_by_valid_func(lambda o: o.parent.name=='13')
LESSON_CALIBRATION_FOLDER = "01"
FRAME_RE = re.compile(r"^frame_(\d+)_rgb\.jpg$")
MANUAL_INSTRUCTIONS = f"""\
Extract fastai's {FASTAI_URL} into the manual dir (tfds' `manual_dir`, or the experiment's
--data-dir): the folders 01 ... 24 (or a biwi_head_pose/ folder holding them), each with
frame_XXXXX_rgb.jpg, frame_XXXXX_pose.txt and rgb.cal.
"""


def _number_rows(path: Path) -> list[list[float]]:
    """The non-blank lines of a text file as rows of floats (InputError names the file and line)."""
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append([float(field) for field in line.split()])
            except ValueError:
                raise InputError(f"{path}:{number}: not a row of numbers: {line.strip()!r}") from None
    return rows


def read_calibration(path: str | Path) -> np.ndarray:
    """The 3x3 camera intrinsics: the first three rows of an rgb.cal (the lesson's
    `np.genfromtxt(..., skip_footer=6)` on BIWI's nine-row files)."""
    path = Path(path)
    rows = _number_rows(path)[:3]
    if len(rows) != 3 or any(len(row) != 3 for row in rows):
        raise InputError(f"{path}: expected a 3x3 intrinsics matrix in the first three rows, got {rows}")
    return np.array(rows, np.float64)


def read_head_centre(path: str | Path) -> np.ndarray:
    """The head centre (x, y, z) in camera millimetres: the row after the 3x3 rotation of a
    frame_XXXXX_pose.txt (the lesson's `np.genfromtxt(..., skip_header=3)`)."""
    path = Path(path)
    rows = _number_rows(path)
    if len(rows) < 4 or any(len(row) != 3 for row in rows[:4]):
        raise InputError(f"{path}: expected 3 rotation rows and a centre row of 3 numbers, got {rows}")
    centre = np.array(rows[3], np.float64)
    if centre[2] <= 0:
        raise InputError(f"{path}: head centre depth z={centre[2]} must be positive")
    return centre


def project_to_pixel(centre: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """float32 (row, col) pixel of a camera-space point: the lesson's convert_biwi, (c2, c1)."""
    col = centre[0] * calibration[0, 0] / centre[2] + calibration[0, 2]
    row = centre[1] * calibration[1, 1] / centre[2] + calibration[1, 2]
    return np.array([row, col], np.float32)


@dataclasses.dataclass(frozen=True)
class BiwiFrame:
    """One frame: its image, the person (recording folder) and the head-centre pixel (row, col)."""

    image: str
    person: str
    point: np.ndarray


def dataset_root(root: str | Path) -> Path:
    """`root`, or `root/biwi_head_pose` when the archive was extracted into it."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"BIWI folder {root} does not exist.\n{MANUAL_INSTRUCTIONS}")
    nested = root / "biwi_head_pose"
    if not _recordings(root) and nested.is_dir():
        return nested
    return root


def _recordings(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def read_biwi(root: str | Path, own_calibration: bool = False) -> list[BiwiFrame]:
    """Every frame under `root` (sorted by recording, then frame) with its head-centre pixel.

    The lesson's projection uses 01/rgb.cal for all frames; `own_calibration` uses each
    recording's rgb.cal. A frame without its pose file is an InputError naming both.
    """
    root = dataset_root(root)
    recordings = _recordings(root)
    if not recordings:
        raise InputError(f"{root}: no numbered recording folders (01 ... 24).\n{MANUAL_INSTRUCTIONS}")
    lesson_cal = None if own_calibration else read_calibration(root / LESSON_CALIBRATION_FOLDER / "rgb.cal")
    frames = []
    for folder in recordings:
        calibration = lesson_cal if lesson_cal is not None else read_calibration(folder / "rgb.cal")
        for image in sorted(folder.iterdir()):
            match = FRAME_RE.match(image.name)
            if not match:
                continue
            pose = folder / f"frame_{match.group(1)}_pose.txt"
            if not pose.is_file():
                raise InputError(f"{image} has no pose file {pose.name} beside it")
            frames.append(BiwiFrame(str(image), folder.name, project_to_pixel(read_head_centre(pose), calibration)))
    if not frames:
        raise InputError(f"{root}: no frame_XXXXX_rgb.jpg files in {len(recordings)} recording folders")
    return frames


class BiwiHeadPose(tfds.core.GeneratorBasedBuilder):
    """BIWI head pose frames with the head centre as a (row, col) pixel."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: fastai's JPEG layout, the lesson's projection."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="lesson", description="Every frame projected with 01/rgb.cal (the notebook)."),
        tfds.core.BuilderConfig(name="own_calibration", description="Each recording projected with its own rgb.cal."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "point": tfds.features.Tensor(shape=(2,), dtype=np.float32),
                "person": tfds.features.Text(),
                "image_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "point"),
            homepage=HOMEPAGE,
            citation="G. Fanelli, M. Dantone, J. Gall, A. Fossati, L. Van Gool. Random Forests for Real Time "
                     "3D Face Analysis. IJCV 101(3), 2013.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        frames = read_biwi(dl_manager.manual_dir, own_calibration=self.builder_config.name == "own_calibration")
        return {
            "train": self._generate_examples([f for f in frames if f.person != VALID_PERSON]),
            "validation": self._generate_examples([f for f in frames if f.person == VALID_PERSON]),
        }

    def _generate_examples(self, frames: list[BiwiFrame]):
        for frame in frames:
            name = f"{frame.person}/{Path(frame.image).name}"
            yield name, {"image": frame.image, "point": frame.point, "person": frame.person, "image_name": name}
