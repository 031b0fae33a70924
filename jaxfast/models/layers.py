"""Layers and initialisers shared by several model families (no training code here).

PyTorch's defaults as fastai uses them: BatchNorm momentum 0.1 (Flax counts the kept
share: 0.9) and eps 1e-5; kaiming-normal inits; fastai's embedding init and size rule;
the scaled sigmoid of `y_range`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch's kaiming_normal_: fan_out for torchvision's convs, fan_in (the default) for fastai's.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
KAIMING_FAN_IN = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def batch_norm(train: bool, name: str, bias_init=nn.initializers.zeros, scale_init=nn.initializers.ones) -> nn.BatchNorm:
    """PyTorch's BatchNorm1d/2d defaults (momentum 0.1 = Flax 0.9, eps 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        bias_init=bias_init, scale_init=scale_init, name=name)


def scale_to_range(x: jax.Array, y_range) -> jax.Array:
    """sigmoid(x) * (hi - lo) + lo, or x itself when y_range is None (fastai's SigmoidRange)."""
    if y_range is None:
        return x
    lo, hi = y_range
    return jax.nn.sigmoid(x) * (hi - lo) + lo


def trunc_normal(std: float = 0.01):
    """fastai v1's embedding init: normal(0, 1) folded by fmod(2), times `std`."""

    def init(key, shape, dtype=jnp.float32):
        return jnp.fmod(jax.random.normal(key, shape, dtype), 2.0) * std

    return init


def emb_sz_rule(n_cat: int) -> int:
    """fastai's embedding width for a variable with `n_cat` categories (the '#na#' included)."""
    return min(600, round(1.6 * n_cat**0.56))
