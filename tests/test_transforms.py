"""fastai v1's augmentations as stateless tf ops: determinism, exact flips, identities,
reflection padding, lighting range, shapes and dtypes."""

import io

import numpy as np
import pytest
import tensorflow as tf
from conftest import SHARED_DATA
from PIL import Image

from jaxfast.vision import transforms as T

FULL = T.TransformConfig(p_affine=1.0, p_lighting=1.0)


def key(i):
    return tf.constant([i, 7], tf.int64)


def smooth_image(h=24, w=32, low=0.3):
    """float32 [h, w, 3] in [low, 1]: gradients that differ per channel (never black)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = [x / (w - 1), y / (h - 1), (x + y) / (w + h - 2)]
    return (low + (1 - low) * np.stack(chans, -1)).astype(np.float32)


def sample(image, matrix, out_hw, fill="REFLECT"):
    return T.apply_projective(tf.constant(image), matrix, out_hw, fill).numpy()


def test_same_key_same_output_other_key_differs():
    image = (smooth_image() * 255).astype(np.uint8)
    a = T.train_transform(tf.constant(image), key(1), 16, FULL).numpy()
    b = T.train_transform(tf.constant(image), key(1), 16, FULL).numpy()
    c = T.train_transform(tf.constant(image), key(2), 16, FULL).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def uniforms(n, name, i=0):
    """The `name` slot of n examples' draws."""
    return T.slot(T.draws(key(i), n), name)


def test_flip_is_exact():
    image = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    hw = (5, 7)
    always, never = tf.constant(0.3, tf.float64), tf.constant(0.7, tf.float64)
    around = lambda m: T.unit_to_window(hw) @ m @ T.pixel_to_unit(hw)
    np.testing.assert_array_equal(sample(image, around(T.flip_matrix(always, 0.5)), hw), image[:, ::-1])
    np.testing.assert_array_equal(sample(image, around(T.flip_matrix(always, 0.5, vertical=True)), hw), image[::-1])
    np.testing.assert_array_equal(sample(image, around(T.flip_matrix(never, 0.5)), hw), image)


def test_dihedral_gives_the_eight_symmetries():
    image = np.random.default_rng(5).random((6, 6, 3)).astype(np.float32)
    config = T.TransformConfig(flip_vert=True, max_rotate=0.0, max_zoom=1.0, max_warp=0.0)
    matrices = T.geometry_matrix(T.draws(key(0), 64), 6, config).numpy()
    seen = {sample(image, m, (6, 6)).tobytes() for m in matrices}
    symmetries = {np.rot90(flipped, k).tobytes() for flipped in (image, image[:, ::-1]) for k in range(4)}
    assert seen == symmetries


def test_flip_happens_about_half_the_time():
    signs = T.flip_matrix(uniforms(400, "flip")[0], 0.5).numpy()[:, 0, 0]
    assert set(signs.tolist()) == {-1.0, 1.0}
    assert 150 < (signs < 0).sum() < 250


def test_zero_magnitude_transforms_are_identity():
    image = np.random.default_rng(1).integers(0, 256, (12, 20, 3)).astype(np.uint8)
    zero = T.TransformConfig(do_flip=False, max_rotate=0.0, max_zoom=1.0, max_warp=0.0, max_lighting=0.0,
                             p_affine=1.0, p_lighting=1.0)
    for i in range(3):
        out = T.train_transform(tf.constant(image), key(i), (12, 20), zero).numpy()
        np.testing.assert_allclose(out, image / 255.0, atol=1e-6)
    hw = (12, 20)
    for matrix in (T.rotate_matrix(uniforms(5, "rotate"), 0.0, 1.0, hw), T.zoom_matrix(uniforms(5, "zoom"), 1.0, 1.0),
                   T.warp_matrix(uniforms(5, "warp"), 0.0, 1.0)):
        np.testing.assert_allclose(matrix.numpy(), np.broadcast_to(np.eye(3), (5, 3, 3)), atol=1e-12)
    x = smooth_image(low=0.0)
    for params in T.lighting_params(uniforms(3, "lighting"), 0.0, 1.0):
        np.testing.assert_allclose(T.apply_lighting(tf.constant(x), params).numpy(), x, atol=2e-6)


def test_probability_zero_never_transforms():
    eye = np.broadcast_to(np.eye(3), (20, 3, 3))
    for matrix in (T.rotate_matrix(uniforms(20, "rotate"), 10.0, 0.0, (8, 8)),
                   T.zoom_matrix(uniforms(20, "zoom"), 1.5, 0.0),
                   T.warp_matrix(uniforms(20, "warp"), 0.3, 0.0)):
        np.testing.assert_allclose(matrix.numpy(), eye, atol=1e-12)


