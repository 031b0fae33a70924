"""Lesson 7's "crappifier": the degraded inputs a restoration (super-resolution) model learns
to repair, made from clean images.

As fastai's `crappifier` (course-v3 nbs/dl1/crappify.py): resize so the shorter side is
`size` (96; bilinear, antialiased like PIL's), draw a random quality q in [10, 70] as white
text at a random point of the image's top-left quarter, and JPEG-encode at quality q. The
pair's input is that small JPEG resized back (bilinear) to the target's size, as the
lesson's data pipeline does when it brings both images to the training size.

Two forms, one TF core, randomness from stateless seeds only:
- `crappify_pair` / `crappify_dataset`: tf.data ops making (crappified, target) pairs on the
  fly; example i of `crappify_dataset(ds, seed)` uses the seed (seed, i), so the pairs are
  the same on every run, whatever the parallelism;
- `python -m jaxfast.vision.crappify SRC DST [--size N --seed S --workers K]`: a crappified
  copy of an image folder at the same relative paths (the lesson's `small-96` folder). File
  f's seed is (S, crc32 of its relative path), so the output does not depend on --workers.
  `.jpg`/`.jpeg` files get the JPEG bytes themselves; other formats get the JPEG-degraded
  pixels saved in their own format (lossless for PNG, BMP and WebP). Unreadable files are
  reported and skipped; SRC is only read.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from jaxfast.errors import InputError

DEFAULT_SIZE = 96  # the lesson's small-96 images
QUALITY_RANGE = (10, 70)  # random.randint(10, 70): both ends included
JPEG_SUFFIXES = (".jpg", ".jpeg")


def _check_settings(size: int, quality: tuple[int, int]) -> tuple[int, int]:
    lo, hi = (int(q) for q in quality)
    if not 1 <= lo <= hi <= 100:
        raise InputError(f"crappify: JPEG quality range {quality} must satisfy 1 <= low <= high <= 100")
    if size < 1:
        raise InputError(f"crappify: size must be a positive number of pixels, got {size}")
    return lo, hi


@functools.lru_cache(maxsize=None)
def number_glyphs(lo: int, hi: int) -> np.ndarray:
    """[hi - lo + 1, h, w] float32 coverage masks of str(q) for q in lo..hi, drawn at (0, 0)
    with PIL's default font, as the lesson's `ImageDraw.Draw(img).text(...)`."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    boxes = [font.getbbox(str(q)) for q in range(lo, hi + 1)]
    width, height = max(b[2] for b in boxes) + 1, max(b[3] for b in boxes) + 1
    masks = []
    for q in range(lo, hi + 1):
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).text((0, 0), str(q), fill=255, font=font)
        masks.append(np.asarray(canvas, np.float32) / 255.0)
    return np.stack(masks)


def small_hw(hw: tf.Tensor, size: int) -> tf.Tensor:
    """fastai's resize_to(img, size, use_min=True): the shorter side becomes `size`, the other
    scales with it (truncated), int32 [2]."""
    hw = tf.cast(hw, tf.float64)
    return tf.maximum(tf.cast(hw * (size / tf.reduce_min(hw)), tf.int32), 1)


