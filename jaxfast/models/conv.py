"""The one convolution (and max-pool) every jaxfast model uses, with the lowering
chosen per shape and backend.

`Conv` is a drop-in for `flax.linen.Conv` ('kernel' [kh, kw, in, out], 'bias' [out],
NHWC). Its arithmetic is done by one of three lowerings, numerically equal forward and
backward (tests/test_conv.py, tests/test_winograd.py):

- 'xla':      `lax.conv_general_dilated`, XLA's own convolution;
- 'im2col':   the kh*kw shifted (strided) slices of the padded input concatenated on
              the channel axis, then ONE matmul with the reshaped kernel;
- 'winograd': Winograd F(4x4, 3x3) for 3x3 stride-1 pad-1 convs (`jaxfast.models.winograd`):
              36 batched matmuls between small transforms, 4x fewer multiplications.

Why: XLA's CPU convolution is pathological at small spatial sizes with many channels
(measured here: 3x3, 512 ch, 2x2 output, batch 32, fwd+bwd 558 ms through
conv_general_dilated vs 12 ms as im2col), and Winograd beats it on most of the 3x3 stride-1
convs of a ResNet (16x16x64, bs 32: 9.7 vs 19.9 ms), though not on large maps with few
channels, 2x2 maps or small batches (the rule below says where).
im2col leaves out the taps that only ever read padding (a 3x3 conv on a 1x1 map is one
matmul with its centre tap: 50 ms -> 2 ms).
`choose_lowering` encodes the rule measured on this machine (benchmarks/conv_bench.py
prints the table behind it). Accelerators always take 'xla'.

A lowering is an explicit setting, never global state: `Conv(lowering=...)` and
`max_pool(lowering=...)`, and each model's `conv_lowering` field (a key of its registered
config, so it travels with exports), which the model passes to every conv and max-pool it
builds. 'auto' (the default) means the rule above.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxfast.errors import InputError
from jaxfast.models.winograd import TILE as WINOGRAD_TILE
from jaxfast.models.winograd import winograd_conv3x3

LOWERINGS = ("auto", "xla", "im2col", "winograd")
# What a whole model (and max_pool) can take: every conv and pool has these ('winograd'
# only fits 3x3 stride-1 convs, so it is a per-Conv setting).
MODEL_LOWERINGS = ("auto", "xla", "im2col")

# The CPU rule (benchmarks/conv_bench.py; 2-core AMD EPYC, jax 0.10.2), fwd+bwd:
# - Winograd F(4x4, 3x3) for float32 3x3 stride-1 pad-1 convs with outputs of at least 4x4
#   pixels, at least 64 channels in and out and at least 64 output tiles of 4x4 in the batch:
#   1.2-2x faster than the best of the others (16x16x64 bs 32: 9.7 ms vs XLA 19.9; 7x7x64
#   bs 64: 5.2 vs 7.8), on large maps too (56x56x64 bs 32: 190 vs 330; 64x64x96 bs 8: 98 vs
#   152; a U-Net decoder's 128x128x99 bs 8: 467 vs 1965, where XLA's weight gradient runs at
#   15 GFLOP/s). It loses on 2x2 maps (im2col 5x faster), 64x64x32 maps (XLA 1.4-1.6x) and
#   <= 16 channels, ties at 32 (while adding ~3 s of compile to lesson 7's MNIST ResNet); with
#   few tiles the kernel's transform (36 x cin x cout, twice per step) eats the gain (4x4x256
#   at bs 32, 32 tiles: 11.3 vs 16.2 alone, no gain inside the ResNet-18 step);
# - im2col for outputs of at most 2x2 pixels (XLA's conv is 10-50x slower there: 2x2x512
#   558 ms vs 12 ms), for small batches of small maps with >= 128 input channels, strided or
#   not (batch x output pixels <= 256: 4x4x512 bs 4 6.7 vs 20.4 ms, 4x4x512->1024 bs 8 23.6
#   vs 66.8, 8x8x256 bs 2 3.2 vs 4.5, 8x8x256->512 stride 2 bs 8 5.5 vs 12.0), for tiny
#   contractions (kh*kw*cin <= 16: single-channel stems, 1.8x) and for 1x1 convs with >= 64
#   input channels (ties or better);
# - XLA's conv everywhere else (strided 3x3 and 7x7 convs on larger batches: ties or up to
#   2.5x faster).
# Memory: Winograd's transformed maps are 2.25x the activation, im2col's patches kh*kw x.
CPU_IM2COL_MAX_OUTPUT_PIXELS = 4
CPU_IM2COL_SMALL_BATCH_MAX_ROWS = 256  # batch x output pixels ...
CPU_IM2COL_SMALL_BATCH_MIN_CHANNELS = 128  # ... with this many input channels or more
CPU_IM2COL_MAX_PATCH = 16
CPU_IM2COL_MIN_CHANNELS_1X1 = 64
CPU_WINOGRAD_MIN_OUTPUT_PIXELS = 16
CPU_WINOGRAD_MIN_CHANNELS = 64
CPU_WINOGRAD_MIN_TILES = 64


def _output_size(size: int, k: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - k) // stride + 1


def resolve_padding(padding, in_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int]):
    """Explicit ((top, bottom), (left, right)) pads for 'SAME', 'VALID' or explicit pads."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(tuple(in_hw), tuple(kernel_hw), tuple(strides), padding.upper()))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(p) if not isinstance(p, int) else (p, p) for p in padding)


