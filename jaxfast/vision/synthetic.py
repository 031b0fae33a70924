"""Generated image classes for the tiny variants and tests: learnable at any size, no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PET_BREEDS = ("Abyssinian", "beagle", "Bengal", "pug")  # cats capitalised, dogs not, as in the pets
PALETTE = np.array([[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 210, 40], [200, 60, 220], [40, 210, 210]])


def synthetic_image(rng: np.random.Generator, label: int, hw: tuple[int, int]) -> np.ndarray:
    """uint8 [h, w, 3]: noise with a coloured shape, colour and shape given by `label`
    (even: disc, odd: square) at a random place and size; learnable at any scale."""
    h, w = hw
    image = rng.integers(0, 70, (h, w, 3))
    radius = rng.uniform(0.22, 0.35) * min(h, w)
    cy, cx = rng.uniform(radius, h - radius), rng.uniform(radius, w - radius)
    yy, xx = np.mgrid[:h, :w]
    if label % 2 == 0:
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    else:
        inside = (abs(yy - cy) <= radius) & (abs(xx - cx) <= radius)
    image[inside] = PALETTE[label % len(PALETTE)] + rng.integers(-25, 25, (inside.sum(), 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_pets(folder: Path, per_class: int = 12, seed: int = 0) -> Path:
    """fastai's pets layout, folder/images/<Breed>_<n>.jpg, with generated images of
    varied sizes for PET_BREEDS; returns `folder` (files already there are kept)."""
    from PIL import Image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for label, breed in enumerate(PET_BREEDS):
        for n in range(1, per_class + 1):
            hw = (int(rng.integers(36, 60)), int(rng.integers(36, 60)))
            pixels = synthetic_image(rng, label, hw)
            path = images / f"{breed}_{n}.jpg"
            if not path.exists():
                Image.fromarray(pixels).save(path, quality=95)
    return folder
