"""fastai v1's image transforms as small tf ops, each keyed by a stateless seed.

Geometry (random crop, flip, rotate, zoom, perspective warp) is a chain of 3x3
matrices that map *output* pixel coordinates to *input* ones; the product is sampled
once with `ImageProjectiveTransformV3` (bilinear, reflection padding), as fastai
composes its affine/coord transforms into one grid sample. Matrices are built in
float64 and cast at the end, so a flip or an identity lands exactly on pixel centres.
Lighting works in logit space (fastai's brightness/contrast), so values stay in (0, 1).
Masks and points follow the same matrices (jaxfast.vision.target_transforms).

Randomness: `draws(key, n)` gives each of n examples N_DRAWS stateless uniforms (a key
is a [2] int tensor, a `tf.random.stateless_*` seed) and each transform reads its own
slot. The matrix and lighting functions are vectorised over leading dimensions, so the
pipeline computes a whole epoch's parameters in one go from key (seed, epoch), row =
example index, and the per-image graph only resizes, places the crop and samples.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
RESIZE_METHODS = ("crop", "squish", "pad")
# fastai's padding modes -> TF's fill modes for the projective sampler.
PADDING_MODES = {"reflection": "REFLECT", "border": "NEAREST", "zeros": "CONSTANT"}


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """fastai v1's `get_transforms` settings (defaults are fastai's)."""

    do_flip: bool = True
    flip_vert: bool = False  # fastai's dihedral: also flip top-bottom and transpose (8 symmetries)
    max_rotate: float = 10.0  # degrees
    max_zoom: float = 1.1
    max_lighting: float = 0.2
    max_warp: float = 0.2
    p_affine: float = 0.75
    p_lighting: float = 0.75
    pad: int = 0  # fastai's rand_pad(pad, size): pad by `pad` pixels, then a random crop back to size
    padding_mode: str = "reflection"  # reflection (mirrored at the border) | border (edge pixels) | zeros

    def __post_init__(self):
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {tuple(PADDING_MODES)}, got {self.padding_mode!r}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0 pixels, got {self.pad}")
        if self.max_zoom < 1.0:
            raise ValueError(f"max_zoom must be >= 1, got {self.max_zoom}")
        if not 0.0 <= self.max_lighting < 1.0:
            raise ValueError(f"max_lighting must be in [0, 1), got {self.max_lighting}")
        for name in ("p_affine", "p_lighting"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")


def get_transforms(**overrides) -> TransformConfig:
    """fastai's `get_transforms(...)`: the default training augmentation, with overrides."""
    return TransformConfig(**overrides)


def rand_pad(padding: int, mode: str = "reflection") -> TransformConfig:
    """fastai's `rand_pad(padding, size, mode)` alone (lesson 7's MNIST): pad by `padding`
    pixels, then crop back to the loader's size at a random place; no other augmentation."""
    return TransformConfig(do_flip=False, max_rotate=0.0, max_zoom=1.0, max_lighting=0.0, max_warp=0.0,
                           pad=padding, padding_mode=mode)


FASTAI_TRANSFORMS = TransformConfig()
NO_AUGMENTATION = TransformConfig(
    do_flip=False, max_rotate=0.0, max_zoom=1.0, max_lighting=0.0, max_warp=0.0
)


