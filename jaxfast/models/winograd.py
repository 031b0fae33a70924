"""Winograd F(4x4, 3x3) convolution: 3x3, stride 1, one pixel of zero padding, NHWC x HWIO.

Why: on CPU, XLA's convolution of a 16x16 map with 64 channels (ResNet's first stage at
64 px) runs at ~80 GFLOP/s, and its weight gradient at half that. Winograd's minimal
filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2015)
computes each 4x4 output tile from a 6x6 input tile with 36 multiplications per channel
pair instead of 144, so the arithmetic becomes 36 independent [tiles, cin] x [cin, cout]
matmuls between three cheap linear transforms:

    y_tile = A^T [ (G g G^T) * (B^T d_tile B) ] A

Every transform is written as ONE small matmul with a Kronecker matrix (36x36, 36x9 or
16x36), which XLA runs far better on CPU than 36 separate elementwise expressions. The
backward pass is hand written: the input gradient is the same convolution of the output
gradient with the kernel rotated and its channels swapped (both folded into the transform
and the matmul, nothing is copied); the weight gradient contracts the saved transformed
input V with the transformed output gradient, tile by tile.

Rounding: the transforms have coefficients up to 8 and 1/24, so float32 results differ
from a direct convolution by 1e-6 to ~2e-5 of the output's scale, growing slowly with the
channel count (tests/test_winograd.py bounds it at 8 and at 256 channels). float32 only:
`jaxfast.models.conv` routes nothing else here and refuses other dtypes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

TILE = 4  # output tile m of F(m x m, 3x3); input tiles are m + 2 = 6 wide
_B_T = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_A_T = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
# 2-D transforms as matrices acting on flattened tiles (row-major (i, j) pairs)
INPUT_TRANSFORM = np.kron(_B_T, _B_T).astype(np.float32)    # [36, 36]: d -> B^T d B
KERNEL_TRANSFORM = np.kron(_G, _G).astype(np.float32)       # [36, 9]:  g -> G g G^T
OUTPUT_TRANSFORM = np.kron(_A_T, _A_T).astype(np.float32)   # [16, 36]: M -> A^T M A
# The transform of the kernel rotated by 180 degrees (the input gradient's kernel): the same
# matrix with its 9 taps reversed, so the backward never materialises a flipped kernel
# (XLA's reverse + transpose of a 3x3x256x256 kernel took ~2.5 ms inside the step).
FLIPPED_KERNEL_TRANSFORM = KERNEL_TRANSFORM[:, ::-1].copy()


def _tiles(size: int) -> int:
    return -(-size // TILE)


def _transform_input(x: jax.Array) -> jax.Array:
    """x [N, H, W, C] -> V [36, N * th * tw, C]: every overlapping 6x6 tile (stride 4) of
    the input padded by one pixel (more at the bottom/right to fill whole tiles)."""
    n, h, w, c = x.shape
    th, tw = _tiles(h), _tiles(w)
    xp = jnp.pad(x, ((0, 0), (1, TILE * th + 1 - h), (1, TILE * tw + 1 - w), (0, 0)))
    taps = jnp.stack([xp[:, i:i + TILE * (th - 1) + 1:TILE, j:j + TILE * (tw - 1) + 1:TILE]
                      for i in range(TILE + 2) for j in range(TILE + 2)])  # [36, N, th, tw, C]
    return jnp.dot(INPUT_TRANSFORM, taps.reshape(36, -1)).reshape(36, n * th * tw, c)


def _transform_kernel(kernel: jax.Array, flipped: bool = False) -> jax.Array:
    """HWIO [3, 3, cin, cout] -> U [36, cin, cout] (of the kernel rotated by 180 degrees if `flipped`)."""
    _, _, cin, cout = kernel.shape
    matrix = FLIPPED_KERNEL_TRANSFORM if flipped else KERNEL_TRANSFORM
    return jnp.dot(matrix, kernel.reshape(9, -1)).reshape(36, cin, cout)


def _untransform_output(m: jax.Array, out_shape) -> jax.Array:
    """M [36, N * th * tw, cout] -> y [N, H, W, cout] (tiles put back, overhang cropped)."""
    n, h, w, cout = out_shape
    th, tw = _tiles(h), _tiles(w)
    y = jnp.dot(OUTPUT_TRANSFORM, m.reshape(36, -1)).reshape(TILE, TILE, n, th, tw, cout)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, th * TILE, tw * TILE, cout)
    return y[:, :h, :w]


def _transform_output_grad(dy: jax.Array) -> jax.Array:
    """The transpose of `_untransform_output`: dy [N, H, W, cout] -> dM [36, N * th * tw, cout]."""
    n, h, w, cout = dy.shape
    th, tw = _tiles(h), _tiles(w)
    dy = jnp.pad(dy, ((0, 0), (0, th * TILE - h), (0, tw * TILE - w), (0, 0)))
    dy = dy.reshape(n, th, TILE, tw, TILE, cout).transpose(2, 4, 0, 1, 3, 5).reshape(TILE * TILE, -1)
    return jnp.dot(OUTPUT_TRANSFORM.T, dy).reshape(36, n * th * tw, cout)


def _batched_matmul(a: jax.Array, b: jax.Array, contract_a: int, contract_b: int) -> jax.Array:
    return lax.dot_general(a, b, (((contract_a,), (contract_b,)), ((0,), (0,))))


def _conv(x, u, contract_u: int):
    """The convolution of x with the transformed kernel u (its channel axis `contract_u`
    contracted with x's), and the transformed input (for the weight gradient)."""
    v = _transform_input(x)
    m = _batched_matmul(v, u, 2, contract_u)  # [36, tiles, cout]
    return _untransform_output(m, (*x.shape[:3], u.shape[3 - contract_u])), v


@jax.custom_vjp
def winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 stride-1 'SAME' (pad 1) convolution of x [N, H, W, cin] with kernel [3, 3, cin, cout]."""
    if x.ndim != 4 or kernel.shape[:2] != (3, 3) or x.shape[-1] != kernel.shape[2]:
        raise ValueError(f"winograd_conv3x3: input {x.shape} (NHWC) does not fit a 3x3 HWIO kernel {kernel.shape}")
    return _conv(x, _transform_kernel(kernel), 1)[0]


def _winograd_fwd(x, kernel):
    y, v = _conv(x, _transform_kernel(kernel), 1)
    return y, (v, kernel)


def _winograd_bwd(residuals, dy):
    v, kernel = residuals
    # The input gradient of a stride-1 'SAME' conv is the same conv of dy with the kernel
    # rotated by 180 degrees and its channel axes swapped: the rotation is folded into the
    # transform's matrix and the swap into which axis the batched matmul contracts.
    dx = _conv(dy, _transform_kernel(kernel, flipped=True), 2)[0]
    du = _batched_matmul(v, _transform_output_grad(dy), 1, 1)  # [36, cin, cout]
    dkernel = jnp.dot(KERNEL_TRANSFORM.T, du.reshape(36, -1)).reshape(kernel.shape)
    return dx, dkernel


winograd_conv3x3.defvjp(_winograd_fwd, _winograd_bwd)
