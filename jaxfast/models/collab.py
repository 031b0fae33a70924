"""Lesson 4's collaborative-filtering models: fastai v1's EmbeddingDotBias and EmbeddingNN.

Both take inputs `(users, items)`, two int32 [B] index arrays (index 0 is '#na#'),
and return float32 [B] ratings, squashed into `y_range` by a scaled sigmoid when given.
The bias tables are called `u_bias_table`/`i_bias_table`, not 'bias', so that AdamW's
weight decay reaches them as it does in fastai v1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.layers import emb_sz_rule, scale_to_range, trunc_normal
from jaxfast.models.registry import register








class EmbeddingDotBias(nn.Module):
    """rating = squash(u_weight[user] . i_weight[item] + u_bias[user] + i_bias[item])."""

    n_users: int
    n_items: int
    n_factors: int = 40
    y_range: tuple[float, float] | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        users, items = x
        init = trunc_normal(0.01)
        u_weight = self.param("u_weight", init, (self.n_users, self.n_factors))
        i_weight = self.param("i_weight", init, (self.n_items, self.n_factors))
        u_bias = self.param("u_bias_table", init, (self.n_users,))
        i_bias = self.param("i_bias_table", init, (self.n_items,))
        dot = jnp.sum(u_weight[users] * i_weight[items], axis=-1)
        return scale_to_range(dot + u_bias[users] + i_bias[items], self.y_range)


def _torch_linear_init():
    """PyTorch nn.Linear's weight init: uniform(+-1/sqrt(fan_in))."""
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class EmbeddingNN(nn.Module):
    """fastai v1's EmbeddingNN (a TabularModel on two categories): concatenated user and
    item embeddings, then [BatchNorm, Dropout, Dense, ReLU] blocks (no BatchNorm before
    the first Dense, as fastai) and a Dense to one output, squashed into y_range."""

    n_users: int
    n_items: int
    user_emb: int
    item_emb: int
    layers: Sequence[int] = (256, 128)
    ps: Sequence[float] = ()
    emb_drop: float = 0.0
    y_range: tuple[float, float] | None = None
    use_bn: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
        users, items = x
        init = trunc_normal(0.01)
        u_table = self.param("u_embedding", init, (self.n_users, self.user_emb))
        i_table = self.param("i_embedding", init, (self.n_items, self.item_emb))
        h = jnp.concatenate([u_table[users], i_table[items]], axis=-1)
        if self.emb_drop:
            h = nn.Dropout(self.emb_drop, deterministic=not train)(h)
        ps = list(self.ps) or [0.0] * len(self.layers)
        if len(ps) != len(self.layers):
            raise ValueError(f"EmbeddingNN: {len(ps)} dropout rates ps for {len(self.layers)} layers")
        sizes = [*self.layers, 1]
        drops = [0.0, *ps]
        for i, width in enumerate(sizes):
            if self.use_bn and i != 0:
                h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(h)
            if drops[i]:
                h = nn.Dropout(drops[i], deterministic=not train)(h)
            h = nn.Dense(width, kernel_init=_torch_linear_init())(h)
            if i < len(sizes) - 1:
                h = nn.relu(h)
        return scale_to_range(h[..., 0], self.y_range)


def _y_range(y_range) -> tuple[float, float] | None:
    if y_range is None:
        return None
    lo, hi = (float(v) for v in y_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"y_range must be two finite numbers lo < hi, got {y_range!r}")
    return lo, hi


@register("embedding_dot_bias")
def embedding_dot_bias(n_users: int, n_items: int, n_factors: int = 40, y_range=None) -> EmbeddingDotBias:
    """fastai v1's collab_learner(use_nn=False) model."""
    return EmbeddingDotBias(int(n_users), int(n_items), int(n_factors), _y_range(y_range))


@register("embedding_nn")
def embedding_nn(n_users: int, n_items: int, user_emb: int | None = None, item_emb: int | None = None,
                 layers: Sequence[int] = (256, 128), ps: Sequence[float] = (), emb_drop: float = 0.0,
                 y_range=None, use_bn: bool = True) -> EmbeddingNN:
    """fastai v1's collab_learner(use_nn=True) model; embedding sizes default to emb_sz_rule."""
    return EmbeddingNN(
        int(n_users), int(n_items), int(user_emb or emb_sz_rule(n_users)), int(item_emb or emb_sz_rule(n_items)),
        tuple(int(w) for w in layers), tuple(float(p) for p in ps), float(emb_drop), _y_range(y_range), use_bn,
    )