def as_hw(size) -> tuple[int, int]:
    """(height, width) from an int or a (height, width) pair."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {size}")
    return int(h), int(w)


# ---- decode, resize, crop, normalise ------------------------------------------------
def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 [H, W, 3] (grey expanded, alpha dropped)."""
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] (or float) -> float32 in [0, 1]."""
    if image.dtype == tf.uint8:
        return tf.cast(image, tf.float32) / 255.0
    return tf.cast(image, tf.float32)


def resized_shape(hw: tf.Tensor, size, method: str = "crop") -> tf.Tensor:
    """int32 [2] (height, width) that `resize` gives an [hw] image: 'crop' covers `size` (the
    shorter side fits, cropped afterwards), 'squish' is `size`, 'pad' fits inside `size` (the
    longer side fits; padded afterwards, fastai's ResizeMethod.PAD)."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method must be one of {RESIZE_METHODS}, got {method!r}")
    out_h, out_w = as_hw(size)
    if method == "squish":
        return tf.constant([out_h, out_w])
    hw = tf.cast(hw, tf.float64)
    ratios = tf.constant([out_h, out_w], tf.float64) / hw
    if method == "pad":
        scaled = tf.cast(tf.math.round(hw * tf.reduce_min(ratios)), tf.int32)
        return tf.maximum(tf.minimum(scaled, [out_h, out_w]), 1)
    return tf.maximum(tf.cast(tf.math.ceil(hw * tf.reduce_max(ratios) - 1e-6), tf.int32), [out_h, out_w])


def resize(image: tf.Tensor, size, method: str = "crop") -> tf.Tensor:
    """Resize to `resized_shape` (see there for the methods). Antialiased bilinear, float32 out;
    an image already that size is only converted (the same values, 5 ms less at 360x480)."""
    target = resized_shape(tf.shape(image)[:2], size, method)
    same = tf.reduce_all(tf.equal(target, tf.shape(image)[:2]))
    resized = tf.cond(same, lambda: to_float(image),
                      lambda: tf.image.resize(to_float(image), target, method="bilinear", antialias=True))
    return tf.clip_by_value(resized, 0.0, 1.0)


def center_crop(image: tf.Tensor, size) -> tf.Tensor:
    """The central `size` window of an image at least that large (`centre_matrix` as a slice)."""
    out_h, out_w = as_hw(size)
    shape = tf.shape(image)
    top, left = (shape[0] - out_h) // 2, (shape[1] - out_w) // 2
    return image[top : top + out_h, left : left + out_w, :]


def normalize(image: tf.Tensor, mean, std) -> tf.Tensor:
    """(image - mean) / std per channel."""
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


# ---- random draws -------------------------------------------------------------------
# Each example gets N_DRAWS uniforms; every transform reads its own slot of them.
SLOTS = {"crop": (0, 2), "flip": (2, 1), "vflip": (3, 1), "rotate": (4, 2), "zoom": (6, 4),
         "warp": (10, 5), "lighting": (15, 4), "transpose": (19, 1), "pad": (20, 2)}
FIRST_DRAWS, N_DRAWS = 20, 22


def draws(key: tf.Tensor, n: int) -> tf.Tensor:
    """float64 uniforms [n, N_DRAWS] from a stateless key: row i belongs to example i. The
    slots added later (rand_pad's) come from a key of their own, so that the earlier slots
    draw what they always drew."""
    first = tf.random.stateless_uniform([n, FIRST_DRAWS], seed=key, dtype=tf.float64)
    later_key = tf.random.experimental.stateless_fold_in(tf.cast(key, tf.int64), 1)
    later = tf.random.stateless_uniform([n, N_DRAWS - FIRST_DRAWS], seed=later_key, dtype=tf.float64)
    return tf.concat([first, later], axis=1)


def slot(u: tf.Tensor, name: str) -> list[tf.Tensor]:
    """The uniforms of transform `name` from draws u [..., N_DRAWS], one tensor [...] each."""
    first, count = SLOTS[name]
    return [u[..., first + i] for i in range(count)]


# ---- geometry as 3x3 output->input matrices [..., 3, 3] ------------------------------
def _mat(rows, like: tf.Tensor | None = None) -> tf.Tensor:
    """A float64 [..., 3, 3] matrix from rows of numbers and tensors shaped like `like`."""
    if like is None:
        return tf.constant(rows, tf.float64)
    ones = tf.ones_like(like, tf.float64)
    values = [tf.cast(v, tf.float64) if isinstance(v, tf.Tensor) else ones * v for row in rows for v in row]
    stacked = tf.stack(values, axis=-1)
    return tf.reshape(stacked, tf.concat([tf.shape(like), [3, 3]], 0))


def pixel_to_unit(hw) -> tf.Tensor:
    """Pixel coordinates of an [h, w] grid -> [-1, 1] (corner pixel centres at +-1)."""
    h, w = hw
    sx, sy = 2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)
    return _mat([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]])


