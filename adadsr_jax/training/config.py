"""Run configs: the base ConfigDict every file in configs/ starts from, resolved once into a RunConfig.

A config file's `get_config()` returns an ml_collections ConfigDict (overridable from the command line);
`resolve_config` turns it into frozen dataclasses, one per section, that the rest of training reads.

Sections:
  model:     name (a preset of adadsr_jax.models), scale, overrides (ModelConfig fields, e.g. num_blocks)
  data:      kind ("demo" | "folder" | "tfds"), root (folder), data_dir (tfds), patch_size (LR), batch_size
             (GLOBAL, over all devices and hosts), prefetch, augment, valid_images (0: all),
             valid_lr_crop (0: whole images; else centre-crop the LR to at most this side)
  optimizer: name ("adam" | "adamw" | "sgd"), lr, b1, b2, eps, weight_decay, schedule ("step" | "constant"
             | "cosine"), decay_steps, decay_factor, warmup_steps, grad_clip_norm (0: off)
  train:     steps, seed, log_every, eval_every, checkpoint_every, keep_checkpoints, depth_range (None:
             the method's U(lo, hi), `method_defaults`), depth_loss_weight (None: the method's
             lambda), eval_depths (None: D/4, D/2, 3D/4, D; D for plain backbones),
             backbone_warmup_steps (adaptive models trained from scratch: the first N steps train the
             backbone alone, every mask one, the adapter frozen), progress_bar
  init_from: "" or a training workdir / inference checkpoint whose backbone initialises the model (the
             adapter stays freshly initialised)
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from adadsr_jax.cli import UserError, require_dir, require_file
from adadsr_jax.data.sources import SOURCES
from adadsr_jax.models.config import ModelConfig, get_model_config


def base_config() -> ml_collections.ConfigDict:
    """Defaults of the AdaDSR release (docs/method.md): Adam(0.9, 0.999), lr 1e-4 halved every 200k steps,
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


def method_defaults(model_cfg: ModelConfig) -> tuple[float, tuple[float, float]]:
    """The paper's depth-loss weight lambda and desired-depth range U(lo, hi) for a model: AdaEDSR
    0.01 and U(0, D), AdaRCAN 0.03 and U(0.1, D) (D = 32 and 20 for the paper models); a plain backbone
    has no depth loss (0.0, (0, 0))."""
    if not model_cfg.adaptive:
        return 0.0, (0.0, 0.0)
    d = float(model_cfg.max_depth)
    return (0.01, (0.0, d)) if model_cfg.backbone == "edsr" else (0.03, (0.1, d))


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The model of a run: a preset name, the scale, and ModelConfig fields that replace the preset's."""

    name: str
    scale: int
    overrides: tuple[tuple[str, Any], ...] = ()

    def model_config(self) -> ModelConfig:
        return get_model_config(self.name, **dict(self.overrides))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "overrides": dict(self.overrides)}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    kind: str
    root: str
    data_dir: str
    patch_size: int
    batch_size: int
    prefetch: int
    augment: bool
    valid_images: int
    valid_lr_crop: int


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str
    lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    schedule: str
    decay_steps: int
    decay_factor: float
    warmup_steps: int
    grad_clip_norm: float


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int
    seed: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    depth_range: tuple[float, float]
    depth_loss_weight: float
    eval_depths: tuple[float, ...]
    backbone_warmup_steps: int
    progress_bar: bool


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A resolved run config (every default filled in, every value checked); hashable, so the compiled
    training functions are cached on its sections. `to_dict()` is what a run saves as config.json."""

    model: ModelSection
    data: DataConfig
    optimizer: OptimizerConfig
    train: TrainConfig
    init_from: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        return json.loads(json.dumps(out))  # tuples become lists, as in the saved file


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    """`cls(**values)` with every field converted to its annotated type (int, float, bool, str, tuple)."""
    kwargs = {}
    for field in dataclasses.fields(cls):
        value = values[field.name]
        try:
            if field.type in ("int", "float", "str"):
                value = {"int": int, "float": float, "str": str}[field.type](value)
            elif field.type == "bool":
                value = bool(value)
            elif field.type.startswith("tuple"):
                value = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}.{field.name} must be {field.type}, got {value!r}") from None
        kwargs[field.name] = value
    return cls(**kwargs)


def resolve_config(config: ml_collections.ConfigDict | Mapping[str, Any] | RunConfig) -> RunConfig:
    """The RunConfig of a config file's ConfigDict (or of a saved config.json dict), with every default
    filled in (depth range, depth-loss weight, eval depths from the model) and checked: unknown fields, a
    bad model name/override or impossible values raise ValueError naming the field."""
    if isinstance(config, RunConfig):
        return config
    cfg = (
        config.to_dict() if isinstance(config, ml_collections.ConfigDict) else json.loads(json.dumps(config))
    )
    unknown = _unknown_keys(cfg, base_config().to_dict())
    if unknown:
        raise ValueError(f"unknown config fields {unknown} (model.overrides is the only open section)")
    model_values = cfg["model"]
    overrides = dict(model_values.get("overrides") or {})
    model = ModelSection(
        str(model_values["name"]),
        int(model_values["scale"]),
        tuple(sorted((k, _hashable(v)) for k, v in overrides.items())),
    )
    if model.scale not in (2, 3, 4):
        raise ValueError(f"model.scale must be 2, 3 or 4, got {model.scale}")
    model_cfg = model.model_config()
    train = dict(cfg["train"])
    default_weight, default_range = method_defaults(model_cfg)
    if train.get("depth_range") is None:
        train["depth_range"] = default_range
    if len(train["depth_range"]) != 2 or train["depth_range"][0] > train["depth_range"][1]:
        raise ValueError(f"train.depth_range must be (lo, hi) with lo <= hi, got {train['depth_range']}")
    if train.get("depth_loss_weight") is None:
        train["depth_loss_weight"] = default_weight
    if train.get("eval_depths") is None:
        train["eval_depths"] = model_cfg.default_depths
    train_config = _section(TrainConfig, train, "train")
    for key in ("steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(train_config, key) < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    data = _section(DataConfig, cfg["data"], "data")
    if data.kind not in SOURCES:
        raise ValueError(f"data.kind must be one of {tuple(SOURCES)}, got {data.kind!r}")
    if data.batch_size < 1 or data.patch_size < 1:
        raise ValueError(f"data.batch_size and data.patch_size must be >= 1, got {data}")
    return RunConfig(
        model=model,
        data=data,
        optimizer=_section(OptimizerConfig, cfg["optimizer"], "optimizer"),
        train=train_config,
        init_from=str(cfg.get("init_from") or ""),
    )


def parse_config_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """Parse the `:<arg>` of `--config configs/<file>.py:<arg>`: "scale=4", "4" (a bare scale) or
    "scale=3,<key>=<value>" for any key given in `defaults`; values are ints when they look like ints.
    Unknown keys raise, e.g. parse_config_arg("scale=4", scale=2) == {"scale": 4}."""
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


def check_config_paths(cfg: RunConfig) -> None:
    """The paths a resolved config names must exist before training builds anything: data.root (kind
    "folder"), data.data_dir (kind "tfds"), init_from when set. Raises UserError naming the field and the
    path."""
    data = cfg.data
    field = {"folder": "root", "tfds": "data_dir"}.get(data.kind)
    if field is not None:
        value = getattr(data, field)
        if not value:
            raise UserError(f"--config.data.{field}", f"data.kind is {data.kind!r} but data.{field} is empty")
        require_dir(value, f"data.{field}", what="data folder")
    if cfg.init_from:
        require_dir(cfg.init_from, "init_from", what="checkpoint directory")
