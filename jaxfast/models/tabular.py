"""fastai v1's TabularModel in Flax linen: embeddings for categorical inputs, BatchNorm on
continuous ones, then [BatchNorm, dropout, Dense, ReLU] blocks and an optional sigmoid
`y_range` on the output.

Inputs are a tuple `(x_cat int32 [B, n_cat], x_cont float [B, n_cont])`, as made by
`jaxfast.tabular.TabularProcessor.to_arrays`.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.layers import batch_norm, emb_sz_rule  # noqa: F401 - emb_sz_rule: read from here by callers
from jaxfast.models.registry import register






class TabularModel(nn.Module):
    """fastai's TabularModel; `ps[i]` is the dropout before hidden layer i+1 (and the output)."""

    emb_szs: Sequence[tuple[int, int]]
    n_cont: int
    out_sz: int
    layers: Sequence[int]
    ps: Sequence[float] = ()
    emb_drop: float = 0.0
    y_range: tuple[float, float] | None = None
    use_bn: bool = True
    bn_final: bool = False

    @nn.compact
    def __call__(self, inputs, train: bool = False):
        x_cat, x_cont = inputs
        if x_cat.ndim != 2 or x_cat.shape[1] != len(self.emb_szs):
            raise ValueError(f"TabularModel: x_cat shape {tuple(x_cat.shape)} should be [B, {len(self.emb_szs)}]")
        if x_cont.ndim != 2 or x_cont.shape[1] != self.n_cont:
            raise ValueError(f"TabularModel: x_cont shape {tuple(x_cont.shape)} should be [B, {self.n_cont}]")
        parts = []
        if self.emb_szs:
            # fastai's embedding(): N(0, 0.01) truncated at 2 std.
            init = nn.initializers.truncated_normal(0.01)
            embedded = [
                nn.Embed(n, width, embedding_init=init, name=f"embeds_{i}")(x_cat[:, i])
                for i, (n, width) in enumerate(self.emb_szs)
            ]
            parts.append(nn.Dropout(self.emb_drop, deterministic=not train)(jnp.concatenate(embedded, axis=-1)))
        if self.n_cont:
            parts.append(batch_norm(train, "bn_cont")(x_cont))
        x = jnp.concatenate(parts, axis=-1)
        sizes = list(self.layers) + [self.out_sz]
        drops = [0.0] + list(self.ps)
        for i, (width, p) in enumerate(zip(sizes, drops)):
            if self.use_bn and i != 0:
                x = batch_norm(train, f"bn_{i}")(x)
            if p:
                x = nn.Dropout(p, deterministic=not train)(x)
            x = nn.Dense(width, name=f"linear_{i}")(x)
            if i < len(self.layers):
                x = nn.relu(x)
        if self.bn_final:
            x = batch_norm(train, "bn_final")(x)
        if self.y_range is not None:
            low, high = self.y_range
            x = (high - low) * nn.sigmoid(x) + low
        return x


@register("tabular")
def tabular(
    emb_szs: Sequence[Sequence[int]], n_cont: int, out_sz: int, layers: Sequence[int] = (200, 100),
    ps: float | Sequence[float] | None = None, emb_drop: float = 0.0,
    y_range: Sequence[float] | None = None, use_bn: bool = True, bn_final: bool = False,
) -> TabularModel:
    """fastai's tabular_learner model from plain JSON values; `ps` is one rate or one per layer."""
    layers = tuple(int(w) for w in layers)
    if ps is None:
        ps = (0.0,) * len(layers)
    elif isinstance(ps, (int, float)):
        ps = (float(ps),) * len(layers)
    ps = tuple(float(p) for p in ps)
    if len(ps) != len(layers):
        raise ValueError(f"tabular: {len(ps)} dropout rates ps={list(ps)} for {len(layers)} layers {list(layers)}")
    emb_szs = tuple((int(n), int(w)) for n, w in emb_szs)
    if any(n < 1 or w < 1 for n, w in emb_szs):
        raise ValueError(f"tabular: every embedding needs >= 1 category and width, got {list(emb_szs)}")
    if not emb_szs and n_cont == 0:
        raise ValueError("tabular: the model has no inputs (no embeddings and n_cont=0)")
    if y_range is not None:
        if len(y_range) != 2 or not y_range[0] < y_range[1]:
            raise ValueError(f"tabular: y_range must be [low, high] with low < high, got {y_range}")
        y_range = (float(y_range[0]), float(y_range[1]))
    return TabularModel(emb_szs, int(n_cont), int(out_sz), layers, ps, float(emb_drop), y_range, use_bn, bn_final)
