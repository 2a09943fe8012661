"""Checkpoint conversion: forward parity with a float64 numpy model of the PyTorch layers, key reports."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest
from torch_format import write_legacy, write_zip

from adadsr_jax.convert import (
    CheckpointMismatchError,
    ConversionError,
    ScaleMismatchError,
    convert_checkpoint,
    convert_state_dict,
    main,
)
from adadsr_jax.models import get_model_config

MEAN = 255.0 * np.array([0.4488, 0.4371, 0.4040])

# --------------------------------------------------------------------------------------------------
# Source state dicts, written key by key in PyTorch naming (independent of the converter's tables).


class _Maker:
    """Random PyTorch-layout tensors with PyTorch's default init scale U(+-1/sqrt(fan_in)) x gain."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.sd: dict[str, np.ndarray] = collections.OrderedDict()

    def conv(self, name: str, cin: int, cout: int, k: int = 3, gain: float = 1.0, bias_shift: float = 0.0):
        bound = gain / np.sqrt(cin * k * k)
        self.sd[f"{name}.weight"] = self.rng.uniform(-bound, bound, (cout, cin, k, k)).astype(np.float32)
        self.sd[f"{name}.bias"] = (self.rng.uniform(-bound, bound, cout) + bias_shift).astype(np.float32)

    def meanshift(self, name: str, sign: float):
        self.sd[f"{name}.weight"] = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
        self.sd[f"{name}.bias"] = (sign * MEAN).astype(np.float32)

    def upsampler(self, prefixes: list[str], c: int, scale: int):
        rr = 9 if scale == 3 else 4
        for p in prefixes:
            self.conv(p, c, c * rr)


def release_state_dict(model: str, scale: int, seed: int = 0) -> dict[str, np.ndarray]:
    """AdaDSR release keys (SPEC 12) for a tiny AdaEDSR / AdaRCAN."""
    cfg = get_model_config(model)
    c, m = cfg.num_features, _Maker(seed)
    m.meanshift("head.0", -1.0)
    m.conv("head.1", 3, c)
    if cfg.backbone == "edsr":
        for i in range(cfg.num_blocks):
            m.conv(f"block{i}.layer0", c, c)
            m.conv(f"block{i}.layer2", c, c)
    else:
        cr = c // cfg.reduction
        for g in range(cfg.num_groups):
            for i in range(cfg.num_blocks):
                m.conv(f"group{g}.block{i}.layer0", c, c)
                m.conv(f"group{g}.block{i}.layer2", c, c)
                m.conv(f"group{g}.block{i}.cuca.conv_du.0", c, cr, k=1, gain=3.0)
                m.conv(f"group{g}.block{i}.cuca.conv_du.2", cr, c, k=1, gain=3.0)
            m.conv(f"group{g}.block{cfg.num_blocks}", c, c)
    m.conv("body_lastconv", c, c)
    m.upsampler({2: ["up.0.0"], 3: ["up.0"], 4: ["up.0.0", "up.1.0"]}[scale], c, scale)
    m.conv("tail.0", c, 3)
    m.meanshift("tail.1", 1.0)
    if cfg.adaptive:
        ca = cfg.adapter_features
        # Small first-layer gain and a positive last bias keep the depth maps fractional and spread over
        # several blocks, so the masks are really exercised.
        m.conv("predictor.layer0", c, ca, gain=0.05)
        for i in range(1, 5):
            m.sd[f"predictor.layer{i}.0.weight"] = np.array([0.25 + 0.1 * i], np.float32)
            last = i == 4
            m.conv(
                f"predictor.layer{i}.1",
                ca,
                cfg.num_maps if last else ca,
                bias_shift=(0.4 if cfg.backbone == "edsr" else 1.0) if last else 0.0,
            )
    return m.sd