def test_epoch_parameters_match_per_example_ones():
    u = T.draws(key(5), 6)
    batched = T.augment_params(u, (9, 13), FULL)
    for i in range(6):
        single = T.augment_params(u[i], (9, 13), FULL)
        for name in single:
            np.testing.assert_allclose(batched[name][i].numpy(), single[name].numpy(), rtol=1e-12)
    assert not np.allclose(batched["matrix"][0].numpy(), batched["matrix"][1].numpy())


def test_rotation_is_rigid_and_bounded():
    hw = (9, 15)
    to_px = np.diag([(hw[1] - 1) / 2, (hw[0] - 1) / 2, 1.0])
    angles = []
    for unit in T.rotate_matrix(uniforms(20, "rotate"), 10.0, 1.0, hw).numpy():
        px = (to_px @ unit @ np.linalg.inv(to_px))[:2, :2]  # the rotation in pixel units
        np.testing.assert_allclose(px @ px.T, np.eye(2), atol=1e-12)
        angles.append(np.degrees(np.arctan2(px[1, 0], px[0, 0])))
    assert max(np.abs(angles)) <= 10.0 + 1e-9 and min(angles) < -3 and max(angles) > 3


def test_zoom_samples_inside_the_image():
    corners = np.array([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]], float).T
    matrices = T.zoom_matrix(uniforms(30, "zoom"), 1.5, 1.0).numpy()
    for m in matrices:
        assert np.all(np.abs((m @ corners)[:2]) <= 1.0 + 1e-12)
    scales = 1.0 / matrices[:, 0, 0]
    assert 1.0 <= scales.min() and scales.max() <= 1.5 and scales.max() - scales.min() > 0.2


def test_square_to_quad_maps_the_four_corners():
    x = [tf.constant(v, tf.float64) for v in (-1.2, 0.8, 1.15, -1.1)]
    y = [tf.constant(v, tf.float64) for v in (-0.9, -1.1, 1.2, 1.05)]
    h = T.square_to_quad(x, y).numpy()
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float).T
    pts = h @ corners
    np.testing.assert_allclose((pts[:2] / pts[2]).T, np.stack([x, y], 1), atol=1e-12)


