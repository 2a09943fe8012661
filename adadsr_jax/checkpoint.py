"""Public model I/O: a trained model as `model.safetensors` + `model.json`, readable without this package.

Layout of a model directory written by `save_model`:

    <dir>/model.safetensors   every parameter, float32, named by its nnx state path joined with "."
                              ("body.layer0.kernel" [D, 3, 3, C, C], "up.convs.0.bias", ...); no pickle
    <dir>/model.json          the descriptor: {"format": "adadsr-model", "format_version": 1,
                              "adadsr_jax_version", "scale", "config": every ModelConfig field,
                              "weights": {"file", "sha256", "bytes"}, "parameters": {name: shape}}

Kernels are HWIO (`[3, 3, Cin, Cout]`, residual stacks with leading block/group axes), images NHWC on the
0..255 scale (README "Using a model from Python"). `load_model` also reads the Orbax layouts of a training
workdir and of `save_inference_checkpoint` (delegating to `adadsr_jax.training.checkpoints`), so callers
need one loader for every model source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adadsr_jax.models import AdaDSR, ModelConfig

FORMAT = "adadsr-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
DESCRIPTOR_FILE = "model.json"
ORBAX_CONFIG_FILE = "config.json"  # training workdirs and inference checkpoints (training.checkpoints)


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


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory written by `save_model` (it has a model.json)."""
    return (Path(path) / DESCRIPTOR_FILE).is_file()


def load_model(path: str | os.PathLike, *, which: Literal["best", "latest"] = "best") -> AdaDSR:
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
    if (p / ORBAX_CONFIG_FILE).is_file():
        # Orbax is still the training format; the lead moves that code here later.
        from adadsr_jax.training.checkpoints import load_model as load_orbax

        return load_orbax(p, which=which)[0]
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such model directory")
    raise FileNotFoundError(
        f"{p}: not a model directory (no {DESCRIPTOR_FILE}) nor a training workdir or inference "
        f"checkpoint (no {ORBAX_CONFIG_FILE})"
    )
