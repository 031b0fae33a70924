"""fastai v1's GAN layers (lesson 7) in Flax: spectral and weight normalisation, PyTorch's
transposed convolution, self-attention, and fastai's `conv_layer` with its `norm_type`.

Spectral normalisation (Miyato et al. 2018), as torch's `spectral_norm`: the kernel, seen as a
[out, kh*kw*in] matrix W, is divided by sigma = u . (W v), where u and v come from power
iteration. u and v live in the 'batch_stats' collection, in a child module named 'spectral'
(so jaxfast's `batchnorm_mask` never mistakes the conv's kernel for a BatchNorm param), and
jaxfast's train step, checkpoints and exports carry them like BatchNorm statistics. A training
call (`train=True`, the collection mutable) runs one power iteration before normalising and
stores the new u, v; an inference call uses the stored u, v unchanged, as torch does in eval
mode. u and v are constants for autodiff (torch computes them under no_grad).

Weight normalisation (NormType.Weight, torch's `weight_norm(dim=0)`): kernel = g * v / ||v||,
with the norm taken per output channel and g starting at ||v|| (so the initial kernel is v).
Params 'kernel' (v) and 'scale' (g).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxfast.models.conv import conv2d, resolve_padding
from jaxfast.models.layers import KAIMING_FAN_IN, KAIMING_FAN_OUT, batch_norm
from jaxfast.models.unet import pixel_shuffle

NORM_TYPES = (None, "batch", "spectral", "weight")
# torch's default init of a ConvTranspose2d weight [in, out, kh, kw]: kaiming_uniform(a=sqrt(5)) with
# torch's fan_in = out * kh * kw, i.e. U(+-1/sqrt(fan)); our kernel is [kh, kw, in, out]: that fan is 'fan_out'.
TORCH_DEFAULT_TRANSPOSE_INIT = nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps), torch's F.normalize."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def power_iteration(w_mat: jax.Array, u: jax.Array, v: jax.Array, n_iterations: int = 1, eps: float = 1e-12):
    """torch's spectral_norm update: v = normalize(W^T u), u = normalize(W v), `n_iterations` times."""
    for _ in range(n_iterations):
        v = l2_normalize(w_mat.T @ u, eps)
        u = l2_normalize(w_mat @ v, eps)
    return u, v


def kernel_matrix(kernel: jax.Array) -> jax.Array:
    """A [kh, kw, in, out] (or [in, out]) kernel as the [out, kh*kw*in] matrix whose largest
    singular value spectral normalisation divides by (torch's [out, in*kh*kw] up to a column
    permutation, which leaves singular values unchanged)."""
    return kernel.reshape(-1, kernel.shape[-1]).T


class SpectralNorm(nn.Module):
    """Holds u [out] and v [kh*kw*in] ('batch_stats'); returns kernel / sigma (see the module doc)."""

    n_power_iterations: int = 1
    eps: float = 1e-12

    @nn.compact
    def __call__(self, kernel: jax.Array, update: bool) -> jax.Array:
        w_mat = kernel_matrix(kernel.astype(jnp.float32))
        n_out, n_in = w_mat.shape
        u = self.variable("batch_stats", "u",
                          lambda: l2_normalize(jax.random.normal(self.make_rng("params"), (n_out,)), self.eps))
        v = self.variable("batch_stats", "v",
                          lambda: l2_normalize(jax.random.normal(self.make_rng("params"), (n_in,)), self.eps))
        u_now, v_now = u.value, v.value
        if update:
            u_now, v_now = power_iteration(lax.stop_gradient(w_mat), u_now, v_now, self.n_power_iterations, self.eps)
            if not self.is_initializing():
                u.value, v.value = u_now, v_now
        sigma = lax.stop_gradient(u_now) @ (w_mat @ lax.stop_gradient(v_now))
        return (kernel / sigma.astype(kernel.dtype)).astype(kernel.dtype)


