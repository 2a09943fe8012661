"""PSNR/SSIM against scikit-image (the protocol's oracle, docs/evaluation.md) and against
hand-computed values."""

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from adadsr_jax import metrics


def _pair(shape, seed=0, noise=12.0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    # A float SR with out-of-range values exercises the clip-and-round quantisation.
    sr = hr.astype(np.float64) + rng.normal(0.0, noise, size=shape)
    return sr, hr


def _oracle_y(sr, hr, scale):
    """Independent path: quantise, Y in float64, shave, then scikit-image."""
    sr_q = np.clip(np.round(sr), 0, 255).astype(np.float64)
    coeffs = np.array([65.481, 128.553, 24.966]) / 255.0
    y_sr = 16.0 + np.tensordot(sr_q, coeffs, axes=([2], [0]))
    y_hr = 16.0 + np.tensordot(hr.astype(np.float64), coeffs, axes=([2], [0]))
    s = scale
    y_sr, y_hr = y_sr[s:-s, s:-s], y_hr[s:-s, s:-s]
    return y_sr, y_hr


@pytest.mark.parametrize(("shape", "scale"), [((40, 52, 3), 2), ((37, 29, 3), 3), ((45, 47, 3), 4)])
def test_psnr_ssim_match_scikit_image_on_y(shape, scale):
    sr, hr = _pair(shape, seed=scale)
    y_sr, y_hr = _oracle_y(sr, hr, scale)
    want_psnr = peak_signal_noise_ratio(y_hr, y_sr, data_range=255)
    want_ssim = structural_similarity(
        y_hr, y_sr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert metrics.psnr(sr, hr, scale=scale) == pytest.approx(want_psnr, abs=1e-10)
    assert metrics.ssim(sr, hr, scale=scale) == pytest.approx(want_ssim, abs=1e-10)


def test_rgb_mode_matches_scikit_image():
    sr, hr = _pair((33, 41, 3), seed=7)
    sr_q = np.clip(np.round(sr), 0, 255).astype(np.float64)[2:-2, 2:-2]
    hr_c = hr.astype(np.float64)[2:-2, 2:-2]
    want_psnr = peak_signal_noise_ratio(hr_c, sr_q, data_range=255)
    want_ssim = structural_similarity(
        hr_c,
        sr_q,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    assert metrics.psnr(sr, hr, scale=2, y_channel=False) == pytest.approx(want_psnr, abs=1e-10)
    assert metrics.ssim(sr, hr, scale=2, y_channel=False) == pytest.approx(want_ssim, abs=1e-10)


def test_identical_images():
    _, hr = _pair((24, 24, 3))
    assert metrics.psnr(hr, hr, scale=2) == math.inf
    assert metrics.ssim(hr, hr, scale=2) == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_hand_computed():
    # +10 on every channel moves Y by 10 * (65.481 + 128.553 + 24.966) / 255 = 10 * 219 / 255.
    hr = np.full((20, 30, 3), 100, np.uint8)
    sr = hr.astype(np.float64) + 10.0
    dy = 10.0 * 219.0 / 255.0
    assert metrics.psnr(sr, hr, scale=2) == pytest.approx(10 * math.log10(255.0**2 / dy**2), abs=1e-12)
    assert metrics.psnr(sr, hr, scale=2, y_channel=False) == pytest.approx(
        10 * math.log10(255.0**2 / 100.0), abs=1e-12
    )
    # Constant images: sigma terms vanish, SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    ya, yb = 16 + 110 * 219 / 255, 16 + 100 * 219 / 255
    c1 = (0.01 * 255) ** 2
    want = (2 * ya * yb + c1) / (ya**2 + yb**2 + c1)
    assert metrics.ssim(sr, hr, scale=2) == pytest.approx(want, abs=1e-12)


def test_shave_ignores_borders_and_odd_sizes():
    hr = np.full((23, 17, 3), 50, np.uint8)
    sr = hr.copy()
    sr[:3, :, :] = 255  # damage only the 3-pixel top border
    sr[:, -3:, :] = 0
    assert metrics.psnr(sr, hr, scale=3) == math.inf
    assert metrics.ssim(sr, hr, scale=3) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr(sr, hr, scale=2) < 30.0
    # One wrong pixel inside: MSE = dY^2 / (H' W') exactly.
    sr2 = hr.copy()
    sr2[10, 8] = 60
    dy = 10.0 * 219.0 / 255.0
    n = (23 - 6) * (17 - 6)
    assert metrics.psnr(sr2, hr, scale=3) == pytest.approx(10 * math.log10(255.0**2 * n / dy**2), abs=1e-12)


def test_quantisation_clips_and_rounds():
    sr = np.array([[-5.0, 254.6, 300.0, 10.49]])
    assert metrics.quantize(sr).tolist() == [[0, 255, 255, 10]]
    assert metrics.rgb_to_y(np.array([255.0, 255.0, 255.0])) == pytest.approx(235.0)
    assert metrics.rgb_to_y(np.zeros(3)) == pytest.approx(16.0)


def test_bad_inputs_raise():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.psnr(a, np.zeros((20, 21, 3), np.uint8), scale=2)
    with pytest.raises(ValueError, match="too small"):
        metrics.psnr(a[:4, :4], a[:4, :4], scale=2)
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim(a[:12, :12], a[:12, :12], scale=2)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_sr_is_refused(bad):
    # A diverged model must not get a finite score: NaN used to quantise to 0.
    hr = np.full((16, 16, 3), 100, dtype=np.uint8)
    sr = hr.astype(np.float32)
    sr[3, 4, 1] = bad
    with pytest.raises(ValueError, match="non-finite"):
        metrics.quantize(sr)
    for fn in (metrics.psnr, metrics.ssim):
        with pytest.raises(ValueError, match="non-finite"):
            fn(sr, hr, scale=2)