def test_warp_moves_corners_by_at_most_max_warp():
    corners = np.array([[-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float).T
    moved = []
    for m in T.warp_matrix(uniforms(30, "warp"), 0.2, 1.0).numpy():
        pts = m @ corners
        shift = np.abs(pts[:2] / pts[2] - corners[:2])
        assert shift.max() <= 0.2 + 1e-12
        moved.append(shift.max())
    assert max(moved) > 0.1


def test_random_crop_window_stays_inside():
    image = tf.constant(np.random.default_rng(4).random((10, 30, 3)).astype(np.float32))
    lefts = set()
    for u in T.draws(key(6), 12):
        matrix = T.place_window(T.unit_to_window((10, 10)) @ T.pixel_to_unit((10, 10)), u, tf.shape(image)[:2], 10)
        left = float(matrix[0, 2])
        assert 0 <= left <= 20 and float(matrix[1, 2]) == 0.0
        window = image.numpy()[:, int(left) : int(left) + 10]
        np.testing.assert_array_equal(sample(image.numpy(), matrix, (10, 10)), window)
        lefts.add(left)
    assert len(lefts) > 3


def test_reflection_padding_has_no_black_corners():
    image = smooth_image(32, 32, low=0.3)
    hw = (32, 32)
    c, s = np.cos(np.radians(10.0)), np.sin(np.radians(10.0))
    tilt_and_zoom_out = T._mat([[1.1 * c, -1.1 * s, 0.0], [1.1 * s, 1.1 * c, 0.0], [0.0, 0.0, 1.0]])
    matrix = T.unit_to_window(hw) @ tilt_and_zoom_out @ T.pixel_to_unit(hw)
    reflected = sample(image, matrix, hw)
    constant = sample(image, matrix, hw, fill="CONSTANT")
    assert constant[0, 0].max() == 0.0  # the corner is outside the input ...
    assert reflected.min() >= 0.3 - 1e-6  # ... and reflection fills it with image content
    full = T.train_transform(tf.constant((image * 255).astype(np.uint8)), key(4), 32, T.TransformConfig(
        max_warp=0.4, max_rotate=10.0, p_affine=1.0, max_lighting=0.0)).numpy()
    assert full.min() >= 0.3 - 2e-2


def test_lighting_stays_in_range_and_changes_the_image():
    image = tf.constant(np.random.default_rng(2).random((16, 16, 3)).astype(np.float32))
    image = tf.tensor_scatter_nd_update(image, [[0, 0], [0, 1]], tf.constant([[0.0] * 3, [1.0] * 3]))
    changes = []
    for params in T.lighting_params(uniforms(20, "lighting"), 0.8, 1.0):
        out = T.apply_lighting(image, params).numpy()
        assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()
        changes.append(float(np.abs(out - image.numpy()).mean()))
    assert max(changes) > 0.05


def test_output_shapes_and_dtypes():
    image = tf.constant(np.random.default_rng(3).integers(0, 256, (30, 50, 3)).astype(np.uint8))
    for size, method in [(16, "crop"), ((12, 20), "crop"), ((20, 12), "squish")]:
        for out in (T.train_transform(image, key(0), size, FULL, method), T.eval_transform(image, size, method)):
            assert out.dtype == tf.float32
            assert tuple(out.shape) == T.as_hw(size) + (3,)
            assert 0.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
    normed = T.normalize(T.eval_transform(image, 16), *T.IMAGENET_STATS)
    assert normed.dtype == tf.float32 and tuple(normed.shape) == (16, 16, 3)


def test_decode_grey_and_rgba_to_rgb_uint8():
    for mode, shape in [("L", (9, 11)), ("RGBA", (9, 11, 4))]:
        buffer = io.BytesIO()
        Image.fromarray(np.full(shape, 200, np.uint8), mode).save(buffer, "PNG")
        out = T.decode_image(tf.constant(buffer.getvalue()))
        assert out.dtype == tf.uint8 and tuple(out.shape) == (9, 11, 3)
        assert int(tf.reduce_min(out)) == 200


def test_center_crop_is_centred_and_crop_resize_covers():
    image = tf.constant(np.arange(6 * 10 * 3).reshape(6, 10, 3).astype(np.uint8))
    resized = T.resize(image, 6, "crop")
    assert tuple(resized.shape) == (6, 10, 3)  # shorter side fits, aspect kept
    np.testing.assert_allclose(T.center_crop(resized, 6).numpy(), resized.numpy()[:, 2:8])
    with pytest.raises(ValueError, match="resize method"):
        T.resize(image, 6, "stretch")


def test_real_image_augments_within_range():
    folder = SHARED_DATA / "camvid_tiny" / "images"
    if not folder.is_dir():
        pytest.skip(f"real images {folder} are absent")
    path = min(folder.glob("*.png"))
    image = T.decode_image(tf.io.read_file(str(path)))
    darkest = float(tf.reduce_min(image)) / 255.0
    geometry_only = T.TransformConfig(p_affine=1.0, max_warp=0.4, max_lighting=0.0)
    for i in range(4):
        out = T.train_transform(image, key(i), 64, geometry_only).numpy()
        assert out.shape == (64, 64, 3)
        # bilinear sampling of reflected content never goes below the darkest input pixel;
        # zero padding would put black triangles in the corners
        assert out.min() >= darkest - 1e-6, f"{path}: augmented image has pixels darker than the input"
    outs = [T.train_transform(image, key(i), 64, FULL).numpy() for i in range(2)]
    assert all(0.0 <= out.min() and out.max() <= 1.0 for out in outs)
    assert np.abs(outs[0] - outs[1]).mean() > 0.01


@pytest.mark.parametrize("mode", ["zeros", "border", "reflection"])
def test_rand_pad_shifts_by_whole_pixels_and_fills_by_the_padding_mode(mode):
    """fastai's rand_pad(2, 28, mode): the picture moves by at most 2 whole pixels each way and
    what comes in from outside is zeros, the edge pixels, or their mirror image."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(20, 236, size=(28, 28, 3)).astype(np.uint8)
    shifts = set()
    for seed in range(12):
        out = T.train_transform(tf.constant(pixels), tf.constant([seed, 7]), 28, T.rand_pad(2, mode)).numpy()
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if np.allclose(out[2:26, 2:26], pixels[2 + dy:26 + dy, 2 + dx:26 + dx] / 255.0, atol=1e-5)]
        assert len(found) == 1, (seed, found)
        dy, dx = found[0]
        shifts.add((dy, dx))
        padded = np.pad(pixels / 255.0, ((2, 2), (2, 2), (0, 0)),
                        mode={"zeros": "constant", "border": "edge", "reflection": "symmetric"}[mode])
        np.testing.assert_allclose(out, padded[2 + dy:30 + dy, 2 + dx:30 + dx], atol=1e-5)
    assert len(shifts) >= 5  # the crops really move around


def test_padding_mode_is_checked():
    with pytest.raises(ValueError, match="padding_mode"):
        T.get_transforms(padding_mode="wrap")