def _draw_number(image: tf.Tensor, q: tf.Tensor, seed: tf.Tensor, lo: int, hi: int) -> tf.Tensor:
    """White str(q) at (x, y), x in [0, w//2], y in [0, h//2] (the lesson's random point)."""
    glyphs = tf.constant(number_glyphs(lo, hi))
    gh, gw = number_glyphs(lo, hi).shape[1:]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    y = tf.random.stateless_uniform([], seeds[0], 0, h // 2 + 1, tf.int32)
    x = tf.random.stateless_uniform([], seeds[1], 0, w // 2 + 1, tf.int32)
    mask = tf.pad(tf.gather(glyphs, q - lo), [[y, h], [x, w]])[:h, :w, None]  # clipped at the borders
    return tf.cast(image, tf.float32) * (1.0 - mask) + 255.0 * mask


def degrade_before_jpeg(image: tf.Tensor, seed: tf.Tensor, size: int = DEFAULT_SIZE,
                        quality: tuple[int, int] = QUALITY_RANGE, text: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """(small uint8 image with the number drawn, JPEG quality q int32): every step but the JPEG.
    `image`: uint8 [H, W, 3]; `seed`: int [2] (a stateless seed)."""
    lo, hi = _check_settings(size, quality)
    seed = tf.cast(seed, tf.int64)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    q = tf.random.stateless_uniform([], seeds[0], lo, hi + 1, tf.int32)
    small = tf.image.resize(tf.cast(image, tf.float32), small_hw(tf.shape(image)[:2], size),
                            method="bilinear", antialias=True)
    if text:
        small = _draw_number(small, q, seeds[1], lo, hi)
    return tf.cast(tf.clip_by_value(tf.round(small), 0.0, 255.0), tf.uint8), q


def crappify(image: tf.Tensor, seed: tf.Tensor, size: int = DEFAULT_SIZE,
             quality: tuple[int, int] = QUALITY_RANGE, text: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """(small crappified uint8 image, its JPEG quality): the lesson's low-res file, in TF ops."""
    small, q = degrade_before_jpeg(image, seed, size, quality, text)
    return tf.image.adjust_jpeg_quality(small, q), q


def crappify_pair(image: tf.Tensor, seed: tf.Tensor, size: int = DEFAULT_SIZE,
                  quality: tuple[int, int] = QUALITY_RANGE, text: bool = True,
                  out_size: int | tuple[int, int] | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """(crappified, target), float32 [0, 1] of the same size: the target is `image` (resized to
    `out_size` when given, antialiased bilinear), the input its crappified small copy resized
    back up (bilinear) to the target's size."""
    target = tf.cast(image, tf.float32) / 255.0
    if out_size is not None:
        out_hw = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
        target = tf.clip_by_value(tf.image.resize(target, out_hw, method="bilinear", antialias=True), 0.0, 1.0)
    small, _ = crappify(image, seed, size, quality, text)
    upscaled = tf.image.resize(tf.cast(small, tf.float32) / 255.0, tf.shape(target)[:2], method="bilinear")
    return tf.clip_by_value(upscaled, 0.0, 1.0), target


def crappify_dataset(images: tf.data.Dataset, seed: int = 0, **kwargs) -> tf.data.Dataset:
    """A dataset of uint8 [H, W, 3] images -> (crappified, target) pairs (see crappify_pair);
    example i uses the stateless seed (seed, i)."""
    def pair(index, image):
        return crappify_pair(image, tf.stack([tf.constant(seed, tf.int64), index]), **kwargs)

    return images.enumerate().map(pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# ----------------------------------------------------------------------------- the folder CLI


def file_seed(seed: int, relative: str) -> np.ndarray:
    """The stateless seed of one file: (seed, crc32 of its '/'-joined relative path)."""
    return np.array([seed, zlib.crc32(relative.encode("utf-8"))], np.int64)


def crappify_file(src: Path, dest: Path, seed: np.ndarray, size: int, quality: tuple[int, int], text: bool) -> int:
    """Write the crappified copy of `src` to `dest` (atomically); returns the JPEG quality.
    Raises OSError/ValueError when `src` cannot be decoded."""
    from PIL import Image

    with Image.open(src) as img:
        pixels = np.asarray(img.convert("RGB"))
    small, q = degrade_before_jpeg(tf.constant(pixels), tf.constant(seed), size, quality, text)
    jpeg = tf.io.encode_jpeg(small, quality=int(q)).numpy()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", delete=False) as part:
        if dest.suffix.lower() in JPEG_SUFFIXES:
            part.write(jpeg)
        else:
            degraded = Image.fromarray(tf.io.decode_jpeg(jpeg, channels=3).numpy())
            options = {"lossless": True} if dest.suffix.lower() == ".webp" else {}
            degraded.save(part, format=Image.registered_extensions()[dest.suffix.lower()], **options)
    os.replace(part.name, dest)
    return int(q)


def crappify_folder(src: str | Path, dst: str | Path, size: int = DEFAULT_SIZE, seed: int = 0, workers: int = 1,
                    quality: tuple[int, int] = QUALITY_RANGE, text: bool = True, overwrite: bool = False,
                    log=print) -> dict[str, list[str]]:
    """Crappify every image under `src` into `dst` at the same relative paths. Returns
    {'written', 'existing', 'skipped'} relative paths; skipped files are logged with the reason."""
    from jaxfast.vision.folders import IMAGE_EXTENSIONS

    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_settings(size, quality)
    if not src.is_dir():
        raise InputError(f"crappify: source folder {src} does not exist or is not a folder")
    if dst == src or src in dst.parents or dst in src.parents:
        raise InputError(f"crappify: destination {dst} must lie outside the source {src} (and not contain it); "
                         "the source is never written to")
    if workers < 1:
        raise InputError(f"crappify: --workers must be at least 1, got {workers}")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    result: dict[str, list[str]] = {"written": [], "existing": [], "skipped": []}

    def one(path: Path):
        relative = path.relative_to(src).as_posix()
        dest = dst / relative
        if dest.exists() and not overwrite:
            return "existing", relative, None
        try:
            crappify_file(path, dest, file_seed(seed, relative), size, quality, text)
        except (OSError, ValueError, SyntaxError, tf.errors.OpError) as err:  # PIL raises all of these
            return "skipped", relative, f"{type(err).__name__}: {err}"
        return "written", relative, None

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for status, relative, reason in pool.map(one, files):
            result[status].append(relative)
            if reason:
                log(f"skipped {src / relative}: unreadable image ({reason})")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m jaxfast.vision.crappify",
        description="Write a crappified copy of an image folder (lesson 7's low-res inputs): shorter side "
                    "resized to SIZE, a random JPEG quality drawn as text, JPEG at that quality.")
    parser.add_argument("src", help="folder of clean images (read only)")
    parser.add_argument("dst", help="folder to write, same relative paths")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="shorter side of the outputs (default 96)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the qualities and text positions")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="threads")
    parser.add_argument("--quality", type=int, nargs=2, default=QUALITY_RANGE, metavar=("LOW", "HIGH"),
                        help="JPEG quality range, both included (default 10 70)")
    parser.add_argument("--no-text", action="store_true", help="do not draw the quality number")
    parser.add_argument("--overwrite", action="store_true", help="rewrite files already in DST (default: keep them)")
    args = parser.parse_args(argv)
    try:
        result = crappify_folder(args.src, args.dst, args.size, args.seed, args.workers, tuple(args.quality),
                                 not args.no_text, args.overwrite, log=lambda m: print(m, file=sys.stderr))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    print(f"crappified {len(result['written'])} images from {args.src} into {args.dst} (size {args.size}, "
          f"quality {args.quality[0]}-{args.quality[1]}, seed {args.seed}); {len(result['existing'])} already "
          f"there, {len(result['skipped'])} unreadable skipped")


if __name__ == "__main__":
    main()