def unit_to_window(hw, top: float = 0.0, left: float = 0.0) -> tf.Tensor:
    """[-1, 1] -> pixel coordinates of an [h, w] window at (top, left) of the input."""
    h, w = hw
    ax, ay = max(w - 1, 1) / 2.0, max(h - 1, 1) / 2.0
    return _mat([[ax, 0.0, ax + left], [0.0, ay, ay + top], [0.0, 0.0, 1.0]])


def flip_matrix(u: tf.Tensor, p: float = 0.5, vertical: bool = False) -> tf.Tensor:
    """Mirror left-right (or top-bottom) when u < p, in unit coordinates."""
    sign = tf.where(u < p, -1.0, 1.0)
    if vertical:
        return _mat([[1.0, 0.0, 0.0], [0.0, sign, 0.0], [0.0, 0.0, 1.0]], u)
    return _mat([[sign, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], u)


def transpose_matrix(u: tf.Tensor, p: float = 0.5) -> tf.Tensor:
    """Swap x and y (in unit coordinates) when u < p: with both flips, fastai's dihedral."""
    t = tf.cast(u < p, tf.float64)
    return _mat([[1.0 - t, t, 0.0], [t, 1.0 - t, 0.0], [0.0, 0.0, 1.0]], u)


def rotate_matrix(u: list[tf.Tensor], max_deg: float, p: float, hw) -> tf.Tensor:
    """Rotate by uniform(-max_deg, max_deg) degrees about the centre with probability p.

    Done in pixel units (conjugated by the aspect ratio) so non-square images rotate rigidly.
    """
    happens, magnitude = u
    angle = tf.where(happens < p, (2.0 * magnitude - 1.0) * max_deg, 0.0) * (math.pi / 180.0)
    c, s = tf.cos(angle), tf.sin(angle)
    h, w = hw
    ratio = max(h - 1, 1) / max(w - 1, 1)  # unit-y per unit-x in pixels
    return _mat([[c, -s * ratio, 0.0], [s / ratio, c, 0.0], [0.0, 0.0, 1.0]], angle)


def zoom_matrix(u: list[tf.Tensor], max_zoom: float, p: float) -> tf.Tensor:
    """Zoom in by uniform(1, max_zoom) at a uniform position with probability p."""
    happens, magnitude, col, row = u
    scale = tf.where(happens < p, 1.0 + magnitude * (max_zoom - 1.0), 1.0)
    room = 1.0 - 1.0 / scale
    tx, ty = room * (2.0 * col - 1.0), room * (2.0 * row - 1.0)
    return _mat([[1.0 / scale, 0.0, tx], [0.0, 1.0 / scale, ty], [0.0, 0.0, 1.0]], scale)


def square_to_quad(x: list[tf.Tensor], y: list[tf.Tensor]) -> tf.Tensor:
    """The projective matrix taking the corners (-1,-1), (1,-1), (1,1), (-1,1) to the points
    (x[i], y[i]), i = 0..3, in closed form (Heckbert's square-to-quad)."""
    dx1, dx2, dx3 = x[1] - x[2], x[3] - x[2], x[0] - x[1] + x[2] - x[3]
    dy1, dy2, dy3 = y[1] - y[2], y[3] - y[2], y[0] - y[1] + y[2] - y[3]
    den = dx1 * dy2 - dx2 * dy1
    g, h = (dx3 * dy2 - dx2 * dy3) / den, (dx1 * dy3 - dx3 * dy1) / den
    from_unit_square = _mat([
        [x[1] - x[0] + g * x[1], x[3] - x[0] + h * x[3], x[0]],
        [y[1] - y[0] + g * y[1], y[3] - y[0] + h * y[3], y[0]],
        [g, h, 1.0],
    ], g)
    return from_unit_square @ _mat([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])


def warp_matrix(u: list[tf.Tensor], max_warp: float, p: float) -> tf.Tensor:
    """fastai's symmetric_warp: corners pushed by 4 uniform(-max_warp, max_warp) magnitudes."""
    happens, *mags = u
    m = [tf.where(happens < p, (2.0 * v - 1.0) * max_warp, 0.0) for v in mags]
    # fastai's targets for the corners (-1,-1), (1,-1), (1,1), (-1,1)
    x = [-1.0 - m[3], 1.0 + m[3], 1.0 + m[2], -1.0 - m[2]]
    y = [-1.0 - m[1], -1.0 - m[0], 1.0 + m[0], 1.0 + m[1]]
    return square_to_quad(x, y)


def geometry_matrix(u: tf.Tensor, out_hw, config: TransformConfig) -> tf.Tensor:
    """Output pixel -> window pixel matrices [..., 3, 3] of flip, rotate, zoom and warp
    from draws u [..., N_DRAWS]; `place_window` then moves them onto the crop window."""
    hw = as_hw(out_hw)
    geometric = flip_matrix(slot(u, "flip")[0], 0.5 if config.do_flip else 0.0)
    if config.flip_vert:
        geometric = geometric @ flip_matrix(slot(u, "vflip")[0], 0.5, vertical=True)
        geometric = geometric @ transpose_matrix(slot(u, "transpose")[0], 0.5)
    geometric = geometric @ rotate_matrix(slot(u, "rotate"), config.max_rotate, config.p_affine, hw)
    geometric = geometric @ zoom_matrix(slot(u, "zoom"), config.max_zoom, config.p_affine)
    geometric = geometric @ warp_matrix(slot(u, "warp"), config.max_warp, config.p_affine)
    return unit_to_window(hw) @ geometric @ pixel_to_unit(hw) @ pad_shift_matrix(slot(u, "pad"), config.pad)


def pad_shift_matrix(u: list[tf.Tensor], pad: int) -> tf.Tensor:
    """fastai's rand_pad(pad, size) as a whole-pixel shift of the output by up to `pad` pixels
    each way (padding by `pad`, then cropping `size` at a random place, is the same picture);
    what comes in from outside is filled by the padding mode."""
    dx, dy = (tf.round((2.0 * v - 1.0) * pad) for v in u)
    return _mat([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]], like=u[0])


