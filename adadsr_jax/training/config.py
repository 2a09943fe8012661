"""Run configs: the base ConfigDict every file in configs/ starts from, and its resolution/checking.

Sections:
  model:     name (a preset of adadsr_jax.models), scale, overrides (ModelConfig fields, e.g. num_blocks)
  data:      kind ("demo" | "folder" | "tfds"), root (folder), data_dir (tfds), patch_size (LR), batch_size
             (GLOBAL, over all devices and hosts), prefetch, augment, valid_images (0: all),
             valid_lr_crop (0: whole images; else centre-crop the LR to at most this side)
  optimizer: name ("adam" | "adamw" | "sgd"), lr, b1, b2, eps, weight_decay, schedule ("step" | "constant"
             | "cosine"), decay_steps, decay_factor, warmup_steps, grad_clip_norm (0: off)
  train:     steps, seed, log_every, eval_every, checkpoint_every, keep_checkpoints, depth_range (None:
             the model's train_depth_range), depth_loss_weight (None: the model's), eval_depths (None:
             D/4, D/2, 3D/4, D; D for plain backbones), backbone_warmup_steps (adaptive models trained
             from scratch: the first N steps train the backbone alone, every mask one, the adapter
             frozen), progress_bar
  init_from: "" or a training workdir / inference checkpoint whose backbone initialises the model (the
             adapter stays freshly initialised)
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from adadsr_jax.cli import UserError, require_dir, require_file
from adadsr_jax.models import get_model_config


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the AdaDSR release (SPEC 5): Adam(0.9, 0.999), lr 1e-4 halved every 200k steps,
    batch 16 of 48x48 LR patches, 800k steps."""
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {"name": "adaedsr", "scale": 2, "overrides": ml_collections.ConfigDict()}
    )
    c.data = ml_collections.ConfigDict(
        {
            "kind": "demo",
            "root": "",
            "data_dir": "",
            "patch_size": 48,
            "batch_size": 16,
            "prefetch": 2,
            "augment": True,
            "valid_images": 0,
            "valid_lr_crop": 0,
        }
    )
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "lr": 1e-4,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "schedule": "step",
            "decay_steps": 200_000,
            "decay_factor": 0.5,
            "warmup_steps": 0,
            "grad_clip_norm": 0.0,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "steps": 800_000,
            "seed": 0,
            "log_every": 100,
            "eval_every": 10_000,
            "checkpoint_every": 10_000,
            "keep_checkpoints": 3,
            "depth_range": placeholder(tuple),
            "depth_loss_weight": placeholder(float),
            "eval_depths": placeholder(tuple),
            "backbone_warmup_steps": 0,
            "progress_bar": True,
        }
    )
    c.init_from = ""
    return c


def _unknown_keys(cfg: Any, ref: Any, prefix: str = "") -> list[str]:
    out = []
    for key in cfg:
        name = f"{prefix}{key}"
        if key not in ref:
            out.append(name)
        elif name != "model.overrides" and isinstance(ref[key], ml_collections.ConfigDict | dict):
            out += _unknown_keys(cfg[key], ref[key], f"{name}.")
    return out


def default_eval_depths(model_cfg) -> tuple[float, ...]:
    """D/4, D/2, 3D/4, D for an adaptive model (the release's {8,16,24,32} for D=32), D for a plain one."""
    d = float(model_cfg.max_depth)
    if not model_cfg.adaptive:
        return (d,)
    return tuple(round(d * q, 3) for q in (0.25, 0.5, 0.75, 1.0))


