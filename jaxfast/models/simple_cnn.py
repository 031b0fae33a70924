"""fastai v1's `simple_cnn` and lesson 7's from-scratch ResNet for MNIST, NHWC.

fastai v1's `conv_layer` is conv -> ReLU -> BatchNorm (in that order; the conv has no
bias when a BatchNorm follows), with padding (ks - 1) // 2 and kaiming-normal weights.
Integer images (uint8 pixels) are scaled to [0, 1] first. `conv_lowering` (every model and
layer; a config key of each factory): the lowering of every conv (`jaxfast.models.conv`:
'auto' = the measured rule, 'xla', 'im2col').
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxfast.models.conv import Conv, check_model_lowering
from jaxfast.models.layers import KAIMING_FAN_IN as KAIMING
from jaxfast.models.registry import register


def _as_float(x):
    return x.astype(jnp.float32) / 255.0 if jnp.issubdtype(x.dtype, jnp.integer) else x


class ConvLayer(nn.Module):
    """fastai v1 `conv_layer`: conv, ReLU, then BatchNorm when `bn` (zero-init scale if `bn_zero`)."""

    features: int
    kernel: int = 3
    stride: int = 1
    bn: bool = True
    bn_zero: bool = False
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        pad = (self.kernel - 1) // 2
        x = Conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), ((pad, pad), (pad, pad)),
                 use_bias=not self.bn, kernel_init=KAIMING, lowering=self.conv_lowering, name="conv")(x)
        x = nn.relu(x)
        if self.bn:
            scale_init = nn.initializers.zeros if self.bn_zero else nn.initializers.ones
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             scale_init=scale_init, name="bn")(x)
        return x


class SimpleCNN(nn.Module):
    """fastai's `simple_cnn(actns, kernel_szs, strides, bn)`: conv_layers (BN on all but the
    last when `bn`), then average pool + flatten. `include_top=False` stops before the pool."""

    features: Sequence[int] = (16, 16, 2)
    kernel_sizes: Sequence[int] | None = None
    strides: Sequence[int] | None = None
    bn: bool = False
    include_top: bool = True
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = check_model_lowering(self.conv_lowering, "SimpleCNN")
        n = len(self.features)
        kernels = self.kernel_sizes or (3,) * n
        strides = self.strides or (2,) * n
        if not len(kernels) == len(strides) == n:
            raise ValueError(f"SimpleCNN: {n} features, {len(kernels)} kernel sizes and {len(strides)} strides differ")
        x = _as_float(x)
        for i, (f, k, s) in enumerate(zip(self.features, kernels, strides)):
            x = ConvLayer(f, k, s, bn=self.bn and i < n - 1, conv_lowering=low, name=f"layers_{i}")(x, train)
        return jnp.mean(x, axis=(1, 2)) if self.include_top else x

    def first_half_regex(self) -> str:
        """The first half of the conv layers (the rest is the second group)."""
        first = "|".join(str(i) for i in range(len(self.features) // 2)) or "none"
        return rf"^layers_({first})/"


class ResBlock(nn.Module):
    """fastai v1 `res_block(nf)`: x + conv_layer(conv_layer(x)), the second BN zero-initialised."""

    features: int
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = ConvLayer(self.features, conv_lowering=self.conv_lowering, name="conv1")(x, train)
        return x + ConvLayer(self.features, bn_zero=True, conv_lowering=self.conv_lowering, name="conv2")(out, train)


class MnistResNet(nn.Module):
    """lesson7-resnet-mnist: conv2(1,8), res_block(8), conv2(8,16), res_block(16),
    conv2(16,32), res_block(32), conv2(32,16), res_block(16), conv2(16,10), Flatten."""

    widths: Sequence[int] = (8, 16, 32, 16)
    n_classes: int = 10
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = check_model_lowering(self.conv_lowering, "MnistResNet")
        x = _as_float(x)
        if x.ndim == 3:  # (N, H, W) grey images
            x = x[..., None]
        for i, width in enumerate(self.widths):
            x = ConvLayer(width, stride=2, conv_lowering=low, name=f"conv2_{i}")(x, train)
            x = ResBlock(width, low, name=f"res_block_{i}")(x, train)
        x = ConvLayer(self.n_classes, stride=2, conv_lowering=low, name=f"conv2_{len(self.widths)}")(x, train)
        return x.reshape((x.shape[0], -1))


@register("simple_cnn")
def simple_cnn(features: Sequence[int] = (16, 16, 2), kernel_sizes: Sequence[int] | None = None,
               strides: Sequence[int] | None = None, bn: bool = False, include_top: bool = True,
               conv_lowering: str = "auto") -> SimpleCNN:
    """fastai's simple_cnn with actns = (in_channels, *features)."""
    return SimpleCNN(tuple(features), kernel_sizes and tuple(kernel_sizes), strides and tuple(strides), bn, include_top,
                     check_model_lowering(conv_lowering, "simple_cnn"))


@register("mnist_resnet")
def mnist_resnet(widths: Sequence[int] = (8, 16, 32, 16), n_classes: int = 10,
                 conv_lowering: str = "auto") -> MnistResNet:
    """Lesson 7's from-scratch ResNet (28x28 inputs -> 1x1x10 -> 10 logits)."""
    return MnistResNet(tuple(widths), n_classes, check_model_lowering(conv_lowering, "mnist_resnet"))