def place_window(matrix: tf.Tensor, u: tf.Tensor, in_hw: tf.Tensor, out_hw) -> tf.Tensor:
    """Shift one [3, 3] matrix onto a random `out_hw` window of an `in_hw` image (fastai's
    random crop: row and column fractions from the 'crop' slot of draws u [N_DRAWS]). A
    window larger than the image (resize 'pad') holds the image at a random place instead."""
    slack = tf.cast(in_hw, tf.float64) - tf.constant(as_hw(out_hw), tf.float64)
    top, left = tf.unstack(tf.floor(slack * tf.stack(slot(u, "crop"))))
    return matrix + tf.stack([left, top, tf.constant(0.0, tf.float64)])[:, None] * matrix[2][None, :]


def centre_matrix(in_hw: tf.Tensor, out_hw) -> tf.Tensor:
    """Output pixel -> input pixel of the central `out_hw` window of an `in_hw` image; a
    window larger than the image pads it evenly (offsets floor((in - out) / 2))."""
    slack = tf.cast(in_hw, tf.float64) - tf.constant(as_hw(out_hw), tf.float64)
    top, left = tf.unstack(tf.floor(slack / 2.0))
    zero, one = tf.constant(0.0, tf.float64), tf.constant(1.0, tf.float64)
    return tf.reshape(tf.stack([one, zero, left, zero, one, top, zero, zero, one]), [3, 3])