def weight_normalize(v: jax.Array, g: jax.Array) -> jax.Array:
    """g * v / ||v||, the norm over every axis but the last (output channels)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1)), keepdims=True))
    return v * (g / norm)


class NormConv(nn.Module):
    """A 2-D conv (NHWC, jaxfast's conv2d lowering) whose kernel is spectral- or weight-normalised
    (`norm` 'spectral' / 'weight') or plain (None). Explicit integer `padding` is torch's."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: int | str = "SAME"
    use_bias: bool = True
    norm: str | None = None
    kernel_init: nn.initializers.Initializer = KAIMING_FAN_IN
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.norm not in (None, "spectral", "weight"):
            raise ValueError(f"NormConv: norm must be None, 'spectral' or 'weight', got {self.norm!r}")
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features))
        if self.norm == "spectral":
            kernel = SpectralNorm(name="spectral")(kernel, update=train)
        elif self.norm == "weight":
            g = self.param("scale", lambda _, v: jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2))), kernel)
            kernel = weight_normalize(kernel, g)
        padding = self.padding if isinstance(self.padding, str) else resolve_padding(self.padding, (), (), ())
        y = conv2d(x, kernel.astype(x.dtype), tuple(self.strides), padding, self.conv_lowering)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


def conv_transpose2d_dilated(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """PyTorch's ConvTranspose2d as XLA's gradient-of-conv form: the input dilated by `stride`,
    padded by k - 1 - padding, convolved with the flipped kernel (the reference; slow on XLA:CPU)."""
    kh, kw = kernel.shape[:2]
    pads = ((kh - 1 - padding,) * 2, (kw - 1 - padding,) * 2)
    return lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=(stride, stride),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _subpixel_taps(k: int, stride: int, padding: int) -> tuple[np.ndarray, int]:
    """For output phase r (output pixel stride * m + r) and window position j (input pixel
    m + d_min + j): the kernel tap t that links them, or k (a zero tap) when none does.
    From torch's definition out[stride * i + t - padding] += x[i] * w[t]."""
    links = {(r, (r + padding - t) // stride): t for r in range(stride) for t in range(k)
             if (r + padding - t) % stride == 0}
    offsets = [d for _, d in links]
    d_min, width = min(offsets), max(offsets) - min(offsets) + 1
    table = np.full((width, stride), k)
    for (r, d), t in links.items():
        table[d - d_min, r] = t
    return table, d_min


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int, lowering: str = "auto") -> jax.Array:
    """PyTorch's ConvTranspose2d in NHWC (kernel [kh, kw, in, out] = torch's weight.permute(2, 3, 0, 1)),
    output size (n - 1) * stride - 2 * padding + k, computed without dilation:

    - a 1x1 input (the generator's first layer) is one matmul;
    - otherwise sub-pixel: each of the stride**2 output phases is a small stride-1 conv of the
      input, so all of them are ONE stride-1 conv (jaxfast's conv2d, with its CPU lowerings) with
      stride**2 * out channels (taps a phase does not use are zero), then a pixel shuffle.
      For 4x4 stride 2: a 3x3 conv to 4 * out channels (2.25x the multiply-adds, 4x less than
      the dilated form, and Winograd applies); `lowering`: that conv's (jaxfast.models.conv).
    Equal to `conv_transpose2d_dilated` (tests/test_gan_models.py)."""
    kh, kw, _, cout = kernel.shape
    n_h, n_w = x.shape[1:3]
    if kh != kw or x.shape[1] != x.shape[2]:
        raise ValueError(f"conv_transpose2d: square kernels and maps only, got kernel {kernel.shape}, input {x.shape}")
    if padding > kh - 1:
        raise ValueError(f"conv_transpose2d: padding {padding} must be below the kernel size {kh}")
    out = (n_h - 1) * stride - 2 * padding + kh
    if n_h == 1:
        full = jnp.einsum("bc,hwco->bhwo", x[:, 0, 0], kernel, preferred_element_type=x.dtype)
        return full[:, padding:padding + out, padding:padding + out]
    table, d_min = _subpixel_taps(kh, stride, padding)
    if out % stride or d_min > 0:  # phases of unequal sizes, or a window right of the pixel: the plain form
        return conv_transpose2d_dilated(x, kernel, stride, padding)
    width = table.shape[0]
    zero_tap = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    sub = zero_tap[table[:, None, :, None], table[None, :, None, :]]  # [width, width, s, s, in, out]
    sub = sub.transpose(0, 1, 4, 5, 2, 3).reshape(width, width, kernel.shape[2], cout * stride * stride)
    m = out // stride
    pad_lo = -d_min
    pad_hi = m + width - 1 - n_h - pad_lo
    y = conv2d(x, sub, (1, 1), ((pad_lo, max(pad_hi, 0)),) * 2, lowering)[:, :m, :m]
    return pixel_shuffle(y, stride)


class ConvTranspose(nn.Module):
    """torch's `nn.ConvTranspose2d(ni, features, kernel, stride, padding, bias)` in NHWC."""

    features: int
    kernel: int = 4
    stride: int = 2
    padding: int = 1
    use_bias: bool = False
    kernel_init: nn.initializers.Initializer = TORCH_DEFAULT_TRANSPOSE_INIT
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.param("kernel", self.kernel_init, (self.kernel, self.kernel, x.shape[-1], self.features))
        y = conv_transpose2d(x, k.astype(x.dtype), self.stride, self.padding, self.conv_lowering)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(y.dtype)
        return y


class SelfAttention(nn.Module):
    """fastai v1's SelfAttention (SAGAN, Zhang et al. 2018): spectral-normalised 1x1 convs give
    query f, key g (C/8 channels) and value h (C); out_j = x_j + gamma * sum_i beta_ij h_i with
    beta = softmax over i of f_i . g_j. gamma starts at 0, so the layer starts as the identity."""

    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, hgt, wid, c = x.shape
        if c < 8:
            raise ValueError(f"SelfAttention needs at least 8 channels (query/key have C // 8), got {c}")

        def proj(features, name):
            return NormConv(features, (1, 1), padding="VALID", use_bias=False, norm="spectral",
                            conv_lowering=self.conv_lowering, name=name)(x, train).reshape(b, hgt * wid, features)

        f, g, h = proj(c // 8, "query"), proj(c // 8, "key"), proj(c, "value")
        scores = jnp.einsum("bic,bjc->bij", f, g)
        beta = jax.nn.softmax(scores.astype(jnp.float32), axis=1).astype(h.dtype)
        out = jnp.einsum("bij,bic->bjc", beta, h).reshape(x.shape)
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        return x + gamma.astype(x.dtype) * out


class ConvLayer(nn.Module):
    """fastai v1's `conv_layer`: conv (or transposed conv), activation, BatchNorm, self-attention,
    in that order (fastai puts the activation before the BatchNorm).

    norm_type: 'batch' (conv without bias, then BatchNorm), 'spectral', 'weight' or None.
    `padding` None: (ks - 1) // 2 for a conv, 0 for a transposed conv; `use_bias` None: no bias
    only before a BatchNorm. leaky: LeakyReLU slope, else ReLU. Kaiming-normal init (fan_in as torch
    counts it). `conv_lowering`: every conv's lowering (jaxfast.models.conv: 'auto' = the rule)."""

    features: int
    kernel: int = 3
    stride: int = 1
    padding: int | None = None
    use_bias: bool | None = None
    norm_type: str | None = "batch"
    use_activ: bool = True
    leaky: float | None = None
    transpose: bool = False
    self_attention: bool = False
    conv_lowering: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"ConvLayer: norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        bn = self.norm_type == "batch"
        bias = (not bn) if self.use_bias is None else self.use_bias
        if self.transpose:
            if self.norm_type in ("spectral", "weight"):
                raise ValueError("ConvLayer: spectral/weight norm of a transposed conv is not implemented")
            pad = 0 if self.padding is None else self.padding
            x = ConvTranspose(self.features, self.kernel, self.stride, pad, bias, KAIMING_FAN_OUT, self.conv_lowering,
                              name="conv")(x)
        else:
            pad = (self.kernel - 1) // 2 if self.padding is None else self.padding
            x = NormConv(self.features, (self.kernel, self.kernel), (self.stride, self.stride), pad, bias,
                         None if bn else self.norm_type, conv_lowering=self.conv_lowering, name="conv")(x, train)
        if self.use_activ:
            x = nn.relu(x) if self.leaky is None else nn.leaky_relu(x, self.leaky)
        if bn:
            x = batch_norm(train, "bn")(x)
        if self.self_attention:
            x = SelfAttention(self.conv_lowering, name="attention")(x, train)
        return x
