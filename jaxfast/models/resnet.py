"""ResNets with torchvision's (and akamaster's CIFAR) module layout, NHWC.

Module names follow the PyTorch state_dict keys with numeric indices joined by '_'
(`layer1.0.downsample.0.weight` -> `layer1_0/downsample_0/kernel`), which is the rule
`jaxfast.models.convert` uses to import torchvision/timm and CIFAR weights.

* `ResNet`: ImageNet ResNet-18/34/50 (torchvision v1.5: stride on the 3x3 conv of a
  Bottleneck). `include_top=False` cuts the model before the pooling (fastai's body);
  `return_features=True` returns the last map of each resolution instead (a U-Net encoder).
* `CifarResNet`: He et al.'s CIFAR ResNet-20/32/44/56 with option-A shortcuts
  (strided subsampling + zero channel padding), as in akamaster/pytorch_resnet_cifar10.

`conv_lowering` (every model and block; a config key of each factory): the lowering of every
conv and max-pool (`jaxfast.models.conv`: 'auto' = the measured rule, 'xla', 'im2col').
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.conv import Conv, check_model_lowering, max_pool
from jaxfast.models.layers import KAIMING_FAN_IN, KAIMING_FAN_OUT, batch_norm
from jaxfast.models.registry import register


def conv(features: int, kernel: int, stride: int, name: str, init=KAIMING_FAN_OUT, lowering: str = "auto") -> Conv:
    """Bias-free conv with PyTorch's symmetric padding (kernel // 2 on each side)."""
    pad = kernel // 2
    return Conv(features, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)),
                use_bias=False, kernel_init=init, lowering=lowering, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 conv + BN shortcut when the shape changes (torchvision)."""

    planes: int
    stride: int = 1
    conv_lowering: str = "auto"
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = self.conv_lowering
        out = nn.relu(batch_norm(train, "bn1")(conv(self.planes, 3, self.stride, "conv1", lowering=low)(x)))
        out = batch_norm(train, "bn2")(conv(self.planes, 3, 1, "conv2", lowering=low)(out))
        return nn.relu(out + _downsample(x, self.planes, self.stride, train, low))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision v1.5) -> 1x1 with 4x expansion."""

    planes: int
    stride: int = 1
    conv_lowering: str = "auto"
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = self.conv_lowering
        out = nn.relu(batch_norm(train, "bn1")(conv(self.planes, 1, 1, "conv1", lowering=low)(x)))
        out = nn.relu(batch_norm(train, "bn2")(conv(self.planes, 3, self.stride, "conv2", lowering=low)(out)))
        out = batch_norm(train, "bn3")(conv(self.planes * 4, 1, 1, "conv3", lowering=low)(out))
        return nn.relu(out + _downsample(x, self.planes * 4, self.stride, train, low))


