"""PSNR and SSIM exactly as the super-resolution benchmark protocol computes them (docs/evaluation.md).

Protocol (the one EDSR, RCAN and AdaDSR report, and the one users compare against):
  1. the SR image is quantised to uint8 first: clip to 0..255, round (half to even, as numpy/torch do);
  2. both images are converted to the Y channel of YCbCr, `Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`
     for R, G, B in 0..255, kept as float (not rounded);
  3. `shave = scale` pixels are cut from every border;
  4. PSNR = 10 log10(255^2 / MSE) in float64; SSIM as MATLAB `ssim_index` (11x11 Gaussian window,
     sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering, mean of the SSIM map);
  5. per image, then the mean over the images of a set (done by the caller).
An RGB mode (`y_channel=False`) measures all three channels instead (PSNR on the joint MSE, SSIM as the
mean of the per-channel values).

All functions take numpy arrays [H, W, 3] (uint8 or float, 0..255) and return Python floats.
"""

from __future__ import annotations

import math

import numpy as np

# ITU-R BT.601 studio-swing luma, as MATLAB's rgb2ycbcr: coefficients for R, G, B in 0..255.
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0
_Y_OFFSET = 16.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 255.0

PROTOCOL = (
    "PSNR (dB) and SSIM on the Y channel of YCbCr (Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255), "
    "SR quantised to uint8 first, `scale` pixels shaved from every border, computed in float64 per image "
    "and averaged over the images of a set; SSIM as MATLAB ssim_index (11x11 Gaussian window, sigma 1.5, "
    "K1 0.01, K2 0.03, L 255, valid filtering). This is the protocol of EDSR, RCAN and AdaDSR (Tables 1-2)."
)


def quantize(image: np.ndarray) -> np.ndarray:
    """Clip to 0..255 and round to uint8 (what saving the SR image as PNG does). Any shape.

    Raises ValueError for NaN or +-inf values: clipping would turn a diverged model's output into a
    finite image (NaN -> 0) and so into a finite, misleading PSNR.
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(image.size - np.count_nonzero(finite))
        raise ValueError(
            f"image has {bad} non-finite value(s) (NaN or inf) out of {image.size}; "
            "the model output diverged, refusing to score it"
        )
    return np.rint(np.clip(image.astype(np.float64), 0.0, 255.0)).astype(np.uint8)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """Y of YCbCr (MATLAB rgb2ycbcr on 0..255 data), unrounded. [..., 3] 0..255 -> [...] float64, 16..235."""
    image = np.asarray(image, dtype=np.float64)
    if image.shape[-1] != 3:
        raise ValueError(f"rgb_to_y needs an [..., 3] RGB image, got shape {image.shape}")
    return image @ _Y_COEFFS + _Y_OFFSET


def smallest_side(shave: int) -> int:
    """The least height and width (pixels) that `psnr` and `ssim` can score with `shave` pixels shaved
    from every border: SSIM's window must fit in what is left."""
    return 2 * shave + SSIM_WINDOW


def _prepare(sr: np.ndarray, hr: np.ndarray, *, scale: int, y_channel: bool, shave: int | None):
    """Quantise, convert to Y (or keep RGB) and shave; returns two float64 arrays [H', W', C]."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ValueError(f"SR and HR shapes differ: {sr.shape} vs {hr.shape}")
    if sr.ndim != 3 or sr.shape[-1] != 3:
        raise ValueError(f"images must be [H, W, 3] RGB, got shape {sr.shape}")
    border = scale if shave is None else shave
    if border < 0:
        raise ValueError(f"shave must be >= 0, got {border}")
    sr_q, hr_q = quantize(sr), quantize(hr)
    if y_channel:
        sr_f, hr_f = rgb_to_y(sr_q)[..., None], rgb_to_y(hr_q)[..., None]
    else:
        sr_f, hr_f = sr_q.astype(np.float64), hr_q.astype(np.float64)
    h, w = sr_f.shape[:2]
    if h <= 2 * border or w <= 2 * border:
        raise ValueError(f"image {h}x{w} is too small to shave {border} pixels from every border")
    if border:
        sr_f = sr_f[border : h - border, border : w - border]
        hr_f = hr_f[border : h - border, border : w - border]
    return sr_f, hr_f


def psnr(
    sr: np.ndarray, hr: np.ndarray, *, scale: int, y_channel: bool = True, shave: int | None = None
) -> float:
    """PSNR in dB of one image pair per the protocol above.

    sr, hr: [H, W, 3] uint8 or float, 0..255 (sr is quantised first). scale: the SR factor, also the
    border shaved unless `shave` is given. Identical images give +inf.
    """
    sr_f, hr_f = _prepare(sr, hr, scale=scale, y_channel=y_channel, shave=shave)
    mse = float(np.mean((sr_f - hr_f) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(DATA_RANGE**2 / mse))


def gaussian_window_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian taps; the outer product is MATLAB's fspecial('gaussian', size, sigma)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    w = np.exp(-(x**2) / (2.0 * sigma**2))
    return w / w.sum()


def _filter_valid(image: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of [H, W] with taps x taps -> [H - k + 1, W - k + 1] float64."""
    k = taps.shape[0]
    h, w = image.shape
    rows = sum(taps[i] * image[i : h - k + 1 + i, :] for i in range(k))
    return sum(taps[j] * rows[:, j : w - k + 1 + j] for j in range(k))


def _ssim_single(a: np.ndarray, b: np.ndarray) -> float:
    """MATLAB ssim_index of two [H, W] float64 images in 0..255: mean of the valid SSIM map."""
    if min(a.shape) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after shaving, got {a.shape}"
        )
    taps = gaussian_window_1d()
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
    var_a = _filter_valid(a * a, taps) - mu_a**2
    var_b = _filter_valid(b * b, taps) - mu_b**2
    cov = _filter_valid(a * b, taps) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(
    sr: np.ndarray, hr: np.ndarray, *, scale: int, y_channel: bool = True, shave: int | None = None
) -> float:
    """SSIM of one image pair per the protocol above (RGB mode: mean of the three channel SSIMs).

    sr, hr: [H, W, 3] uint8 or float, 0..255; the shaved image must be at least 11x11.
    """
    sr_f, hr_f = _prepare(sr, hr, scale=scale, y_channel=y_channel, shave=shave)
    values = [_ssim_single(sr_f[..., c], hr_f[..., c]) for c in range(sr_f.shape[-1])]
    return float(np.mean(values))


def mean_over_images(values: list[float]) -> float:
    """Per-set mean of per-image values (float64); an identical pair (PSNR +inf) makes it +inf; [] -> nan."""
    return float(np.mean(np.asarray(values, dtype=np.float64))) if values else math.nan
