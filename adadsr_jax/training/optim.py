"""Optimizer and learning-rate schedule from the `optimizer` section of a run config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax


def make_schedule(cfg: Mapping[str, Any]) -> optax.Schedule:
    """Learning rate as a function of the step.

    "step" (the release): lr * decay_factor ** floor(step / decay_steps), i.e. halved every 200k
    iterations by default; "constant"; "cosine": cosine decay from lr to 0 over decay_steps.
    An optional linear warm-up of warmup_steps precedes any of them.
    """
    lr = float(cfg["lr"])
    kind = cfg.get("schedule", "step")
    if kind == "step":
        schedule = optax.exponential_decay(
            lr,
            transition_steps=int(cfg["decay_steps"]),
            decay_rate=float(cfg["decay_factor"]),
            staircase=True,
        )
    elif kind == "constant":
        schedule = optax.constant_schedule(lr)
    elif kind == "cosine":
        schedule = optax.cosine_decay_schedule(lr, decay_steps=int(cfg["decay_steps"]))
    else:
        raise ValueError(f"optimizer.schedule must be 'step', 'constant' or 'cosine', got {kind!r}")
    warmup = int(cfg.get("warmup_steps", 0) or 0)
    if warmup > 0:
        schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
    return schedule


def make_optimizer(cfg: Mapping[str, Any]) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax transformation (optionally clipping the global gradient norm first) and its schedule.

    cfg.name: "adam" (release: b1 0.9, b2 0.999, eps 1e-8), "adamw" (adds weight_decay) or "sgd"
    (momentum b1). cfg.grad_clip_norm > 0 clips the global norm before the update.
    """
    schedule = make_schedule(cfg)
    name = cfg.get("name", "adam")
    b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))
    if name == "adam":
        tx = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    elif name == "adamw":
        tx = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=float(cfg.get("weight_decay", 0.0)))
    elif name == "sgd":
        tx = optax.sgd(schedule, momentum=b1 or None)
    else:
        raise ValueError(f"optimizer.name must be 'adam', 'adamw' or 'sgd', got {name!r}")
    clip = float(cfg.get("grad_clip_norm", 0.0) or 0.0)
    if clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx, schedule
