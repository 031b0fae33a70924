"""Masks and points follow the image's geometric augmentation (issue 16's acceptance tests):
a painted rectangle stays on its labelled pixels, a point on a painted blob stays on it,
after flip, dihedral, rotate, zoom, warp, crop and pad, in training and evaluation; lighting
leaves masks alone; the fill outside the image is the void code."""

import numpy as np
import pytest
import tensorflow as tf

from jaxfast.vision import target_transforms as TT
from jaxfast.vision import transforms as T

VOID = 11
RECT = (slice(40, 90), slice(50, 120))  # rows, cols of the painted rectangle in a 120x160 image
BLOBS = ((25, 30), (100, 135), (105, 40), (20, 130))  # (row, col) centres of 7x7 painted blobs
STILL = dict(do_flip=False, max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0, p_affine=1.0)
CASES = {
    "flip": (dict(STILL, do_flip=True), (120, 160), "crop"),
    "dihedral": (dict(STILL, flip_vert=True), (120, 120), "crop"),
    "rotate": (dict(STILL, max_rotate=30.0), (120, 160), "crop"),
    "zoom": (dict(STILL, max_zoom=1.6), (120, 160), "crop"),
    "warp": (dict(STILL, max_warp=0.4), (120, 160), "crop"),
    "crop": (STILL, (64, 96), "crop"),
    "pad": (STILL, (128, 128), "pad"),
    "squish": (STILL, (96, 96), "squish"),
    "everything": (dict(do_flip=True, max_rotate=20.0, max_zoom=1.3, max_warp=0.3, max_lighting=0.0, p_affine=1.0),
                   (96, 128), "crop"),
}


def painted_image():
    """uint8 [120, 160, 3]: a dull gradient (red <= 0.3), the rectangle pure red, blobs pure green."""
    y, x = np.mgrid[0:120, 0:160]
    image = np.stack([0.3 * x / 159, 0.3 * y / 119, np.full_like(x, 0.2, dtype=float)], -1)
    image[RECT] = (1.0, 0.0, 0.0)
    for r, c in BLOBS:
        image[r - 3 : r + 4, c - 3 : c + 4] = (0.0, 1.0, 0.0)
    return np.round(image * 255).astype(np.uint8)


def rectangle_mask():
    mask = np.zeros((120, 160, 1), np.uint8)
    mask[RECT] = 1
    return mask


def params_of(config, size, n=6, seed=0):
    """n examples' augmentation parameters, one dict each."""
    params = T.augment_params(T.draws(tf.constant([seed, 3], tf.int64), n), size, config)
    return [{k: v[i] for k, v in params.items()} for i in range(n)]


