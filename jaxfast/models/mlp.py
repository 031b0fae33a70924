"""Lesson 5's MNIST models: logistic regression and a one-hidden-layer MLP."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.registry import register


class MLP(nn.Module):
    """Flatten, then Dense layers with ReLU between them (no hidden layer: logistic regression).

    Integer images (uint8 pixels) are scaled to [0, 1] first.
    """

    hidden: Sequence[int]
    n_out: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False):
        if jnp.issubdtype(x.dtype, jnp.integer):
            x = x.astype(jnp.float32) / 255.0
        x = x.reshape((x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.n_out)(x)


@register("logistic")
def logistic(n_out: int = 10) -> MLP:
    """fastai's Mnist_Logistic: one linear layer on the flattened pixels."""
    return MLP(hidden=(), n_out=n_out)


@register("mlp")
def mlp(hidden: Sequence[int] = (50,), n_out: int = 10, dropout: float = 0.0) -> MLP:
    """fastai's Mnist_NN: 784-50-10 by default."""
    return MLP(hidden=tuple(hidden), n_out=n_out, dropout=dropout)
