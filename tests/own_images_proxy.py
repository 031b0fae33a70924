"""Two-class "own photos" folders built from CamVid's real street photos, standing in for a
user's folder (lesson 2): ~250 JPEGs of arbitrary sizes and aspect ratios in fastai's layout
train/<class>/ + val/<class>/, with few training images (~95) and many validation ones (~150).

Why: `lesson2_own_images` without pretrained weights must learn on a few hundred photos, and
it is judged on a folder nobody here has; these proxies are natural two-class tasks with
labels derived in code, so a recipe can be tuned on some and confirmed on another.

    python tests/own_images_proxy.py OUT_DIR [--camvid ../shared/data/camvid] [--proxies day_dusk,traffic]

writes OUT_DIR/<proxy>/{train,val}/<class>/*.jpg and prints, per proxy, the class counts, the
majority-class error and the error of a trivial colour classifier (logistic regression on
each image's mean and std RGB), so that a proxy solvable by colour alone is seen as such.

Each proxy uses a source photo at most once per sample (two crops of it for day_dusk, whose
dusk sequence is short), and splits train/val by blocks of consecutive video frames, so no
near-duplicate frame sits on both sides (a user's photos are not video frames either). The
images are random crops (40-100% of the frame, aspect 16:9 .. 3:4) resized to a random size
and saved at a random JPEG quality. Nothing is written inside the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
# CamVid mask ids (codes.txt): Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car,
# Pedestrian, Bicyclist, Unlabelled.
SKY, BUILDING, ROAD, PAVEMENT, TREE, CAR, PEDESTRIAN, BICYCLIST = 0, 1, 3, 4, 5, 8, 9, 10
ASPECTS = (16 / 9, 3 / 2, 4 / 3, 1.0, 3 / 4)  # width / height of the crops
BLOCK = 6  # consecutive frames that go to the same split


@dataclasses.dataclass(frozen=True)
class Photo:
    """One CamVid frame: its JPEG, mask, video sequence and frame number."""

    image: Path
    mask: Path
    sequence: str
    frame: int
    block: int = 0  # position in its sequence // BLOCK: frames of a block share a split


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A two-class task: `label(photo, fractions)` gives 0, 1 or None (crop not usable) from
    the crop's mask-class fractions; `crops` tries per photo; `per_photo` crops kept per photo."""

    name: str
    classes: tuple[str, str]
    label: Callable[[Photo, np.ndarray], int | None]
    min_area: float = 0.4
    per_photo: int = 1


def _day_dusk(photo: Photo, fractions: np.ndarray) -> int:
    return 1 if photo.sequence == "0001TP" else 0


def _traffic(photo: Photo, f: np.ndarray) -> int | None:
    if f[CAR] >= 0.12:
        return 1
    return 0 if f[CAR] <= 0.005 else None


def _people(photo: Photo, f: np.ndarray) -> int | None:
    people = f[PEDESTRIAN] + f[BICYCLIST]
    if people >= 0.02:
        return 1
    return 0 if people == 0 else None


def _greenery(photo: Photo, f: np.ndarray) -> int | None:
    if f[TREE] >= 0.25:
        return 1
    return 0 if f[TREE] <= 0.05 and f[BUILDING] >= 0.25 else None


PROXIES = {
    "day_dusk": Proxy("day_dusk", ("day", "dusk"), _day_dusk, min_area=0.5, per_photo=2),
    "traffic": Proxy("traffic", ("no_cars", "cars"), _traffic),
    "people": Proxy("people", ("nobody", "people"), _people),
    "greenery": Proxy("greenery", ("buildings", "trees"), _greenery),
}


