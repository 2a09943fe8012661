"""The training state in a workdir: the read-write CheckpointManager, saving and restoring a step.

The workdir layout, and everything that reads models back out of it, is in adadsr_jax.checkpoint. The
manager keeps the latest N steps plus the best one. Orbax saves are asynchronous: callers wait
(`manager.wait_until_finished()`) before exiting or reading the files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from adadsr_jax.checkpoint import CHECKPOINT_SUBDIR, best_metric, open_checkpoints


def make_manager(
    workdir: str | os.PathLike,
    *,
    max_to_keep: int = 3,
    read_only: bool = False,
    enable_async: bool = True,
) -> ocp.CheckpointManager:
    """A CheckpointManager on `<workdir>/checkpoints` that keeps the latest `max_to_keep` steps plus the
    step with the highest validation PSNR among those saved with metrics (read_only: `open_checkpoints`)."""
    if read_only:
        return open_checkpoints(workdir)
    policy = ocm.AnyPreservationPolicy(
        [
            ocm.LatestN(n=max_to_keep),
            # BestN ranks only checkpoints saved with metrics; the others are LatestN's business.
            ocm.BestN(get_metric_fn=best_metric, reverse=False, n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        best_fn=best_metric,
        best_mode="max",
        preservation_policy=policy,
        enable_async_checkpointing=enable_async,
        create=True,
        # A save killed half-way leaves a *.orbax-checkpoint-tmp folder; drop it when resuming.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(Path(workdir).absolute() / CHECKPOINT_SUBDIR, options=options)


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    params: Any,
    opt_state: Any,
    meta: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
) -> bool:
    """Start an (asynchronous) save of the train state at `step`. params/opt_state are pytrees of arrays;
    meta must be JSON serialisable. metrics {"val_psnr": dB} make the step a candidate for "best"."""
    items = {
        "params": ocp.args.StandardSave(params),
        "opt_state": ocp.args.StandardSave(opt_state),
        "meta": ocp.args.JsonSave(dict(meta)),
    }
    scores = None if metrics is None else {k: float(v) for k, v in metrics.items()}
    return manager.save(step, args=ocp.args.Composite(**items), metrics=scores, force=True)


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    abstract_params: Any,
    abstract_opt_state: Any | None = None,
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
