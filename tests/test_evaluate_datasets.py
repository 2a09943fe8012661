"""Benchmark-set discovery: the four folder layouts of docs/evaluation.md, aliases, HR-only sets,
clear errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adadsr_jax import metrics
from adadsr_jax.data.bicubic import downscale, mod_crop
from adadsr_jax.data.images import save_png
from adadsr_jax.evaluation.datasets import DatasetNotFoundError, canonical_name, find_dataset

S = 2


def _hr(seed, shape=(24, 28, 3)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_edsr_layout_with_uncropped_hr(tmp_path):
    hr = _hr(0, (25, 29, 3))  # not a multiple of 2: EDSR's loader crops HR to s x LR
    lr = downscale(mod_crop(hr, S), S)
    save_png(tmp_path / "Set5" / "HR" / "baby.png", hr)
    save_png(tmp_path / "Set5" / "LR_bicubic" / "X2" / "babyx2.png", lr)
    bench = find_dataset("set5", tmp_path, scale=S)
    assert (bench.name, bench.layout, bench.lr_source, len(bench)) == ("Set5", "edsr", "files", 1)
    pair = bench[0]
    assert pair.name == "baby"
    np.testing.assert_array_equal(pair.lr, lr)
    np.testing.assert_array_equal(pair.hr, hr[:24, :28])


def test_div2k_layout(tmp_path):
    hr = _hr(1)
    save_png(tmp_path / "DIV2K_valid_HR" / "0801.png", hr)
    save_png(tmp_path / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png", downscale(hr, S))
    bench = find_dataset("DIV2K", tmp_path, scale=S)
    assert (bench.layout, bench.lr_source, bench[0].name) == ("div2k", "files", "0801")


def test_rcan_layout(tmp_path):
    hr = _hr(2)
    save_png(tmp_path / "HR" / "Set14" / "x2" / "zebra_HR_x2.png", hr)
    save_png(tmp_path / "LR" / "LRBI" / "Set14" / "x2" / "zebra_LRBI_x2.png", downscale(hr, S))
    bench = find_dataset("Set14", tmp_path, scale=S)
    assert (bench.layout, bench.lr_source, bench[0].name) == ("rcan", "files", "zebra")
    np.testing.assert_array_equal(bench[0].hr, hr)


def test_basicsr_layout_and_alias(tmp_path):
    hr = _hr(3)
    save_png(tmp_path / "BSDS100" / "GTmod12" / "3096.png", hr)
    save_png(tmp_path / "BSDS100" / "LRbicx2" / "3096.png", downscale(hr, S))
    bench = find_dataset("B100", tmp_path, scale=S)
    assert (bench.name, bench.layout, bench.lr_source) == ("B100", "basicsr", "files")
    assert canonical_name("bsd100") == "B100"
    save_png(tmp_path / "Set5" / "HR" / "bird.png", hr)  # BasicSR-style LR folder next to an HR/ folder
    save_png(tmp_path / "Set5" / "LRbicx2" / "bird.png", downscale(hr, S))
    assert find_dataset("Set5", tmp_path, scale=S).layout == "basicsr"


@pytest.mark.parametrize("where", ["edsr_hr", "flat"])
def test_hr_only_sets_are_generated_with_matlab_bicubic(tmp_path, where):
    hr = _hr(4, (27, 31, 3))
    folder = tmp_path / "Urban100" / ("HR" if where == "edsr_hr" else "")
    save_png(folder / "img_001.png", hr)
    bench = find_dataset("Urban100", tmp_path, scale=S)
    assert (bench.layout, bench.lr_source) == ("hr_only", "generated")
    pair = bench[0]
    np.testing.assert_array_equal(pair.hr, hr[:26, :30])  # mod-crop keeps the top-left
    np.testing.assert_array_equal(pair.lr, downscale(hr[:26, :30], S))


def test_lr_folder_for_another_scale_falls_back_to_generated(tmp_path):
    hr = _hr(5)
    save_png(tmp_path / "Set5" / "HR" / "bird.png", hr)
    save_png(tmp_path / "Set5" / "LR_bicubic" / "X4" / "birdx4.png", downscale(hr, 4))
    assert find_dataset("Set5", tmp_path, scale=S).lr_source == "generated"
    assert find_dataset("Set5", tmp_path, scale=4).lr_source == "files"


def test_unknown_dataset_lists_searched_paths(tmp_path):
    (tmp_path / "Set5").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        find_dataset("Manga109", tmp_path, scale=S)
    msg = str(err.value)
    assert "Manga109" in msg and str(tmp_path) in msg
    assert "LR_bicubic/X2" in msg and "LRBI" in msg and "LRbicx2" in msg
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        find_dataset("Set5", tmp_path / "nowhere", scale=S)


def test_missing_lr_file_and_size_mismatch_are_named(tmp_path):
    hr = _hr(6)
    save_png(tmp_path / "Set5" / "HR" / "a.png", hr)
    save_png(tmp_path / "Set5" / "HR" / "b.png", hr)
    save_png(tmp_path / "Set5" / "LR_bicubic" / "X2" / "ax2.png", downscale(hr, S))
    with pytest.raises(FileNotFoundError, match=r"bx2\.png"):
        find_dataset("Set5", tmp_path, scale=S)
    (tmp_path / "Set5" / "HR" / "b.png").unlink()
    save_png(tmp_path / "Set5" / "LR_bicubic" / "X2" / "ax2.png", downscale(hr, 4))  # wrong size
    bench = find_dataset("Set5", tmp_path, scale=S)
    with pytest.raises(ValueError, match=r"ax2\.png"):
        bench[0]


@pytest.mark.parametrize(("scale", "smallest"), [(2, 16), (3, 18), (4, 20)])
def test_an_image_too_small_for_the_metrics_is_named(tmp_path, scale, smallest):
    # PSNR/SSIM shave `scale` pixels per border of the mod-cropped HR, then SSIM needs an 11 x 11 window:
    # `smallest` is the least side that leaves 11 (e.g. x2: 16 - 2 * 2 = 12; 15 mod-crops to 14, leaving 10).
    save_png(tmp_path / "tiny" / "fits.png", _hr(7, (smallest, smallest + scale - 1, 3)))
    save_png(tmp_path / "tiny" / "short.png", _hr(8, (smallest - 1, 40, 3)))
    bench = find_dataset("tiny", tmp_path, scale=scale)
    pair = bench[0]  # sorted: fits.png first
    assert pair.hr.shape == (smallest, smallest, 3)
    assert metrics.ssim(pair.hr, pair.hr, scale=scale) == pytest.approx(1.0)
    message = rf"short\.png: HR image is 40x{smallest - 1} .* at least {smallest}x{smallest}$"
    with pytest.raises(ValueError, match=message):
        bench[1]


def test_the_readmes_unseen_photos_script_writes_an_hr_only_set(tmp_path):
    """benchmarks/unseen_photos.py makes the README's `photos` set: five centre crops, found by name."""
    from skimage import data

    script = Path(__file__).parents[1] / "benchmarks" / "unseen_photos.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "photos")], check=True, capture_output=True)
    bench = find_dataset("photos", tmp_path, scale=S)
    assert (bench.layout, bench.lr_source, len(bench)) == ("hr_only", "generated", 5)
    pairs = {pair.name: pair for pair in bench}
    shapes = {name: pair.hr.shape for name, pair in pairs.items()}
    assert shapes == {
        "camera": (480, 480, 3),
        "coins": (302, 302, 3),  # the 303 x 303 crop, mod-cropped to x2
        "hubble_deep_field": (480, 480, 3),
        "immunohistochemistry": (480, 480, 3),
        "retina": (480, 480, 3),
    }
    # camera is 512 x 512 gray: its centre 480 x 480 starts at (16, 16), with R = G = B.
    np.testing.assert_array_equal(pairs["camera"].hr, np.repeat(data.camera()[16:496, 16:496, None], 3, -1))
    # retina is 1411 x 1411 RGB: (1411 - 480) // 2 = 465.
    np.testing.assert_array_equal(pairs["retina"].hr, data.retina()[465:945, 465:945])