def rectangle_iou(image, mask):
    """IoU of the image's red pixels and the mask's label-1 pixels, where the mask is not void."""
    inside = mask[..., 0] != VOID
    painted = (image[..., 0] > 0.5) & (image[..., 1] < 0.5) & inside
    labelled = mask[..., 0] == 1
    return (painted & labelled).sum() / max((painted | labelled).sum(), 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mask_stays_on_the_painted_rectangle(case):
    options, size, method = CASES[case]
    config = T.TransformConfig(**options)
    image, mask = tf.constant(painted_image()), tf.constant(rectangle_mask())
    changed = 0
    for params in params_of(config, size):
        out = T.apply_augment(image, params, size, config, method).numpy()
        out_mask = TT.augment_mask(mask, params, size, method, fill=VOID).numpy()
        assert out_mask.dtype == np.uint8 and out_mask.shape == (*size, 1)
        assert set(np.unique(out_mask)) <= {0, 1, VOID}
        assert (out_mask == 1).sum() > 200, case  # the rectangle is (mostly) still in view
        iou = rectangle_iou(out, out_mask)
        assert iou > 0.95, (case, iou)
        changed += not np.array_equal(out_mask, TT.eval_mask(mask, size, method, VOID).numpy())
    if case not in ("crop", "pad", "squish"):
        assert changed >= 2, f"{case}: the augmentation hardly ever changed anything"


def test_a_shifted_mask_fails_the_alignment_check():
    """The IoU check can fail: the same rectangle three pixels off scores below 0.95."""
    image = T.to_float(tf.constant(painted_image())).numpy()
    assert rectangle_iou(image, rectangle_mask()) == 1.0
    assert rectangle_iou(image, np.roll(rectangle_mask(), 3, axis=1)) < 0.95


@pytest.mark.parametrize("size,method", [((64, 96), "crop"), ((128, 128), "pad"), ((96, 96), "squish"),
                                         ((120, 160), "crop")])
def test_eval_mask_matches_eval_transform(size, method):
    image, mask = tf.constant(painted_image()), tf.constant(rectangle_mask())
    out = T.eval_transform(image, size, method).numpy()
    out_mask = TT.eval_mask(mask, size, method, VOID).numpy()
    assert rectangle_iou(out, out_mask) > 0.95
    if (size, method) == ((120, 160), "crop"):
        np.testing.assert_array_equal(out_mask, rectangle_mask())  # identity is exact


def test_padding_is_void_and_lighting_never_touches_masks():
    mask = tf.constant(rectangle_mask())
    padded = TT.eval_mask(mask, (160, 160), "pad", VOID).numpy()[..., 0]
    assert (padded[:20] == VOID).all() and (padded[-20:] == VOID).all() and (padded[20:-20] != VOID).all()
    reflected = TT.eval_mask(mask, (160, 160), "pad", None).numpy()[..., 0]
    assert VOID not in reflected
    geometry = T.TransformConfig(max_rotate=30.0, max_warp=0.3, p_affine=1.0, max_lighting=0.0)
    lit = T.TransformConfig(max_rotate=30.0, max_warp=0.3, p_affine=1.0, max_lighting=0.8, p_lighting=1.0)
    for plain, bright in zip(params_of(geometry, 64), params_of(lit, 64)):
        np.testing.assert_array_equal(TT.augment_mask(mask, plain, 64, fill=VOID).numpy(),
                                      TT.augment_mask(mask, bright, 64, fill=VOID).numpy())
    with pytest.raises(ValueError, match="fill code"):
        TT.eval_mask(mask, 64, fill=300)


@pytest.mark.parametrize("case", sorted(CASES))
def test_points_stay_on_their_painted_blobs(case):
    options, size, method = CASES[case]
    config = T.TransformConfig(**options)
    image = tf.constant(painted_image())
    points = tf.constant(BLOBS, tf.float32)
    seen = 0
    for params in params_of(config, size):
        out = T.apply_augment(image, params, size, config, method).numpy()
        unit, visible = TT.augment_points(points, tf.shape(image)[:2], params, size, method)
        pixels = np.round(TT.unit_to_pixels(unit, size).numpy()).astype(int)
        for (r, c), shown in zip(pixels, visible.numpy()):
            inside = 0 <= r < size[0] and 0 <= c < size[1]
            assert shown == inside, (case, r, c, shown)
            if shown:
                seen += 1
                assert out[r, c, 1] > 0.5 and out[r, c, 0] < 0.5, (case, r, c, out[r, c])
    assert seen >= 12, f"{case}: only {seen} points stayed in view"


def test_eval_points_and_the_unit_convention():
    size = (60, 60)  # 120x160 -> 60x80, centre crop drops 10 columns each side
    unit, visible = TT.eval_points(tf.constant([[60.0, 0.0], [60.0, 80.0], [0.5, 79.0]]), tf.constant([120, 160]),
                                   size, "crop")
    assert visible.numpy().tolist() == [False, True, True]
    np.testing.assert_allclose(TT.unit_to_pixels(unit, size).numpy()[1:], [[29.75, 29.75], [0.0, 29.25]], atol=1e-5)
    corners, shown = TT.eval_points(tf.constant([[0.0, 0.0], [119.0, 159.0]]), tf.constant([120, 160]), (120, 160))
    np.testing.assert_allclose(corners.numpy(), [[-1.0, -1.0], [1.0, 1.0]], atol=1e-6)
    assert shown.numpy().all()
    image = tf.constant(painted_image())
    out = T.eval_transform(image, (96, 96), "squish").numpy()
    unit, visible = TT.eval_points(tf.constant(BLOBS, tf.float32), tf.shape(image)[:2], (96, 96), "squish")
    for r, c in np.round(TT.unit_to_pixels(unit, (96, 96)).numpy()).astype(int):
        assert out[r, c, 1] > 0.5
