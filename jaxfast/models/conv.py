"""The one convolution every jaxfast model uses (a drop-in for `flax.linen.Conv`).

Same parameters as `nn.Conv` ('kernel' [kh, kw, in, out], 'bias' [out]), NHWC layout.
Routing every model through this module is what lets the lowering be chosen per shape
and backend in one place (see the performance notes in benchmarks/).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class Conv(nn.Module):
    """2-D convolution, NHWC, with nn.Conv's parameter layout and initialisers."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        dtype = self.dtype or x.dtype
        y = conv2d(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.padding)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding) -> jax.Array:
    """NHWC x HWIO convolution (XLA's own lowering)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
