"""Lesson 7's crappifier: sizes, JPEG damage (PSNR finite but low), the drawn number,
determinism from a seed (tf.data form and CLI, whatever the worker count), and the folder
CLI on a temp folder with a corrupt file, leaving the source untouched."""

import hashlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jaxfast.errors import InputError
from jaxfast.vision.crappify import (crappify, crappify_dataset, crappify_folder, crappify_pair,
                                     degrade_before_jpeg, file_seed, main, number_glyphs)


def photo(h=150, w=200, seed=0):
    """A smooth image with edges (JPEG at low quality visibly damages it), uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * xx + c) * np.cos(4 * yy - c) for c in range(3)], -1) * 0.35 + 0.5
    base[h // 3: 2 * h // 3, w // 4: w // 2] = rng.uniform(0, 1, 3)  # a sharp-edged block
    base += rng.normal(0, 0.02, base.shape)
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(1.0 / mse)


def test_sizes_quality_and_jpeg_damage():
    image = photo()
    small, q = crappify(image, [0, 1])
    assert small.shape == (96, 128, 3) and small.dtype == tf.uint8  # shorter side 96, as resize_to(use_min)
    assert 10 <= int(q) <= 70
    assert crappify(photo(97, 301), [0, 1])[0].shape == (96, 297, 3)  # 301 * 96/97 truncated
    crappified, target = crappify_pair(image, [0, 1])
    assert crappified.shape == target.shape == (150, 200, 3)
    np.testing.assert_allclose(target, image / 255.0, atol=1e-6)
    # The same resize down and up without JPEG and text: the crappifier must do worse.
    round_trip = tf.image.resize(tf.image.resize(target, (96, 128), antialias=True), (150, 200))
    value, clean = psnr(crappified, target), psnr(round_trip, target)
    assert np.isfinite(value) and 15 < value < clean - 1.0 < 40, (value, clean)
    # Without the text, a higher-quality JPEG damages less (the quality range is the lesson's knob).
    good = psnr(crappify_pair(image, [0, 1], quality=(95, 95), text=False)[0], target)
    bad = psnr(crappify_pair(image, [0, 1], quality=(10, 10), text=False)[0], target)
    assert bad + 3 < good < clean, (bad, good, clean)
    c128, t128 = crappify_pair(image, [0, 1], out_size=128)
    assert c128.shape == t128.shape == (128, 128, 3)


def test_qualities_cover_the_range_and_text_sits_in_the_top_left():
    qualities = {int(crappify(photo(40, 40), [3, i], size=32)[1]) for i in range(60)}
    assert min(qualities) >= 10 and max(qualities) <= 70 and len(qualities) > 25
    image = np.full((120, 160, 3), 40, np.uint8)  # flat: only the text changes pixels
    with_text, q = degrade_before_jpeg(image, [5, 5])
    without, _ = degrade_before_jpeg(image, [5, 5], text=False)
    changed = np.argwhere(np.any(np.asarray(with_text) != np.asarray(without), axis=-1))
    gh, gw = number_glyphs(10, 70).shape[1:]
    h, w = with_text.shape[:2]
    assert len(changed) > 10
    assert changed[:, 0].max() < h // 2 + gh and changed[:, 1].max() < w // 2 + gw
    assert np.asarray(with_text).max() > 200  # white text on a dark image
    mask = number_glyphs(10, 70)[int(q) - 10]  # the drawn shape is str(q)'s glyph
    y0, x0 = changed.min(axis=0) - np.argwhere(mask > 0).min(axis=0)
    drawn = np.asarray(with_text)[y0:y0 + gh, x0:x0 + gw, 0].astype(np.float32)
    np.testing.assert_allclose(drawn, np.round(40 * (1 - mask) + 255 * mask), atol=1)


def test_deterministic_for_a_seed():
    image = photo()
    a = crappify_pair(image, [7, 3])[0].numpy()
    assert np.array_equal(a, crappify_pair(image, [7, 3])[0].numpy())
    assert not np.array_equal(a, crappify_pair(image, [8, 3])[0].numpy())
    images = tf.data.Dataset.from_tensor_slices(np.stack([photo(64, 80, s) for s in range(4)]))
    first = [c.numpy() for c, _ in crappify_dataset(images, seed=11, size=32)]
    second = [c.numpy() for c, _ in crappify_dataset(images, seed=11, size=32)]
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    assert np.array_equal(first[2], crappify_pair(photo(64, 80, 2), [11, 2], size=32)[0].numpy())
    assert not np.array_equal(first[0], [c.numpy() for c, _ in crappify_dataset(images, seed=12, size=32)][0])


def tree_digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_cli(tmp_path, capsys):
    src = tmp_path / "images"
    (src / "cats").mkdir(parents=True)
    Image.fromarray(photo(150, 200, 1)).save(src / "cats" / "a.jpg", quality=95)
    Image.fromarray(photo(120, 100, 2)).save(src / "b.png")
    (src / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (src / "notes.txt").write_text("not an image")
    before = tree_digest(src)

    main([str(src), str(tmp_path / "small"), "--size", "48", "--seed", "3", "--workers", "2"])
    out, err = capsys.readouterr()
    assert "broken.jpg: unreadable image" in err
    assert "crappified 2 images" in out and "1 unreadable skipped" in out
    assert tree_digest(src) == before  # the source is only read
    small = tmp_path / "small"
    assert sorted(tree_digest(small)) == ["b.png", "cats/a.jpg"]
    with Image.open(small / "cats" / "a.jpg") as a, Image.open(small / "b.png") as b:
        assert (a.format, a.size, b.format, b.size) == ("JPEG", (64, 48), "PNG", (48, 57))
        pixels = np.asarray(b)
    # The PNG holds the JPEG-degraded pixels of the same seeded core.
    core, q = degrade_before_jpeg(photo(120, 100, 2), file_seed(3, "b.png"), size=48)
    assert np.array_equal(pixels, tf.io.decode_jpeg(tf.io.encode_jpeg(core, quality=int(q))).numpy())

    # Same seed, one worker: the same bytes; existing files are kept unless --overwrite.
    result = crappify_folder(src, tmp_path / "again", size=48, seed=3, workers=1, log=lambda m: None)
    assert tree_digest(tmp_path / "again") == tree_digest(small) and result["skipped"] == ["cats/broken.jpg"]
    assert crappify_folder(src, small, size=48, seed=3, log=lambda m: None)["existing"] == ["b.png", "cats/a.jpg"]

    for bad in ([str(src), str(src / "cats" / "out")], [str(tmp_path / "missing"), str(tmp_path / "x")]):
        with pytest.raises(SystemExit):
            main(bad)
        assert "error: crappify:" in capsys.readouterr().err
    with pytest.raises(InputError, match="quality range"):
        crappify_folder(src, tmp_path / "y", quality=(70, 10))
