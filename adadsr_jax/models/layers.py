"""Convolution helpers shared by the backbones and the adapter.

All feature maps are NHWC. Kernels are HWIO (PyTorch's OIHW transposed), so a PyTorch
checkpoint converts with one transpose per tensor.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# DIV2K RGB mean on the 0..255 scale; subtracted at the head, added back at the tail (never trained).
DIV2K_RGB_MEAN = (0.4488 * 255.0, 0.4371 * 255.0, 0.4040 * 255.0)


def torch_uniform_init(fan_in: int) -> nnx.initializers.Initializer:
    """PyTorch's default conv init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Matching it keeps trained-from-scratch behaviour close to the PyTorch releases.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        # Draw from a power-of-two-sized buffer and scale afterwards: eager model construction then
        # compiles one random kernel per size bucket instead of one per (shape, bound), which made
        # building even a tiny model take tens of seconds on CPU.
        size = math.prod(shape)
        bucket = 1 << max(size - 1, 1).bit_length()
        flat = jax.random.uniform(key, (bucket,), dtype, -1.0, 1.0)
        return (flat[:size] * bound).reshape(shape)

    return init


def conv2d(
    x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None, padding: str = "SAME"
) -> jax.Array:
    """Stride-1 convolution: SAME (PyTorch padding k//2 for odd k) or VALID.

    x: [N, H, W, Cin]; kernel: [kh, kw, Cin, Cout]; bias: [Cout] -> [N, H, W, Cout] (SAME) or
    [N, H - kh + 1, W - kw + 1, Cout] (VALID).
    """
    if x.shape[-1] == 3:
        # An RGB input (the head conv) gets a fourth, zero channel: the same sums, and XLA's CPU
        # convolution ran 3x faster with it (150 x 225 x 3 -> 32: 9.5 against 3.1 ms).
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 1)))
        kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 1), (0, 0)))
    y = jax.lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(1, 1),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


