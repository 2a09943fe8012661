"""The budgets a user writes on the command line (MACs: "50%", "0.5", "12.5G"; time: "50ms"), parsed
without importing jax, so evaluate.py and upscale refuse a bad one before any model loads."""

from __future__ import annotations

import math
import os
from pathlib import Path

from adadsr_jax.cli import UserError


def parse_budget(text: str) -> tuple[str, float]:
    """Parse a budget: "0.5" or "50%" (fraction of dense MACs) or "12.5G" (GMACs per image).

    Returns ("fraction", f) with 0 < f <= 1 or ("gmacs", g) with g > 0.
    """
    t = str(text).strip().lower().replace("gmacs", "g")
    try:
        if t.endswith("%"):
            kind, value = "fraction", float(t[:-1]) / 100.0
        elif t.endswith("g"):
            kind, value = "gmacs", float(t[:-1])
        else:
            kind, value = "fraction", float(t)
    except ValueError:
        raise ValueError(
            f"bad budget {text!r}: use a fraction of dense MACs (0.5 or 50%) or GMACs per image (12.5G)"
        ) from None
    if not value > 0 or (kind == "fraction" and value > 1):
        raise ValueError(f"bad budget {text!r}: a fraction must be in (0, 1], GMACs must be > 0")
    return kind, value


def parse_budget_ms(text: str) -> float:
    """A time budget per image in ms: "50", "50ms" or "12.5 ms" -> float > 0 (finite)."""
    t = str(text).strip().lower().removesuffix("ms").strip()
    try:
        value = float(t)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(
            f"bad --budget-ms {text!r}: expected a positive number of milliseconds per image (50 or 50ms)"
        )
    return value


def check_cache_path(cache_path: str | os.PathLike | None) -> None:
    """The command lines' --cost-model check, made before a model loads: a file path, not a folder."""
    if cache_path and Path(cache_path).is_dir():
        raise UserError(cache_path, "--cost-model is a folder", "give a file path, e.g. cost_model.json")
