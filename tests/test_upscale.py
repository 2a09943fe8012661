"""python -m adadsr_jax.upscale: odd sizes, gray, RGBA/LA, 16-bit, tiling, naming, and clear errors."""

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from adadsr_jax import metrics
from adadsr_jax.checkpoint import save_inference_checkpoint
from adadsr_jax.data.bicubic import imresize
from adadsr_jax.evaluation.budgets import parse_budget
from adadsr_jax.evaluation.inference import Predictor, budget_depth
from adadsr_jax.models import create_model
from adadsr_jax.upscale import main

S = 2
H, W = 13, 17  # odd on purpose; every input has this size so one compiled forward serves the run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("up")
    model = create_model("adaedsr_tiny", scale=S, rngs=nnx.Rngs(1))
    save_inference_checkpoint(root / "ckpt", model, model_name="adaedsr_tiny")
    rng = np.random.default_rng(0)
    src = root / "in"
    src.mkdir()
    rgb = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, size=(H, W), dtype=np.uint16)
    gray8 = np.rint(gray16 / 257.0).astype(np.uint8)
    alpha = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
    Image.fromarray(rgb).save(src / "odd.png")
    Image.fromarray(gray8).save(src / "gray.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(src / "rgba.png")
    Image.fromarray(np.dstack([gray8, alpha])).save(src / "la.png")
    Image.fromarray(gray16).save(src / "deep.png")  # 16-bit grayscale PNG (mode I;16)
    out = root / "out"
    argv = [str(src), "--checkpoint", str(root / "ckpt"), "--out", str(out), "--depth", "2"]
    argv += ["--tile", "8", "--tile-overlap", "4", "--save-depth-map", "--convert-16bit"]
    rc = main(argv)
    return {"rc": rc, "root": root, "src": src, "out": out, "model": model, "rgb": rgb, "alpha": alpha}


def test_outputs_named_sized_and_coloured_as_documented(setup):
    assert setup["rc"] == 0
    out = setup["out"]
    modes = {}
    for stem in ["odd", "gray", "rgba", "la", "deep"]:
        with Image.open(out / f"{stem}_x2.png") as im:
            assert im.size == (S * W, S * H)
            modes[stem] = im.mode
        with Image.open(out / f"{stem}_x2_depth.png") as im:
            assert im.size == (S * W, S * H) and im.mode == "RGB"
    assert modes == {"odd": "RGB", "gray": "L", "rgba": "RGBA", "la": "LA", "deep": "L"}
    # Alpha is upscaled with MATLAB-style bicubic and re-attached unchanged otherwise.
    rgba = np.asarray(Image.open(out / "rgba_x2.png"))
    np.testing.assert_array_equal(rgba[..., 3], imresize(setup["alpha"], S))
    # The colour of an RGBA image is the SR of its RGB, same as the plain RGB input with that content.
    np.testing.assert_array_equal(rgba[..., :3], np.asarray(Image.open(out / "odd_x2.png")))
    # 16-bit input converted as round(x / 257) gives exactly the 8-bit image's output.
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "deep_x2.png")), np.asarray(Image.open(out / "gray_x2.png"))
    )


def test_rgb_output_is_the_quantised_tiled_prediction(setup):
    want = metrics.quantize(Predictor(setup["model"], tile=8, overlap=4).predict(setup["rgb"], 2.0).sr)
    np.testing.assert_array_equal(np.asarray(Image.open(setup["out"] / "odd_x2.png")), want)


def test_16bit_refused_without_flag_and_clear_errors(setup, tmp_path, capsys):
    ckpt = str(setup["root"] / "ckpt")
    deep = str(setup["src"] / "deep.png")
    assert main([deep, "--checkpoint", ckpt, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "deep.png" in err and "--convert-16bit" in err
    assert main([str(tmp_path / "nope.png"), "--checkpoint", ckpt, "--out", str(tmp_path)]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main([deep, "--checkpoint", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    odd = str(setup["src"] / "odd.png")
    assert main([odd, "--checkpoint", ckpt, "--out", str(tmp_path), "--budget", "150%"]) == 2
    assert "bad budget" in capsys.readouterr().err


def test_never_overwrites_an_input(setup, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(setup["rgb"]).save(folder / "a.png")
    Image.fromarray(setup["rgb"][::-1]).save(folder / "a_x2.png")  # the output name of a.png
    before = (folder / "a_x2.png").read_bytes()
    assert main([str(folder), "--checkpoint", str(setup["root"] / "ckpt"), "--out", str(folder)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (folder / "a_x2.png").read_bytes() == before


def test_unreadable_input_is_reported_and_the_rest_written(setup, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(setup["rgb"]).save(folder / "good.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "o"
    assert main([str(folder), "--checkpoint", str(setup["root"] / "ckpt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 2 inputs could not be read" in err
    assert (out / "good_x2.png").is_file() and not (out / "broken_x2.png").exists()


def test_budget_picks_the_searched_depth(setup, tmp_path, capsys):
    odd = str(setup["src"] / "odd.png")
    ckpt = str(setup["root"] / "ckpt")
    assert main([odd, "--checkpoint", ckpt, "--out", str(tmp_path), "--budget", "90%"]) == 0
    assert "GMACs" in capsys.readouterr().out
    p = Predictor(setup["model"])
    found = budget_depth(p, setup["rgb"], parse_budget("90%"))
    assert found.met and found.macs <= 0.9 * found.dense_macs
    want = metrics.quantize(p.predict(setup["rgb"], found.desired_depth).sr)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "odd_x2.png")), want)


def test_colliding_output_names_are_disambiguated_or_refused(tmp_path):
    from adadsr_jax.upscale import collect_inputs, output_paths

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.png").write_bytes(b"")
    (tmp_path / "a" / "x.jpg").write_bytes(b"")
    (tmp_path / "a" / "y.png").write_bytes(b"")
    a, b = tmp_path / "a", tmp_path / "b"
    # The same file named directly, through its folder and through another spelling is kept once.
    files = collect_inputs([a / "x.png", a, b, str(a / ".." / "a" / "x.png")])
    assert files == [a / "x.png", a / "x.jpg", a / "y.png", b / "x.png"]
    outs = output_paths(files, tmp_path / "out", 2)
    assert [p.name for p in outs] == ["a_x_png_x2.png", "x_jpg_x2.png", "y_x2.png", "b_x_png_x2.png"]
    assert len({p.name.casefold() for p in outs}) == len(outs)
    # Same stem, extensions differing only in case, one folder: no deterministic name tells them apart.
    with pytest.raises(ValueError, match="would all be written as"):
        output_paths([a / "x.png", a / "x.PNG"], tmp_path / "out", 2)


@pytest.mark.parametrize("depth", ["-1", "nan"])
def test_bad_depth_refused_before_loading(setup, tmp_path, capsys, depth):
    odd = str(setup["src"] / "odd.png")
    # A missing checkpoint shows the depth is checked first, as evaluate.py checks --depths.
    assert main([odd, "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path), "--depth", depth]) == 2
    err = capsys.readouterr().err
    assert f"bad --depth '{float(depth)}': expected non-negative numbers" in err
    assert not list(tmp_path.iterdir())
