"""Test helper: PyTorch-layout state dicts of the supported projects, written key by key from the facts
(SPEC 12 and the projects' module structure), independent of the converter's tables.

* AdaDSR release (csmliu/AdaDSR): `{'scale': s, 'state_dict': ...}`; MeanShift is a grouped 1x1 conv,
  `Conv2d(3, 3, 1, groups=3)`: weight [3, 1, 1, 1] = ones / std, bias = sign * 255 * mean / std.
* EDSR-PyTorch and RCAN: bare state dicts (optionally with DataParallel's `module.` prefix); MeanShift is
  a full 1x1 conv, `Conv2d(3, 3, 1)`: weight [3, 3, 1, 1] = eye(3) / std, same bias.
All three define rgb_mean = DIV2K (0.4488, 0.4371, 0.4040), rgb_std = (1.0, 1.0, 1.0), rgb_range 255.
"""

from __future__ import annotations

import collections

import numpy as np
from torch_format import state_dict as torch_state_dict

from adadsr_jax.models import get_model_config

RGB_MEAN = np.array([0.4488, 0.4371, 0.4040])
RGB_STD = np.array([1.0, 1.0, 1.0])
RGB_RANGE = 255.0
MEAN = RGB_RANGE * RGB_MEAN

# layout name -> (model preset family, file layout, MeanShift form, wrapper)
LAYOUT_CASES = {
    "release_adaedsr": ("adaedsr", "adadsr", "grouped", "wrapped"),
    "release_adarcan": ("adarcan", "adadsr", "grouped", "wrapped"),
    "release_edsr": ("edsr", "adadsr", "grouped", "wrapped"),
    "edsr_pytorch": ("edsr", "edsr", "full", "bare"),
    "rcan": ("rcan", "rcan", "full", "module"),
}


def meanshift(sign: float, form: str, std=RGB_STD, mean=RGB_MEAN, rgb_range=RGB_RANGE):
    """(weight, bias) float32 as the PyTorch MeanShift constructors compute them."""
    std = np.asarray(std, np.float64)
    if form == "grouped":
        weight = np.ones(3).reshape(3, 1, 1, 1) / std.reshape(3, 1, 1, 1)
    else:
        weight = np.eye(3).reshape(3, 3, 1, 1) / std.reshape(3, 1, 1, 1)
    bias = sign * rgb_range * np.asarray(mean, np.float64) / std
    return weight.astype(np.float32), bias.astype(np.float32)


class _Maker:
    """Random PyTorch-layout tensors with PyTorch's default init scale U(+-1/sqrt(fan_in)) x gain."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.sd: dict[str, np.ndarray] = collections.OrderedDict()

    def conv(self, name: str, cin: int, cout: int, k: int = 3, gain: float = 1.0, bias_shift: float = 0.0):
        bound = gain / np.sqrt(cin * k * k)
        self.sd[f"{name}.weight"] = self.rng.uniform(-bound, bound, (cout, cin, k, k)).astype(np.float32)
        self.sd[f"{name}.bias"] = (self.rng.uniform(-bound, bound, cout) + bias_shift).astype(np.float32)

    def meanshift(self, name: str, sign: float, form: str):
        self.sd[f"{name}.weight"], self.sd[f"{name}.bias"] = meanshift(sign, form)

    def upsampler(self, prefixes: list[str], c: int, scale: int):
        rr = 9 if scale == 3 else 4
        for p in prefixes:
            self.conv(p, c, c * rr)


def release_state_dict(model: str, scale: int, seed: int = 0, form: str = "grouped") -> dict[str, np.ndarray]:
    """AdaDSR release keys (SPEC 12) for an AdaEDSR / AdaRCAN / plain EDSR / RCAN preset."""
    cfg = get_model_config(model)
    c, m = cfg.num_features, _Maker(seed)
    m.meanshift("head.0", -1.0, form)
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
    m.meanshift("tail.1", 1.0, form)
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


def upstream_state_dict(
    layout: str, c: int, blocks: int, groups: int, reduction: int, scale: int, seed=1, form: str = "full"
):
    """EDSR-PyTorch (layout 'edsr') or RCAN ('rcan') keys, with MeanShift modules."""
    m = _Maker(seed)
    m.meanshift("sub_mean", -1.0, form)
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
    m.meanshift("add_mean", 1.0, form)
    return m.sd


def layout_state_dict(case: str, model: str, scale: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The bare tensors (no prefix) of `case` (a LAYOUT_CASES key) for preset `model`."""
    _, layout, form, _ = LAYOUT_CASES[case]
    if layout == "adadsr":
        return release_state_dict(model, scale, seed, form)
    cfg = get_model_config(model)
    groups = cfg.num_groups if layout == "rcan" else 1
    c, blocks, reduction = cfg.num_features, cfg.num_blocks, cfg.reduction
    return upstream_state_dict(layout, c, blocks, groups, reduction, scale, seed, form)


def saved_object(case: str, sd: dict[str, np.ndarray], scale: int):
    """What the project's code passes to torch.save: the release's wrapper, a bare state dict, or a bare
    state dict saved from a DataParallel model (`module.` prefix on every key)."""
    wrapper = LAYOUT_CASES[case][3]
    if wrapper == "module":
        return torch_state_dict((f"module.{k}", v) for k, v in sd.items())
    state = torch_state_dict(sd.items())
    return {"scale": scale, "state_dict": state} if wrapper == "wrapped" else state
