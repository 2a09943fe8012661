"""MATLAB-style bicubic imresize against an independent float64 per-output-pixel reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adadsr_jax.data.bicubic import downscale, imresize, output_size, upscale


def _keys(x: float) -> float:
    """Keys cubic, a = -0.5, written out piecewise."""
    x = abs(x)
    if x <= 1:
        return 1.5 * x**3 - 2.5 * x**2 + 1
    if x <= 2:
        return -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2
    return 0.0


def _reflect(k: int, n: int) -> int:
    """0-based index k mirrored into [0, n) with the edge repeated: ... 1 0 | 0 1 .. n-1 | n-1 n-2 ..."""
    while k < 0 or k >= n:
        k = -k - 1 if k < 0 else 2 * n - 1 - k
    return k


def _taps(n_in: int, i: int, s: float) -> list[tuple[int, float]]:
    """(input index, weight) pairs of output i (0-based) along one axis, normalised to sum 1."""
    center = (i + 1) / s + 0.5 * (1 - 1 / s) - 1  # 0-based input coordinate
    if s < 1:
        half = 2 / s
        weight = lambda d: s * _keys(s * d)
    else:
        half = 2.0
        weight = _keys
    pairs = [
        (k, weight(center - k)) for k in range(math.floor(center - half) - 1, math.ceil(center + half) + 2)
    ]
    total = sum(w for _, w in pairs)
    return [(_reflect(k, n_in), w / total) for k, w in pairs if w != 0]


def reference_imresize(img: np.ndarray, s: float) -> np.ndarray:
    """Float64 loop over every output pixel: sum over row taps x column taps of the 2-D neighbourhood."""
    img = img.astype(np.float64)
    h, w = img.shape[:2]
    ho, wo = math.ceil(h * s - 1e-9), math.ceil(w * s - 1e-9)
    out = np.zeros((ho, wo, *img.shape[2:]))
    for i in range(ho):
        rows = _taps(h, i, s)
        for j in range(wo):
            cols = _taps(w, j, s)
            acc = np.zeros(img.shape[2:])
            for r, wr in rows:
                for c, wc in cols:
                    acc = acc + wr * wc * img[r, c]
            out[i, j] = acc
    return out


SCALES = [1 / 2, 1 / 3, 1 / 4, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("scale", SCALES)
def test_matches_float64_reference(scale: float) -> None:
    rng = np.random.default_rng(int(scale * 100))
    shape = (13, 10, 3) if scale < 1 else (5, 7, 3)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    ref = reference_imresize(img, scale)
    got_f = imresize(img.astype(np.float64), scale)
    assert got_f.shape == ref.shape
    np.testing.assert_allclose(got_f, ref, rtol=0, atol=1e-9)
    got_u8 = imresize(img, scale)
    assert got_u8.dtype == np.uint8
    expected = np.floor(np.clip(ref, 0, 255) + 0.5)  # MATLAB uint8(): halves away from zero
    assert np.abs(got_u8.astype(np.int64) - expected).max() <= 1
    # Rounding is at the end only, so it can only differ on exact .5 ties of float noise.
    assert np.mean(got_u8 == expected) > 0.99


def test_exact_half_rounds_up_like_matlab_uint8() -> None:
    # x2 upscaling puts output column 6 at input x = 3.75 (1-based): taps 76, 123, 108, 103 at distances
    # 1.75, 0.75, 0.25, 1.25 with Keys weights -3/128, 29/128, 111/128, -9/128 -> exactly 112.5.
    row = np.array([20, 76, 123, 108, 103, 7], dtype=np.uint8)
    img = np.tile(row, (4, 1))
    want = (-3 * 76 + 29 * 123 + 111 * 108 - 9 * 103) / 128
    assert want == 112.5
    assert np.all(imresize(img.astype(np.float64), 2.0)[:, 6] == 112.5)
    assert np.all(imresize(img, 2.0)[:, 6] == 113)  # numpy's half-to-even would give 112


def test_gray_2d_and_multichannel_agree() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    per_channel = np.stack([imresize(img[..., c], 1 / 3) for c in range(3)], axis=-1)
    np.testing.assert_array_equal(imresize(img, 1 / 3), per_channel)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("value", [0, 1, 128, 254, 255])
def test_constants_stay_constant(scale: float, value: int) -> None:
    img = np.full((17, 22, 3), value, np.uint8)
    out = imresize(img, scale)
    assert np.all(out == value)


def test_linear_ramp_is_reproduced_in_the_interior() -> None:
    # The Keys kernel reproduces linear functions; x2 downscale samples u = 2i - 0.5 (1-based).
    n = 64
    ramp = np.tile(np.arange(1, n + 1, dtype=np.float64), (8, 1))
    out = imresize(ramp, 1 / 2)
    i = np.arange(1, n // 2 + 1)
    np.testing.assert_allclose(out[0, 3:-3], (2 * i - 0.5)[3:-3], atol=1e-12)
    up = imresize(ramp, 2)  # upscaling samples u = i / 2 + 0.25
    j = np.arange(1, 2 * n + 1)
    np.testing.assert_allclose(up[0, 6:-6], (j / 2 + 0.25)[6:-6], atol=1e-12)


@pytest.mark.parametrize(
    ("n", "scale", "expected"),
    [(300, 1 / 3, 100), (301, 1 / 3, 101), (7, 1 / 2, 4), (9, 1 / 4, 3), (13, 3.0, 39), (1, 1 / 4, 1)],
)
def test_output_size_is_ceil(n: int, scale: float, expected: int) -> None:
    assert output_size(n, scale) == expected
    assert imresize(np.zeros((n, 2), np.uint8), scale).shape[0] == expected


def test_downscale_upscale_wrappers() -> None:
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)
    np.testing.assert_array_equal(downscale(hr, 4), imresize(hr, 0.25))
    lr = downscale(hr, 3)
    assert lr.shape == (8, 12, 3)
    assert upscale(lr, 3).shape == (24, 36, 3)
    with pytest.raises(ValueError, match="positive integer"):
        downscale(hr, 0)
    with pytest.raises(ValueError, match="positive finite"):
        imresize(hr, -1.0)
    with pytest.raises(ValueError, match="uint8 or float"):
        imresize(hr.astype(np.int32), 0.5)
