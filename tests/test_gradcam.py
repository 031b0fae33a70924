"""Grad-CAM on a tiny CNN trained to name the colour of a bright square placed in a random
quadrant: the map for the true class must sit in the square's quadrant, and with two
squares each class's map must pick its own square. An untrained model fails these."""

import numpy as np
import pytest
from PIL import Image

from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.learner import Learner, TrainConfig
from jaxfast.models.registry import build_model
from jaxfast.vision.gradcam import grad_cam, plot_gradcam, split_cnn

SIZE, HALF, SQUARE = 32, 16, 6
COLOURS = np.eye(3, dtype=np.float32) * 0.9 + 0.1  # red, green, blue squares
CONFIG = {"body_arch": "simple_cnn", "n_classes": 3, "lin_ftrs": (32,), "ps": 0.0,
          "body_config": {"features": (16, 32, 32), "strides": (2, 2, 2), "bn": True}}


def put_square(image, quadrant, colour, rng):
    top = (quadrant // 2) * HALF + rng.integers(2, HALF - SQUARE - 1)
    left = (quadrant % 2) * HALF + rng.integers(2, HALF - SQUARE - 1)
    image[top : top + SQUARE, left : left + SQUARE] = COLOURS[colour]


def make_images(n, seed, squares=1):
    """Noise images with `squares` squares of different colours in different quadrants;
    returns images, colours [n, squares] and quadrants [n, squares]."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.2, (n, SIZE, SIZE, 3)).astype(np.float32)
    colours = np.stack([rng.permutation(3)[:squares] for _ in range(n)])
    quadrants = np.stack([rng.permutation(4)[:squares] for _ in range(n)])
    for image, cs, qs in zip(images, colours, quadrants):
        for c, q in zip(cs, qs):
            put_square(image, q, c, rng)
    return images, colours, quadrants


def quadrant_mass(cams, quadrants):
    """Share of each cam's total inside the given quadrant (0 for an all-zero cam)."""
    out = []
    for cam, q in zip(cams, quadrants):
        top, left = (q // 2) * HALF, (q % 2) * HALF
        total = cam.sum()
        out.append(cam[top : top + HALF, left : left + HALF].sum() / total if total > 0 else 0.0)
    return np.array(out)


@pytest.fixture(scope="module")
def trained():
    x, colours, _ = make_images(512, 0)
    xv, cv, _ = make_images(64, 1)
    model = build_model("cnn", CONFIG)
    data = DataBunch(ArrayLoader(x, colours[:, 0].astype(np.int32), 32, shuffle=True, drop_last=True),
                     ArrayLoader(xv, cv[:, 0].astype(np.int32), 32))
    learn = Learner(model, data, metrics=["accuracy"], config=TrainConfig(progress=False), log=lambda s: None)
    untrained = learn.state.variables()
    learn.fit_one_cycle(3, 1e-2)  # 48 steps
    assert learn.validate()["accuracy"] > 0.9
    return model, learn.state.variables(), untrained


def test_split_reproduces_the_model(trained):
    model, variables, _ = trained
    x, _, _ = make_images(4, 2)
    features, head = split_cnn(model)
    acts = features(variables, x)
    assert acts.shape == (4, 4, 4, 32)
    np.testing.assert_allclose(head(variables, acts), model.apply(variables, x, train=False), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="needs a CNN\\(body, head\\) model, got SimpleCNN"):
        split_cnn(model.body)


def test_cam_of_the_true_class_sits_on_the_square(trained):
    model, variables, untrained = trained
    x, colours, quadrants = make_images(64, 3)
    cams, used = grad_cam(model, variables, x, colours[:, 0])
    assert cams.shape == (64, SIZE, SIZE) and used.tolist() == colours[:, 0].tolist()
    assert cams.min() >= 0.0 and np.allclose(cams.max(axis=(1, 2)), 1.0)
    mass = quadrant_mass(cams, quadrants[:, 0])
    peaks = [divmod(int(cam.argmax()), SIZE) for cam in cams]
    peak_quadrant = np.array([(r // HALF) * 2 + c // HALF for r, c in peaks])
    assert mass.mean() > 0.5 and (peak_quadrant == quadrants[:, 0]).mean() >= 0.9
    _, predicted = grad_cam(model, variables, x)  # classes=None: the predicted class
    assert (predicted == colours[:, 0]).mean() > 0.9
    untrained_mass = quadrant_mass(grad_cam(model, untrained, x, colours[:, 0])[0], quadrants[:, 0])
    assert untrained_mass.mean() < mass.mean() - 0.15


def test_each_class_picks_its_own_square(trained):
    model, variables, untrained = trained
    x, colours, quadrants = make_images(32, 4, squares=2)
    for first, second in ((0, 1), (1, 0)):
        cams, _ = grad_cam(model, variables, x, colours[:, first])
        own, other = quadrant_mass(cams, quadrants[:, first]), quadrant_mass(cams, quadrants[:, second])
        assert (own > other).mean() >= 0.9 and own.mean() > 3 * other.mean()
    cams, _ = grad_cam(model, untrained, x, colours[:, 0])
    own, other = quadrant_mass(cams, quadrants[:, 0]), quadrant_mass(cams, quadrants[:, 1])
    assert (own > other).mean() < 0.9


def test_overlay_png(trained, tmp_path):
    model, variables, _ = trained
    x, _, _ = make_images(3, 5)
    cams, used = grad_cam(model, variables, x, 2)  # one class for every image
    assert used.tolist() == [2, 2, 2]
    path = plot_gradcam(x, cams, tmp_path / "cam.png", titles=["red", "green", "blue"])
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
    single = plot_gradcam(x[0], cams[0], tmp_path / "one.png", stats=((0.0,) * 3, (1.0,) * 3))
    assert single.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"cams \(3, 16, 16\) do not match images \(3, 32, 32, 3\)"):
        plot_gradcam(x, cams[:, ::2, ::2], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"NHWC image batch, got shape \(32, 32, 3\)"):
        grad_cam(model, variables, x[0])
    with pytest.raises(ValueError, match=r"classes must be in \[0, 3\), got \[0, 3, 1\]"):
        grad_cam(model, variables, x, [0, 3, 1])
