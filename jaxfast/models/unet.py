"""fastai v1's `DynamicUnet` (lesson 3, CamVid segmentation), NHWC.

The encoder is a ResNet body that returns the last feature map of each resolution
(`ResNet(return_features=True)`: the stem at 1/2, then the four stages at 1/4 ... 1/32),
which are the layers fastai's DynamicUnet hooks. From the deepest map up:

    BatchNorm, ReLU, middle conv (ni -> 2ni -> ni)
    a UnetBlock per skip map, deepest first: PixelShuffle_ICNR up (half the channels),
        concat with BatchNorm(skip), ReLU, two conv layers (the last block's convs output
        half of their input's channels, the others keep them)
    PixelShuffle_ICNR back towards the input size (then a nearest resize if it differs),
    concat the input (`last_cross`), a res block, a 1x1 conv to `n_classes`, squashed into
    `y_range` when given

As in `unet_learner(norm_type=None)`, the decoder's conv layers are conv (with bias) ->
ReLU, without BatchNorm; the only decoder BatchNorms are the skip connections' and the
one after the encoder, whose biases start at 1e-3 as fastai's `batchnorm_2d`. Module names
follow `benchmarks/torch_reference.py`'s DynamicUnet so its weights load through
`jaxfast.models.convert`. Not here: lesson 7's restoration options (weight norm,
self-attention).

Memory: the full-resolution res block dominates. Its 3x3 convs take the Winograd lowering on
CPU (jaxfast.models.conv), whose transformed maps are 2.25x the activation (CamVid at
360x480, bs 8: ~1.2 GB each), against 9x for im2col. Measured at that size: 11.8 GiB of XLA
temporaries per train step against 6.0 GiB with every conv on XLA, for a 2.9-3.8x faster
step (benchmarks/RESULTS.md); `conv_lowering="xla"` (a config key of `unet`, passed to the
encoder and to every decoder conv) trades the speed back for memory.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfast.models.conv import Conv, check_model_lowering
from jaxfast.models.layers import KAIMING_FAN_IN as KAIMING  # torch's kaiming_normal_ (fastai's conv init)
from jaxfast.models.layers import batch_norm, scale_to_range
from jaxfast.models.registry import build_model, register
from jaxfast.layer_groups import LayerGroups


def _decoder_bn(train: bool, name: str) -> nn.BatchNorm:
    """fastai's batchnorm_2d: PyTorch's BatchNorm2d with the bias starting at 1e-3."""
    return batch_norm(train, name, bias_init=nn.initializers.constant(1e-3))


def icnr_init(scale: int = 2, base_init=KAIMING):
    """ICNR (Aitken et al. 2017): the kernel of a conv feeding a pixel shuffle starts with the
    scale**2 sub-pixel outputs of each channel equal, so the shuffle starts as nearest-neighbour
    upsampling (no checkerboard). Output channel c * scale**2 + s copies base channel c."""

    def init(key, shape, dtype=jnp.float32):
        *window, n_in, n_out = shape
        if n_out % scale**2:
            raise ValueError(f"ICNR: {n_out} output channels are not a multiple of scale**2 = {scale**2}")
        base = base_init(key, (*window, n_in, n_out // scale**2), dtype)
        return jnp.repeat(base, scale**2, axis=-1)

    return init


def pixel_shuffle(x: jax.Array, scale: int = 2) -> jax.Array:
    """torch's PixelShuffle in NHWC: channel c * scale**2 + i * scale + j goes to
    (row * scale + i, col * scale + j) of output channel c."""
    b, h, w, c = x.shape
    if c % scale**2:
        raise ValueError(f"pixel_shuffle: {c} channels are not a multiple of scale**2 = {scale**2}")
    x = x.reshape(b, h, w, c // scale**2, scale, scale)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * scale, w * scale, c // scale**2)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """PyTorch's `F.interpolate(mode='nearest')` (fastai's resize) in NHWC: output row d reads
    input row floor(d * in / out). (jax.image.resize's nearest rounds half-pixel centres and
    picks other rows.) No-op when the size already matches."""
    h, w = size
    if tuple(x.shape[1:3]) == (h, w):
        return x
    rows = (jnp.arange(h) * x.shape[1]) // h
    cols = (jnp.arange(w) * x.shape[2]) // w
    return x[:, rows][:, :, cols]

def blur_shuffled(x: jax.Array) -> jax.Array:
    """fastai's blur after a pixel shuffle: replicate the first row and column (top, left), 2x2
    average pool, stride 1 (Sugawara et al. 2018: removes the rest of the checkerboard)."""
    x = jnp.pad(x, ((0, 0), (1, 0), (1, 0), (0, 0)), mode="edge")
    return (x[:, :-1, :-1] + x[:, 1:, :-1] + x[:, :-1, 1:] + x[:, 1:, 1:]) / 4


class ConvLayer(nn.Module):
    """fastai v1 `conv_layer(norm_type=None)`: conv with bias, then ReLU unless `activation=False`."""

    features: int
    kernel: int = 3
    activation: bool = True
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x):
        pad = (self.kernel - 1) // 2
        x = Conv(self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
                 kernel_init=KAIMING, lowering=self.conv_lowering, name="conv")(x)
        return nn.relu(x) if self.activation else x


class PixelShuffleICNR(nn.Module):
    """fastai's `PixelShuffle_ICNR(ni, nf, scale=2, blur)`: 1x1 conv to nf * scale**2 (ICNR init),
    ReLU, pixel shuffle, optional blur."""

    features: int
    scale: int = 2
    blur: bool = False
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features * self.scale**2, (1, 1), padding="VALID", kernel_init=icnr_init(self.scale),
                 lowering=self.conv_lowering, name="conv")(x)
        x = pixel_shuffle(nn.relu(x), self.scale)
        return blur_shuffled(x) if self.blur else x


class UnetBlock(nn.Module):
    """fastai's UnetBlock: upsample the decoder's map, join the skip map, two conv layers."""

    final_div: bool = True
    blur: bool = False
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, up_in, skip, train: bool = False):
        low = self.conv_lowering
        up_out = PixelShuffleICNR(up_in.shape[-1] // 2, blur=self.blur, conv_lowering=low, name="shuf")(up_in)
        up_out = resize_nearest(up_out, skip.shape[1:3])  # sizes not multiples of 32, as fastai
        x = nn.relu(jnp.concatenate([up_out, _decoder_bn(train, "bn")(skip)], axis=-1))
        n_in = x.shape[-1]
        features = n_in if self.final_div else n_in // 2
        x = ConvLayer(features, conv_lowering=low, name="conv1")(x)
        return ConvLayer(features, conv_lowering=low, name="conv2")(x)


class ResBlock(nn.Module):
    """fastai `res_block(nf, norm_type=None, bottle)`: x + conv_layer(conv_layer(x))."""

    bottle: bool = False
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x):
        n = x.shape[-1]
        inner = ConvLayer(n // 2 if self.bottle else n, conv_lowering=self.conv_lowering, name="conv1")(x)
        return x + ConvLayer(n, conv_lowering=self.conv_lowering, name="conv2")(inner)


class DynamicUnet(nn.Module):
    """fastai's DynamicUnet on an `encoder` returning feature maps, finest first (see the module
    docstring). The output has the input's size and `n_classes` channels; with sizes that are
    not multiples of the encoder's stride (32 for a ResNet) the upsampled maps are resized
    (PyTorch's nearest) to the skip maps and the input, as fastai does. `conv_lowering` is the
    decoder's (the encoder has its own field; the `unet` factory sets both)."""

    encoder: nn.Module
    n_classes: int
    blur: bool = False
    blur_final: bool = True
    y_range: tuple[float, float] | None = None
    last_cross: bool = True
    bottle: bool = False
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = check_model_lowering(self.conv_lowering, "DynamicUnet")
        features = self.encoder(x, train)
        if not isinstance(features, (list, tuple)) or len(features) < 2:
            raise ValueError("DynamicUnet's encoder must return its feature maps, finest first "
                             "(e.g. a ResNet with return_features=True)")
        *skips, deepest = features
        n = deepest.shape[-1]
        y = nn.relu(_decoder_bn(train, "bn")(deepest))
        y = ConvLayer(n, conv_lowering=low, name="middle_1")(ConvLayer(2 * n, conv_lowering=low, name="middle_0")(y))
        for i, skip in enumerate(reversed(skips)):
            not_final = i != len(skips) - 1
            y = UnetBlock(final_div=not_final, blur=self.blur and (not_final or self.blur_final),
                          conv_lowering=low, name=f"blocks_{i}")(y, skip, train)
        if y.shape[1:3] != x.shape[1:3]:
            y = resize_nearest(PixelShuffleICNR(y.shape[-1], conv_lowering=low, name="shuf")(y), x.shape[1:3])
        if self.last_cross:
            y = ResBlock(self.bottle, low, name="res")(jnp.concatenate([y, x.astype(y.dtype)], axis=-1))
        y = ConvLayer(self.n_classes, kernel=1, activation=False, conv_lowering=low, name="final")(y)
        return scale_to_range(y, self.y_range)


def unet_layer_groups(model: DynamicUnet) -> LayerGroups:
    """fastai's unet split: the encoder's two halves (its `first_half_regex`), then the decoder."""
    first_half = model.encoder.first_half_regex().removeprefix("^")
    return LayerGroups((("encoder_0", f"^encoder/{first_half}"), ("encoder_1", "^encoder/"), ("decoder", "")))


@register("unet")
def dynamic_unet(encoder_arch: str = "resnet34", n_classes: int = 2, blur: bool = False, blur_final: bool = True,
                 y_range=None, last_cross: bool = True, bottle: bool = False,
                 conv_lowering: str = "auto") -> DynamicUnet:
    """fastai's unet_learner model: the registered ResNet `encoder_arch`, cut, under a DynamicUnet;
    `conv_lowering` goes to the encoder's config and to every decoder conv."""
    conv_lowering = check_model_lowering(conv_lowering, "unet")
    encoder = build_model(encoder_arch, {"include_top": False, "conv_lowering": conv_lowering})
    if not hasattr(encoder, "return_features"):
        raise ValueError(f"unet: encoder {encoder_arch!r} cannot return its feature maps; use an ImageNet ResNet "
                         "(resnet18, resnet34, resnet50)")
    y_range = None if y_range is None else (float(y_range[0]), float(y_range[1]))
    return DynamicUnet(encoder.clone(return_features=True), n_classes, blur, blur_final, y_range, last_cross, bottle,
                       conv_lowering)
