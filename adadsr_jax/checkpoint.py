"""Public model I/O: a trained model as `model.safetensors` + `model.json`, readable without this package.

Layout of a model directory written by `save_model`:

    <dir>/model.safetensors   every parameter, float32, named by its nnx state path joined with "."
                              ("body.layer0.kernel" [D, 3, 3, C, C], "up.convs.0.bias", ...); no pickle
    <dir>/model.json          the descriptor: {"format": "adadsr-model", "format_version": 1,
                              "adadsr_jax_version", "scale", "config": every ModelConfig field,
                              "weights": {"file", "sha256", "bytes"}, "parameters": {name: shape}}

Kernels are HWIO (`[3, 3, Cin, Cout]`, residual stacks with leading block/group axes), images NHWC on the
0..255 scale (README "Using a model from Python"). `load_model` also reads the Orbax layouts of a training
workdir and of `save_inference_checkpoint` (Orbax, the training-state format: see the section below), so
callers need one loader for every model source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from adadsr_jax.models import AdaDSR, ModelConfig, get_model_config

# Which checkpoint of a workdir to read: the best by validation PSNR, the latest, or a saved step number.
Which = Literal["best", "latest"] | int

FORMAT = "adadsr-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
DESCRIPTOR_FILE = "model.json"


class ModelFileError(ValueError):
    """A model directory that cannot be loaded; the message starts with the offending file's path."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ChecksumError(ModelFileError):
    """The weights file's sha256 differs from the one recorded in model.json (changed or truncated)."""


class ConfigError(ModelFileError):
    """model.json's config or scale is not a valid ModelConfig (unknown, missing or bad fields)."""


class WeightsMismatchError(ModelFileError):
    """The weights file's tensors (names, shapes, dtypes) do not match the model model.json describes."""


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """Every ModelConfig field by name, JSON-ready (tuples become lists). Generic over the fields."""
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(ModelConfig)
    }


