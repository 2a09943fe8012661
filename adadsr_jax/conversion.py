"""Convert PyTorch checkpoints (AdaDSR release, EDSR-PyTorch, RCAN) into our Flax NNX models.

The library behind `python -m adadsr_jax.convert` (adadsr_jax/convert.py, the command line, which
re-exports these names). Three key layouts are understood (chosen automatically from the keys, or with
--layout):

* ``adadsr``: the AdaDSR release (csmliu/AdaDSR; SPEC 12), a dict {'scale': int, 'state_dict': ...}
  with ``head.0`` (MeanShift), ``head.1`` conv, ``block{i}.layer{0,2}`` (EDSR) or
  ``group{g}.block{i}.layer{0,2}`` + ``group{g}.block{i}.cuca.conv_du.{0,2}`` + ``group{g}.block{B}``
  (RCAN), ``body_lastconv``, ``up.0.0`` (x2) / ``up.0`` (x3) / ``up.0.0`` + ``up.1.0`` (x4), ``tail.0``
  conv, ``tail.1`` (MeanShift), adapter ``predictor.layer0`` and ``predictor.layer{1..4}.{0,1}``
  (PReLU, conv). res_scale 1; the adapter takes the depth by output scaling (AdaEDSR) or weight
  scaling (AdaRCAN).
* ``edsr``: EDSR-PyTorch state dicts: ``sub_mean``/``add_mean`` (MeanShift), ``head.0``,
  ``body.{i}.body.{0,2}``, ``body.{D}``, ``tail.0.0`` (+ ``tail.0.2`` at x4), ``tail.1``.
  res_scale 0.1 for 256-feature models (EDSR), 1 otherwise (EDSR-baseline), unless --res-scale.
* ``rcan``: RCAN state dicts: ``sub_mean``/``add_mean``, ``head.0``, ``body.{g}.body.{b}.body.{0,2}``,
  ``body.{g}.body.{b}.body.3.conv_du.{0,2}``, ``body.{g}.body.{B}``, ``body.{G}``, ``tail.0.0``
  (+ ``tail.0.2``), ``tail.1``. res_scale 1.

Conv weights are OIHW in the file and HWIO here; 1x1 channel-attention convs become [in, out] matrices;
per-block tensors are stacked on our leading block (and group) axes. MeanShift tensors, in either PyTorch
form (the release's grouped [3, 1, 1, 1] ones/std or EDSR-PyTorch/RCAN's full [3, 3, 1, 1] identity/std),
are checked against our constant (DIV2K mean, std 1, range 0..255) and then dropped. Missing, unexpected
and mis-shaped keys are reported by name (CheckpointMismatchError); a file built for another scale is
refused (ScaleMismatchError); non-float or non-finite weights are refused (ConversionError). Every error
is a FileNotFoundError, CheckpointFormatError or ConversionError whose message starts with the file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from adadsr_jax.checkpoint import with_backbone
from adadsr_jax.models import AdaDSR, Adapter, ModelConfig, create_model, get_model_config
from adadsr_jax.models.layers import DIV2K_RGB_MEAN, upsampler_stages
from adadsr_jax.torch_checkpoint import load_torch_checkpoint

# The public names are listed, and re-exported, by adadsr_jax/convert.py (the command line).
LAYOUTS = ("adadsr", "edsr", "rcan")

_MAX_LISTED = 20  # keys named per category in an error message; the exception keeps them all


class ConversionError(ValueError):
    """The checkpoint cannot be converted into the requested model (message names file and problem)."""


class ScaleMismatchError(ConversionError):
    """The checkpoint was made for another upscaling factor than the one requested."""


class CheckpointMismatchError(ConversionError):
    """Keys missing from the file, keys the model does not use, or tensors of the wrong shape.

    Attributes: missing (list of keys), unexpected (list of keys), misshaped (list of
    (key, file shape, expected shape)).
    """

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.misshaped = misshaped


@dataclasses.dataclass
class Conversion:
    """A converted model and what is needed to save and rebuild it.

    `create_model(model_name, scale=scale, rngs=..., **overrides)` rebuilds the architecture;
    `notes` says what was checked or dropped (MeanShift constants, inferred sizes, ...).
    """

    model: AdaDSR
    model_name: str
    scale: int
    overrides: dict[str, Any]
    layout: str
    converted_keys: int
    notes: list[str]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One parameter of ours: its path in the model, how to convert, and the file keys per stack index."""

    path: tuple[str | int, ...]
    kind: str  # "conv" (OIHW -> HWIO), "dense" (O,I,1,1 -> I,O) or "vec" (as is)
    keys: np.ndarray  # object array of file keys, shape = the parameter's stack shape (() if unstacked)