def resolve_config(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """A plain dict with every default filled in (depth range, depth-loss weight, eval depths from the
    model preset), checked: unknown fields, a bad model name/override or impossible values raise
    ValueError naming the field. This is what a run saves as workdir/config.json."""
    cfg = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    unknown = _unknown_keys(cfg, base_config().to_dict())
    if unknown:
        raise ValueError(f"unknown config fields {unknown} (model.overrides is the only open section)")
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in cfg.items()}
    model = cfg["model"] = dict(cfg["model"])
    model["overrides"] = dict(model.get("overrides") or {})
    model["scale"] = int(model["scale"])
    if model["scale"] not in (2, 3, 4, 8):
        raise ValueError(f"model.scale must be 2, 3, 4 or 8, got {model['scale']}")
    mcfg = get_model_config(model["name"], **dict(model["overrides"]))
    train = cfg["train"]
    if train.get("depth_range") is None:
        train["depth_range"] = list(mcfg.train_depth_range)
    train["depth_range"] = [float(v) for v in train["depth_range"]]
    if len(train["depth_range"]) != 2 or train["depth_range"][0] > train["depth_range"][1]:
        raise ValueError(f"train.depth_range must be (lo, hi) with lo <= hi, got {train['depth_range']}")
    if train.get("depth_loss_weight") is None:
        train["depth_loss_weight"] = float(mcfg.depth_loss_weight)
    if train.get("eval_depths") is None:
        train["eval_depths"] = list(default_eval_depths(mcfg))
    train["eval_depths"] = [float(v) for v in train["eval_depths"]]
    for key in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if int(train[key]) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    data = cfg["data"]
    if int(data["batch_size"]) < 1 or int(data["patch_size"]) < 1:
        raise ValueError(f"data.batch_size and data.patch_size must be >= 1, got {data}")
    return cfg


def parse_config_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """Parse the `:<arg>` of `--config configs/<file>.py:<arg>`: "scale=4", "4" (a bare scale) or
    "scale=3,model=adarcan_small"; values are ints when they look like ints. Unknown keys raise."""
    out = dict(defaults)
    if not arg:
        return out
    for item in str(arg).split(","):
        key, sep, value = item.partition("=")
        if not sep:
            key, value = "scale", key
        key, value = key.strip(), value.strip()
        if key not in out:
            raise ValueError(f"config argument {key!r} is not one of {sorted(out)} (got {arg!r})")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def paper_config(model_name: str, arg: str | None) -> ml_collections.ConfigDict:
    """A paper preset (release training defaults) for `model_name` at the scale given by `arg`
    ("scale=4"; default x2) on DIV2K folders (set --config.data.root)."""
    opts = parse_config_arg(arg, scale=2)
    c = base_config()
    c.model.name = model_name
    c.model.scale = int(opts["scale"])
    c.data.kind = "folder"
    # Validation on 10 DIV2K valid images, centre-cropped, keeps a 10k-step eval short on one GPU.
    c.data.valid_images = 10
    c.data.valid_lr_crop = 256
    return c


def config_file_path(spec: str) -> Path:
    """The file of `--config <file>.py[:<arg>]`, checked before ml_collections loads it: an existing,
    non-empty file that compiles. Raises UserError naming the file (ml_collections would raise a chained
    OSError, or a traceback for a syntax error, instead)."""
    path = require_file(spec.split(":", 1)[0], "--config", what="config file")
    try:
        tree = ast.parse(path.read_bytes(), str(path))
    except SyntaxError as e:
        raise UserError(path, f"line {e.lineno}: {e.msg} (--config)") from e
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(path, f"not a Python config file ({e}) (--config)") from e
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    if "get_config" not in names and "*" not in names:
        raise UserError(path, "defines no get_config() (--config)", "see configs/*.py for the shape of one")
    return path


def check_config_paths(cfg: dict[str, Any]) -> None:
    """The paths a resolved config names must exist before training builds anything: data.root (kind
    "folder"), data.data_dir (kind "tfds"), init_from when set. Raises UserError naming the field and the
    path."""
    data = cfg["data"]
    field = {"folder": "root", "tfds": "data_dir"}.get(data["kind"])
    if field is not None:
        value = data[field]
        if not value:
            kind = data["kind"]
            raise UserError(f"--config.data.{field}", f"data.kind is {kind!r} but data.{field} is empty")
        require_dir(value, f"data.{field}", what="data folder")
    if cfg.get("init_from"):
        require_dir(cfg["init_from"], "init_from", what="checkpoint directory")