def choose_lowering(x_shape, kernel_shape, strides, padding, backend: str | None = None, dtype=jnp.float32) -> str:
    """'winograd', 'im2col' or 'xla' for this conv on `backend` (default: JAX's default backend).
    `dtype`: the input's and kernel's common dtype, None when they differ (never Winograd)."""
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "xla"
    kh, kw, cin, cout = kernel_shape
    pads = resolve_padding(padding, x_shape[1:3], (kh, kw), strides)
    out_pixels = _output_size(x_shape[1], kh, strides[0], pads[0]) * _output_size(x_shape[2], kw, strides[1], pads[1])
    tiles = x_shape[0] * -(-x_shape[1] // WINOGRAD_TILE) * -(-x_shape[2] // WINOGRAD_TILE)
    if (winograd_applies(kernel_shape, strides, pads) and dtype is not None and jnp.dtype(dtype) == jnp.float32
            and out_pixels >= CPU_WINOGRAD_MIN_OUTPUT_PIXELS and min(cin, cout) >= CPU_WINOGRAD_MIN_CHANNELS
            and tiles >= CPU_WINOGRAD_MIN_TILES):
        return "winograd"
    if out_pixels <= CPU_IM2COL_MAX_OUTPUT_PIXELS or kh * kw * cin <= CPU_IM2COL_MAX_PATCH:
        return "im2col"
    if x_shape[0] * out_pixels <= CPU_IM2COL_SMALL_BATCH_MAX_ROWS and cin >= CPU_IM2COL_SMALL_BATCH_MIN_CHANNELS:
        return "im2col"
    if (kh, kw) == (1, 1) and cin >= CPU_IM2COL_MIN_CHANNELS_1X1:
        return "im2col"
    return "xla"


def check_model_lowering(lowering: str, model: str = "model") -> str:
    """`lowering` when a whole model can take it (MODEL_LOWERINGS), else an InputError naming it."""
    if lowering not in MODEL_LOWERINGS:
        raise InputError(f"{model}: unknown conv_lowering {lowering!r}; choose one of {MODEL_LOWERINGS}")
    return lowering


def conv2d(x: jax.Array, kernel: jax.Array, strides=(1, 1), padding="SAME", lowering: str = "auto") -> jax.Array:
    """NHWC x HWIO convolution through the chosen lowering."""
    if lowering not in LOWERINGS:
        raise InputError(f"unknown conv lowering {lowering!r}; choose one of {LOWERINGS}")
    if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"conv2d: input {x.shape} (NHWC) does not match kernel {kernel.shape} (HWIO)")
    strides = tuple(strides)
    if lowering == "auto":
        common_dtype = x.dtype if x.dtype == kernel.dtype else None
        lowering = choose_lowering(x.shape, kernel.shape, strides, padding, dtype=common_dtype)
    if lowering == "xla":
        return lax.conv_general_dilated(
            x, kernel, window_strides=strides, padding=resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
    if lowering == "winograd":
        if not winograd_applies(kernel.shape, strides, resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides)):
            raise ValueError(f"the winograd lowering needs a 3x3 kernel, stride 1 and padding 1; got kernel "
                             f"{kernel.shape}, strides {strides}, padding {padding}")
        if not x.dtype == kernel.dtype == jnp.float32:
            raise ValueError(f"the winograd lowering computes in float32 only; got input {x.dtype}, kernel {kernel.dtype}")
        return winograd_conv3x3(x, kernel)
    return _conv_im2col(x, kernel, strides, padding)


def winograd_applies(kernel_shape, strides, pads) -> bool:
    """Whether `winograd_conv3x3` computes this conv: 3x3, stride 1, one pixel of padding."""
    return tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1) and tuple(map(tuple, pads)) == ((1, 1), (1, 1))


def _shifted_windows(x: jax.Array, window: tuple[int, int], strides, padding, pad_value=0.0) -> tuple[list, tuple]:
    """The kh*kw strided slices of the padded input, each [N, Ho, Wo, C]."""
    kh, kw = window
    pads = resolve_padding(padding, x.shape[1:3], window, strides)
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
    ho = _output_size(x.shape[1], kh, strides[0], pads[0])
    wo = _output_size(x.shape[2], kw, strides[1], pads[1])
    n, c = x.shape[0], x.shape[3]
    slices = [
        lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * strides[0] + 1, j + (wo - 1) * strides[1] + 1, c), (1, *strides, 1))
        for i in range(kh)
        for j in range(kw)
    ]
    return slices, (ho, wo)


