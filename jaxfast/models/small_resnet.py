"""A small ResNet for training from scratch on a few hundred photos (lesson 2 without
pretrained weights), NHWC.

Why not resnet18: with ~100 training photos its 11M parameters buy nothing, and its cost
(0.6 GMAC per 128 px image) limits the epochs of augmentation that fit in minutes on a CPU.
This net keeps torchvision's BasicBlock (jaxfast.models.resnet) in four stages but at a
quarter of the width and one block per stage by default, behind a cheaper stem (two 3x3
convs, fastai's xresnet style, instead of a 7x7): ~0.09 GMAC per 128 px image, 1.2M params.
`include_top=False` cuts it before the pooling (the body of fastai's cnn head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.conv import check_model_lowering, max_pool
from jaxfast.models.layers import batch_norm
from jaxfast.models.registry import register
from jaxfast.models.resnet import BasicBlock, conv


class SmallResNet(nn.Module):
    """Stem (3x3/2 conv, 3x3 conv, 3x3/2 max pool) then a stage of BasicBlocks per width
    (stride 2 from the second stage on), average pool, linear."""

    widths: Sequence[int] = (32, 64, 128, 256)
    stage_sizes: Sequence[int] = (1, 1, 1, 1)
    stem_width: int = 24
    n_classes: int = 1000
    include_top: bool = True
    conv_lowering: str = "auto"
    top_names: ClassVar[tuple[str, ...]] = ("fc",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(f"SmallResNet: {len(self.widths)} widths but {len(self.stage_sizes)} stage sizes")
        low = check_model_lowering(self.conv_lowering, "SmallResNet")
        x = nn.relu(batch_norm(train, "stem_bn0")(conv(self.stem_width, 3, 2, "stem_conv0", lowering=low)(x)))
        x = nn.relu(batch_norm(train, "stem_bn1")(conv(self.widths[0], 3, 1, "stem_conv1", lowering=low)(x)))
        x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), lowering=low)
        for i, (width, n_blocks) in enumerate(zip(self.widths, self.stage_sizes)):
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(width, stride, low, name=f"layer{i + 1}_{j}")(x, train)
        if not self.include_top:
            return x
        return nn.Dense(self.n_classes, name="fc")(jnp.mean(x, axis=(1, 2)))

    def first_half_regex(self) -> str:
        """The stem and the first half of the stages (fastai's split of a ResNet body)."""
        stages = "|".join(f"layer{i}_" for i in range(1, len(self.widths) // 2 + 1))
        return rf"^(stem_|{stages})"


@register("small_resnet")
def small_resnet(n_classes: int = 1000, include_top: bool = True, widths: Sequence[int] = (32, 64, 128, 256),
                 stage_sizes: Sequence[int] = (1, 1, 1, 1), stem_width: int = 24,
                 conv_lowering: str = "auto") -> SmallResNet:
    """SmallResNet (defaults: widths 32-256, one block per stage)."""
    return SmallResNet(tuple(widths), tuple(stage_sizes), stem_width, n_classes, include_top,
                       conv_lowering=check_model_lowering(conv_lowering, "small_resnet"))