def _downsample(x, features: int, stride: int, train: bool, lowering: str):
    """Identity, or torchvision's `downsample` (conv1x1 + BN) when stride or width change.

    Called inside a block's compact `__call__`, so its modules belong to the block."""
    if stride == 1 and x.shape[-1] == features:
        return x
    return batch_norm(train, "downsample_1")(conv(features, 1, stride, "downsample_0", lowering=lowering)(x))


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, 3x3/2 max pool, four stages, average pool, fc."""

    stage_sizes: Sequence[int]
    block: str = "basic"
    n_classes: int = 1000
    include_top: bool = True
    return_features: bool = False
    conv_lowering: str = "auto"
    top_names: ClassVar[tuple[str, ...]] = ("fc",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r}; known: {sorted(BLOCKS)}")
        block, low = BLOCKS[self.block], check_model_lowering(self.conv_lowering, "ResNet")
        x = nn.relu(batch_norm(train, "bn1")(conv(64, 7, 2, "conv1", lowering=low)(x)))
        features = [x]  # 1/2: the stem, before the max pool
        x = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), lowering=low)
        for i, n_blocks in enumerate(self.stage_sizes):
            for j in range(n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = block(64 * 2**i, stride, low, name=f"layer{i + 1}_{j}")(x, train)
            features.append(x)  # 1/4 ... 1/32: each stage's output
        if self.return_features:
            # Where fastai's DynamicUnet hooks a ResNet: the last layer of each resolution.
            return features
        if not self.include_top:
            return x
        return nn.Dense(self.n_classes, name="fc")(jnp.mean(x, axis=(1, 2)))

    def first_half_regex(self) -> str:
        """fastai's resnet split: the stem and the first half of the stages (the rest of the
        body is the second group); a regex over the body's '/'-joined param paths."""
        return _first_stages_regex(len(self.stage_sizes) // 2)


class CifarBlock(nn.Module):
    """akamaster's BasicBlock with the option-A (parameter-free) shortcut."""

    planes: int
    stride: int = 1
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = self.conv_lowering
        out = nn.relu(batch_norm(train, "bn1")(conv(self.planes, 3, self.stride, "conv1", KAIMING_FAN_IN, low)(x)))
        out = batch_norm(train, "bn2")(conv(self.planes, 3, 1, "conv2", KAIMING_FAN_IN, low)(out))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            # F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes//4, planes//4)) in NCHW
            pad = self.planes // 4
            shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3x3 conv 16 -> three stages of n blocks (16/32/64) -> global average -> linear."""

    n_blocks: int
    n_classes: int = 10
    include_top: bool = True
    conv_lowering: str = "auto"
    top_names: ClassVar[tuple[str, ...]] = ("linear",)

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = check_model_lowering(self.conv_lowering, "CifarResNet")
        x = nn.relu(batch_norm(train, "bn1")(conv(16, 3, 1, "conv1", KAIMING_FAN_IN, low)(x)))
        for i, planes in enumerate((16, 32, 64)):
            for j in range(self.n_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = CifarBlock(planes, stride, low, name=f"layer{i + 1}_{j}")(x, train)
        if not self.include_top:
            return x
        return nn.Dense(self.n_classes, kernel_init=KAIMING_FAN_IN, name="linear")(jnp.mean(x, axis=(1, 2)))

    def first_half_regex(self) -> str:
        """Stem and stage 1 in the first group, stages 2-3 in the second."""
        return _first_stages_regex(1)


def _first_stages_regex(n_first: int) -> str:
    """The stem (every param outside a 'layer<i>_<j>' block) and the blocks of stages 1..n_first."""
    stages = "|".join(f"layer{i}_" for i in range(1, n_first + 1))
    return rf"^((?!layer\d+_)|{stages})" if stages else r"^(?!layer\d+_)"


@register("resnet18")
def resnet18(n_classes: int = 1000, include_top: bool = True, conv_lowering: str = "auto") -> ResNet:
    return ResNet((2, 2, 2, 2), "basic", n_classes, include_top,
                  conv_lowering=check_model_lowering(conv_lowering, "resnet18"))


@register("resnet34")
def resnet34(n_classes: int = 1000, include_top: bool = True, conv_lowering: str = "auto") -> ResNet:
    return ResNet((3, 4, 6, 3), "basic", n_classes, include_top,
                  conv_lowering=check_model_lowering(conv_lowering, "resnet34"))


@register("resnet50")
def resnet50(n_classes: int = 1000, include_top: bool = True, conv_lowering: str = "auto") -> ResNet:
    return ResNet((3, 4, 6, 3), "bottleneck", n_classes, include_top,
                  conv_lowering=check_model_lowering(conv_lowering, "resnet50"))


def _cifar(depth: int):
    def factory(n_classes: int = 10, include_top: bool = True, conv_lowering: str = "auto") -> CifarResNet:
        lowering = check_model_lowering(conv_lowering, f"cifar_resnet{depth}")
        return CifarResNet((depth - 2) // 6, n_classes, include_top, conv_lowering=lowering)

    factory.__name__ = factory.__qualname__ = f"cifar_resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth} ({(depth - 2) // 6} blocks per stage, option-A shortcuts)."
    return register(f"cifar_resnet{depth}")(factory)


cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56 = (_cifar(d) for d in (20, 32, 44, 56))