class Conv(nnx.Module):
    """A square stride-1 SAME convolution with bias and PyTorch-style initialisation.

    Params: kernel [k, k, in_features, out_features], bias [out_features].
    """

    def __init__(self, in_features: int, out_features: int, *, kernel_size: int = 3, rngs: nnx.Rngs):
        init = torch_uniform_init(in_features * kernel_size * kernel_size)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
        self.bias = nnx.Param(init(rngs.params(), (out_features,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, in_features] -> [N, H, W, out_features]."""
        return conv2d(x, self.kernel[...], self.bias[...])


class StackedConv(nnx.Module):
    """`stack_shape` independent 3x3 convolutions whose parameters are stacked on leading axes.

    Stacking lets a residual stack run as one `lax.scan` (one compiled block, not D copies).
    Params: kernel [*stack_shape, 3, 3, in_features, out_features], bias [*stack_shape, out_features].
    """

    def __init__(
        self,
        stack_shape: tuple[int, ...],
        in_features: int,
        out_features: int,
        *,
        kernel_size: int = 3,
        rngs: nnx.Rngs,
    ):
        init = torch_uniform_init(in_features * kernel_size * kernel_size)
        k_shape = (*stack_shape, kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init(rngs.params(), k_shape))
        self.bias = nnx.Param(init(rngs.params(), (*stack_shape, out_features)))


class StackedDense(nnx.Module):
    """Stacked 1x1 convolutions (the channel-attention MLP of RCAN).

    Params: kernel [*stack_shape, in_features, out_features], bias [*stack_shape, out_features].
    """

    def __init__(self, stack_shape: tuple[int, ...], in_features: int, out_features: int, *, rngs: nnx.Rngs):
        init = torch_uniform_init(in_features)
        self.kernel = nnx.Param(init(rngs.params(), (*stack_shape, in_features, out_features)))
        self.bias = nnx.Param(init(rngs.params(), (*stack_shape, out_features)))


def resolve_scan_unroll(scan_unroll: bool | None) -> bool:
    """Whether the residual-stack scans unroll: `None` means yes on CPU, no elsewhere.

    Measured on XLA:CPU (jax 0.10): the gradient of the convolutions inside a rolled `lax.scan` runs
    about 65x slower than unrolled (adaedsr_small, batch 16 of 32x32: 34 s vs 0.53 s per step), while the
    forward pass is unaffected. On GPU the rolled loop keeps compile time independent of depth.
    """
    return jax.default_backend() == "cpu" if scan_unroll is None else bool(scan_unroll)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """PyTorch's PixelShuffle in NHWC.

    Input channel `c * r * r + i * r + j` becomes output channel `c` at sub-pixel `(i, j)`, so weights of
    a PyTorch upsampler port unchanged. x: [N, H, W, C * r * r] -> [N, H * r, W * r, C].
    """
    n, h, w, crr = x.shape
    r = factor
    if crr % (r * r):
        raise ValueError(f"pixel_shuffle: {crr} channels are not divisible by {r}*{r}")
    c = crr // (r * r)
    x = x.reshape(n, h, w, c, r, r)
    x = x.transpose(0, 1, 4, 2, 5, 3)  # n, h, i, w, j, c
    return x.reshape(n, h * r, w * r, c)


def upsampler_stages(scale: int) -> tuple[int, ...]:
    """Pixel-shuffle factors of the EDSR upsampler: x2 -> (2,), x3 -> (3,), x4 -> (2, 2)."""
    stages = {2: (2,), 3: (3,), 4: (2, 2)}
    if scale not in stages:
        raise ValueError(f"scale must be 2, 3 or 4, got {scale}")
    return stages[scale]


class Upsampler(nnx.Module):
    """log2(s) x [conv C -> 4C, PixelShuffle(2)] for s in {2, 4}; [conv C -> 9C, PixelShuffle(3)] for 3.

    [N, h, w, C] -> [N, s*h, s*w, C]. No activation, as in EDSR and RCAN.
    """

    def __init__(self, features: int, scale: int, *, rngs: nnx.Rngs):
        self.factors = upsampler_stages(scale)
        self.convs = nnx.List([Conv(features, features * r * r, rngs=rngs) for r in self.factors])

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, r in zip(self.convs, self.factors, strict=True):
            x = pixel_shuffle(conv(x), r)
        return x


def _tap_to_subpixel(factor: int) -> np.ndarray:
    """sel[t, a, i, d] = 1 where HR offset d - 1 from sub-pixel i lands on LR offset t - 1, sub-pixel a."""
    r = factor
    sel = np.zeros((3, r, r, 3), np.float32)
    for i in range(r):
        for d in range(3):
            t, a = divmod(i + d - 1, r)
            sel[t + 1, a, i, d] = 1.0
    return sel


def shuffled_conv_kernel(kernel: jax.Array, factor: int) -> jax.Array:
    """The 3x3 kernel that, run before `pixel_shuffle(., factor)`, gives what `kernel` gives after it.

    conv(pixel_shuffle(x, r), kernel) == pixel_shuffle(conv(x, K), r) with SAME zero padding on both
    sides (an HR neighbour of any sub-pixel is at LR offset -1, 0 or 1; one off the HR image is off the
    LR image too). kernel: [3, 3, C, O] -> K [3, 3, C * r * r, O * r * r], channels in pixel_shuffle's
    (PyTorch's) order; r * r - 1 of every r * r entries per tap are zero.
    """
    sel = jnp.asarray(_tap_to_subpixel(factor), kernel.dtype)
    c, o = kernel.shape[2], kernel.shape[3]
    k = jnp.einsum("yaip,xbjq,pqco->yxcaboij", sel, sel, kernel)
    return k.reshape(3, 3, c * factor * factor, o * factor * factor)


def composed_kernel(first: jax.Array, second: jax.Array) -> jax.Array:
    """The 5x5 kernel of two 3x3 convolutions in a row, [3, 3, A, B] then [3, 3, B, C] -> [5, 5, A, C].

    Equal to the two SAME convolutions away from the border; at the 1-pixel border ring the first conv's
    output is zero-padded in the second, which the composition cannot see (`upsample_and_tail`).
    """
    sums = np.zeros((5, 3, 3), np.float32)
    for u in range(3):
        for v in range(3):
            sums[u + v, u, v] = 1.0
    sums = jnp.asarray(sums, first.dtype)
    return jnp.einsum("puv,qwx,uwab,vxbc->pqac", sums, sums, first, second)


def _outside_ring(x: jax.Array, conv: Conv) -> jax.Array:
    """`conv` (3x3, zero padding) evaluated on the ring of positions one pixel outside x [N, h, w, C]:
    [N, h + 2, w + 2, O], zero inside the ring. Outside the image only the taps that reach its first or
    last row or column see non-zero input, so each side is a 1x3 or 3x1 conv of that row or column."""
    k, b = conv.kernel[...], conv.bias[...]
    n, h, w, _ = x.shape
    rows, cols = ((0, 0), (0, 0), (2, 2), (0, 0)), ((0, 0), (1, 1), (0, 0), (0, 0))
    top = conv2d(jnp.pad(x[:, :1], rows), k[2:3], b, "VALID")
    bottom = conv2d(jnp.pad(x[:, -1:], rows), k[0:1], b, "VALID")
    left = conv2d(jnp.pad(x[:, :, :1], cols), k[:, 2:3], b, "VALID")
    right = conv2d(jnp.pad(x[:, :, -1:], cols), k[:, 0:1], b, "VALID")
    ring = jnp.zeros((n, h + 2, w + 2, k.shape[-1]), x.dtype)
    ring = ring.at[:, :1].set(top).at[:, -1:].set(bottom)
    return ring.at[:, 1:-1, :1].set(left).at[:, 1:-1, -1:].set(right)


def upsample_and_tail(up: Upsampler, tail: Conv, x: jax.Array) -> jax.Array:
    """tail(up(x)): [N, h, w, C] -> [N, s*h, s*w, O], computed at LR resolution.

    The tail conv moves before the last pixel shuffle (`shuffled_conv_kernel`) and folds into the last
    upsampler conv as one 5x5 conv (`composed_kernel`; the upsampler has no activation). The 5x5 conv
    sees the upsampler's output extended one pixel past the border, where the tail of the two-conv
    network reads zero padding: on the 1-pixel border ring, that extension's contribution (the
    upsampler conv on the outer ring, `_outside_ring`, through the tail taps that reach it) is
    subtracted. The same sums in another order, with fewer MACs than the architecture's count
    (`adadsr_jax.macs` reports the latter). Any map size, down to 1 x 1.
    On 2 CPU cores, `adaedsr_small` x2: the forward on chelsea at d = 0 (head, adapter, upsampler, tail)
    took 42 instead of 56 ms with the fold (`benchmarks/demo_depth_sweep.py`), a train step 0.20-0.23
    instead of 0.31 s (`benchmarks/train_step.py`). The ring costs one 1x3 or 3x1 upsampler conv per
    side, a ninth of the MACs of the 3-pixel border strips that an earlier version recomputed the
    two-conv way.
    """
    for conv, r in zip(up.convs[:-1], up.factors[:-1], strict=True):
        x = pixel_shuffle(conv(x), r)
    last, r = up.convs[-1], up.factors[-1]
    tail_lr = shuffled_conv_kernel(tail.kernel[...], r)
    folded_bias = jnp.einsum("n,vxnz->z", last.bias[...], tail_lr)
    # Each side's correction is complete at its pixels (corners included), so the sides are set from
    # the folded conv, not subtracted one after another.
    folded = conv2d(x, composed_kernel(last.kernel[...], tail_lr), folded_bias)
    ring = _outside_ring(x, last)
    y = folded.at[:, :1].set(folded[:, :1] - conv2d(ring[:, :3], tail_lr, padding="VALID"))
    y = y.at[:, -1:].set(folded[:, -1:] - conv2d(ring[:, -3:], tail_lr, padding="VALID"))
    y = y.at[:, :, :1].set(folded[:, :, :1] - conv2d(ring[:, :, :3], tail_lr, padding="VALID"))
    y = y.at[:, :, -1:].set(folded[:, :, -1:] - conv2d(ring[:, :, -3:], tail_lr, padding="VALID"))
    return pixel_shuffle(y, r) + tail.bias[...].astype(y.dtype)
