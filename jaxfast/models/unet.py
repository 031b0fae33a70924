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
`jaxfast.models.convert`. Lesson 7's restoration options are config keys too: `norm_type`
('weight': NormType.Weight's weight-normalised convs; 'batch'; 'spectral'), `self_attention`,
`y_range` and `blur` (see DynamicUnet).

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


NORM_TYPES = (None, "batch", "weight", "spectral")


def check_norm_type(norm_type) -> str | None:
    if norm_type not in NORM_TYPES:
        raise ValueError(f"DynamicUnet: norm_type must be one of {NORM_TYPES}, got {norm_type!r}")
    return norm_type


class ConvLayer(nn.Module):
    """fastai v1 `conv_layer(ni, nf, ks, norm_type, use_activ, self_attention)`: conv, ReLU (unless
    `activation=False`), BatchNorm when `norm_type` is 'batch' ('batch_zero': its scale starts at
    0), SelfAttention when asked. The conv has a bias unless a BatchNorm follows; 'weight' and
    'spectral' normalise its kernel (jaxfast.models.gan_layers.NormConv); None is a plain conv."""

    features: int
    kernel: int = 3
    activation: bool = True
    conv_lowering: str = "auto"
    norm_type: str | None = None
    self_attention: bool = False
    kernel_init: nn.initializers.Initializer = KAIMING

    @nn.compact
    def __call__(self, x, train: bool = False):
        from jaxfast.models.gan_layers import SelfAttention  # gan_layers imports this module

        x = _conv_norm(x, self.features, self.kernel, self.norm_type, self.kernel_init, self.conv_lowering, train,
                       self.activation)
        if self.self_attention:
            x = SelfAttention(self.conv_lowering, name="attention")(x, train)
        return x


def _conv_norm(x, features: int, kernel: int, norm_type, kernel_init, lowering: str, train: bool, activation: bool):
    """Inside a compact module: its 'conv' (+ ReLU when `activation`) (+ its 'bn' for 'batch' /
    'batch_zero'), fastai's conv_layer without the self-attention."""
    from jaxfast.models.gan_layers import NormConv

    bn = norm_type in ("batch", "batch_zero")
    pad = (kernel - 1) // 2
    if norm_type in ("weight", "spectral"):
        x = NormConv(features, (kernel, kernel), padding=pad, norm=norm_type, kernel_init=kernel_init,
                     conv_lowering=lowering, name="conv")(x, train)
    else:
        x = Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=not bn,
                 kernel_init=kernel_init, lowering=lowering, name="conv")(x)
    if activation:
        x = nn.relu(x)
    if bn:
        zero = norm_type == "batch_zero"
        x = batch_norm(train, "bn", scale_init=nn.initializers.zeros if zero else nn.initializers.ones)(x)
    return x


class PixelShuffleICNR(nn.Module):
    """fastai's `PixelShuffle_ICNR(ni, nf, scale=2, blur, norm_type)`: 1x1 conv layer (no
    activation) to nf * scale**2 (ICNR init), ReLU, pixel shuffle, optional blur."""

    features: int
    scale: int = 2
    blur: bool = False
    conv_lowering: str = "auto"
    norm_type: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _conv_norm(x, self.features * self.scale**2, 1, self.norm_type, icnr_init(self.scale),
                       self.conv_lowering, train, activation=False)
        x = pixel_shuffle(nn.relu(x), self.scale)
        return blur_shuffled(x) if self.blur else x


class UnetBlock(nn.Module):
    """fastai's UnetBlock: upsample the decoder's map, join the skip map, two conv layers (the
    second followed by self-attention when `self_attention`)."""

    final_div: bool = True
    blur: bool = False
    conv_lowering: str = "auto"
    norm_type: str | None = None
    self_attention: bool = False

    @nn.compact
    def __call__(self, up_in, skip, train: bool = False):
        low, norm = self.conv_lowering, self.norm_type
        up_out = PixelShuffleICNR(up_in.shape[-1] // 2, blur=self.blur, conv_lowering=low, norm_type=norm,
                                  name="shuf")(up_in, train)
        up_out = resize_nearest(up_out, skip.shape[1:3])  # sizes not multiples of 32, as fastai
        x = nn.relu(jnp.concatenate([up_out, _decoder_bn(train, "bn")(skip)], axis=-1))
        n_in = x.shape[-1]
        features = n_in if self.final_div else n_in // 2
        x = ConvLayer(features, conv_lowering=low, norm_type=norm, name="conv1")(x, train)
        return ConvLayer(features, conv_lowering=low, norm_type=norm, self_attention=self.self_attention,
                         name="conv2")(x, train)


class ResBlock(nn.Module):
    """fastai `res_block(nf, norm_type, bottle)`: x + conv_layer(conv_layer(x)) (with 'batch', the
    second BatchNorm's scale starts at 0, fastai's NormType.BatchZero)."""

    bottle: bool = False
    conv_lowering: str = "auto"
    norm_type: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        n, low = x.shape[-1], self.conv_lowering
        second = "batch_zero" if self.norm_type == "batch" else self.norm_type
        inner = ConvLayer(n // 2 if self.bottle else n, conv_lowering=low, norm_type=self.norm_type,
                          name="conv1")(x, train)
        return x + ConvLayer(n, conv_lowering=low, norm_type=second, name="conv2")(inner, train)


