"""fastai v1's GAN models (lesson 7), NHWC: `basic_generator` and `basic_critic` (DCGAN, the
WGAN lesson) and `gan_critic` (the superres GAN's critic: spectral norm, self-attention).

Critics return raw scores [B, n] (no sigmoid): n = 1 for `basic_critic`, the final map's pixels
for `gan_critic` (fastai's Flatten). fastai's basic_critic ends with the batch mean
(`AvgFlatten`); here every example keeps its score and the losses take the means
(`jaxfast.gan.steps`), which gives the same losses. `conv_lowering` (a config key of each factory): the lowering of
every conv ('auto' = jaxfast.models.conv's measured rule, 'xla', 'im2col').

The generator of the superres GAN is jaxfast's `unet` (jaxfast.models.unet). fastai builds it
with `unet_learner(..., blur=True, norm_type=NormType.Weight, self_attention=True)`: every decoder
conv_layer (ConvLayer, and the 1x1 conv of PixelShuffle_ICNR) becomes a weight-normalised conv
with bias, which is `jaxfast.models.gan_layers.NormConv(norm='weight')` (params 'kernel' = v and
'scale' = g), and the UnetBlock third from the end gets `SelfAttention` after its second conv.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfast.errors import InputError
from jaxfast.models.gan_layers import ConvLayer, ConvTranspose
from jaxfast.models.registry import register


CONV_LOWERINGS = ("auto", "xla", "im2col")  # what a whole model can take (jaxfast.models.conv)


def _check_lowering(name: str, conv_lowering: str) -> str:
    if conv_lowering not in CONV_LOWERINGS:
        raise InputError(f"{name}: unknown conv_lowering {conv_lowering!r}; choose one of {CONV_LOWERINGS}")
    return conv_lowering


def _check_size(name: str, in_size: int, smallest: int) -> None:
    if not isinstance(in_size, int) or in_size < smallest or in_size & (in_size - 1):
        raise InputError(f"{name}: in_size must be a power of 2 and at least {smallest}, got {in_size!r}")


class BasicGenerator(nn.Module):
    """fastai's `basic_generator`: noise [B, 1, 1, noise_size] (or [B, noise_size]) -> images
    [B, in_size, in_size, n_channels] in [-1, 1]. Transposed convs (4x4, stride 2), each followed by
    ReLU then BatchNorm; `n_extra_layers` 3x3 stride-1 ones at in_size / 2; tanh at the end."""

    in_size: int = 64
    n_channels: int = 3
    noise_size: int = 100
    n_features: int = 64
    n_extra_layers: int = 0
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim == 2:
            x = x[:, None, None, :]
        if x.shape[1:] != (1, 1, self.noise_size):
            raise InputError(f"basic_generator: noise must be [B, 1, 1, {self.noise_size}] or [B, "
                             f"{self.noise_size}], got {tuple(x.shape)}")
        layer = functools.partial(ConvLayer, conv_lowering=self.conv_lowering)
        features = self.n_features // 2 * self.in_size // 4
        x = layer(features, 4, 1, transpose=True, name="initial")(x, train)  # 1x1 -> 4x4
        size, i = 4, 0
        while size < self.in_size // 2:
            features //= 2
            x = layer(features, 4, 2, 1, transpose=True, name=f"up_{i}")(x, train)
            size, i = size * 2, i + 1
        for j in range(self.n_extra_layers):
            x = layer(features, 3, 1, 1, transpose=True, name=f"extra_{j}")(x, train)
        x = ConvTranspose(self.n_channels, 4, 2, 1, use_bias=False, conv_lowering=self.conv_lowering, name="final")(x)
        return jnp.tanh(x)


class BasicCritic(nn.Module):
    """fastai's `basic_critic`: 4x4 stride-2 convs with LeakyReLU(0.2) (then BatchNorm, except the
    first) down to 4x4, `n_extra_layers` 3x3 convs at in_size / 2, a 4x4 conv to one score -> [B, 1]."""

    in_size: int = 64
    n_channels: int = 3
    n_features: int = 64
    n_extra_layers: int = 0
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.shape[1:] != (self.in_size, self.in_size, self.n_channels):
            raise InputError(f"basic_critic: images must be [B, {self.in_size}, {self.in_size}, "
                             f"{self.n_channels}], got {tuple(x.shape)}")
        layer = functools.partial(ConvLayer, conv_lowering=self.conv_lowering)
        x = layer(self.n_features, 4, 2, 1, norm_type=None, leaky=0.2, name="initial")(x, train)
        size, features = self.in_size // 2, self.n_features
        for j in range(self.n_extra_layers):
            x = layer(features, 3, 1, leaky=0.2, name=f"extra_{j}")(x, train)
        i = 0
        while size > 4:
            features *= 2
            x = layer(features, 4, 2, 1, leaky=0.2, name=f"down_{i}")(x, train)
            size, i = size // 2, i + 1
        x = layer(1, 4, 1, 0, use_bias=False, norm_type=None, use_activ=False, name="final")(x, train)
        return x.reshape(x.shape[0], -1)


class GANCritic(nn.Module):
    """fastai's `gan_critic(n_channels, nf, n_blocks, p)`: spectral-normalised conv layers with
    LeakyReLU(0.2); a 4x4 stride-2 conv, channel dropout p/2, a dense res block (two 3x3 convs,
    output concatenated with the input: 2 nf channels), then `n_blocks` of [channel dropout p, 4x4
    stride-2 conv doubling the channels (self-attention after the first)], a final 4x4 conv
    (padding 0, no bias, no activation) to 1 channel, flattened -> [B, n]."""

    n_channels: int = 3
    nf: int = 128
    n_blocks: int = 3
    p: float = 0.15
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.n_channels:
            raise InputError(f"gan_critic: images must be [B, H, W, {self.n_channels}], got {tuple(x.shape)}")
        conv = dict(norm_type="spectral", leaky=0.2, conv_lowering=self.conv_lowering)
        dropout2d = lambda rate, name: nn.Dropout(rate, broadcast_dims=(1, 2), deterministic=not train, name=name)
        x = ConvLayer(self.nf, 4, 2, **conv, name="initial")(x, train)
        x = dropout2d(self.p / 2, "initial_dropout")(x)
        inner = ConvLayer(self.nf, 3, **conv, name="res_conv1")(x, train)
        x = jnp.concatenate([ConvLayer(self.nf, 3, **conv, name="res_conv2")(inner, train), x], axis=-1)
        nf = 2 * self.nf
        for i in range(self.n_blocks):
            x = dropout2d(self.p, f"dropout_{i}")(x)
            x = ConvLayer(2 * nf, 4, 2, **conv, self_attention=(i == 0), name=f"down_{i}")(x, train)
            nf *= 2
        x = ConvLayer(1, 4, 1, 0, use_bias=False, norm_type="spectral", use_activ=False,
                      conv_lowering=self.conv_lowering, name="final")(x, train)
        return x.reshape(x.shape[0], -1)


@register("basic_generator")
def basic_generator(in_size: int = 64, n_channels: int = 3, noise_size: int = 100, n_features: int = 64,
                    n_extra_layers: int = 0, conv_lowering: str = "auto") -> BasicGenerator:
    """fastai's `basic_generator(in_size, n_channels, noise_sz, n_features, n_extra_layers)`."""
    _check_size("basic_generator", in_size, 8)
    return BasicGenerator(in_size, n_channels, noise_size, n_features, n_extra_layers,
                          _check_lowering("basic_generator", conv_lowering))


@register("basic_critic")
def basic_critic(in_size: int = 64, n_channels: int = 3, n_features: int = 64, n_extra_layers: int = 0,
                 conv_lowering: str = "auto") -> BasicCritic:
    """fastai's `basic_critic(in_size, n_channels, n_features, n_extra_layers)`."""
    _check_size("basic_critic", in_size, 8)
    return BasicCritic(in_size, n_channels, n_features, n_extra_layers, _check_lowering("basic_critic", conv_lowering))


@register("gan_critic")
def gan_critic(n_channels: int = 3, nf: int = 128, n_blocks: int = 3, p: float = 0.15,
               conv_lowering: str = "auto") -> GANCritic:
    """fastai's `gan_critic(n_channels=3, nf=128, n_blocks=3, p=0.15)`."""
    if nf < 4:
        raise InputError(f"gan_critic: nf must be at least 4 (its self-attention needs 8 channels), got {nf!r}")
    return GANCritic(n_channels, nf, n_blocks, float(p), _check_lowering("gan_critic", conv_lowering))
