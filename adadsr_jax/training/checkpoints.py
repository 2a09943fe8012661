"""Orbax checkpoints: the training workdir layout, training save/restore, and the inference contract.

Layout of a training workdir (and of a directory written by `save_inference_checkpoint`):

    <dir>/config.json                   the resolved run config;
                                        at least {"model": {"name", "scale", "overrides"}}
    <dir>/checkpoints/<step>/params     model parameters (Orbax StandardSave of a pure dict)
    <dir>/checkpoints/<step>/opt_state  optimizer state (training checkpoints only)
    <dir>/checkpoints/<step>/meta       JSON: step, RNG key data, data-iterator state

Checkpoints that carry a validation PSNR (metrics {"val_psnr": dB}) compete for "best"; the manager keeps
the latest N plus the best one. Orbax saves are asynchronous: callers wait (`manager.wait_until_finished()`)
before exiting or reading the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as ocm

from adadsr_jax.models import AdaDSR, create_model, get_model_config

CONFIG_FILE = "config.json"
CHECKPOINT_SUBDIR = "checkpoints"
BEST_METRIC = "val_psnr"

PyTree = Any


def _best_fn(metrics: Mapping[str, float]) -> float:
    return float(metrics[BEST_METRIC])


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


def make_manager(
    workdir: str | os.PathLike,
    *,
    max_to_keep: int = 3,
    read_only: bool = False,
    enable_async: bool = True,
) -> ocp.CheckpointManager:
    """A CheckpointManager on `<workdir>/checkpoints` that keeps the latest `max_to_keep` steps plus the
    step with the highest `val_psnr` among those saved with metrics."""
    directory = Path(workdir).absolute() / CHECKPOINT_SUBDIR
    if read_only:
        options = ocp.CheckpointManagerOptions(
            read_only=True, create=False, best_fn=_best_fn, best_mode="max"
        )
    else:
        policy = ocm.AnyPreservationPolicy(
            [
                ocm.LatestN(n=max_to_keep),
                # BestN ranks only checkpoints saved with metrics; the others are LatestN's business.
                ocm.BestN(get_metric_fn=_best_fn, reverse=False, n=1, keep_checkpoints_without_metrics=False),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            best_fn=_best_fn,
            best_mode="max",
            preservation_policy=policy,
            enable_async_checkpointing=enable_async,
            create=True,
            # A save killed half-way leaves a *.orbax-checkpoint-tmp folder; drop it when resuming.
            cleanup_tmp_directories=True,
        )
    return ocp.CheckpointManager(directory, options=options)


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    params: PyTree,
    meta: Mapping[str, Any],
    opt_state: PyTree | None = None,
    metrics: Mapping[str, float] | None = None,
    force: bool = True,
) -> bool:
    """Start an (asynchronous) save of `step`. params/opt_state are pytrees of arrays; meta must be JSON
    serialisable. metrics {"val_psnr": dB} make the step a candidate for "best"."""
    items: dict[str, Any] = {
        "params": ocp.args.StandardSave(params),
        "meta": ocp.args.JsonSave(dict(meta)),
    }
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    return manager.save(
        step,
        args=ocp.args.Composite(**items),
        metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()},
        force=force,
    )


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    abstract_params: PyTree,
    abstract_opt_state: PyTree | None = None,
) -> dict[str, Any]:
    """Restore {"params", "meta"[, "opt_state"]} of `step` into the structures (and shardings) of the
    abstract trees (jax.ShapeDtypeStruct leaves)."""
    items: dict[str, Any] = {
        "params": ocp.args.StandardRestore(abstract_params),
        "meta": ocp.args.JsonRestore(),
    }
    if abstract_opt_state is not None:
        items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return {k: restored[k] for k in items}


def write_config(directory: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write `config` as `<directory>/config.json` (atomically: write then rename)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    if hasattr(value, "item"):  # numpy / jax scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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


def model_from_config(config: Mapping[str, Any], *, rngs: nnx.Rngs | None = None) -> AdaDSR:
    """A freshly initialised model for the config's {"model": {"name", "scale", "overrides"}}."""
    m = config["model"]
    overrides = dict(m.get("overrides") or {})
    return create_model(m["name"], scale=int(m["scale"]), rngs=rngs or nnx.Rngs(0), **overrides)


def abstract_model(config: Mapping[str, Any]) -> AdaDSR:
    """The config's model with ShapeDtypeStruct parameters (no initialisation cost), for restoring."""
    return nnx.eval_shape(lambda: model_from_config(config))


def abstract_tree(tree: PyTree, sharding: jax.sharding.Sharding | None = None) -> PyTree:
    """ShapeDtypeStruct leaves with `sharding` (default: this host's first device) for an Orbax restore
    target. An explicit sharding lets a checkpoint saved on other devices (8 GPUs, 2 hosts) load here."""
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def select_step(manager: ocp.CheckpointManager, which: Literal["best", "latest"]) -> int | None:
    """The best step (highest val_psnr; the latest one when none was saved with metrics) or the latest."""
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    latest = manager.latest_step()
    if which == "latest" or latest is None:
        return latest
    best = manager.best_step()
    return latest if best is None else best


def load_params(
    path: str | os.PathLike,
    abstract_params: PyTree,
    *,
    which: Literal["best", "latest"] = "best",
) -> tuple[PyTree, int]:
    """Parameters (a pure dict shaped like `abstract_params`) and their step from a workdir/checkpoint."""
    path = Path(path)
    ckpt_dir = path / CHECKPOINT_SUBDIR
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{path}: no '{CHECKPOINT_SUBDIR}' folder; nothing was saved here")
    with quiet_orbax():
        manager = make_manager(path, read_only=True)
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
    with quiet_orbax():
        manager = make_manager(directory, max_to_keep=1, enable_async=False)
        try:
            save_checkpoint(manager, int(step), params=params, meta={"step": int(step), "kind": "inference"})
            manager.wait_until_finished()
        finally:
            manager.close()


def load_model(
    path: str | os.PathLike, *, which: Literal["best", "latest"] = "best"
) -> tuple[AdaDSR, dict[str, Any]]:
    """The model saved in a training workdir or a `save_inference_checkpoint` directory, and its config.

    which="best" takes the step with the highest validation PSNR (the latest when none was recorded).
    Missing input raises FileNotFoundError, a file where the directory should be NotADirectoryError,
    corrupt or mismatched input ValueError; all name the path.
    """
    config = read_config(path)
    try:
        model = abstract_model(config)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{Path(path) / CONFIG_FILE}: cannot build the model: {e}") from e
    graphdef, state = nnx.split(model, nnx.Param)
    params, _ = load_params(path, abstract_tree(nnx.to_pure_dict(state)), which=which)
    return nnx.merge(graphdef, params), config