def config_from_dict(fields: Any, path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a descriptor's "config" mapping describes; ConfigError naming `path` otherwise.

    Every field must be present and none unknown: a file written by a version of this package whose
    ModelConfig had other fields is refused by name rather than loaded with guessed values.
    """
    if not isinstance(fields, dict):
        raise ConfigError(
            path, f"'config' must be a mapping of ModelConfig fields, got {type(fields).__name__}"
        )
    known = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(fields) - set(known))
    missing = [name for name in known if name not in fields]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown ModelConfig fields {unknown}")
        if missing:
            parts.append(f"missing ModelConfig fields {missing}")
        raise ConfigError(
            path,
            "; ".join(parts) + " (written by another adadsr-jax version? re-export it with this one)",
        )
    # JSON has no tuples; ModelConfig is frozen and hashable, so its sequence fields are tuples.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    try:
        return ModelConfig(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(path, f"invalid model config: {e}") from e


def abstract_model(config: ModelConfig, scale: int) -> AdaDSR:
    """The model for `config` at `scale` with jax.ShapeDtypeStruct parameters (nothing initialised)."""
    return nnx.eval_shape(lambda: AdaDSR(config, scale=scale, rngs=nnx.Rngs(0)))


def with_backbone(params: dict, backbone: dict, source: str) -> dict:
    """A copy of the parameters pure dict `params` whose every top-level entry but "adapter" is the one
    of `backbone` (another model's parameters pure dict): the adapter keeps its values in `params` (a fresh
    initialisation), the backbone comes from elsewhere. Used by training's init_from and by convert's
    --backbone-only. Raises ValueError, starting with `source`, for an entry `backbone` lacks or whose
    leaf shapes differ (entries only `backbone` has, e.g. its adapter, are ignored)."""
    out = dict(params)
    for key, value in params.items():
        if key == "adapter":
            continue
        if key not in backbone:
            raise ValueError(f"{source}: its model has no '{key}' parameters")
        want = jax.tree.map(np.shape, value)
        got = jax.tree.map(np.shape, backbone[key])
        if want != got:
            raise ValueError(f"{source}: '{key}' shapes differ: checkpoint {got}, model {want}")
        out[key] = backbone[key]
    return out


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x, 0: y}} -> {"a.b": x, "a.0": y} (nnx.List indices become their decimal string)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _unflatten_like(template: dict, flat: dict[str, Any], prefix: str = "") -> dict:
    """The nested dict shaped like `template` whose leaves are `flat[<dotted path>]`."""
    return {
        key: _unflatten_like(value, flat, f"{prefix}{key}.")
        if isinstance(value, dict)
        else flat[f"{prefix}{key}"]
        for key, value in template.items()
    }


def model_tensors(model: AdaDSR) -> dict[str, np.ndarray]:
    """The model's parameters as host arrays named by their dotted nnx state path."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {name: np.asarray(jax.device_get(v)) for name, v in _flatten(params).items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_model(model: AdaDSR, path: str | os.PathLike) -> Path:
    """Write `<path>/model.safetensors` and `<path>/model.json` (the directory is created); returns it.

    Both files are written to temporaries and renamed, the descriptor last, so a crash never leaves a
    descriptor pointing at a half-written weights file.
    """
    from safetensors.numpy import save as st_save

    import adadsr_jax

    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = model_tensors(model)
    data = st_save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    descriptor = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "adadsr_jax_version": adadsr_jax.__version__,
        "scale": int(model.scale),
        "config": config_to_dict(model.config),
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(data), "bytes": len(data)},
        "parameters": {name: list(t.shape) for name, t in tensors.items()},
    }
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_name(weights.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(weights)
    desc = directory / DESCRIPTOR_FILE
    tmp = desc.with_name(desc.name + ".tmp")
    tmp.write_text(json.dumps(descriptor, indent=2) + "\n")
    tmp.replace(desc)
    return directory


def read_descriptor(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of `<dir>/model.json` (format, version, scale and config validated)."""
    desc_path = Path(path) / DESCRIPTOR_FILE
    try:
        desc = json.loads(desc_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFileError(desc_path, f"not valid JSON ({e})") from e
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise ModelFileError(desc_path, f'not an adadsr-jax model descriptor (needs "format": "{FORMAT}")')
    version = desc.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(desc_path, f"bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            desc_path,
            f"format_version {version} is newer than this adadsr-jax reads ({FORMAT_VERSION}); upgrade it",
        )
    scale = desc.get("scale")
    if scale not in (2, 3, 4) or isinstance(scale, bool):
        raise ConfigError(desc_path, f"scale must be 2, 3 or 4, got {scale!r}")
    desc["model_config"] = config_from_dict(desc.get("config"), desc_path)
    weights = desc.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str):
        raise ModelFileError(desc_path, 'needs "weights": {"file", "sha256"}')
    return desc


def _load_safetensors_dir(directory: Path) -> AdaDSR:
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    desc = read_descriptor(directory)
    config, scale = desc["model_config"], int(desc["scale"])
    weights_path = directory / str(desc["weights"].get("file", WEIGHTS_FILE))
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: missing (model.json names it as the weights file)")
    data = weights_path.read_bytes()
    digest = _sha256(data)
    if digest != desc["weights"]["sha256"]:
        raise ChecksumError(
            weights_path,
            f"sha256 {digest} differs from the {desc['weights']['sha256']} recorded in "
            f"{directory / DESCRIPTOR_FILE}: the weights were changed or truncated after saving",
        )
    try:
        tensors = st_load(data)
    except SafetensorError as e:
        raise ModelFileError(weights_path, f"not a readable safetensors file ({e})") from e

    model = abstract_model(config, scale)
    graphdef, state = nnx.split(model, nnx.Param)
    template = nnx.to_pure_dict(state)
    want = {name: (tuple(v.shape), np.dtype(v.dtype)) for name, v in _flatten(template).items()}
    got = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}
    problems = []
    if missing := sorted(set(want) - set(got)):
        problems.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected := sorted(set(got) - set(want)):
        problems.append(f"unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    bad = [
        f"{name} is {list(got[name][0])} {got[name][1]}, the config needs {list(w[0])} {w[1]}"
        for name, w in want.items()
        if name in got and got[name] != w
    ]
    if bad:
        problems.append(
            f"{len(bad)} of other shape: " + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
        )
    if problems:
        raise WeightsMismatchError(
            weights_path, "does not match the model in model.json: " + "; ".join(problems)
        )
    params = _unflatten_like(template, {k: jnp.asarray(v) for k, v in tensors.items()})
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def model_source(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(name, overrides) to label results with: the preset and overrides of an Orbax run config, or
    ("model", every config field) for a save_model directory, which records no preset name."""
    p = Path(path)
    if p.is_file() and p.name in (DESCRIPTOR_FILE, WEIGHTS_FILE):
        p = p.parent
    if is_model_dir(p):
        return "model", dict(read_descriptor(p)["config"])
    model = read_config(p)["model"]
    return str(model["name"]), dict(model.get("overrides") or {})


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `save_model` (it has a model.json)."""
    return (Path(path) / DESCRIPTOR_FILE).is_file()


def load_model(path: str | os.PathLike, *, which: Which = "best") -> AdaDSR:
    """The model in `path`: a `save_model` directory (or its model.json / model.safetensors), a training
    workdir, or a `save_inference_checkpoint` directory (Orbax; `which` picks the best or latest step).

    Raises FileNotFoundError for a missing path, ModelFileError (a ValueError; ChecksumError, ConfigError,
    WeightsMismatchError) or ValueError for a bad one; every message starts with the file's path.
    """
    p = Path(path)
    if p.is_file() and p.name in (DESCRIPTOR_FILE, WEIGHTS_FILE):
        p = p.parent
    if is_model_dir(p):
        return _load_safetensors_dir(p)
    if (p / CONFIG_FILE).is_file():
        return load_orbax_model(p, which=which)[0]
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such model directory")
    raise FileNotFoundError(
        f"{p}: not a model directory (no {DESCRIPTOR_FILE}) nor a training workdir or inference "
        f"checkpoint (no {CONFIG_FILE})"
    )


# ---------------------------------------------------------------------------------------------- Orbax
# Training workdirs and inference checkpoints (the training-state format; adadsr_jax.training writes the
# workdirs, everything here reads them):
#
#     <dir>/config.json                   the resolved run config;
#                                         at least {"model": {"name", "scale", "overrides"}}
#     <dir>/checkpoints/<step>/params     model parameters (Orbax StandardSave of a pure dict)
#     <dir>/checkpoints/<step>/opt_state  optimizer state (training checkpoints only)
#     <dir>/checkpoints/<step>/meta       JSON: step, RNG key data, data-iterator state
#
# Checkpoints saved with a validation PSNR (metrics {"val_psnr": dB}) compete for "best".

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
BEST_METRIC = "val_psnr"


def best_metric(metrics: Mapping[str, float]) -> float:
    return float(metrics[BEST_METRIC])


def open_checkpoints(workdir: str | os.PathLike) -> ocp.CheckpointManager:
    """A read-only CheckpointManager on `<workdir>/checkpoints` that knows which step is "best"."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, best_fn=best_metric, best_mode="max")
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_SUBDIR, options=options)


# Orbax's notices, through absl's logger, that say nothing to a user of our commands: opening a manager
# read-only (what loading always does) and saving without metrics while best_fn is set (a checkpoint
# saved without validation is simply not a "best" candidate, as documented above).
_ORBAX_CHATTER = (
    "CheckpointManagerOptions.read_only=True",
    "Given directory is read only",
    "Requested `tracked_metric`; did not provide metrics",
)


class _DropOrbaxChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_ORBAX_CHATTER)


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Drop only the _ORBAX_CHATTER messages from the absl logger while the block runs (at the call, not
    globally: every other warning still shows)."""
    logger = logging.getLogger("absl")
    chatter = _DropOrbaxChatter()
    logger.addFilter(chatter)
    try:
        yield
    finally:
        logger.removeFilter(chatter)


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if hasattr(value, "item"):  # numpy / jax scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_config(directory: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write `config` as `<directory>/config.json` (atomically: write then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The run config in `<directory>/config.json`, checked for the model fields load_model needs."""
    directory = Path(directory)
    if directory.is_file():
        hint = (
            "; convert a PyTorch file first: python -m adadsr_jax.convert"
            if directory.suffix.lower() in (".pt", ".pth", ".pkl", ".tar")
            else ""
        )
        raise NotADirectoryError(
            f"{directory}: is a file, not a checkpoint directory (a training workdir or a folder written "
            f"by python -m adadsr_jax.convert){hint}"
        )
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such checkpoint directory")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; not a training workdir or inference checkpoint")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or "name" not in model or "scale" not in model:
        raise ValueError(f"{path}: needs a 'model' entry with 'name' and 'scale'")
    overrides = model.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: model.overrides must be a mapping, got {type(overrides).__name__}")
    return config