def apply_projective(image: tf.Tensor, matrix: tf.Tensor, out_hw, fill_mode: str = "REFLECT",
                     interpolation: str = "BILINEAR", fill_value: float = 0.0) -> tf.Tensor:
    """Sample [H, W, C] at `matrix` @ (x, y, 1) for every output pixel (x = column, y = row;
    integer coordinates are pixel centres). Outside the image: `fill_mode` (REFLECT, or
    CONSTANT with `fill_value`). NEAREST interpolation keeps label values exact."""
    flat = tf.reshape(matrix / matrix[2, 2], [9])[:8]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(flat, tf.float32)[None],
        output_shape=tf.constant(as_hw(out_hw), tf.int32), fill_value=tf.constant(fill_value, tf.float32),
        interpolation=interpolation, fill_mode=fill_mode,
    )
    return out[0]


# ---- lighting -------------------------------------------------------------------------
def lighting_params(u: list[tf.Tensor], max_lighting: float, p: float) -> tf.Tensor:
    """[..., 2] (logit shift, scale): fastai's brightness then contrast, each with probability p."""
    bright_happens, bright, contrast_happens, contrast = u
    change = tf.where(bright_happens < p, 0.5 * (1.0 + max_lighting * (2.0 * bright - 1.0)), 0.5)
    low, high = math.log(1.0 - max_lighting), -math.log(1.0 - max_lighting)
    scale = tf.where(contrast_happens < p, tf.exp(low + (high - low) * contrast), 1.0)
    return tf.stack([tf.math.log(change / (1.0 - change)), scale], axis=-1)


def apply_lighting(image: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """sigmoid((logit(x) + shift) * scale): stays in (0, 1)."""
    shift, scale = tf.unstack(tf.cast(params, tf.float32))
    x = tf.clip_by_value(image, 1e-6, 1.0 - 1e-6)
    return tf.sigmoid((tf.math.log(x / (1.0 - x)) + shift) * scale)


# ---- the whole per-image chain ------------------------------------------------------------
def augment_params(u: tf.Tensor, size, config: TransformConfig) -> dict:
    """Everything random about augmenting examples with draws u [..., N_DRAWS] (vectorised,
    so a pipeline computes a whole epoch's at once): geometry matrices, lighting, draws."""
    return {
        "matrix": geometry_matrix(u, size, config),
        "lighting": lighting_params(slot(u, "lighting"), config.max_lighting, config.p_lighting),
        "draws": u,
    }


def apply_augment(image: tf.Tensor, params: dict, size, config: TransformConfig, method: str = "crop") -> tf.Tensor:
    """Decoded image + one example's augment_params -> float32 [h, w, 3] in [0, 1]."""
    resized = resize(image, size, method)
    matrix = place_window(params["matrix"], params["draws"], tf.shape(resized)[:2], size)
    out = apply_projective(resized, matrix, size, PADDING_MODES[config.padding_mode])
    if config.max_lighting > 0 and config.p_lighting > 0:
        out = apply_lighting(out, params["lighting"])
    return tf.clip_by_value(out, 0.0, 1.0)


def train_transform(image: tf.Tensor, key, size, config: TransformConfig, method: str = "crop") -> tf.Tensor:
    """Decoded uint8 image -> augmented float32 [h, w, 3] in [0, 1], all draws from `key`."""
    return apply_augment(image, augment_params(draws(key, 1)[0], size, config), size, config, method)


def eval_transform(image: tf.Tensor, size, method: str = "crop") -> tf.Tensor:
    """Decoded image -> resized and centre-cropped (or, 'pad', reflection-padded) float32
    [h, w, 3] in [0, 1]."""
    resized = resize(image, size, method)
    if method == "pad":
        return apply_projective(resized, centre_matrix(tf.shape(resized)[:2], size), size)
    return center_crop(resized, size)
