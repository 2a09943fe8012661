"""Validation during training: the evaluation package's depth sweep on the held-out split.

The numbers are the ones `evaluate.py` reports (same Predictor, same protocol), named
`val/<set>/<metric>/<setting>` (e.g. `val/demo/psnr_y/d8`, `val/demo/mean_depth/d2`,
`val/demo/psnr_y/bicubic`), plus `val_psnr`, the mean PSNR-Y over the desired depths, by which the
"best" checkpoint is ranked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from adadsr_jax.checkpoint import BEST_METRIC
from adadsr_jax.data import ImagePair, make_source
from adadsr_jax.evaluation.inference import Predictor
from adadsr_jax.evaluation.runner import evaluate_set
from adadsr_jax.training.config import DataConfig


@dataclasses.dataclass
class ValidationSet:
    """Held-out LR/HR pairs (uint8 [h, w, 3] / [s*h, s*w, 3]) under the name their metrics carry."""

    dataset: str
    pairs: list[ImagePair]

    @property
    def names(self) -> list[str]:
        return [pair.name for pair in self.pairs]


def source_kwargs(data: DataConfig, *, scale: int, split: str) -> dict[str, Any]:
    """Arguments of `make_source` for the config's data kind."""
    kwargs: dict[str, Any] = {"scale": scale, "split": split}
    if data.kind == "folder":
        if not data.root:
            raise ValueError("data.kind='folder' needs data.root (the folder holding DIV2K_train_HR)")
        kwargs["root"] = data.root
    elif data.kind == "tfds":
        if not data.data_dir:
            raise ValueError("data.kind='tfds' needs data.data_dir (a tfds data_dir with div2k prepared)")
        kwargs["data_dir"] = data.data_dir
    return kwargs


def centre_crop_pair(lr: np.ndarray, hr: np.ndarray, scale: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop LR to at most size x size and HR to the matching scale*size region."""
    h, w = lr.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y, x = (h - ch) // 2, (w - cw) // 2
    return lr[y : y + ch, x : x + cw], hr[scale * y : scale * (y + ch), scale * x : scale * (x + cw)]


def load_validation_set(data: DataConfig, *, scale: int) -> ValidationSet:
    """The held-out split of the config's data source ("valid"), limited to data.valid_images images
    (0: all) and centre-cropped to data.valid_lr_crop LR pixels (0: whole images)."""
    source = make_source(data.kind, **source_kwargs(data, scale=scale, split="valid"))
    count = min(len(source), data.valid_images) if data.valid_images else len(source)
    pairs = []
    for i in range(count):
        pair = source[i]
        lr, hr = pair.lr, pair.hr
        if data.valid_lr_crop:
            lr, hr = centre_crop_pair(lr, hr, scale, data.valid_lr_crop)
        pairs.append(ImagePair(pair.name, np.ascontiguousarray(lr), np.ascontiguousarray(hr)))
    if not pairs:
        raise ValueError(f"the validation split of data.kind={data.kind!r} has no images")
    return ValidationSet("DIV2K" if data.kind in ("folder", "tfds") else data.kind, pairs)


def validation_metrics(
    predictor: Predictor, vset: ValidationSet, depths: Sequence[float]
) -> dict[str, float]:
    """The (name, value) pairs of `evaluate_set` at `depths` with the bicubic row, as a dict, plus
    BEST_METRIC (the mean over the depths of the per-set mean PSNR-Y)."""
    runs = evaluate_set(
        predictor,
        vset.pairs,
        dataset=vset.dataset,
        model_label="model",
        depths=depths,
        repeats=0,
        progress=False,
    )
    values = dict(pair for run in runs for pair in run.metric_pairs("val"))
    values[BEST_METRIC] = float(np.mean([run.mean()["psnr_y"] for run in runs if run.method == "model"]))
    return values


def metric_name(vset: ValidationSet, metric: str, setting: str) -> str:
    """The name `validation_metrics` gives a metric at a setting ("d8", "bicubic")."""
    return f"val/{vset.dataset}/{metric}/{setting}"