# --------------------------------------------------------------------------------------------------
# Key tables


def _module_entries(path: tuple, prefixes: np.ndarray, kind: str = "conv") -> list[_Entry]:
    """Weight and bias entries of one (possibly stacked) conv module whose file prefixes are given."""
    add = np.vectorize(lambda p, leaf: f"{p}.{leaf}", otypes=[object])
    return [
        _Entry((*path, "kernel"), kind, add(prefixes, "weight")),
        _Entry((*path, "bias"), "vec", add(prefixes, "bias")),
    ]


def _grid(fmt: str, *sizes: int) -> np.ndarray:
    """Object array of fmt.format(*index) over the index grid of `sizes`."""
    out = np.empty(sizes, dtype=object)
    for index in np.ndindex(*sizes):
        out[index] = fmt.format(*index)
    return out


def _one(key: str) -> np.ndarray:
    return np.array(key, dtype=object)


def _upsampler_prefixes(layout: str, scale: int, keys: frozenset[str] = frozenset()) -> list[str]:
    stages = len(upsampler_stages(scale))
    if layout == "adadsr":
        if stages == 1:
            # SPEC 12: x2 uses up.0.0 (a [conv, shuffle] Sequential), x3 a bare up.0; accept either
            # spelling for the single-stage scales, preferring the one the file has.
            first, other = ("up.0", "up.0.0") if scale == 3 else ("up.0.0", "up.0")
            return [other] if f"{other}.weight" in keys and f"{first}.weight" not in keys else [first]
        return [f"up.{i}.0" for i in range(stages)]
    # EDSR-PyTorch / RCAN: tail.0 is a Sequential of [conv, PixelShuffle] per stage.
    return [f"tail.0.{2 * i}" for i in range(stages)]


def _meanshift_prefixes(layout: str) -> tuple[str, str]:
    return ("head.0", "tail.1") if layout == "adadsr" else ("sub_mean", "add_mean")


def key_table(
    model: AdaDSR, layout: str, *, with_adapter: bool = True, file_keys: frozenset[str] = frozenset()
) -> list[_Entry]:
    """Every parameter of `model` with the file keys it comes from in `layout` (file_keys only picks
    between equivalent spellings)."""
    cfg = model.config
    d, g, b = cfg.num_blocks, cfg.num_groups, cfg.num_blocks
    entries: list[_Entry] = []
    if layout == "adadsr":
        entries += _module_entries(("head",), _one("head.1"))
        if cfg.backbone == "edsr":
            entries += _module_entries(("body", "layer0"), _grid("block{}.layer0", d))
            entries += _module_entries(("body", "layer2"), _grid("block{}.layer2", d))
        else:
            entries += _module_entries(("body", "layer0"), _grid("group{}.block{}.layer0", g, b))
            entries += _module_entries(("body", "layer2"), _grid("group{}.block{}.layer2", g, b))
            entries += _module_entries(
                ("body", "ca_down"), _grid("group{}.block{}.cuca.conv_du.0", g, b), "dense"
            )
            entries += _module_entries(
                ("body", "ca_up"), _grid("group{}.block{}.cuca.conv_du.2", g, b), "dense"
            )
            entries += _module_entries(("body", "group_end"), _grid("group{}.block" + str(b), g))
        entries += _module_entries(("body_lastconv",), _one("body_lastconv"))
        tail = "tail.0"
    else:
        entries += _module_entries(("head",), _one("head.0"))
        if layout == "edsr":
            entries += _module_entries(("body", "layer0"), _grid("body.{}.body.0", d))
            entries += _module_entries(("body", "layer2"), _grid("body.{}.body.2", d))
            entries += _module_entries(("body_lastconv",), _one(f"body.{d}"))
        else:
            entries += _module_entries(("body", "layer0"), _grid("body.{}.body.{}.body.0", g, b))
            entries += _module_entries(("body", "layer2"), _grid("body.{}.body.{}.body.2", g, b))
            ca = "body.{}.body.{}.body.3.conv_du."
            entries += _module_entries(("body", "ca_down"), _grid(ca + "0", g, b), "dense")
            entries += _module_entries(("body", "ca_up"), _grid(ca + "2", g, b), "dense")
            entries += _module_entries(("body", "group_end"), _grid("body.{}.body." + str(b), g))
            entries += _module_entries(("body_lastconv",), _one(f"body.{g}"))
        tail = "tail.1"
    for i, prefix in enumerate(_upsampler_prefixes(layout, model.scale, file_keys)):
        entries += _module_entries(("up", "convs", i), _one(prefix))
    entries += _module_entries(("tail",), _one(tail))
    if cfg.adaptive and with_adapter:
        entries += _module_entries(("adapter", "layer0"), _one("predictor.layer0"))
        for i in range(4):
            entries.append(
                _Entry(("adapter", "layers", i, "slope"), "vec", _one(f"predictor.layer{i + 1}.0.weight"))
            )
            entries += _module_entries(("adapter", "layers", i, "conv"), _one(f"predictor.layer{i + 1}.1"))
    return entries