class DynamicUnet(nn.Module):
    """fastai's DynamicUnet on an `encoder` returning feature maps, finest first (see the module
    docstring). The output has the input's size and `n_classes` channels; with sizes that are
    not multiples of the encoder's stride (32 for a ResNet) the upsampled maps are resized
    (PyTorch's nearest) to the skip maps and the input, as fastai does. `conv_lowering` is the
    decoder's (the encoder has its own field; the `unet` factory sets both).

    Lesson 7's options, as fastai's `unet_learner(norm_type, self_attention, y_range)`:
    `norm_type` of every decoder conv layer (None: conv + ReLU, the default; 'batch': conv
    without bias + ReLU + BatchNorm; 'weight': weight-normalised convs, NormType.Weight;
    'spectral'); `self_attention`: a SelfAttention after the second conv of the block
    `len(skips) - 3` (the third from the top, at 1/8 of the input for a ResNet); `y_range`:
    sigmoid scaled to (lo, hi)."""

    encoder: nn.Module
    n_classes: int
    blur: bool = False
    blur_final: bool = True
    y_range: tuple[float, float] | None = None
    last_cross: bool = True
    bottle: bool = False
    conv_lowering: str = "auto"
    norm_type: str | None = None
    self_attention: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        low = check_model_lowering(self.conv_lowering, "DynamicUnet")
        norm = check_norm_type(self.norm_type)
        features = self.encoder(x, train)
        if not isinstance(features, (list, tuple)) or len(features) < 2:
            raise ValueError("DynamicUnet's encoder must return its feature maps, finest first "
                             "(e.g. a ResNet with return_features=True)")
        *skips, deepest = features
        n = deepest.shape[-1]
        y = nn.relu(_decoder_bn(train, "bn")(deepest))
        y = ConvLayer(2 * n, conv_lowering=low, norm_type=norm, name="middle_0")(y, train)
        y = ConvLayer(n, conv_lowering=low, norm_type=norm, name="middle_1")(y, train)
        for i, skip in enumerate(reversed(skips)):
            not_final = i != len(skips) - 1
            y = UnetBlock(final_div=not_final, blur=self.blur and (not_final or self.blur_final),
                          conv_lowering=low, norm_type=norm, self_attention=self.self_attention and i == len(skips) - 3,
                          name=f"blocks_{i}")(y, skip, train)
        if y.shape[1:3] != x.shape[1:3]:
            y = PixelShuffleICNR(y.shape[-1], conv_lowering=low, norm_type=norm, name="shuf")(y, train)
            y = resize_nearest(y, x.shape[1:3])
        if self.last_cross:
            y = ResBlock(self.bottle, low, norm, name="res")(jnp.concatenate([y, x.astype(y.dtype)], axis=-1), train)
        y = ConvLayer(self.n_classes, kernel=1, activation=False, conv_lowering=low, norm_type=norm,
                      name="final")(y, train)
        return scale_to_range(y, self.y_range)


def unet_layer_groups(model: DynamicUnet) -> LayerGroups:
    """fastai's unet split: the encoder's two halves (its `first_half_regex`), then the decoder."""
    first_half = model.encoder.first_half_regex().removeprefix("^")
    return LayerGroups((("encoder_0", f"^encoder/{first_half}"), ("encoder_1", "^encoder/"), ("decoder", "")))


@register("unet")
def dynamic_unet(encoder_arch: str = "resnet34", n_classes: int = 2, blur: bool = False, blur_final: bool = True,
                 y_range=None, last_cross: bool = True, bottle: bool = False,
                 conv_lowering: str = "auto", norm_type: str | None = None,
                 self_attention: bool = False) -> DynamicUnet:
    """fastai's unet_learner model: the registered ResNet `encoder_arch`, cut, under a DynamicUnet;
    `conv_lowering` goes to the encoder's config and to every decoder conv; `norm_type`
    (None, 'batch', 'weight', 'spectral') and `self_attention` as fastai's unet_learner."""
    conv_lowering = check_model_lowering(conv_lowering, "unet")
    norm_type = check_norm_type(norm_type)
    encoder = build_model(encoder_arch, {"include_top": False, "conv_lowering": conv_lowering})
    if not hasattr(encoder, "return_features"):
        raise ValueError(f"unet: encoder {encoder_arch!r} cannot return its feature maps; use an ImageNet ResNet "
                         "(resnet18, resnet34, resnet50)")
    y_range = None if y_range is None else (float(y_range[0]), float(y_range[1]))
    return DynamicUnet(encoder.clone(return_features=True), n_classes, blur, blur_final, y_range, last_cross, bottle,
                       conv_lowering, norm_type, bool(self_attention))
