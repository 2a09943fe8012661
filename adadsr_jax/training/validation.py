"""Validation during training: PSNR-Y and mean executed depth at fixed desired depths on held-out images."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from adadsr_jax.data import make_source, upscale
from adadsr_jax.metrics import mean_over_images, psnr


@dataclasses.dataclass
class ValidationSet:
    """Held-out LR/HR pairs (uint8 [h, w, 3] / [s*h, s*w, 3]) and the bicubic baseline's PSNR-Y on them."""

    names: list[str]
    lrs: list[np.ndarray]
    hrs: list[np.ndarray]
    scale: int
    bicubic_psnr: float


def source_kwargs(data_cfg: Mapping[str, Any], *, scale: int, split: str) -> dict[str, Any]:
    """Arguments of `make_source` for the config's data kind."""
    kind = data_cfg["kind"]
    kwargs: dict[str, Any] = {"scale": scale, "split": split}
    if kind in ("folder", "div2k"):
        if not data_cfg.get("root"):
            raise ValueError(f"data.kind={kind!r} needs data.root (the folder holding DIV2K_train_HR)")
        kwargs["root"] = data_cfg["root"]
    elif kind == "tfds":
        if not data_cfg.get("data_dir"):
            raise ValueError("data.kind='tfds' needs data.data_dir (a tfds data_dir with div2k prepared)")
        kwargs["data_dir"] = data_cfg["data_dir"]
    return kwargs


def centre_crop_pair(lr: np.ndarray, hr: np.ndarray, scale: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop LR to at most size x size and HR to the matching scale*size region."""
    h, w = lr.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y, x = (h - ch) // 2, (w - cw) // 2
    return lr[y : y + ch, x : x + cw], hr[scale * y : scale * (y + ch), scale * x : scale * (x + cw)]


def load_validation_set(data_cfg: Mapping[str, Any], *, scale: int) -> ValidationSet:
    """The held-out split of the config's data source ("valid"), limited to data.valid_images images
    (0: all) and centre-cropped to data.valid_lr_crop LR pixels (0: whole images)."""
    source = make_source(data_cfg["kind"], **source_kwargs(data_cfg, scale=scale, split="valid"))
    count = (
        len(source) if not data_cfg.get("valid_images") else min(len(source), int(data_cfg["valid_images"]))
    )
    names, lrs, hrs = [], [], []
    for i in range(count):
        pair = source[i]
        lr, hr = pair.lr, pair.hr
        if data_cfg.get("valid_lr_crop"):
            lr, hr = centre_crop_pair(lr, hr, scale, int(data_cfg["valid_lr_crop"]))
        names.append(pair.name)
        lrs.append(np.ascontiguousarray(lr))
        hrs.append(np.ascontiguousarray(hr))
    if not names:
        raise ValueError(f"the validation split of data.kind={data_cfg['kind']!r} has no images")
    bicubic = mean_over_images(
        [psnr(upscale(lr, scale), hr, scale=scale) for lr, hr in zip(lrs, hrs, strict=True)]
    )
    return ValidationSet(names, lrs, hrs, scale, bicubic)


def depth_tag(d: float) -> str:
    return f"d{d:g}"


def validate(
    eval_fn: Callable[..., tuple[Any, Any]], params: Any, vset: ValidationSet, depths: Sequence[float]
) -> dict[str, float]:
    """PSNR-Y (mean over images) and mean executed depth per desired depth, plus their summaries.

    Returns {"psnr_d8": dB, "mean_depth_d8": blocks, ..., "val_psnr": mean PSNR over the depths (what
    "best" checkpoints rank by), "bicubic_psnr": dB}.
    """
    out: dict[str, float] = {}
    for d in depths:
        values, depth_means = [], []
        for lr, hr in zip(vset.lrs, vset.hrs, strict=True):
            sr, mean_depth = eval_fn(params, lr[None], np.float32(d))
            values.append(psnr(np.asarray(sr)[0], hr, scale=vset.scale))
            depth_means.append(float(np.asarray(mean_depth)[0]))
        out[f"psnr_{depth_tag(d)}"] = mean_over_images(values)
        out[f"mean_depth_{depth_tag(d)}"] = float(np.mean(depth_means))
    out["val_psnr"] = float(np.mean([out[f"psnr_{depth_tag(d)}"] for d in depths]))
    out["bicubic_psnr"] = vset.bicubic_psnr
    return out