def _file_shape(kind: str, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of one (unstacked) tensor that becomes a parameter of `param_shape`."""
    if kind == "conv":
        kh, kw, cin, cout = param_shape
        return (cout, cin, kh, kw)
    if kind == "dense":
        cin, cout = param_shape
        return (cout, cin, 1, 1)
    return tuple(param_shape)


def _to_ours(kind: str, array: np.ndarray) -> np.ndarray:
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if kind == "dense":
        return array[:, :, 0, 0].T  # [out, in, 1, 1] -> [in, out]
    return array


# --------------------------------------------------------------------------------------------------
# Reading the file's structure


def extract_state_dict(checkpoint: Any, source: str) -> tuple[dict[str, np.ndarray], int | None]:
    """(state dict with any DataParallel 'module.' prefix removed, the file's 'scale' or None)."""
    scale = None
    state = checkpoint
    if isinstance(checkpoint, Mapping) and "state_dict" in checkpoint:
        state = checkpoint["state_dict"]
        raw_scale = checkpoint.get("scale")
        if isinstance(raw_scale, int | np.integer) and not isinstance(raw_scale, bool):
            scale = int(raw_scale)
        elif isinstance(raw_scale, list | tuple) and len(raw_scale) == 1:  # EDSR-style [2]
            scale = int(raw_scale[0])
    if not isinstance(state, Mapping) or not state:
        raise ConversionError(f"{source}: no state dict found (top level is {type(checkpoint).__name__})")
    non_tensors = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if non_tensors:
        top = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else []
        raise ConversionError(
            f"{source}: not a state dict of tensors (entries {non_tensors[:5]} are not tensors; "
            f"top-level keys {top})"
        )
    keys = [str(k) for k in state]
    if all(k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}, scale


def detect_layout(state: Mapping[str, np.ndarray], source: str) -> str:
    """'adadsr', 'edsr' or 'rcan' from the key names."""
    keys = set(state)
    if any(k.startswith(("block0.", "group0.", "predictor.", "body_lastconv.")) for k in keys):
        return "adadsr"
    if "body.0.body.0.body.0.weight" in keys:
        return "rcan"
    if "body.0.body.0.weight" in keys:
        return "edsr"
    raise ConversionError(
        f"{source}: unrecognised key layout (first keys: {sorted(keys)[:8]}); supported are the AdaDSR "
        "release, EDSR-PyTorch and RCAN layouts (see docs/pretrained.md)"
    )


def _indices(keys: set[str], pattern: str) -> list[tuple[int, ...]]:
    found = []
    for key in keys:
        m = re.fullmatch(pattern, key)
        if m:
            found.append(tuple(int(x) for x in m.groups()))
    return sorted(found)


def infer_sizes(state: Mapping[str, np.ndarray], layout: str) -> dict[str, int]:
    """Architecture sizes the file implies (num_features, num_blocks, num_groups, reduction,
    adapter_features); entries that cannot be read off the keys are left out."""
    keys = set(state)
    sizes: dict[str, int] = {}
    head = state.get("head.1.weight" if layout == "adadsr" else "head.0.weight")
    if head is not None and head.ndim == 4:
        sizes["num_features"] = int(head.shape[0])
    if layout == "adadsr":
        blocks = _indices(keys, r"block(\d+)\.layer0\.weight")
        grouped = _indices(keys, r"group(\d+)\.block(\d+)\.layer0\.weight")
        ca = "group0.block0.cuca.conv_du.0.weight"
        if "predictor.layer0.weight" in state and state["predictor.layer0.weight"].ndim == 4:
            sizes["adapter_features"] = int(state["predictor.layer0.weight"].shape[0])
    elif layout == "edsr":
        blocks = _indices(keys, r"body\.(\d+)\.body\.0\.weight")
        grouped, ca = [], ""
    else:
        blocks = []
        grouped = _indices(keys, r"body\.(\d+)\.body\.(\d+)\.body\.0\.weight")
        ca = "body.0.body.0.body.3.conv_du.0.weight"
    if blocks:
        sizes["num_blocks"] = max(i for (i,) in blocks) + 1
    if grouped:
        sizes["num_groups"] = max(gi for gi, _ in grouped) + 1
        sizes["num_blocks"] = max(bi for _, bi in grouped) + 1
        if ca in state and state[ca].ndim == 4 and state[ca].shape[0] and "num_features" in sizes:
            sizes["reduction"] = sizes["num_features"] // int(state[ca].shape[0])
    return sizes


def infer_scale(state: Mapping[str, np.ndarray], layout: str) -> int | None:
    """The upscaling factor the file's upsampler implements (None when it cannot tell)."""
    if layout == "adadsr":
        first = state.get("up.0.weight", state.get("up.0.0.weight"))
        second = "up.1.0.weight" in state
    else:
        first = state.get("tail.0.0.weight")
        second = "tail.0.2.weight" in state
    if first is None or first.ndim != 4 or first.shape[1] == 0:
        return None
    ratio = first.shape[0] / first.shape[1]  # C*r*r out of C in
    factor = {4.0: 2, 9.0: 3}.get(ratio)
    if factor is None:
        return None
    return factor * factor if second else factor


# The normalisation every supported release uses (SPEC 1, 12): DIV2K RGB mean, std 1 per channel (the
# AdaDSR release, EDSR-PyTorch and RCAN all define rgb_std = (1.0, 1.0, 1.0)), pixel range 0..255.
RGB_RANGE = 255.0
RGB_STD = (1.0, 1.0, 1.0)
# float32 storage of 255 * mean / std is exact to ~1e-5; anything larger is another normalisation.
_MEANSHIFT_ATOL = 1e-3


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in np.asarray(values, np.float64).ravel()) + ")"


def meanshift_tensors(sign: float, form: str = "grouped") -> tuple[np.ndarray, np.ndarray]:
    """The MeanShift (weight, bias) our models' constant corresponds to, as the PyTorch code builds them:
    form "grouped" (the AdaDSR release, Conv2d(3, 3, 1, groups=3)): weight [3, 1, 1, 1] = 1 / std;
    form "full" (EDSR-PyTorch, RCAN, Conv2d(3, 3, 1)): weight [3, 3, 1, 1] = identity / std.
    bias [3] = sign * 255 * mean / std (sign -1 at the head, +1 at the tail)."""
    std = np.asarray(RGB_STD, np.float64)
    mean = np.asarray(DIV2K_RGB_MEAN, np.float64) / RGB_RANGE  # the constant is in 0..255 units
    if form == "grouped":
        weight = (1.0 / std).reshape(3, 1, 1, 1)
    elif form == "full":
        weight = (np.eye(3) / std[:, None]).reshape(3, 3, 1, 1)
    else:
        raise ValueError(f"form must be 'grouped' or 'full', got {form!r}")
    return weight, sign * RGB_RANGE * mean / std


def _check_meanshift(
    state: Mapping[str, np.ndarray], layout: str, source: str
) -> tuple[list[str], list[str]]:
    """Check the MeanShift tensors against our constant; returns (keys consumed, notes).

    Both PyTorch forms are accepted in every layout: grouped (weight [3, 1, 1, 1]) and full (weight
    [3, 3, 1, 1], which must be diagonal). From weight and bias the file's std (1 / diagonal) and mean
    (sign * bias * std / 255) are read back and compared with ours; another normalisation is refused
    with both sets of numbers.
    """
    sub, add = _meanshift_prefixes(layout)
    used, notes = [], []
    for prefix, sign, where in ((sub, -1.0, "head"), (add, 1.0, "tail")):
        wkey, bkey = f"{prefix}.weight", f"{prefix}.bias"
        weight, bias = state.get(wkey), state.get(bkey)
        if weight is None and bias is None:
            continue
        for key, value in ((wkey, weight), (bkey, bias)):
            if value is None:
                raise ConversionError(f"{source}: MeanShift '{prefix}' has no '{key}'")
            if not _is_float(value):
                raise ConversionError(f"{source}: MeanShift '{key}' has dtype {value.dtype}, expected float")
        form, diag = _meanshift_diagonal(wkey, weight.astype(np.float64), source)
        if bias.shape != (3,):
            raise ConversionError(f"{source}: MeanShift '{bkey}' has shape {bias.shape}, expected (3,)")
        _compare_meanshift(f"'{prefix}' ({where}, {form})", sign, form, diag, bias.astype(np.float64), source)
        used += [wkey, bkey]
        notes.append(f"MeanShift '{prefix}' ({form}) equals our constant: DIV2K mean, std 1 (dropped)")
    return used, notes


def _meanshift_diagonal(wkey: str, weight: np.ndarray, source: str) -> tuple[str, np.ndarray]:
    """(form, the per-channel scale [3]) of a MeanShift weight: grouped [3, 1, 1, 1] or a diagonal full
    [3, 3, 1, 1] (off-diagonal entries would mix colour channels)."""
    if weight.shape == (3, 1, 1, 1):
        return "grouped", weight.reshape(3)
    if weight.shape != (3, 3, 1, 1):
        raise ConversionError(
            f"{source}: MeanShift '{wkey}' has shape {weight.shape}, expected (3, 1, 1, 1) (grouped, "
            "the AdaDSR release) or (3, 3, 1, 1) (full, EDSR-PyTorch/RCAN)"
        )
    matrix = weight[:, :, 0, 0]
    diag = np.diag(matrix).copy()
    off = matrix - np.diag(diag)
    if np.abs(off).max() > _MEANSHIFT_ATOL:
        raise ConversionError(
            f"{source}: MeanShift '{wkey}' is not diagonal (largest off-diagonal entry "
            f"{np.abs(off).max():.4g}): it mixes colour channels, which a mean/std shift never does"
        )
    return "full", diag


def _compare_meanshift(
    what: str, sign: float, form: str, diag: np.ndarray, bias: np.ndarray, source: str
) -> None:
    """Refuse a MeanShift (weight diagonal [3], bias [3], float64) that is not our constant, giving the
    mean and std it encodes next to ours. `what` names it in the message: "'head.0' (head, grouped)"."""
    want_w, want_b = meanshift_tensors(sign, form)
    want_diag = want_w.reshape(3) if form == "grouped" else np.diag(want_w[:, :, 0, 0])
    if (
        np.all(np.isfinite(diag))
        and np.all(np.isfinite(bias))
        and np.allclose(diag, want_diag, rtol=0, atol=_MEANSHIFT_ATOL)
        and np.allclose(bias, want_b, rtol=0, atol=_MEANSHIFT_ATOL)
    ):
        return
    want_mean = np.asarray(DIV2K_RGB_MEAN, np.float64) / RGB_RANGE
    want_std = np.asarray(RGB_STD, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        std = 1.0 / diag
        mean = sign * bias * std / RGB_RANGE
    raise ConversionError(
        f"{source}: MeanShift {what} encodes mean {_fmt(mean)} and std "
        f"{_fmt(std)} at pixel range {RGB_RANGE:g} (weight diagonal {_fmt(diag)}, bias "
        f"{_fmt(bias)}), but this model uses mean {_fmt(want_mean)} (DIV2K) and std "
        f"{_fmt(want_std)} (weight diagonal {_fmt(want_diag)}, bias {_fmt(want_b)}): the "
        "checkpoint was trained with another normalisation (e.g. rgb_range 1 or another "
        "mean/std) and would give wrong colours"
    )


def _is_float(array: np.ndarray) -> bool:
    """float16/32/64 or bfloat16 (an ml_dtypes type numpy does not class as floating)."""
    return np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"


def _listing(title: str, items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {title} ({len(items)}): {shown}{more}"


# --------------------------------------------------------------------------------------------------
# Conversion


def _default_res_scale(layout: str, sizes: Mapping[str, int]) -> float:
    if layout == "edsr":
        # Upstream EDSR (256 features) trains with res_scale 0.1; EDSR-baseline (64) with 1.
        return 0.1 if sizes.get("num_features") == 256 else 1.0
    return 1.0  # the AdaDSR release (0.1 folded into its weights) and RCAN


def _check_layout(state: Mapping[str, np.ndarray], layout: str, source: str) -> str:
    """The layout to read the file with: `layout`, or the one detected from the keys when "auto"."""
    if layout == "auto":
        layout = detect_layout(state, source)
    if layout not in LAYOUTS:
        raise ConversionError(f"{source}: layout must be one of {LAYOUTS} or 'auto', got {layout!r}")
    return layout


def _check_model_fits(
    state: Mapping[str, np.ndarray],
    layout: str,
    model_name: str,
    preset: ModelConfig,
    backbone_only: bool,
    source: str,
) -> None:
    """Refuse a file of another backbone (EDSR vs RCAN) and an adaptive model from a file without adapter
    (unless backbone_only)."""
    want_backbone = "edsr" if layout == "edsr" else "rcan" if layout == "rcan" else preset.backbone
    if preset.backbone != want_backbone:
        raise ConversionError(
            f"{source}: the file has {layout.upper()} keys, but model {model_name!r} is an "
            f"{preset.backbone.upper()}; pick an {want_backbone} model"
        )
    if layout == "adadsr":
        has_groups = any(k.startswith("group0.") for k in state)
        if has_groups != (preset.backbone == "rcan"):
            kind = "AdaRCAN/RCAN" if has_groups else "AdaEDSR/EDSR"
            raise ConversionError(
                f"{source}: the file is an {kind} release checkpoint, but model {model_name!r} is an "
                f"{preset.backbone.upper()}"
            )
    if layout != "adadsr" and preset.adaptive and not backbone_only:
        raise ConversionError(
            f"{source}: {layout.upper()} checkpoints hold no adapter, but model {model_name!r} needs one; "
            "pass --backbone-only to load the backbone and keep a freshly initialised adapter"
        )


def _check_scale(
    state: Mapping[str, np.ndarray], layout: str, scale: int, file_scale: int | None, source: str
) -> None:
    """Refuse a file whose 'scale' entry or upsampler says another factor than `scale`."""
    for found, what in ((file_scale, "its 'scale' entry"), (infer_scale(state, layout), "its upsampler")):
        if found is not None and found != scale:
            raise ScaleMismatchError(
                f"{source}: the checkpoint is for x{found} ({what}), but --scale is {scale}; "
                f"convert it with --scale {found}"
            )


def _overrides(
    preset: ModelConfig,
    layout: str,
    sizes: Mapping[str, int],
    infer_size: bool,
    res_scale: float | None,
) -> tuple[dict[str, Any], list[str]]:
    """(overrides of `preset` that build the file's model, notes): the file's sizes where they differ
    (infer_size), res_scale, and for the adaptive release how its adapter takes the depth."""
    overrides: dict[str, Any] = {}
    notes: list[str] = []
    if infer_size:
        for field, value in sizes.items():
            if field == "adapter_features" and not preset.adaptive:
                continue
            if field == "num_groups" and preset.backbone == "edsr":
                continue
            if getattr(preset, field) != value:
                overrides[field] = value
        if overrides:
            notes.append(f"sizes taken from the file: {overrides}")
    overrides["res_scale"] = float(res_scale) if res_scale is not None else _default_res_scale(layout, sizes)
    if preset.adaptive and layout == "adadsr":
        # The AdaEDSR release scales the adapter output by d, the AdaRCAN release the first conv weight.
        overrides["depth_input"] = "output" if preset.backbone == "edsr" else "weight"
    return overrides, notes


def _build_model(
    model_name: str, scale: int, overrides: Mapping[str, Any], *, backbone_only: bool, seed: int, source: str
) -> AdaDSR:
    """The model to fill: abstract (shapes only), but for backbone_only with a real fresh adapter (seed)."""

    def build() -> AdaDSR:
        return create_model(model_name, scale=scale, rngs=nnx.Rngs(seed), **overrides)

    try:
        # Every parameter comes from the file, so an abstract model (shapes only) avoids running the
        # random initialisers (slow to compile on CPU).
        model = nnx.eval_shape(build)
    except (ValueError, ZeroDivisionError) as err:  # sizes read off a malformed file (--infer-size)
        raise ConversionError(f"{source}: cannot build model {model_name!r} with {overrides}: {err}") from err
    if backbone_only and model.config.adaptive:
        cfg = model.config
        model.adapter = Adapter(
            cfg.num_features,
            cfg.adapter_features,
            cfg.num_maps,
            depth_input=cfg.depth_input,
            rngs=nnx.Rngs(seed),
        )
    return model


@dataclasses.dataclass
class _KeyMap:
    """What mapping the file's keys through the key table found (lists in the order of the table)."""

    used: list[str]  # file keys something reads (MeanShift and the table's), present in the file or not
    converted: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict)  # path -> ours, float32
    missing: list[str] = dataclasses.field(default_factory=list)
    misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(default_factory=list)
    bad_dtype: list[str] = dataclasses.field(default_factory=list)  # "key (dtype)"
    nonfinite: list[str] = dataclasses.field(default_factory=list)


def _map_keys(
    state: Mapping[str, np.ndarray], model: AdaDSR, layout: str, *, with_adapter: bool, used: list[str]
) -> _KeyMap:
    """Read every parameter of `model` (the adapter only if with_adapter) from the file through the key
    table, in our layout and stacked; a parameter with any bad piece is left out of `converted`."""
    found = _KeyMap(used=list(used))
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for entry in key_table(model, layout, with_adapter=with_adapter, file_keys=frozenset(state)):
        param_shape = tuple(params[entry.path].get_raw_value().shape)
        stack_shape = entry.keys.shape
        file_shape = _file_shape(entry.kind, param_shape[len(stack_shape) :])
        pieces = []
        for index in np.ndindex(*stack_shape):
            value = _read_tensor(state, entry.keys[index], file_shape, found)
            if value is not None:
                pieces.append(_to_ours(entry.kind, value))
        if len(pieces) == int(np.prod(stack_shape, dtype=int)):
            found.converted[entry.path] = np.stack(pieces).reshape(param_shape) if stack_shape else pieces[0]
    return found


def _read_tensor(
    state: Mapping[str, np.ndarray], key: str, file_shape: tuple[int, ...], found: _KeyMap
) -> np.ndarray | None:
    """state[key] as float32 when it exists with `file_shape` and is float (else None, the problem noted
    in `found`); a NaN/Inf tensor is returned and noted as non-finite."""
    found.used.append(key)
    if key not in state:
        found.missing.append(key)
    elif tuple(state[key].shape) != file_shape:
        found.misshaped.append((key, tuple(state[key].shape), file_shape))
    elif not _is_float(state[key]):
        found.bad_dtype.append(f"{key} ({state[key].dtype})")
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32 -> inf, reported as non-finite
            value = np.asarray(state[key], dtype=np.float32)
        if not np.all(np.isfinite(value)):
            found.nonfinite.append(key)  # NaN/Inf in the file, or a float64 value beyond float32
        return value
    return None


def _report_mismatches(
    found: _KeyMap,
    state: Mapping[str, np.ndarray],
    model: AdaDSR,
    *,
    model_name: str,
    scale: int,
    layout: str,
    sizes: Mapping[str, int],
    infer_size: bool,
    source: str,
) -> None:
    """Raise CheckpointMismatchError naming missing, unexpected (read by nothing) and mis-shaped keys,
    with a hint when the file looks like another size or has an adapter; then ConversionError for
    non-float or non-finite tensors."""
    used = set(found.used)
    unexpected = [k for k in state if k not in used]
    missing, misshaped = found.missing, found.misshaped
    if missing or unexpected or misshaped:
        message = (
            f"{source}: the checkpoint does not fit model {model_name!r} (x{scale}, {layout} layout):"
            + (_listing("missing keys", missing) if missing else "")
            + (_listing("unexpected keys", unexpected) if unexpected else "")
            + (
                _listing(
                    "mis-shaped keys", [f"{k} file {tuple(f)} != model {tuple(w)}" for k, f, w in misshaped]
                )
                if misshaped
                else ""
            )
        )
        cfg = model.config
        differ = {
            k: v
            for k, v in sizes.items()
            if hasattr(cfg, k) and getattr(cfg, k) != v and (k != "adapter_features" or cfg.adaptive)
        }
        if unexpected and not cfg.adaptive and all(k.startswith("predictor.") for k in unexpected):
            message += "\n  the file has an adapter (predictor.*): convert it into adaedsr/adarcan"
        if differ and not infer_size:
            message += f"\n  the file looks like {differ}: pass --infer-size to adopt the file's sizes"
        raise CheckpointMismatchError(message, missing, unexpected, misshaped)
    if found.bad_dtype:
        raise ConversionError(
            f"{source}: parameters must be floating-point tensors:"
            + _listing("non-float keys", found.bad_dtype)
        )
    if found.nonfinite:
        raise ConversionError(
            f"{source}: the checkpoint holds NaN or infinite weights (a diverged or damaged model):"
            + _listing("non-finite keys", found.nonfinite)
        )


def _set_params(
    model: AdaDSR, converted: Mapping[tuple, np.ndarray], *, backbone_only: bool, source: str
) -> None:
    """Write the converted arrays into `model` (each cast to its parameter's dtype). backbone_only: the
    fresh adapter stays and the rest comes from the file, merged by checkpoint.with_backbone (the same
    merge as training's init_from)."""
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    values = {}
    for path, value in converted.items():
        old = params[path].get_raw_value()  # an array, or a ShapeDtypeStruct in an abstract model
        if tuple(old.shape) != tuple(value.shape):  # the key table and the model disagree: a bug here
            raise AssertionError(f"{path}: converted shape {value.shape} != parameter shape {old.shape}")
        values[path] = jnp.asarray(value, dtype=old.dtype)
    loaded = nnx.traversals.unflatten_mapping(values)
    if backbone_only and model.config.adaptive:
        # The key table covers the whole backbone, so a ValueError here is a bug of this module.
        loaded = with_backbone(nnx.to_pure_dict(nnx.state(model, nnx.Param)), loaded, source)
    loaded = nnx.traversals.flatten_mapping(loaded)
    # Every parameter must have a source (all of them unless the adapter keeps its initialisation).
    unmapped = set(params) - set(loaded)
    assert not unmapped, f"parameters without a source key: {sorted(unmapped)}"
    for path, value in loaded.items():
        params[path].set_value(value)


def convert_state_dict(
    state: Mapping[str, np.ndarray],
    *,
    model_name: str,
    scale: int,
    layout: str = "auto",
    file_scale: int | None = None,
    infer_size: bool = False,
    res_scale: float | None = None,
    backbone_only: bool = False,
    seed: int = 0,
    source: str = "<state_dict>",
) -> Conversion:
    """Build `model_name` at `scale` with the weights of a PyTorch state dict (numpy arrays).

    layout: "auto" | "adadsr" | "edsr" | "rcan". infer_size: take num_blocks/num_features/... from the
    file instead of the preset. res_scale: override the layout's default. backbone_only: for an adaptive
    model, load only the backbone and keep the adapter's fresh initialisation (seed).
    Raises ScaleMismatchError, CheckpointMismatchError (missing/unexpected/mis-shaped keys) or
    ConversionError.
    """
    state = dict(state)
    layout = _check_layout(state, layout, source)
    preset = get_model_config(model_name)
    _check_model_fits(state, layout, model_name, preset, backbone_only, source)
    _check_scale(state, layout, scale, file_scale, source)
    sizes = infer_sizes(state, layout)
    overrides, notes = _overrides(preset, layout, sizes, infer_size, res_scale)
    model = _build_model(model_name, scale, overrides, backbone_only=backbone_only, seed=seed, source=source)
    used, meanshift_notes = _check_meanshift(state, layout, source)
    notes += meanshift_notes
    found = _map_keys(state, model, layout, with_adapter=not backbone_only, used=used)
    _report_mismatches(
        found,
        state,
        model,
        model_name=model_name,
        scale=scale,
        layout=layout,
        sizes=sizes,
        infer_size=infer_size,
        source=source,
    )
    _set_params(model, found.converted, backbone_only=backbone_only, source=source)
    if backbone_only and model.config.adaptive:
        notes.append(f"adapter left at its fresh initialisation (seed {seed})")
    notes.append(f"res_scale {overrides['res_scale']}")
    return Conversion(model, model_name, scale, overrides, layout, len(set(found.used)), notes)


def convert_checkpoint(path: str | os.PathLike, *, model_name: str, scale: int, **kwargs: Any) -> Conversion:
    """Read a torch.save file (see torch_checkpoint) and convert it; kwargs as convert_state_dict.

    Raises FileNotFoundError, CheckpointFormatError (unreadable, damaged or hostile file) or
    ConversionError (readable, but not a checkpoint of this model), each naming the file."""
    source = os.fspath(path)
    state, file_scale = extract_state_dict(load_torch_checkpoint(source), source)
    return convert_state_dict(
        state, model_name=model_name, scale=scale, file_scale=file_scale, source=source, **kwargs
    )


# --------------------------------------------------------------------------------------------------
# Command line
