"""Images/s of the tf.data image pipeline, with and without fastai's augmentation.

Reads a folder of images (default: synthetic 500x375 JPEGs, the size of the pets
photos, written to a temporary folder) and times `measure_pipeline` for each image
size and batch size: decode + resize + crop (+ flip/rotate/zoom/warp/lighting) +
normalise + batch. Prints a markdown table.
Run: python benchmarks/pipeline_bench.py [--folder DIR] [--n-batches 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from jaxfast.vision import (
    ImageLoader,
    ImageSource,
    TransformConfig,
    find_images,
    measure_pipeline,
)


def synthetic_jpegs(folder: Path, n: int, hw=(375, 500)) -> Path:
    """`n` smooth random JPEGs (two classes), so that JPEG sizes are photo-like."""
    rng = np.random.default_rng(0)
    for i in range(n):
        coarse = rng.integers(0, 256, (hw[0] // 25 + 1, hw[1] // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize(hw[::-1], Image.BILINEAR)
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"c{i % 2}" / f"{i}.jpg", quality=90)
    return folder


def run(folder: Path, sizes, batch_sizes, n_batches: int) -> list[dict]:
    found = find_images(folder, valid_pct=0.2, verify=False)
    source = ImageSource.from_split(found.train, found.classes, "bench")
    rows = []
    for size in sizes:
        for bs in batch_sizes:
            row = {"size": size, "bs": bs}
            for label, tfms in (("plain", None), ("augmented", TransformConfig())):
                loader = ImageLoader(source, bs, size=size, shuffle=True, drop_last=True, tfms=tfms)
                row[label] = measure_pipeline(loader, n_batches)
            rows.append(row)
            print(f"| {size} | {bs} | {row['plain']:.0f} | {row['augmented']:.0f} | "
                  f"{row['augmented'] / row['plain']:.2f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="image folder (any find_images layout); default: synthetic JPEGs")
    parser.add_argument("--n-images", type=int, default=320, help="synthetic images to write")
    parser.add_argument("--n-batches", type=int, default=10, help="timed batches per cell (after one warm-up batch)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args()
    print(f"tf.data pipeline images/s on {os.cpu_count()} CPU cores, {args.n_batches} batches per cell")
    print("| size | bs | plain img/s | augmented img/s | augmented / plain |")
    print("| --- | --- | --- | --- | --- |")
    if args.folder is not None:
        run(args.folder, args.sizes, args.batch_sizes, args.n_batches)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(synthetic_jpegs(Path(tmp), args.n_images), args.sizes, args.batch_sizes, args.n_batches)


if __name__ == "__main__":
    main()