def _live_taps(in_hw, kernel_hw, strides, pads) -> list[tuple[int, int]]:
    """The kernel taps (i, j) that read at least one real (non-padding) input pixel."""
    def live(n_in, k, s, pad):
        n_out = _output_size(n_in, k, s, pad)
        return [i for i in range(k) if any(0 <= o * s + i - pad[0] < n_in for o in range(n_out))]

    rows, cols = live(in_hw[0], kernel_hw[0], strides[0], pads[0]), live(in_hw[1], kernel_hw[1], strides[1], pads[1])
    return [(i, j) for i in rows for j in cols]


def _conv_im2col(x, kernel, strides, padding):
    """One matmul over the concatenated shifted slices; taps that only ever read padding
    (a 3x3 conv on a 1x1 map keeps only its centre) are left out, being exact zeros."""
    kh, kw, cin, cout = kernel.shape
    pads = resolve_padding(padding, x.shape[1:3], (kh, kw), strides)
    slices, _ = _shifted_windows(x, (kh, kw), strides, pads)
    taps = _live_taps(x.shape[1:3], (kh, kw), strides, pads)
    if len(taps) == kh * kw:
        weights = kernel.reshape(kh * kw * cin, cout)
    else:
        slices = [slices[i * kw + j] for i, j in taps]
        weights = jnp.concatenate([kernel[i, j] for i, j in taps], axis=0)
    patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    return jnp.dot(patches, weights, preferred_element_type=x.dtype)


def max_pool(x: jax.Array, window=(3, 3), strides=(2, 2), padding="SAME", lowering: str = "auto") -> jax.Array:
    """Max-pool (NHWC). On CPU ('im2col') as an elementwise max over shifted slices with a
    hand-written backward (`_slice_max_pool`): XLA's CPU select-and-scatter, and the
    select chain that autodiff makes of the slices, are both ~10x slower than it."""
    if lowering not in MODEL_LOWERINGS:
        raise InputError(f"unknown max-pool lowering {lowering!r}; choose one of {MODEL_LOWERINGS}")
    if lowering == "auto":
        lowering = "xla" if jax.default_backend() != "cpu" else "im2col"
    if lowering == "xla":
        return nn.max_pool(x, tuple(window), tuple(strides), padding=padding)
    window, strides = tuple(window), tuple(strides)
    pads = tuple(tuple(p) for p in resolve_padding(padding, x.shape[1:3], window, strides))
    return _slice_max_pool(x, window, strides, pads, tuple(x.shape[1:3]))


def _pool_argmax(x, window, strides, pads):
    """(max, index of the first maximal tap as int8) over the kh*kw shifted slices."""
    slices, _ = _shifted_windows(x, window, strides, pads, pad_value=-jnp.inf)
    out, idx = slices[0], jnp.zeros(slices[0].shape, jnp.int8)
    for k, s in enumerate(slices[1:], start=1):
        better = s > out
        out, idx = jnp.where(better, s, out), jnp.where(better, jnp.int8(k), idx)
    return out, idx


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _slice_max_pool(x, window, strides, pads, in_hw):
    return _pool_argmax(x, window, strides, pads)[0]


def _slice_max_pool_fwd(x, window, strides, pads, in_hw):
    return _pool_argmax(x, window, strides, pads)


def _slice_max_pool_bwd(window, strides, pads, in_hw, idx, g):
    """Route each output gradient to its argmax, one stride phase of the padded input at a
    time: within phase (p, q) every tap is a unit-stride shift, so no scatter is needed."""
    (kh, kw), (sh, sw), ((top, bottom), (left, right)) = window, strides, pads
    n, ho, wo, c = g.shape
    rows, cols = -(-(in_hw[0] + top + bottom) // sh), -(-(in_hw[1] + left + right) // sw)
    phases = []
    for p in range(sh):
        row = []
        for q in range(sw):
            acc = jnp.zeros((n, rows, cols, c), g.dtype)
            for i in range(p, kh, sh):
                for j in range(q, kw, sw):
                    part = jnp.where(idx == i * kw + j, g, jnp.zeros((), g.dtype))
                    a, b = i // sh, j // sw
                    acc = acc + jnp.pad(part, ((0, 0), (a, rows - ho - a), (b, cols - wo - b), (0, 0)))
            row.append(acc)
        phases.append(jnp.stack(row, axis=3))  # [n, rows, cols, sw, c]
    dx = jnp.stack(phases, axis=2).reshape(n, rows * sh, cols * sw, c)
    return (dx[:, top:top + in_hw[0], left:left + in_hw[1]],)


_slice_max_pool.defvjp(_slice_max_pool_fwd, _slice_max_pool_bwd)


class Conv(nn.Module):
    """2-D convolution, NHWC, with nn.Conv's parameter layout and initialisers; `lowering`
    one of LOWERINGS ('auto': the measured rule)."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    dtype: jnp.dtype | None = None
    kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        dtype = self.dtype or x.dtype
        y = conv2d(x.astype(dtype), kernel.astype(dtype), tuple(self.strides), self.padding, self.lowering)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y
