"""fastai v1's `create_cnn`: a cut body (any architecture) + the cnn head, with layer groups.

Head (fastai `create_head`): concat pooling (max + average), flatten, then for each
linear layer BatchNorm1d -> Dropout -> Linear (-> ReLU except the last): with the
defaults BN, dropout 0.25, linear 512, ReLU, BN, dropout 0.5, linear n_classes; and
with `bn_final`, a BatchNorm on the outputs (lesson 6).

Layer groups (fastai's split): the two halves of the body (the body's
`body_group(path)` says which), then the head; a body without `body_group` is one group.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.layers import KAIMING_FAN_IN as KAIMING  # fastai's init of the head
from jaxfast.models.layers import batch_norm as _bn
from jaxfast.models.registry import build_model, register
from jaxfast.layer_groups import LayerGroups


class CnnHead(nn.Module):
    """fastai's `create_head(nf, nc, lin_ftrs=[512], ps=0.5, concat_pool=True, bn_final)`."""

    n_classes: int
    lin_ftrs: Sequence[int] = (512,)
    ps: float = 0.5
    concat_pool: bool = True
    bn_final: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.concat_pool:  # fastai's AdaptiveConcatPool2d: [max, avg]
            x = jnp.concatenate([jnp.max(x, axis=(1, 2)), jnp.mean(x, axis=(1, 2))], axis=-1)
        else:
            x = jnp.mean(x, axis=(1, 2))
        sizes = [*self.lin_ftrs, self.n_classes]
        ps = [self.ps / 2] * (len(sizes) - 1) + [self.ps]  # fastai: [ps/2]*(n-1) + [ps]
        for i, (size, p) in enumerate(zip(sizes, ps)):
            x = _bn(train, f"bn_{i}")(x)
            x = nn.Dropout(p, deterministic=not train)(x)
            x = nn.Dense(size, kernel_init=KAIMING, name=f"lin_{i}")(x)
            if i < len(sizes) - 1:
                x = nn.relu(x)
        if self.bn_final:
            x = _bn(train, "bn_final")(x)
        return x


class CNN(nn.Module):
    """`body` (returning a feature map, NHWC) followed by `head`; params 'body' and 'head'."""

    body: nn.Module
    head: nn.Module

    def __call__(self, x, train: bool = False):
        return self.head(self.body(x, train), train)


def cnn_layer_groups(model: CNN) -> LayerGroups:
    """(body first half, body second half, head) when the body has `first_half_regex`, else (body, head)."""
    split = getattr(model.body, "first_half_regex", None)
    if split is None:
        return LayerGroups((("body", "^body/"), ("head", "^head/")))
    first_half = split().removeprefix("^")
    return LayerGroups((("body_0", f"^body/{first_half}"), ("body_1", "^body/"), ("head", "^head/")))


@register("cnn")
def create_cnn(
    body_arch: str,
    n_classes: int,
    body_config: dict | None = None,
    lin_ftrs: Sequence[int] = (512,),
    ps: float = 0.5,
    concat_pool: bool = True,
    bn_final: bool = False,
    conv_lowering: str | None = None,
) -> CNN:
    """fastai's create_cnn: the registered `body_arch` cut before its pooling
    (`include_top=False`) with the cnn head for `n_classes` on top. `conv_lowering`, when
    given, goes into the body's config (`jaxfast.models.conv`; the body must accept it)."""
    lowering = {} if conv_lowering is None else {"conv_lowering": conv_lowering}
    body = build_model(body_arch, {**(body_config or {}), **lowering, "include_top": False})
    head = CnnHead(n_classes, tuple(lin_ftrs), ps, concat_pool, bn_final)
    return CNN(body, head)
