"""Checkpoint conversion: forward parity with a float64 numpy model of the PyTorch layers, MeanShift forms
and values, key reports."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
from checkpoint_fixtures import (
    LAYOUT_CASES,
    MEAN,
    layout_state_dict,
    meanshift,
    release_state_dict,
    saved_object,
    upstream_state_dict,
)
from flax import nnx
from torch_format import write_legacy, write_zip

from adadsr_jax.checkpoint import with_backbone
from adadsr_jax.convert import (
    CheckpointMismatchError,
    ConversionError,
    ScaleMismatchError,
    convert_checkpoint,
    convert_state_dict,
    main,
)
from adadsr_jax.models import Adapter, get_model_config

# --------------------------------------------------------------------------------------------------
# float64 numpy model of the PyTorch layers (NCHW, OIHW), run on the source tensors.


def conv(x, sd, name):
    """nn.Conv2d(k, padding=k//2, groups=G) cross-correlation: x [N, I, H, W], weight [O, I/G, k, k] ->
    [N, O, H, W]; output channels of group g see input channels g*I/G .. (g+1)*I/G - 1 only."""
    w, b = sd[f"{name}.weight"].astype(np.float64), sd[f"{name}.bias"].astype(np.float64)
    k = w.shape[-1]
    p = k // 2
    n, cin, h, wd = x.shape
    groups = cin // w.shape[1]
    per_in, per_out = cin // groups, w.shape[0] // groups
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, w.shape[0], h, wd))
    for g in range(groups):
        xs = xp[:, g * per_in : (g + 1) * per_in]
        ws = w[g * per_out : (g + 1) * per_out]
        for i in range(k):
            for j in range(k):
                out[:, g * per_out : (g + 1) * per_out] += np.einsum(
                    "nihw,oi->nohw", xs[:, :, i : i + h, j : j + wd], ws[:, :, i, j]
                )
    return out + b[None, :, None, None]


def conv_scaled_weight(x, sd, name, d):
    """Conv whose weight (not bias) is multiplied per image by d[n] (AdaRCAN's adapter input)."""
    b = sd[f"{name}.bias"].astype(np.float64)[None, :, None, None]
    return np.stack([(conv(x[i : i + 1], sd, name) - b)[0] * d[i] for i in range(len(d))]) + b


def pixel_shuffle(x, r):
    """torch.nn.PixelShuffle: [N, C*r*r, H, W] -> [N, C, H*r, W*r]."""
    n, crr, h, w = x.shape
    c = crr // (r * r)
    return x.reshape(n, c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c, h * r, w * r)


def relu(x):
    return np.maximum(x, 0.0)


def prelu(x, slope):
    return np.maximum(x, 0.0) + slope.astype(np.float64)[0] * np.minimum(x, 0.0)


def channel_attention(x, sd, prefix):
    y = x.mean(axis=(2, 3), keepdims=True)  # AdaptiveAvgPool2d(1)
    y = relu(conv(y, sd, f"{prefix}.0"))
    y = 1.0 / (1.0 + np.exp(-conv(y, sd, f"{prefix}.2")))
    return x * y


def reference_forward(
    sd, layout, backbone, scale, lr, d, *, groups=1, blocks=1, res_scale=1.0, depth_input=None
):
    """SR [N, 3, sH, sW] and depth maps [N, G, h, w] (or None) of the PyTorch model, float64."""
    x = np.asarray(lr, np.float64).transpose(0, 3, 1, 2)
    sub, add, head, tail = (
        ("head.0", "tail.1", "head.1", "tail.0")
        if layout == "adadsr"
        else ("sub_mean", "add_mean", "head.0", "tail.1")
    )
    z0 = conv(conv(x, sd, sub), sd, head)
    dmap = None
    if depth_input is not None:
        d = np.asarray(d, np.float64)
        p = (
            conv_scaled_weight(z0, sd, "predictor.layer0", d)
            if depth_input == "weight"
            else conv(z0, sd, "predictor.layer0")
        )
        for i in range(1, 5):
            p = conv(prelu(p, sd[f"predictor.layer{i}.0.weight"]), sd, f"predictor.layer{i}.1")
        dmap = relu(p)
        if depth_input == "output":
            dmap = dmap * d[:, None, None, None]
    h = z0
    if backbone == "edsr":
        for i in range(blocks):
            b0, b2 = (
                (f"block{i}.layer0", f"block{i}.layer2")
                if layout == "adadsr"
                else (
                    f"body.{i}.body.0",
                    f"body.{i}.body.2",
                )
            )
            r = conv(relu(conv(h, sd, b0)), sd, b2)
            if dmap is not None:
                r = r * np.clip(dmap - i, 0.0, 1.0)
            h = h + res_scale * r
        h = conv(h, sd, "body_lastconv" if layout == "adadsr" else f"body.{blocks}")
    else:
        for g in range(groups):
            hg = h
            for i in range(blocks):
                pre = f"group{g}.block{i}" if layout == "adadsr" else f"body.{g}.body.{i}.body"
                names = (
                    (f"{pre}.layer0", f"{pre}.layer2", f"{pre}.cuca.conv_du")
                    if layout == "adadsr"
                    else (
                        f"{pre}.0",
                        f"{pre}.2",
                        f"{pre}.3.conv_du",
                    )
                )
                r = conv(relu(conv(hg, sd, names[0])), sd, names[1])
                if dmap is not None:
                    r = r * np.clip(dmap[:, g : g + 1] - i, 0.0, 1.0)  # mask before channel attention
                hg = hg + res_scale * channel_attention(r, sd, names[2])
            end = f"group{g}.block{blocks}" if layout == "adadsr" else f"body.{g}.body.{blocks}"
            h = h + conv(hg, sd, end)
        h = conv(h, sd, "body_lastconv" if layout == "adadsr" else f"body.{groups}")
    z = z0 + h
    if layout == "adadsr":
        ups = {2: ["up.0.0"], 3: ["up.0"], 4: ["up.0.0", "up.1.0"]}[scale]
    else:
        ups = ["tail.0.0", "tail.0.2"] if scale == 4 else ["tail.0.0"]
    for name in ups:
        z = pixel_shuffle(conv(z, sd, name), 3 if scale == 3 else 2)
    sr = conv(conv(z, sd, tail), sd, add)
    return sr.transpose(0, 2, 3, 1), (None if dmap is None else dmap.transpose(0, 2, 3, 1))


def _rel_err(ours, ref, baseline=0.0):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return np.abs(ours - ref).max() / np.abs(ref - baseline).max()


WRITERS = {"zip": write_zip, "legacy": write_legacy}


@pytest.fixture(scope="module")
def lr_batch():
    """Two real photograph crops (skimage astronaut and coffee), 10x12 LR, float32 0..255."""
    from skimage import data

    astronaut = data.astronaut()[180:200:2, 200:224:2]
    coffee = data.coffee()[150:170:2, 300:324:2]
    return np.stack([astronaut, coffee]).astype(np.float32)


# (layout case, preset, scale, format): every layout at tiny and at small size, every scale and both file
# formats among them (tests/test_convert_cli.py adds x2/x3/x4 of other layouts through the command line).
PARITY_CASES = [
    ("release_adaedsr", "adaedsr_tiny", 4, "legacy"),
    ("release_adarcan", "adarcan_tiny", 4, "zip"),
    ("release_edsr", "edsr_tiny", 2, "legacy"),
    ("edsr_pytorch", "edsr_tiny", 4, "zip"),
    ("rcan", "rcan_tiny", 3, "legacy"),
    ("release_adaedsr", "adaedsr_small", 2, "zip"),
    ("release_adarcan", "adarcan_small", 2, "legacy"),
    ("release_edsr", "edsr_small", 3, "zip"),
    ("edsr_pytorch", "edsr_small", 3, "legacy"),
    ("rcan", "rcan_small", 2, "zip"),
]


@pytest.mark.parametrize(("case", "model_name", "scale", "fmt"), PARITY_CASES)
def test_forward_parity_on_a_photo(tmp_path, lr_batch, case, model_name, scale, fmt):
    """The converted model equals a float64 numpy forward of the PyTorch module on the file's tensors."""
    _, layout, _, _ = LAYOUT_CASES[case]
    cfg = get_model_config(model_name)
    sd = layout_state_dict(case, model_name, scale, seed=scale)
    path = tmp_path / f"{case}_x{scale}.pth"
    WRITERS[fmt](path, saved_object(case, sd, scale))
    # EDSR-PyTorch's EDSR trains with res_scale 0.1; ask for it to exercise the scaling.
    res_scale = 0.1 if case == "edsr_pytorch" else None
    result = convert_checkpoint(path, model_name=model_name, scale=scale, res_scale=res_scale)
    assert result.layout == layout
    want = {"res_scale": 0.1 if res_scale else 1.0}
    depth_input = None
    if cfg.adaptive:
        depth_input = "output" if cfg.backbone == "edsr" else "weight"
        want["depth_input"] = depth_input
    assert result.overrides == want
    assert result.model.config.depth_input == (depth_input or cfg.depth_input)

    x = jax.numpy.asarray(lr_batch)
    d = np.array([0.7 * cfg.num_blocks, 1.3 * cfg.num_blocks], np.float32)
    if cfg.adaptive:
        sr, aux = result.model(x, desired_depth=jax.numpy.asarray(d))
    else:
        sr, aux = result.model(x)
    ref_sr, ref_dmap = reference_forward(
        sd,
        layout,
        cfg.backbone,
        scale,
        lr_batch,
        d,
        groups=cfg.num_groups,
        blocks=cfg.num_blocks,
        res_scale=want["res_scale"],
        depth_input=depth_input,
    )
    assert sr.shape == ref_sr.shape == (2, 10 * scale, 12 * scale, 3)
    if cfg.adaptive:
        # The masks must really be exercised: fractional values, spread over more than one block.
        frac = (ref_dmap % 1.0 > 0.02) & (ref_dmap < cfg.num_blocks)
        assert frac.mean() > 0.3 and ref_dmap.max() > 1.0, (frac.mean(), ref_dmap.min(), ref_dmap.max())
        assert _rel_err(aux["depth_map"], ref_dmap) < 1e-5
    assert _rel_err(sr, ref_sr, baseline=MEAN) < 1e-5


def test_reference_grouped_conv_is_pytorch_groups():
    """groups=3 1x1 conv (the release's MeanShift) = per-channel scale + bias; full = matrix product."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 2, 2))
    sd = {"g.weight": np.array([2.0, 3.0, 4.0]).reshape(3, 1, 1, 1), "g.bias": np.array([1.0, 0.0, -1.0])}
    scale, shift = (
        np.array([2.0, 3.0, 4.0])[None, :, None, None],
        np.array([1.0, 0.0, -1.0])[None, :, None, None],
    )
    want = x * scale + shift
    np.testing.assert_allclose(conv(x, sd, "g"), want, rtol=1e-15)
    m = rng.standard_normal((3, 3))
    sd = {"f.weight": m.reshape(3, 3, 1, 1), "f.bias": np.zeros(3)}
    np.testing.assert_allclose(conv(x, sd, "f"), np.einsum("oi,nihw->nohw", m, x), rtol=1e-13)


def test_reference_pixel_shuffle_matches_pytorch_definition():
    """PixelShuffle: out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w] (PyTorch docs)."""
    x = np.arange(2 * 8 * 2 * 3, dtype=np.float64).reshape(2, 8, 2, 3)
    y = pixel_shuffle(x, 2)
    for n, c, h, w, i, j in np.ndindex(2, 2, 2, 3, 2, 2):
        assert y[n, c, h * 2 + i, w * 2 + j] == x[n, c * 4 + i * 2 + j, h, w]


# --------------------------------------------------------------------------------------------------
# Reports and refusals


def test_upstream_edsr_res_scale_default_follows_width():
    # 256 features (EDSR proper) -> 0.1; EDSR-baseline widths -> 1. A 1-block file keeps this cheap.
    big = upstream_state_dict("edsr", 256, 1, 1, 1, 2)
    result = convert_state_dict(big, model_name="edsr", scale=2, infer_size=True)
    assert result.overrides == {"num_blocks": 1, "res_scale": 0.1}
    assert result.model.config.res_scale == 0.1
    small = upstream_state_dict("edsr", 8, 3, 1, 1, 2)
    assert convert_state_dict(small, model_name="edsr_tiny", scale=2).overrides == {"res_scale": 1.0}


def test_missing_unexpected_and_misshaped_keys_are_named():
    sd = release_state_dict("adaedsr_tiny", 2)
    del sd["block1.layer0.bias"]
    sd["block7.layer0.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    sd["predictor.layer2.1.weight"] = np.zeros((8, 8, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(sd, model_name="adaedsr_tiny", scale=2, source="ada.pth")
    err = info.value
    assert err.missing == ["block1.layer0.bias"]
    assert err.unexpected == ["block7.layer0.weight"]
    assert err.misshaped == [("predictor.layer2.1.weight", (8, 8, 1, 1), (8, 8, 3, 3))]
    message = str(err)
    assert message.startswith(
        "ada.pth: the checkpoint does not fit model 'adaedsr_tiny' (x2, adadsr layout):"
    )
    assert "\n  missing keys (1): block1.layer0.bias" in message
    assert "\n  unexpected keys (1): block7.layer0.weight" in message
    assert (
        "\n  mis-shaped keys (1): predictor.layer2.1.weight file (8, 8, 1, 1) != model (8, 8, 3, 3)"
        in message
    )


def test_size_mismatch_hints_at_infer_size():
    sd = upstream_state_dict("edsr", 8, 2, 1, 1, 2)  # 2 blocks; edsr_tiny has 3
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(sd, model_name="edsr_tiny", scale=2, source="e.pt")
    want_missing = [f"body.2.body.{i}.{leaf}" for i in (0, 2) for leaf in ("weight", "bias")]
    assert sorted(info.value.missing) == sorted([*want_missing, "body.3.weight", "body.3.bias"])
    assert sorted(info.value.unexpected) == ["body.2.bias", "body.2.weight"]
    assert "the file looks like {'num_blocks': 2}: pass --infer-size" in str(info.value)
    result = convert_state_dict(sd, model_name="edsr_tiny", scale=2, infer_size=True)
    assert result.model.config.num_blocks == 2 and result.overrides["num_blocks"] == 2


def test_scale_mismatch_is_refused(tmp_path):
    sd = release_state_dict("adaedsr_tiny", 4)
    with pytest.raises(ScaleMismatchError, match=r"x4 \(its upsampler\), but --scale is 2"):
        convert_state_dict(sd, model_name="adaedsr_tiny", scale=2, source="a.pth")
    path = tmp_path / "s.pth"
    write_zip(path, {"scale": 3, "state_dict": release_state_dict("adaedsr_tiny", 2)})
    with pytest.raises(ScaleMismatchError, match=r"s\.pth: the checkpoint is for x3 \(its 'scale' entry\)"):
        convert_checkpoint(path, model_name="adaedsr_tiny", scale=2)
    up = upstream_state_dict("edsr", 8, 3, 1, 1, 3)
    with pytest.raises(ScaleMismatchError, match="x3"):
        convert_state_dict(up, model_name="edsr_tiny", scale=2)


# --------------------------------------------------------------------------------------------------
# MeanShift: both PyTorch forms, values checked


def test_meanshift_fixture_values_are_the_pytorch_definitions():
    """The fixtures' MeanShift tensors: grouped ones/std [3,1,1,1], full eye/std [3,3,1,1], bias
    sign*255*mean/std with std 1 (all three projects define rgb_std = (1.0, 1.0, 1.0))."""
    w, b = meanshift(-1.0, "grouped")
    assert w.shape == (3, 1, 1, 1) and np.all(w == 1.0)
    np.testing.assert_allclose(b, -255.0 * np.array([0.4488, 0.4371, 0.4040]), rtol=1e-7)
    w, b = meanshift(1.0, "full")
    assert w.shape == (3, 3, 1, 1) and np.array_equal(w[:, :, 0, 0], np.eye(3))
    np.testing.assert_allclose(b, 255.0 * np.array([0.4488, 0.4371, 0.4040]), rtol=1e-7)


def _layout_sd(layout: str, form: str) -> tuple[str, dict]:
    if layout == "adadsr":
        return "adaedsr_tiny", release_state_dict("adaedsr_tiny", 2, form=form)
    if layout == "edsr":
        return "edsr_tiny", upstream_state_dict("edsr", 8, 3, 1, 1, 2, form=form)
    return "rcan_tiny", upstream_state_dict("rcan", 8, 2, 2, 4, 2, form=form)


@pytest.mark.parametrize("layout", ["adadsr", "edsr", "rcan"])
def test_both_meanshift_forms_are_accepted_in_every_layout(layout):
    models = {}
    for form in ("grouped", "full"):
        model_name, sd = _layout_sd(layout, form)
        result = convert_state_dict(sd, model_name=model_name, scale=2, source="ms.pth")
        assert sum(f"({form}) equals our constant" in n for n in result.notes) == 2, result.notes
        models[form] = result.model
    # The two forms encode the same constant and the other tensors are identical: same model.
    a, b = (jax.tree.leaves(nnx.state(models[f], nnx.Param)) for f in ("grouped", "full"))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _with_meanshift(layout, form, prefix_index, weight, bias):
    model_name, sd = _layout_sd(layout, form)
    prefix = (("head.0", "tail.1") if layout == "adadsr" else ("sub_mean", "add_mean"))[prefix_index]
    if weight is not None:
        sd[f"{prefix}.weight"] = np.asarray(weight, np.float32)
    if bias is not None:
        sd[f"{prefix}.bias"] = np.asarray(bias, np.float32)
    return model_name, sd


DIV2K = np.array([0.4488, 0.4371, 0.4040])


@pytest.mark.parametrize(
    ("layout", "form", "index", "std", "mean", "rgb_range", "sign", "message"),
    [
        # std 0.5 (weight 2): mean reads back right, std does not.
        (
            "adadsr",
            "grouped",
            0,
            0.5,
            DIV2K,
            255,
            -1,
            "encodes mean (0.4488, 0.4371, 0.4040) and std (0.5000",
        ),
        # A model trained on 0..1 images (rgb_range 1): bias -mean.
        ("adadsr", "grouped", 1, 1.0, DIV2K, 1, 1, "mean (0.0018, 0.0017, 0.0016) and std (1.0000"),
        # Another dataset's mean (ImageNet), full form.
        ("edsr", "full", 0, 1.0, [0.485, 0.456, 0.406], 255, -1, "encodes mean (0.4850, 0.4560, 0.4060)"),
        # Per-channel std of another normalisation, full form.
        ("rcan", "full", 1, [0.2, 0.3, 0.4], DIV2K, 255, 1, "std (0.2000, 0.3000, 0.4000)"),
        # The head's shift with the tail's sign: reads back as minus the mean.
        ("rcan", "grouped", 0, 1.0, DIV2K, 255, 1, "encodes mean (-0.4488, -0.4371, -0.4040)"),
    ],
)
def test_other_normalisations_are_refused_with_the_numbers(
    layout, form, index, std, mean, rgb_range, sign, message
):
    std = np.broadcast_to(np.asarray(std, np.float64), (3,))
    w, _ = meanshift(sign, form, std=std)
    bias = sign * rgb_range * np.asarray(mean) / std
    model_name, sd = _with_meanshift(layout, form, index, w, bias)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(sd, model_name=model_name, scale=2, source="ms.pth")
    text = str(info.value)
    assert text.startswith("ms.pth: MeanShift ")
    assert message in text, text
    assert "this model uses mean (0.4488, 0.4371, 0.4040) (DIV2K) and std (1.0000, 1.0000, 1.0000)" in text


@pytest.mark.parametrize(
    ("weight", "bias", "message"),
    [
        (np.eye(3).reshape(3, 3, 1, 1) + 0.1, None, "is not diagonal (largest off-diagonal entry 0.1"),
        (np.ones((3, 3, 3, 3)), None, "has shape (3, 3, 3, 3), expected (3, 1, 1, 1) (grouped"),
        (np.ones((1, 1, 1, 1)), None, "has shape (1, 1, 1, 1), expected (3, 1, 1, 1)"),
        (None, np.zeros(4), "'sub_mean.bias' has shape (4,), expected (3,)"),
        (np.full((3, 1, 1, 1), np.nan), None, "encodes mean (nan, nan, nan)"),
    ],
)
def test_malformed_meanshift_is_refused(weight, bias, message):
    model_name, sd = _with_meanshift("edsr", "full", 0, weight, bias)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(sd, model_name=model_name, scale=2, source="ms.pth")
    assert str(info.value).startswith("ms.pth: MeanShift ") and message in str(info.value), str(info.value)
    del sd["sub_mean.bias"]
    with pytest.raises(ConversionError, match=r"^ms\.pth: MeanShift 'sub_mean' has no 'sub_mean\.bias'"):
        convert_state_dict(sd, model_name=model_name, scale=2, source="ms.pth")


def test_non_float_and_non_finite_weights_are_refused():
    sd = release_state_dict("adaedsr_tiny", 2)
    sd["block1.layer0.weight"] = sd["block1.layer0.weight"].astype(np.int64)
    with pytest.raises(ConversionError, match=r"^w\.pth: parameters must be floating-point tensors:\n"):
        convert_state_dict(sd, model_name="adaedsr_tiny", scale=2, source="w.pth")
    sd = release_state_dict("adaedsr_tiny", 2)
    sd["head.1.bias"] = sd["head.1.bias"].copy()
    sd["head.1.bias"][2] = np.nan
    sd["tail.0.weight"] = sd["tail.0.weight"].astype(np.float64) * 1e300  # beyond float32
    with pytest.raises(ConversionError) as info:
        convert_state_dict(sd, model_name="adaedsr_tiny", scale=2, source="w.pth")
    assert str(info.value).startswith("w.pth: the checkpoint holds NaN or infinite weights")
    assert "non-finite keys (2): head.1.bias, tail.0.weight" in str(info.value)


def test_model_mismatches_are_refused():
    good = release_state_dict("adaedsr_tiny", 2)
    with pytest.raises(ConversionError, match="AdaEDSR/EDSR release checkpoint, but model 'adarcan_tiny'"):
        convert_state_dict(good, model_name="adarcan_tiny", scale=2)
    up = upstream_state_dict("edsr", 8, 3, 1, 1, 2)
    with pytest.raises(ConversionError, match="pass --backbone-only"):
        convert_state_dict(up, model_name="adaedsr_tiny", scale=2)
    result = convert_state_dict(up, model_name="adaedsr_tiny", scale=2, backbone_only=True)
    np.testing.assert_array_equal(
        np.asarray(result.model.head.kernel[...]), up["head.0.weight"].transpose(2, 3, 1, 0)
    )
    with pytest.raises(ConversionError, match="unrecognised key layout"):
        convert_state_dict({"foo.weight": np.zeros(1)}, model_name="edsr_tiny", scale=2)


def test_cli_reports_errors(tmp_path, capsys):
    path = tmp_path / "bad.pth"
    sd = release_state_dict("adaedsr_tiny", 2)
    del sd["up.0.0.bias"]
    write_zip(path, {"scale": 2, "state_dict": sd})
    code = main([str(path), "--model", "adaedsr_tiny", "--scale", "2", "--out", str(tmp_path / "out")])
    assert code == 2  # a user error (adadsr_jax.cli's convention)
    assert "missing keys (1): up.0.0.bias" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("scale", "spec_key", "alt_key"), [(3, "up.0", "up.0.0"), (2, "up.0.0", "up.0")])
def test_release_single_stage_upsampler_accepts_both_spellings(scale, spec_key, alt_key):
    sd = release_state_dict("adaedsr_tiny", scale)
    renamed = collections.OrderedDict(
        (k.replace(f"{spec_key}.", f"{alt_key}.", 1) if k.startswith(f"{spec_key}.") else k, v)
        for k, v in sd.items()
    )
    assert f"{alt_key}.weight" in renamed and f"{spec_key}.weight" not in renamed
    a = convert_state_dict(sd, model_name="adaedsr_tiny", scale=scale).model
    b = convert_state_dict(renamed, model_name="adaedsr_tiny", scale=scale).model
    np.testing.assert_array_equal(
        np.asarray(a.up.convs[0].kernel[...]), np.asarray(b.up.convs[0].kernel[...])
    )
    np.testing.assert_array_equal(
        np.asarray(a.up.convs[0].kernel[...]), sd[f"{spec_key}.weight"].transpose(2, 3, 1, 0)
    )


def test_adapter_file_into_plain_model_gets_a_hint():
    sd = release_state_dict("adaedsr_tiny", 2)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(sd, model_name="edsr_tiny", scale=2)
    assert all(k.startswith("predictor.") for k in info.value.unexpected) and len(info.value.unexpected) == 14
    assert not info.value.missing and not info.value.misshaped
    assert "the file has an adapter (predictor.*): convert it into adaedsr/adarcan" in str(info.value)
    assert "--infer-size" not in str(info.value)


def test_infer_size_reads_rcan_groups_blocks_and_reduction():
    sd = upstream_state_dict("rcan", 8, 1, 3, 2, 2)  # C=8, 1 block per group, 3 groups, reduction 2
    result = convert_state_dict(sd, model_name="rcan_tiny", scale=2, infer_size=True)
    assert result.overrides == {"num_blocks": 1, "num_groups": 3, "reduction": 2, "res_scale": 1.0}
    body = result.model.body
    assert body.ca_down.kernel[...].shape == (3, 1, 8, 4)
    np.testing.assert_array_equal(
        np.asarray(body.ca_down.kernel[...][2, 0]), sd["body.2.body.0.body.3.conv_du.0.weight"][:, :, 0, 0].T
    )
    np.testing.assert_array_equal(
        np.asarray(body.group_end.kernel[...][1]), sd["body.1.body.1.weight"].transpose(2, 3, 1, 0)
    )


def test_impossible_sizes_read_with_infer_size_are_refused():
    """Channel attention wider than the features gives reduction 0: a named error, not a crash."""
    sd = upstream_state_dict("rcan", 8, 1, 1, 2, 2)
    sd["body.0.body.0.body.3.conv_du.0.weight"] = np.zeros((16, 8, 1, 1), np.float32)
    sd["body.0.body.0.body.3.conv_du.0.bias"] = np.zeros(16, np.float32)
    sd["body.0.body.0.body.3.conv_du.2.weight"] = np.zeros((8, 16, 1, 1), np.float32)
    with pytest.raises(
        ConversionError, match=r"^z\.pth: cannot build model 'rcan_tiny' with .*'reduction': 0"
    ):
        convert_state_dict(sd, model_name="rcan_tiny", scale=2, infer_size=True, source="z.pth")


def test_with_backbone_takes_every_entry_but_the_adapter():
    fresh = {"head": {"kernel": np.zeros((3, 3, 3, 8))}, "adapter": {"bias": np.full(4, 7.0)}}
    other = {"head": {"kernel": np.ones((3, 3, 3, 8))}, "adapter": {"bias": np.zeros(9)}, "extra": np.ones(2)}
    merged = with_backbone(fresh, other, "src")
    assert set(merged) == {"head", "adapter"}  # entries only the backbone has are not taken
    assert merged["head"] is other["head"]
    assert merged["adapter"] is fresh["adapter"]  # kept, even though the backbone's has another shape
    assert fresh["head"]["kernel"].sum() == 0  # the input is not modified
    with pytest.raises(ValueError) as info:
        with_backbone(fresh, {"adapter": fresh["adapter"]}, "init_from run1")
    assert str(info.value) == "init_from run1: its model has no 'head' parameters"
    with pytest.raises(ValueError) as info:
        with_backbone(fresh, {"head": {"kernel": np.ones((3, 3, 3, 4))}}, "init_from run1")
    assert str(info.value) == (
        "init_from run1: 'head' shapes differ: checkpoint {'kernel': (3, 3, 3, 4)}, "
        "model {'kernel': (3, 3, 3, 8)}"
    )


def test_backbone_only_keeps_a_fresh_adapter_of_the_seed():
    up = upstream_state_dict("edsr", 8, 3, 1, 1, 2)
    result = convert_state_dict(up, model_name="adaedsr_tiny", scale=2, backbone_only=True, seed=3)
    cfg = result.model.config
    fresh = Adapter(
        cfg.num_features, cfg.adapter_features, cfg.num_maps, depth_input=cfg.depth_input, rngs=nnx.Rngs(3)
    )
    got = nnx.to_pure_dict(nnx.state(result.model.adapter, nnx.Param))
    want = nnx.to_pure_dict(nnx.state(fresh, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert len(jax.tree.leaves(got)) == len(jax.tree.leaves(want)) > 0
    np.testing.assert_array_equal(
        np.asarray(result.model.tail.kernel[...]), up["tail.1.weight"].transpose(2, 3, 1, 0)
    )
    assert "adapter left at its fresh initialisation (seed 3)" in result.notes
