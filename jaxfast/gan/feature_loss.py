"""Lesson 7's perceptual "feature loss" for image restoration, as a per-example loss.

fastai's FeatureLoss (lesson7-superres): pixel L1 + for each hooked VGG16-bn layer
`w * L1(features)` + `w**2 * 5e3 * L1(gram matrices)`, with the ReLUs before max-pools
3, 4 and 5 (`features` 22, 32, 42) weighted [5, 15, 2]. The VGG is frozen: its variables
are held as constants behind `stop_gradient`, BN runs on its running statistics, and the
target's features carry no gradient, so only the predictions are differentiated.

Predictions and targets are images in the lesson's normalisation (ImageNet statistics,
`jaxfast.vision.transforms.IMAGENET_STATS`, as `normalize(imagenet_stats, do_y=True)`
makes them), NHWC, and go to the VGG as they are. Every term is a mean over the example's
elements, so `loss(preds, targets).mean()` equals fastai's batch loss, and the [B] vector
follows jaxfast's per-example convention (`jaxfast.losses`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxfast.errors import InputError
from jaxfast.models.vgg import FEATURE_LOSS_LAYERS, VGG, load_vgg16_bn

LESSON7_LAYER_WEIGHTS = (5.0, 15.0, 2.0)
GRAM_SCALE = 5e3

log = logging.getLogger(__name__)


def gram_matrix(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C, C]: x^T x / (C*H*W), fastai's gram_matrix in NHWC."""
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    return jnp.einsum("bpc,bpd->bcd", flat, flat) / (c * h * w)


def _mean_abs(diff: jax.Array) -> jax.Array:
    return jnp.mean(jnp.abs(diff), axis=tuple(range(1, diff.ndim)))


class FeatureLoss:
    """`loss(preds, targets) -> [B]`; `parts(...)` gives each term ('pixel', 'feat_i',
    'gram_i', fastai's LossMetrics names). With `vgg_variables=None` it is the pixel L1 loss
    alone, and `message` says so. Hashed by identity (a static field of jaxfast's Task)."""

    def __init__(self, vgg_variables: dict | None, layer_ids: Sequence[int] = FEATURE_LOSS_LAYERS,
                 layer_weights: Sequence[float] = LESSON7_LAYER_WEIGHTS, gram_scale: float = GRAM_SCALE,
                 source: str = "the given VGG16-bn variables"):
        if len(layer_ids) != len(layer_weights):
            raise InputError(f"feature loss: {len(layer_ids)} layer ids {tuple(layer_ids)} but "
                             f"{len(layer_weights)} weights {tuple(layer_weights)}")
        self.layer_ids = tuple(int(i) for i in layer_ids)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.gram_scale = float(gram_scale)
        if vgg_variables is None:
            self.vgg, self.variables = None, None
            self.message = ("feature loss: no VGG16-bn weights (--vgg-weights), so the loss is the pixel L1 "
                            "alone (lesson 7's feature and gram terms are left out)")
            log.warning(self.message)
        else:
            self.vgg = VGG(hooked_layers=self.layer_ids)
            self.variables = jax.tree.map(jnp.asarray, {k: vgg_variables[k] for k in ("params", "batch_stats")})
            self.message = (f"feature loss: pixel L1 + VGG16-bn features {self.layer_ids} weighted "
                            f"{self.layer_weights} (+ gram x w^2 x {self.gram_scale:g}) from {source}")

    def _features(self, variables, images):
        return self.vgg.apply(variables, images, train=False)

    def parts(self, preds: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
        """Each weighted term of the loss per example, float32 [B]."""
        if preds.ndim != 4 or preds.shape != targets.shape or preds.shape[-1] != 3:
            raise InputError(f"feature loss: preds {tuple(preds.shape)} and targets {tuple(targets.shape)} "
                             "must both be [B, H, W, 3] images")
        preds = preds.astype(jnp.float32)
        targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
        out = {"pixel": _mean_abs(preds - targets)}
        if self.vgg is None:
            return out
        variables = jax.lax.stop_gradient(self.variables)
        in_feats = self._features(variables, preds)
        out_feats = jax.lax.stop_gradient(self._features(variables, targets))
        for i, (f_in, f_out, w) in enumerate(zip(in_feats, out_feats, self.layer_weights)):
            out[f"feat_{i}"] = _mean_abs(f_in - f_out) * w
        for i, (f_in, f_out, w) in enumerate(zip(in_feats, out_feats, self.layer_weights)):
            out[f"gram_{i}"] = _mean_abs(gram_matrix(f_in) - gram_matrix(f_out)) * (w**2 * self.gram_scale)
        return out

    def __call__(self, preds: jax.Array, targets: jax.Array) -> jax.Array:
        return sum(self.parts(preds, targets).values())


def make_feature_loss(vgg_variables: dict | None = None, **kwargs) -> FeatureLoss:
    """Lesson 7's feature loss on frozen VGG16-bn `vgg_variables` ({'params', 'batch_stats'}
    as `jaxfast.models.vgg.load_vgg16_bn` gives them); None: pixel L1 (logged, in `.message`)."""
    return FeatureLoss(vgg_variables, **kwargs)


def feature_loss_from_file(path: str | Path | None, **kwargs) -> FeatureLoss:
    """The feature loss with torchvision-layout VGG16-bn weights read from `path` (a `.pth`
    or `.safetensors`); `path=None` gives the pixel-L1 fallback."""
    if path is None:
        return FeatureLoss(None, **kwargs)
    layer_ids = kwargs.get("layer_ids", FEATURE_LOSS_LAYERS)
    _, variables, message = load_vgg16_bn(path, VGG(hooked_layers=tuple(layer_ids)))
    return FeatureLoss(variables, source=message, **kwargs)
