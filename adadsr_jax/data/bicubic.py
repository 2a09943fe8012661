"""MATLAB-compatible bicubic resizing (``imresize(x, scale, 'bicubic')``) in numpy.

The degradation model of DIV2K and the SR benchmarks is MATLAB's ``imresize`` with its default
antialiasing bicubic kernel. Other libraries (PIL, scikit-image, cv2) differ by several grey levels, so
LR images made with them are not the LR images the published models were trained and evaluated on.

Per axis (rows first, then columns), each output sample ``i`` (1-based) reads input coordinate
``u = i / s + 0.5 * (1 - 1 / s)`` through the Keys cubic kernel (a = -0.5). When downscaling (s < 1) the
kernel is stretched to ``s * k(s * x)`` (support 4 / s) so it also low-pass filters. Weights of one output
sample are normalised to sum to 1; taps that fall outside the image are mirrored with the edge pixel
repeated (``numpy.pad(mode="symmetric")``). The whole computation is float64; uint8 input is rounded (halves
away from zero, as MATLAB's uint8()) and clipped to uint8 once, at the end.

Implementation: per axis we precompute the [out, taps] index and weight matrices (cached per (length, scale))
and turn them into a sparse [out, in] matrix, applied as one scipy.sparse matmul per axis: O(out * taps)
work instead of a dense matmul, so a 2040x1356 DIV2K image downscales in about 0.3 s on one core.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.sparse

__all__ = ["axis_weights", "cubic_kernel", "downscale", "imresize", "output_size", "upscale"]


def cubic_kernel(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``), float64, support [-2, 2]."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    ax2 = ax * ax
    ax3 = ax2 * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def _canonical_scale(scale: float) -> float:
    """Snap 1/k and k (k integer) to the exact float so that e.g. 300 * (1/3) gives 100, not 101."""
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"imresize: scale must be a positive finite number, got {scale!r}")
    inv = 1.0 / scale
    if abs(inv - round(inv)) < 1e-9:
        return 1.0 / round(inv)
    if abs(scale - round(scale)) < 1e-9:
        return float(round(scale))
    return scale


def output_size(length: int, scale: float) -> int:
    """MATLAB's output length ``ceil(length * scale)``, robust to float noise (300 * 1/3 -> 100)."""
    scale = _canonical_scale(scale)
    return math.ceil(round(length * scale, 9))


@functools.lru_cache(maxsize=64)
def axis_weights(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Index and weight matrices of one axis.

    Returns ``(indices, weights)``, both [out_len, taps]: ``out[i] = sum_t weights[i, t] * x[indices[i, t]]``
    with 0-based indices already mirrored into [0, in_len). weights is float64, each row sums to 1.
    The arrays are cached and read-only.
    """
    if in_len < 1:
        raise ValueError(f"imresize: cannot resize an axis of length {in_len}")
    scale = _canonical_scale(scale)
    out_len = output_size(in_len, scale)
    antialias = scale < 1.0
    width = 4.0 / scale if antialias else 4.0
    i = np.arange(1, out_len + 1, dtype=np.float64)
    u = i / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input positions
    dist = u[:, None] - idx
    w = scale * cubic_kernel(scale * dist) if antialias else cubic_kernel(dist)
    w = w / w.sum(axis=1, keepdims=True)
    # Mirror out-of-range taps: sequence 1..n, n..1 repeated (edge pixel repeated).
    period = 2 * in_len
    j = np.mod(idx.astype(np.int64) - 1, period)
    j = np.where(j < in_len, j, period - 1 - j)
    # Drop tap columns that are zero for every output (MATLAB does the same; saves work).
    keep = np.any(w != 0, axis=0)
    j, w = np.ascontiguousarray(j[:, keep]), np.ascontiguousarray(w[:, keep])
    j.setflags(write=False)
    w.setflags(write=False)
    return j, w


@functools.lru_cache(maxsize=64)
def _axis_matrix(in_len: int, scale: float) -> scipy.sparse.csr_matrix:
    """The [out_len, in_len] sparse resampling matrix of one axis (mirrored taps add up)."""
    idx, w = axis_weights(in_len, scale)
    out_len, taps = idx.shape
    indptr = np.arange(0, out_len * taps + 1, taps)
    return scipy.sparse.csr_matrix((w.ravel(), idx.ravel(), indptr), shape=(out_len, in_len))


def _resize_rows(x: np.ndarray, scale: float) -> np.ndarray:
    """Resize float64 [H, W, C] along axis 0 with one sparse matmul: [Ho, H] @ [H, W*C]."""
    h, w, c = x.shape
    m = _axis_matrix(h, scale)
    return np.asarray(m @ x.reshape(h, w * c)).reshape(m.shape[0], w, c)


def imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(image, scale, 'bicubic')``.

    Args:
      image: [H, W] or [H, W, C]; uint8 (0..255) or float.
      scale: positive factor, e.g. 1/2 to halve, 4 to quadruple.

    Returns:
      [ceil(H*scale), ceil(W*scale)(, C)]: uint8 (clipped to 0..255, halves rounded up as MATLAB's
      uint8() does) for uint8 input, otherwise
      float64 values unrounded and unclipped.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"imresize: expected [H, W] or [H, W, C], got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"imresize: expected uint8 or float input, got dtype {image.dtype}")
    x = image.astype(np.float64).reshape(image.shape[0], image.shape[1], -1)
    x = _resize_rows(x, scale)  # rows (height) first, like MATLAB for equal scales
    x = _resize_rows(x.transpose(1, 0, 2), scale).transpose(1, 0, 2)  # then columns
    x = np.ascontiguousarray(x).reshape(x.shape[:2] + image.shape[2:])
    if image.dtype == np.uint8:
        # MATLAB's uint8() rounds halves away from zero (np.round would round 112.5 to 112, to even);
        # after clipping every value is >= 0, so floor(x + 0.5) is exactly that.
        return np.floor(np.clip(x, 0.0, 255.0) + 0.5).astype(np.uint8)
    return x


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """Crop [H, W, ...] to [H - H % scale, W - W % scale, ...] (top-left kept), as SR benchmarks do."""
    h, w = image.shape[0] - image.shape[0] % scale, image.shape[1] - image.shape[1] % scale
    return image[:h, :w]


def make_lr(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark LR of an HR image: (downscale(mod_crop(hr)), mod_crop(hr)).

    hr: uint8 [H, W, 3]; returns (lr uint8 [H // s, W // s, 3], hr uint8 [s * (H // s), s * (W // s), 3]).
    Raises ValueError when the HR image is smaller than `scale` on a side.
    """
    scale = _int_factor(scale)
    hr = mod_crop(hr, scale)
    if hr.shape[0] == 0 or hr.shape[1] == 0:
        raise ValueError(f"HR image {hr.shape} is smaller than the scale {scale}")
    return downscale(hr, scale), hr


def downscale(hr: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic LR image: ``imresize(hr, 1 / factor)``; [H, W(, C)] -> [ceil(H/f), ceil(W/f)(, C)]."""
    return imresize(hr, 1.0 / _int_factor(factor))


def upscale(lr: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic baseline SR: ``imresize(lr, factor)``; [h, w(, C)] -> [f*h, f*w(, C)]."""
    return imresize(lr, float(_int_factor(factor)))


def _int_factor(factor: int) -> int:
    if int(factor) != factor or factor < 1:
        raise ValueError(f"scale factor must be a positive integer, got {factor!r}")
    return int(factor)