def upstream_state_dict(layout: str, c: int, blocks: int, groups: int, reduction: int, scale: int, seed=1):
    """EDSR-PyTorch (layout 'edsr') or RCAN ('rcan') keys, with MeanShift modules."""
    m = _Maker(seed)
    m.meanshift("sub_mean", -1.0)
    m.conv("head.0", 3, c)
    if layout == "edsr":
        for i in range(blocks):
            m.conv(f"body.{i}.body.0", c, c)
            m.conv(f"body.{i}.body.2", c, c)
        m.conv(f"body.{blocks}", c, c)
    else:
        for g in range(groups):
            for b in range(blocks):
                m.conv(f"body.{g}.body.{b}.body.0", c, c)
                m.conv(f"body.{g}.body.{b}.body.2", c, c)
                m.conv(f"body.{g}.body.{b}.body.3.conv_du.0", c, c // reduction, k=1, gain=3.0)
                m.conv(f"body.{g}.body.{b}.body.3.conv_du.2", c // reduction, c, k=1, gain=3.0)
            m.conv(f"body.{g}.body.{blocks}", c, c)
        m.conv(f"body.{groups}", c, c)
    m.upsampler(["tail.0.0", "tail.0.2"] if scale == 4 else ["tail.0.0"], c, scale)
    m.conv("tail.1", c, 3)
    m.meanshift("add_mean", 1.0)
    return m.sd


# --------------------------------------------------------------------------------------------------
# float64 numpy model of the PyTorch layers (NCHW, OIHW), run on the source tensors.


def conv(x, sd, name):
    """nn.Conv2d(k, padding=k//2) cross-correlation: x [N, I, H, W], weight [O, I, k, k] -> [N, O, H, W]."""
    w, b = sd[f"{name}.weight"].astype(np.float64), sd[f"{name}.bias"].astype(np.float64)
    k = w.shape[-1]
    p = k // 2
    n, _, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    out = np.zeros((n, w.shape[0], h, wd))
    for i in range(k):
        for j in range(k):
            out += np.einsum("nihw,oi->nohw", xp[:, :, i : i + h, j : j + wd], w[:, :, i, j])
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


@pytest.fixture(scope="module")
def lr_batch():
    rng = np.random.default_rng(5)
    return rng.uniform(0, 255, (2, 6, 7, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("model_name", ["adaedsr_tiny", "adarcan_tiny"])
def test_release_forward_parity(tmp_path, lr_batch, model_name, scale):
    cfg = get_model_config(model_name)
    sd = release_state_dict(model_name, scale, seed=scale)
    path = tmp_path / "release.pth"
    # The release is a PyTorch 1.2-era (legacy) file; alternate with the zip format to cover both.
    (write_legacy if scale != 3 else write_zip)(path, {"scale": scale, "state_dict": sd})
    result = convert_checkpoint(path, model_name=model_name, scale=scale)
    assert result.layout == "adadsr"
    depth_input = "output" if cfg.backbone == "edsr" else "weight"
    assert result.overrides == {"res_scale": 1.0, "depth_input": depth_input}
    assert result.model.config.depth_input == depth_input

    d = np.array([0.7 * cfg.num_blocks, 1.3 * cfg.num_blocks], np.float32)
    sr, aux = result.model(jax.numpy.asarray(lr_batch), desired_depth=jax.numpy.asarray(d))
    ref_sr, ref_dmap = reference_forward(
        sd,
        "adadsr",
        cfg.backbone,
        scale,
        lr_batch,
        d,
        groups=cfg.num_groups,
        blocks=cfg.num_blocks,
        depth_input=depth_input,
    )
    assert sr.shape == ref_sr.shape == (2, 6 * scale, 7 * scale, 3)
    # The masks must really be exercised: fractional values, spread over more than one block.
    frac = (ref_dmap % 1.0 > 0.02) & (ref_dmap < cfg.num_blocks)
    assert frac.mean() > 0.3 and ref_dmap.max() > 1.0, (frac.mean(), ref_dmap.min(), ref_dmap.max())
    assert _rel_err(aux["depth_map"], ref_dmap) < 1e-5
    assert _rel_err(sr, ref_sr, baseline=MEAN) < 1e-5


@pytest.mark.parametrize("scale", [2, 4])
def test_upstream_edsr_parity(tmp_path, lr_batch, scale):
    cfg = get_model_config("edsr_tiny")
    sd = upstream_state_dict("edsr", cfg.num_features, cfg.num_blocks, 1, 1, scale)
    path = tmp_path / "edsr.pt"
    write_zip(path, sd)  # upstream model-zoo files are bare state dicts
    result = convert_checkpoint(path, model_name="edsr_tiny", scale=scale, res_scale=0.1)
    assert result.layout == "edsr" and result.overrides == {"res_scale": 0.1}
    sr, _ = result.model(jax.numpy.asarray(lr_batch))
    ref, _ = reference_forward(
        sd, "edsr", "edsr", scale, lr_batch, None, blocks=cfg.num_blocks, res_scale=0.1
    )
    assert _rel_err(sr, ref, baseline=MEAN) < 1e-5


@pytest.mark.parametrize("scale", [3])
def test_upstream_rcan_parity(tmp_path, lr_batch, scale):
    cfg = get_model_config("rcan_tiny")
    sd = upstream_state_dict("rcan", cfg.num_features, cfg.num_blocks, cfg.num_groups, cfg.reduction, scale)
    sd = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())  # saved from DataParallel
    path = tmp_path / "rcan.pt"
    write_legacy(path, sd)
    result = convert_checkpoint(path, model_name="rcan_tiny", scale=scale)
    assert result.layout == "rcan" and result.overrides == {"res_scale": 1.0}
    sr, _ = result.model(jax.numpy.asarray(lr_batch))
    ref, _ = reference_forward(
        {k[len("module.") :]: v for k, v in sd.items()},
        "rcan",
        "rcan",
        scale,
        lr_batch,
        None,
        groups=cfg.num_groups,
        blocks=cfg.num_blocks,
    )
    assert _rel_err(sr, ref, baseline=MEAN) < 1e-5


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


def test_meanshift_and_model_mismatches_are_refused():
    sd = release_state_dict("adaedsr_tiny", 2)
    sd["tail.1.bias"] = sd["tail.1.bias"] / 255.0  # a model trained with rgb_range 1
    with pytest.raises(ConversionError, match=r"MeanShift 'tail\.1\.bias' is \[0\.4488"):
        convert_state_dict(sd, model_name="adaedsr_tiny", scale=2)
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
    assert code == 1
    assert "missing keys (1): up.0.0.bias" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_checkpoint_that_load_model_reads(tmp_path, lr_batch, capsys):
    from adadsr_jax.training.checkpoints import load_model

    path = tmp_path / "adarcan_x2.pth"
    write_legacy(path, {"scale": 2, "state_dict": release_state_dict("adarcan_tiny", 2)})
    out = tmp_path / "converted"
    assert main([str(path), "--model", "adarcan_tiny", "--scale", "2", "--out", str(out)]) == 0
    assert "adadsr layout" in capsys.readouterr().out
    direct = convert_checkpoint(path, model_name="adarcan_tiny", scale=2).model
    loaded, config = load_model(out)
    assert config["model"] == {
        "name": "adarcan_tiny",
        "scale": 2,
        "overrides": {"res_scale": 1.0, "depth_input": "weight"},
    }
    x = jax.numpy.asarray(lr_batch)
    sr_direct, _ = direct(x, desired_depth=1.5)
    sr_loaded, _ = loaded(x, desired_depth=1.5)
    np.testing.assert_array_equal(np.asarray(sr_loaded), np.asarray(sr_direct))


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
