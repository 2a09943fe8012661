"""The training loop: set-up, resume, data-parallel steps, validation, logging, checkpoints, preemption.

`train(config, workdir)` is everything `python train.py` does after parsing flags. It resumes from the
latest checkpoint in `workdir` when there is one; a resumed run ends with exactly the parameters of an
uninterrupted one (same devices), because the batches, the desired depths and the optimizer state are all
pure functions of (seed, step) or restored from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from adadsr_jax.data import TrainBatches, make_source
from adadsr_jax.models import get_model_config
from adadsr_jax.training import checkpoints as ck
from adadsr_jax.training import parallel
from adadsr_jax.training.config import resolve_config
from adadsr_jax.training.logs import MetricWriter
from adadsr_jax.training.optim import make_optimizer
from adadsr_jax.training.step import all_finite, make_eval_fn, make_train_step
from adadsr_jax.training.validation import depth_tag, load_validation_set, source_kwargs, validate

PyTree = Any


class NonFiniteLossError(RuntimeError):
    """The loss (or the parameters) became NaN/Inf; the run stopped without saving them."""


@dataclasses.dataclass
class TrainResult:
    step: int  # updates done
    status: str  # "completed" or "preempted"
    params: PyTree  # numpy pure dict (this host's copy)
    validation: dict[str, float]  # the last validation metrics ({} when none ran)


class _StopRequest:
    """SIGTERM -> finish the current step, save, and return. Multi-host runs ask JAX's preemption sync
    point instead, so that every host stops at the same step (a save is a collective)."""

    def __init__(self, multihost: bool):
        self.multihost = multihost
        self.requested = False
        self._previous = None
        if not multihost and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def __call__(self, step: int) -> bool:
        if self.multihost:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # no preemption service (e.g. initialised without one)
                return False
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def init_backbone_from(params: PyTree, path: str | Path) -> tuple[PyTree, int, dict]:
    """Replace every non-adapter parameter of `params` by the one in checkpoint `path` (a training workdir
    or an inference checkpoint); the adapter keeps its fresh initialisation. Shapes must match."""
    src_cfg = ck.read_config(path)
    src_state = nnx.state(ck.abstract_model(src_cfg), nnx.Param)
    src_params, src_step = ck.load_params(path, ck.abstract_tree(nnx.to_pure_dict(src_state)))
    out = dict(params)
    for key, value in params.items():
        if key == "adapter":
            continue
        if key not in src_params:
            raise ValueError(f"init_from {path}: its model has no '{key}' parameters")
        want = jax.tree.map(np.shape, value)
        got = jax.tree.map(np.shape, src_params[key])
        if want != got:
            raise ValueError(f"init_from {path}: '{key}' shapes differ: checkpoint {got}, model {want}")
        out[key] = src_params[key]
    return out, src_step, src_cfg


@dataclasses.dataclass(frozen=True)
class _Functions:
    graphdef: nnx.GraphDef
    tx: Any
    init_params: Any  # key -> params pure dict (one compiled program instead of eager per-shape inits)
    init_opt: Any
    train_step: Any
    warmup_step: Any  # backbone only (adaptive models; None for plain ones); jit compiles it lazily
    eval_fn: Any


@functools.lru_cache(maxsize=8)
def _compiled(
    model_json: str, optimizer_json: str, depth_range, depth_loss_weight: float, mesh
) -> _Functions:
    """The jitted functions of a run, cached per (model, optimizer, loss settings, mesh) so that several
    runs in one process (tests, notebooks) compile once."""
    model_cfg = json.loads(model_json)
    tx, schedule = make_optimizer(json.loads(optimizer_json))
    rep = parallel.replicated_sharding(mesh)

    def build(key):
        return ck.model_from_config({"model": model_cfg}, rngs=nnx.Rngs(params=key))

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param)
    init_params = jax.jit(lambda key: nnx.to_pure_dict(nnx.state(build(key), nnx.Param)))
    train_step = make_train_step(
        graphdef, tx, schedule, depth_range=depth_range, depth_loss_weight=depth_loss_weight, replicated=rep
    )
    warmup_step = None
    if get_model_config(model_cfg["name"], **model_cfg["overrides"]).adaptive:
        plain = dict(model_cfg, overrides=dict(model_cfg["overrides"], adapter_features=None))
        backbone_graphdef, _ = nnx.split(ck.abstract_model({"model": plain}), nnx.Param)
        warmup_step = make_train_step(
            graphdef,
            tx,
            schedule,
            depth_range=depth_range,
            depth_loss_weight=0.0,
            replicated=rep,
            backbone_graphdef=backbone_graphdef,
        )
    return _Functions(
        graphdef,
        tx,
        init_params,
        jax.jit(tx.init, out_shardings=rep),
        train_step,
        warmup_step,
        make_eval_fn(graphdef),
    )


def _check_config_matches(workdir: Path, cfg: Mapping[str, Any]) -> None:
    path = workdir / ck.CONFIG_FILE
    if not path.is_file() or not (workdir / ck.CHECKPOINT_SUBDIR).is_dir():
        return
    old = json.loads(path.read_text())
    for section in ("model",):
        if old.get(section) != json.loads(json.dumps(cfg[section])):
            raise ValueError(
                f"{path}: this workdir holds a run of a different {section} ({old.get(section)}); "
                f"use a new --workdir or the same {section} settings"
            )
    for key in ("batch_size", "patch_size", "kind"):
        if old.get("data", {}).get(key) != cfg["data"][key]:
            raise ValueError(
                f"{path}: the saved run has data.{key}={old.get('data', {}).get(key)!r}, this one "
                f"{cfg['data'][key]!r}; resuming would not continue the same batches"
            )


def train(
    config: ml_collections.ConfigDict | Mapping[str, Any],
    workdir: str | Path,
    *,
    devices: list | None = None,
) -> TrainResult:
    """Train (or resume training) per `config` in `workdir`; see adadsr_jax.training.config for fields.

    devices: the devices of the data mesh (default: all devices of all hosts).
    Raises NonFiniteLossError when the loss becomes NaN/Inf (the last good checkpoint stays).
    """
    cfg = resolve_config(config)
    workdir = Path(workdir).absolute()
    pid, pcount = jax.process_index(), jax.process_count()
    main_host = pid == 0
    say = print if main_host else (lambda *a, **k: None)
    tcfg, dcfg, mcfg = cfg["train"], cfg["data"], cfg["model"]
    total, scale = int(tcfg["steps"]), int(mcfg["scale"])

    mesh = parallel.data_mesh(devices)
    parallel.check_batch_size(int(dcfg["batch_size"]), mesh)
    _check_config_matches(workdir, cfg)
    if main_host:
        ck.write_config(workdir, cfg)

    fns = _compiled(
        json.dumps(mcfg, sort_keys=True),
        json.dumps(cfg["optimizer"], sort_keys=True),
        tuple(tcfg["depth_range"]),
        float(tcfg["depth_loss_weight"]),
        mesh,
    )
    tx = fns.tx
    params_host = jax.device_get(fns.init_params(jax.random.key(int(tcfg["seed"]))))
    base_key = jax.random.key(int(tcfg["seed"]))

    writer = MetricWriter(workdir, enabled=main_host)
    manager = ck.make_manager(workdir, max_to_keep=int(tcfg["keep_checkpoints"]))
    stop = _StopRequest(multihost=pcount > 1)
    batches = None
    pbar = None
    try:
        with jax.set_mesh(mesh):
            rep, bsh = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
            latest = manager.latest_step()
            abstract_params = ck.abstract_tree(params_host, rep)
            abstract_opt = ck.abstract_tree(jax.eval_shape(tx.init, abstract_params), rep)
            data_state = None
            if latest is None:
                if cfg["init_from"]:
                    params_host, src_step, src_cfg = init_backbone_from(params_host, cfg["init_from"])
                    say(
                        f"Initialised the backbone from {cfg['init_from']} (step {src_step}, model "
                        f"{src_cfg['model']['name']}); the adapter is freshly initialised."
                    )
                params = parallel.replicate(params_host, rep)
                opt_state = fns.init_opt(params)
                step = 0
            else:
                restored = ck.restore_checkpoint(
                    manager, latest, abstract_params=abstract_params, abstract_opt_state=abstract_opt
                )
                params, opt_state, meta = restored["params"], restored["opt_state"], restored["meta"]
                step = int(meta["step"])
                data_state = meta["data"]
                say(f"Resumed from {manager.directory / str(latest)} at step {step}.")
            last_saved = latest

            source = make_source(dcfg["kind"], **source_kwargs(dcfg, scale=scale, split="train"))
            batches = TrainBatches(
                source,
                batch_size=int(dcfg["batch_size"]),
                patch_size=int(dcfg["patch_size"]),
                scale=scale,
                seed=int(tcfg["seed"]),
                process_index=pid,
                process_count=pcount,
                augment=bool(dcfg["augment"]),
                prefetch=int(dcfg["prefetch"]),
            )
            if data_state is not None:
                batches.set_state(data_state)
            vset = load_validation_set(dcfg, scale=scale)
            train_step, eval_fn = fns.train_step, fns.eval_fn
            depths = tcfg["eval_depths"]
            warmup = int(tcfg["backbone_warmup_steps"])

            # Validation runs on this host's first device alone (every host computes the same numbers),
            # so it needs no global arrays: a one-device mesh replaces the data mesh meanwhile.
            eval_mesh = parallel.data_mesh([jax.local_devices()[0]])

            def ensure_finite_params(at: int) -> None:
                if not bool(all_finite(params)):
                    raise NonFiniteLossError(
                        f"the parameters became NaN/Inf by step {at}; not saving them. The last good "
                        f"checkpoint is {_describe_checkpoint(manager, last_saved)}."
                    )

            def run_validation(at: int) -> dict[str, float]:
                # Checked first: validating NaN parameters would fail inside the metrics instead.
                ensure_finite_params(at)
                with jax.set_mesh(eval_mesh):
                    return validate(eval_fn, parallel.local_copy(params), vset, depths)

            def check(entry) -> dict[str, float]:
                at, metrics = entry
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(values["loss"]):
                    raise NonFiniteLossError(
                        f"the training loss became {values['loss']} at step {at}; training stopped and "
                        f"nothing after the last good checkpoint was saved ("
                        f"{_describe_checkpoint(manager, last_saved)}). Lower optimizer.lr or set "
                        f"optimizer.grad_clip_norm, then rerun to resume from that checkpoint."
                    )
                return values

            def save(at: int, metrics: dict[str, float] | None) -> None:
                nonlocal last_saved
                if at == last_saved:
                    return
                ensure_finite_params(at)
                meta = {
                    "step": at,
                    "rng_key": np.asarray(jax.random.key_data(base_key)).tolist(),
                    "data": batches.get_state(),
                }
                ck.save_checkpoint(
                    manager,
                    at,
                    params=params,
                    opt_state=opt_state,
                    meta=meta,
                    metrics=None if metrics is None else {ck.BEST_METRIC: metrics[ck.BEST_METRIC]},
                )
                last_saved = at

            say(
                f"Training {mcfg['name']} x{scale} for {total} steps on {mesh.devices.size} device(s) "
                f"({pcount} process(es)), global batch {dcfg['batch_size']}; workdir {workdir}"
            )
            pbar = tqdm(
                total=total,
                initial=step,
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
                disable=not (main_host and tcfg["progress_bar"]),
            )
            validation: dict[str, float] = {}
            val_step = None
            pending = None
            status = "completed"
            t_last, step_last = time.perf_counter(), step
            while step < total:
                if stop(step):
                    status = "preempted"
                    break
                gb = parallel.global_batch(next(batches), bsh)
                step_fn = train_step if step >= warmup or fns.warmup_step is None else fns.warmup_step
                params, opt_state, metrics = step_fn(
                    params, opt_state, gb["lr"], gb["hr"], jnp.int32(step), base_key
                )
                step += 1
                # Check the previous step's loss while this one runs (keeps the device busy).
                if pending is not None:
                    values = check(pending)
                    pbar.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
                pending = (step, metrics)
                pbar.update(1)
                do_log = step % tcfg["log_every"] == 0 or step == total
                do_eval = step % tcfg["eval_every"] == 0 or step == total
                do_save = step % tcfg["checkpoint_every"] == 0 or step == total
                if do_log or do_eval or do_save:
                    values = check(pending)
                    pending = None
                if do_log:
                    elapsed = time.perf_counter() - t_last
                    rate = (step - step_last) / max(elapsed, 1e-9)
                    values.update(steps_per_sec=rate, patches_per_sec=rate * int(dcfg["batch_size"]))
                    writer.write(step, "train", values)
                    pbar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2g}", refresh=False)
                if do_eval:
                    validation, val_step = run_validation(step), step
                    writer.write(step, "valid", validation)
                    pbar.write(_validation_line(step, validation, depths))
                if do_save:
                    save(step, validation if val_step == step else None)
                if do_log or do_eval or do_save:
                    t_last, step_last = time.perf_counter(), step
            if pending is not None:
                check(pending)
            pbar.close()
            if status == "preempted":
                save(step, None)
                manager.wait_until_finished()
                say(
                    f"Stopped by SIGTERM at step {step}; checkpoint saved in {manager.directory}. "
                    f"Run the same command again to resume."
                )
            else:
                save(step, validation if val_step == step else None)
                if val_step != step:
                    validation, val_step = run_validation(step), step
                    writer.write(step, "valid", validation)
                writer.write(step, "final", validation)
                say(_summary(validation, depths, vset, mcfg["name"], scale))
            result = TrainResult(step, status, parallel.host_tree(params), validation)
    finally:
        if pbar is not None:
            pbar.close()
        stop.close()
        if batches is not None:
            batches.close()
        # Orbax saves are asynchronous: the last (good) checkpoint must be complete before we leave.
        manager.wait_until_finished()
        manager.close()
        writer.close()
    return result


def _describe_checkpoint(manager, step: int | None) -> str:
    if step is None:
        return f"none yet in {manager.directory}"
    return f"step {step} in {manager.directory}"


def _validation_line(step: int, validation: Mapping[str, float], depths) -> str:
    parts = []
    for d in depths:
        p, md = validation[f"psnr_{depth_tag(d)}"], validation[f"mean_depth_{depth_tag(d)}"]
        parts.append(f"d={d:g}: {p:.2f} dB (depth {md:.2f})")
    return (
        f"[step {step}] valid PSNR-Y " + ", ".join(parts) + f"; bicubic {validation['bicubic_psnr']:.2f} dB"
    )


def _summary(validation: Mapping[str, float], depths, vset, name: str, scale: int) -> str:
    bic = validation["bicubic_psnr"]
    lines = [f"Held-out PSNR-Y on {len(vset.names)} image(s) ({', '.join(vset.names[:5])}), x{scale}:"]
    for d in depths:
        p = validation[f"psnr_{depth_tag(d)}"]
        md = validation[f"mean_depth_{depth_tag(d)}"]
        lines.append(f"  desired depth {d:g}: {p:.2f} dB, mean executed depth {md:.2f}")
    best_d = max(depths)
    p = validation[f"psnr_{depth_tag(best_d)}"]
    lines.append(
        f"Held-out PSNR-Y: {name} {p:.2f} dB (desired depth {best_d:g}) vs bicubic {bic:.2f} dB "
        f"({p - bic:+.2f} dB)"
    )
    return "\n".join(lines)


def main_exit_code(exc: BaseException) -> int:
    """train.py's exit status for an exception from train(): 1 with a one-line message on stderr."""
    print(f"error: {exc}", file=sys.stderr)
    return 1