def config_model(config: Mapping[str, Any]) -> tuple[ModelConfig, int]:
    """The ModelConfig and scale of a run config's {"model": {"name", "scale", "overrides"}}."""
    m = config["model"]
    return get_model_config(m["name"], **dict(m.get("overrides") or {})), int(m["scale"])


def abstract_tree(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
    """ShapeDtypeStruct leaves with `sharding` (default: this host's first device) for an Orbax restore
    target. An explicit sharding lets a checkpoint saved on other devices (8 GPUs, 2 hosts) load here."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def select_step(manager: ocp.CheckpointManager, which: Which) -> int | None:
    """The best step (highest val_psnr; the latest one when none was saved with metrics), the latest, or
    the step `which` itself when it is a number (FileNotFoundError when it was not kept)."""
    if isinstance(which, int) and not isinstance(which, bool):
        if which not in manager.all_steps():
            raise FileNotFoundError(
                f"{manager.directory}: no checkpoint of step {which}; saved steps: {manager.all_steps()}"
            )
        return which
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    latest = manager.latest_step()
    if which == "latest" or latest is None:
        return latest
    best = manager.best_step()
    return latest if best is None else best


def load_params(
    path: str | os.PathLike,
    abstract_params: Any,
    *,
    which: Which = "best",
) -> tuple[Any, int]:
    """Parameters (a pure dict shaped like `abstract_params`) and their step from a workdir/checkpoint."""
    path = Path(path)
    ckpt_dir = path / CHECKPOINT_SUBDIR
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{path}: no '{CHECKPOINT_SUBDIR}' folder; nothing was saved here")
    with quiet_orbax():
        manager = open_checkpoints(path)
        try:
            step = select_step(manager, which)
            if step is None:
                raise FileNotFoundError(f"{ckpt_dir}: contains no finished checkpoint")
            try:
                restored = manager.restore(
                    step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params))
                )
            except (FileNotFoundError, ValueError, KeyError, OSError, TypeError) as e:
                raise ValueError(
                    f"{ckpt_dir / str(step)}: cannot read the parameters (corrupt, or the config's model "
                    f"does not match them): {type(e).__name__}: {e}"
                ) from e
        finally:
            manager.close()
    params = restored["params"]
    # Orbax checks leaf shapes loosely for some layouts; insist on the exact tree the model expects.
    want = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), abstract_params)
    got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), params)
    if want != got:
        raise ValueError(f"{ckpt_dir / str(step)}: parameter shapes do not match the config's model")
    return params, step


def save_inference_checkpoint(
    directory: str | os.PathLike,
    model: AdaDSR,
    *,
    model_name: str,
    overrides: dict | None = None,
    step: int = 0,
) -> None:
    """Write `model`'s parameters and a minimal run config to `directory` (training-workdir layout).

    model_name/overrides must rebuild the model's architecture: get_model_config(model_name, **overrides)
    has to equal model.config, otherwise ValueError (a checkpoint that cannot be loaded back is useless).
    Blocks until the files are on disk.
    """
    overrides = dict(overrides or {})
    expected = get_model_config(model_name, **dict(overrides))
    if expected != model.config:
        raise ValueError(
            f"model_name={model_name!r} with overrides {overrides} gives {expected}, "
            f"but the model has {model.config}"
        )
    directory = Path(directory).absolute()
    config = {"model": {"name": model_name, "scale": int(model.scale), "overrides": overrides}}
    write_config(directory, config)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False, max_to_keep=1)
    items = {
        "params": ocp.args.StandardSave(params),
        "meta": ocp.args.JsonSave({"step": int(step), "kind": "inference"}),
    }
    with quiet_orbax(), ocp.CheckpointManager(directory / CHECKPOINT_SUBDIR, options=options) as manager:
        manager.save(int(step), args=ocp.args.Composite(**items))


def load_orbax_model(path: str | os.PathLike, *, which: Which = "best") -> tuple[AdaDSR, dict[str, Any]]:
    """The model saved in a training workdir or a `save_inference_checkpoint` directory, and its config.

    which="best" takes the step with the highest validation PSNR (the latest when none was recorded).
    Missing input raises FileNotFoundError, a file where the directory should be NotADirectoryError,
    corrupt or mismatched input ValueError; all name the path.
    """
    config = read_config(path)
    try:
        model = abstract_model(*config_model(config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{Path(path) / CONFIG_FILE}: cannot build the model: {e}") from e
    graphdef, state = nnx.split(model, nnx.Param)
    params, _ = load_params(path, abstract_tree(nnx.to_pure_dict(state)), which=which)
    return nnx.merge(graphdef, params), config