def camvid_photos(camvid: Path = CAMVID) -> list[Photo]:
    """CamVid's train and val frames (the test split is not needed), in video order."""
    photos = []
    for split in ("train", "val"):
        for image in sorted((camvid / split).glob("*.jpg")):
            sequence, frame = image.stem.split("_")
            photos.append(Photo(image, camvid / f"{split}annot" / f"{image.stem}.png", sequence,
                                int(frame.lstrip("f") or 0)))
    if not photos:
        raise FileNotFoundError(f"no CamVid images under {camvid}/train and {camvid}/val")
    photos.sort(key=lambda p: (p.sequence, p.frame))
    first = {}
    for i, photo in enumerate(photos):
        first.setdefault(photo.sequence, i)
    return [dataclasses.replace(p, block=(i - first[p.sequence]) // BLOCK) for i, p in enumerate(photos)]


def random_window(rng: np.random.Generator, h: int, w: int, min_area: float) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop: area share in [min_area, 1], aspect from ASPECTS."""
    aspect = ASPECTS[rng.integers(len(ASPECTS))]
    area = rng.uniform(min_area, 1.0) * h * w
    ch = int(min(h, round(np.sqrt(area / aspect))))
    cw = int(min(w, round(ch * aspect)))
    return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw


def candidates(proxy: Proxy, photos: list[Photo], rng: np.random.Generator, tries: int = 12) -> dict:
    """{(photo index, class): [windows]}: crops of each photo whose label is that class."""
    found: dict = {}
    for i, photo in enumerate(photos):
        mask = np.asarray(Image.open(photo.mask))
        for _ in range(tries):
            top, left, ch, cw = window = random_window(rng, *mask.shape, proxy.min_area)
            fractions = np.bincount(mask[top:top + ch, left:left + cw].ravel(), minlength=12) / (ch * cw)
            label = proxy.label(photo, fractions)
            if label is not None:
                found.setdefault((i, label), []).append(window)
    return found


def choose(proxy: Proxy, photos: list[Photo], found: dict, n_images: int, rng) -> list[tuple[int, int, tuple]]:
    """(photo index, label, window) of ~n_images crops, balanced, each photo in one class only."""
    per_class = n_images // 2 // proxy.per_photo
    chosen, used = [], set()
    for label in rng.permutation(2):  # a photo with both kinds of crops goes to one class only
        pool = [i for (i, lab) in found if lab == label and i not in used
                and len(found[(i, lab)]) >= proxy.per_photo]
        picked = rng.choice(pool, size=min(per_class, len(pool)), replace=False)
        for i in picked:
            used.add(int(i))
            for window in found[(int(i), int(label))][: proxy.per_photo]:
                chosen.append((int(i), int(label), window))
    return chosen


def save_crop(photo: Photo, window: tuple, path: Path, rng: np.random.Generator) -> None:
    """The crop, resized by a random factor (0.6x .. 1.7x), as a JPEG of random quality."""
    top, left, ch, cw = window
    with Image.open(photo.image) as image:
        crop = image.convert("RGB").crop((left, top, left + cw, top + ch))
    scale = rng.uniform(0.6, 1.7)
    crop = crop.resize((max(32, round(cw * scale)), max(32, round(ch * scale))), Image.Resampling.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    crop.save(path, quality=int(rng.integers(75, 96)))


def split_blocks(photos: list[Photo], chosen: list, valid_share: float, rng) -> dict:
    """{(sequence, block): goes to val}: whole blocks, in random order, join val while each
    class stays within its share of val images (so both splits keep the class balance)."""
    blocks: dict = {}
    for i, label, _ in chosen:
        counts = blocks.setdefault((photos[i].sequence, photos[i].block), np.zeros(2, int))
        counts[label] += 1
    target = valid_share * sum(blocks.values())
    in_val, val_counts = {}, np.zeros(2, int)
    for n in rng.permutation(len(blocks)):
        key = sorted(blocks)[n]
        in_val[key] = bool(np.all(val_counts + blocks[key] <= target + 1))
        val_counts += blocks[key] * in_val[key]
    return in_val


def build_proxy(name: str, out: Path, *, camvid: Path = CAMVID, n_images: int = 248, valid_share: float = 0.61,
                seed: int = 0, photos: list[Photo] | None = None) -> dict:
    """Write out/{train,val}/<class>/*.jpg for proxy `name`; returns {split: [labels]}.

    valid_share 0.61: the user's folder has ~150 of 245 images in val. Blocks of BLOCK
    consecutive frames of one sequence go to the same split."""
    proxy = PROXIES[name]
    rng = np.random.default_rng(seed)
    photos = camvid_photos(camvid) if photos is None else photos
    chosen = choose(proxy, photos, candidates(proxy, photos, rng), n_images, rng)
    in_val = split_blocks(photos, chosen, valid_share, rng)
    labels: dict = {"train": [], "val": []}
    for n, (i, label, window) in enumerate(chosen):
        photo = photos[i]
        split = "val" if in_val[(photo.sequence, photo.block)] else "train"
        save_crop(photo, window, out / split / proxy.classes[label] / f"{photo.image.stem}_{n}.jpg", rng)
        labels[split].append(label)
    return labels


def colour_features(paths: list[Path]) -> np.ndarray:
    """Mean and std of R, G, B per image: all a trivial colour classifier sees."""
    rows = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), np.float64) / 255.0
        rows.append(np.concatenate([pixels.mean((0, 1)), pixels.std((0, 1))]))
    return np.array(rows)


def folder_split(folder: Path, split: str, classes: tuple[str, str]) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = sorted((folder / split / name).glob("*.jpg"))
        paths += found
        labels += [label] * len(found)
    return paths, np.array(labels)


def colour_baseline_error(folder: Path, classes: tuple[str, str], steps: int = 3000) -> float:
    """Valid error of logistic regression on colour_features (fit on train by gradient descent)."""
    train_paths, y = folder_split(folder, "train", classes)
    valid_paths, y_valid = folder_split(folder, "val", classes)
    x, x_valid = colour_features(train_paths), colour_features(valid_paths)
    mean, std = x.mean(0), x.std(0) + 1e-8
    x, x_valid = (x - mean) / std, (x_valid - mean) / std
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= 0.1 * (x.T @ (p - y) / len(y) + 1e-3 * w)
        b -= 0.1 * float(np.mean(p - y))
    return float(np.mean(((x_valid @ w + b) > 0).astype(int) != y_valid))


def majority_error(train_labels, valid_labels) -> float:
    """Valid error of always answering the training set's most frequent class."""
    majority = np.bincount(np.asarray(train_labels), minlength=2).argmax()
    return float(np.mean(np.asarray(valid_labels) != majority))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--camvid", type=Path, default=CAMVID)
    parser.add_argument("--proxies", default=",".join(PROXIES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    photos = camvid_photos(args.camvid)
    for name in args.proxies.split(","):
        folder = args.out / name
        labels = build_proxy(name, folder, camvid=args.camvid, seed=args.seed, photos=photos)
        counts = {split: np.bincount(np.array(v, int), minlength=2).tolist() for split, v in labels.items()}
        print(f"{name}: {folder} classes {PROXIES[name].classes}, train {counts['train']} val {counts['val']}; "
              f"majority error {majority_error(labels['train'], labels['val']):.3f}, "
              f"colour classifier error {colour_baseline_error(folder, PROXIES[name].classes):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
