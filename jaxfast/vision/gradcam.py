"""Grad-CAM (lesson 6) for `CNN(body, head)` models, the Flax way.

The body and the head run as two `model.apply(..., method=...)` calls, so the last
activation map A of the body [N, h, w, C] is an ordinary JAX value and the gradient of
the class score (the logit) with respect to it is `jax.grad` of the head alone:
weights = mean over (h, w) of that gradient, cam = relu(sum_c w_c A_c), resized
(bilinear) to the image and scaled to [0, 1] per image. Other models can pass their own
`split` = (features_fn(variables, images), head_fn(variables, activation map)).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxfast.interpret import agg_pyplot, denormalize
from jaxfast.show import save_figure


def _body(module, x, train):
    return module.body(x, train)


def _head(module, features, train):
    return module.head(features, train)


def split_cnn(model) -> tuple[Callable, Callable]:
    """((variables, images) -> body activation map, (variables, map) -> logits) of a `CNN(body, head)`."""
    if not (hasattr(model, "body") and hasattr(model, "head")):
        raise TypeError(f"Grad-CAM needs a CNN(body, head) model, got {type(model).__name__}; "
                        "pass split=(features_fn, head_fn) for other models")

    def features(variables, x):
        return model.apply(variables, x, False, method=_body)

    def head(variables, a):
        return model.apply(variables, a, False, method=_head)

    return features, head


def grad_cam(model, variables, images, classes=None, *, split=None) -> tuple[np.ndarray, np.ndarray]:
    """(cams [N, H, W] in [0, 1], class index used per image) for NHWC `images`.

    `classes`: an int, one int per image, or None for each image's predicted class.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"grad_cam expects an NHWC image batch, got shape {tuple(images.shape)}")
    features_fn, head_fn = split if split is not None else split_cnn(model)
    n, height, width = images.shape[:3]
    if classes is None:
        wanted = jnp.full((n,), -1, jnp.int32)
    else:
        n_classes = jax.eval_shape(lambda v, x: head_fn(v, features_fn(v, x)), variables, images).shape[-1]
        wanted = jnp.broadcast_to(jnp.asarray(classes, jnp.int32), (n,))
        if int(wanted.min()) < 0 or int(wanted.max()) >= n_classes:
            raise ValueError(f"Grad-CAM classes must be in [0, {n_classes}), got {np.asarray(classes).tolist()}")

    @jax.jit
    def run(variables, images, wanted):
        acts = features_fn(variables, images)
        if acts.ndim != 4:
            raise ValueError(f"Grad-CAM needs a spatial activation map [N, h, w, C], got shape {acts.shape}")

        def score(a):
            logits = head_fn(variables, a)
            cls = jnp.where(wanted >= 0, wanted, jnp.argmax(jax.lax.stop_gradient(logits), axis=-1))
            return jnp.take_along_axis(logits, cls[:, None], axis=1).sum(), cls

        grads, cls = jax.grad(score, has_aux=True)(acts)
        weights = grads.mean(axis=(1, 2))  # [N, C]
        cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", acts, weights))
        cam = jax.image.resize(cam, (n, height, width), "linear")
        top = cam.max(axis=(1, 2), keepdims=True)
        return jnp.where(top > 0, cam / jnp.where(top > 0, top, 1.0), 0.0), cls

    cams, cls = run(variables, images, wanted)
    return np.asarray(cams), np.asarray(cls)


def plot_gradcam(images, cams, path: str | Path, titles=None, stats=None, alpha: float = 0.6, cmap: str = "jet",
                 ncols: int = 4) -> Path:
    """Each image (NHWC, or one HWC; `stats` undo normalisation) with its cam overlaid."""
    images, cams = np.asarray(images), np.asarray(cams)
    if images.ndim == 3:
        images, cams = images[None], cams.reshape((1, *cams.shape[-2:]))
    if cams.shape != images.shape[:3]:
        raise ValueError(f"cams {cams.shape} do not match images {images.shape} (expected {images.shape[:3]})")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    plt = agg_pyplot()
    shown = denormalize(images, stats)
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image, cam) in enumerate(zip(axes.flat, shown, cams)):
        h, w = cam.shape
        if image.shape[-1] == 1:
            ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0))
        else:
            ax.imshow(image, extent=(0, w, h, 0))
        ax.imshow(cam, alpha=alpha, cmap=cmap, vmin=0.0, vmax=1.0, extent=(0, w, h, 0), interpolation="bilinear")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return save_figure(fig, path)
