"""The training loop: set-up, resume, data-parallel steps, validation, logging, checkpoints, preemption.

`train(config, workdir)` is everything `python train.py` does after parsing flags. It resumes from the
latest checkpoint in `workdir` when there is one; a resumed run ends with exactly the parameters of an
uninterrupted one (same devices), because the batches, the desired depths and the optimizer state are all
pure functions of (seed, step) or restored from the checkpoint.

The pieces, in the order a run meets them: `compiled_functions` (the jitted steps, cached per model,
optimizer, loss settings and mesh), `Run.initialise_or_restore`, `Run.step_loop` with its three hooks
(`log`, `validate`, `save`), and `Run.finish`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from adadsr_jax import checkpoint
from adadsr_jax.data import TrainBatches, make_source
from adadsr_jax.evaluation.inference import Predictor
from adadsr_jax.models import AdaDSR
from adadsr_jax.training import checkpoints, parallel
from adadsr_jax.training.config import ModelSection, OptimizerConfig, RunConfig, resolve_config
from adadsr_jax.training.logs import MetricWriter
from adadsr_jax.training.optim import make_optimizer
from adadsr_jax.training.step import all_finite, make_train_step
from adadsr_jax.training.validation import (
    BEST_METRIC,
    ValidationSet,
    load_validation_set,
    metric_name,
    source_kwargs,
    validation_metrics,
)


class NonFiniteLossError(RuntimeError):
    """The loss (or the parameters) became NaN/Inf; the run stopped without saving them."""


@dataclasses.dataclass
class TrainResult:
    step: int  # updates done
    status: str  # "completed" or "preempted"
    params: Any  # numpy pure dict (this host's copy)
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


def init_backbone_from(params: dict, path: str | Path) -> tuple[dict, int, dict]:
    """Replace every non-adapter parameter of `params` by the one in checkpoint `path` (a training workdir
    or an inference checkpoint); the adapter keeps its fresh initialisation. Shapes must match."""
    source_config = checkpoint.read_config(path)
    source_state = nnx.state(checkpoint.abstract_model(*checkpoint.config_model(source_config)), nnx.Param)
    abstract = checkpoint.abstract_tree(nnx.to_pure_dict(source_state))
    source_params, source_step = checkpoint.load_params(path, abstract)
    return checkpoint.with_backbone(params, source_params, f"init_from {path}"), source_step, source_config


@dataclasses.dataclass(frozen=True)
class StepFunctions:
    """The compiled pieces of a run (one compile per model, optimizer, loss settings and mesh)."""

    graphdef: nnx.GraphDef
    optimizer: optax.GradientTransformation
    init_params: Any  # key -> params pure dict (one compiled program instead of eager per-shape inits)
    init_opt_state: Any
    train_step: Any
    warmup_step: Any  # the backbone alone (adaptive models; None for plain ones); compiled lazily


@functools.lru_cache(maxsize=8)
def compiled_functions(
    model: ModelSection,
    optimizer_config: OptimizerConfig,
    depth_range: tuple[float, float],
    depth_loss_weight: float,
    mesh: jax.sharding.Mesh,
) -> StepFunctions:
    """The jitted functions of a run, cached so that several runs in one process (tests, notebooks)
    compile once."""
    model_config = model.model_config()
    optimizer, schedule = make_optimizer(dataclasses.asdict(optimizer_config))
    replicated = parallel.replicated_sharding(mesh)

    def build(key):
        return AdaDSR(model_config, scale=model.scale, rngs=nnx.Rngs(params=key))

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param)
    step_kwargs = dict(depth_range=depth_range, depth_loss_weight=depth_loss_weight, replicated=replicated)
    return StepFunctions(
        graphdef=graphdef,
        optimizer=optimizer,
        init_params=jax.jit(lambda key: nnx.to_pure_dict(nnx.state(build(key), nnx.Param))),
        init_opt_state=jax.jit(optimizer.init, out_shardings=replicated),
        train_step=make_train_step(graphdef, optimizer, schedule, **step_kwargs),
        warmup_step=(
            make_train_step(graphdef, optimizer, schedule, **step_kwargs, backbone_only=True)
            if model_config.adaptive
            else None
        ),
    )


def check_config_matches(workdir: Path, cfg: RunConfig) -> None:
    """A workdir that holds checkpoints of a run resumes only that run: same model, same batches."""
    path = workdir / checkpoint.CONFIG_FILE
    if not path.is_file() or not (workdir / checkpoint.CHECKPOINT_SUBDIR).is_dir():
        return
    old = json.loads(path.read_text())
    new = cfg.to_dict()
    if old.get("model") != new["model"]:
        raise ValueError(
            f"{path}: this workdir holds a run of a different model ({old.get('model')}); "
            f"use a new --workdir or the same model settings"
        )
    for key in ("batch_size", "patch_size", "kind"):
        if old.get("data", {}).get(key) != new["data"][key]:
            raise ValueError(
                f"{path}: the saved run has data.{key}={old.get('data', {}).get(key)!r}, this one "
                f"{new['data'][key]!r}; resuming would not continue the same batches"
            )


@dataclasses.dataclass
class TrainState:
    """What changes as the run goes: parameters and optimizer state (replicated over the mesh), the
    number of updates done, the data iterator's restored state, and the last saved step."""

    params: Any
    opt_state: Any
    step: int
    data_state: dict | None = None
    last_saved: int | None = None


class Run:
    """One training run in one workdir: the only place that wires data, state, checkpoints and logs."""

    def __init__(self, cfg: RunConfig, workdir: Path, mesh: jax.sharding.Mesh):
        self.cfg = cfg
        self.workdir = workdir
        self.mesh = mesh
        self.main_host = jax.process_index() == 0
        self.functions = compiled_functions(
            cfg.model, cfg.optimizer, cfg.train.depth_range, cfg.train.depth_loss_weight, mesh
        )
        self.base_key = jax.random.key(cfg.train.seed)
        self.replicated = parallel.replicated_sharding(mesh)
        self.manager = checkpoints.make_manager(workdir, max_to_keep=cfg.train.keep_checkpoints)
        self.stop = _StopRequest(multihost=jax.process_count() > 1)
        # Set by run(): the state, then what open_logs_and_data builds from it.
        self.state: TrainState | None = None
        self.writer: MetricWriter | None = None
        self.batches: TrainBatches | None = None
        self.validation_set: ValidationSet | None = None
        self.eval_mesh: jax.sharding.Mesh | None = None
        self.predictor: Predictor | None = None
        self.progress: tqdm | None = None

    def say(self, text: str) -> None:
        if self.main_host:
            print(text)

    # ------------------------------------------------------------------ set-up
    def initialise_or_restore(self, fresh: dict) -> TrainState:
        """The state to start from: `fresh` parameters (host arrays; the backbone from init_from when
        set) or the latest checkpoint's state."""
        latest = self.manager.latest_step()
        if latest is None:
            if self.cfg.init_from:
                fresh, source_step, source_config = init_backbone_from(fresh, self.cfg.init_from)
                self.say(
                    f"Initialised the backbone from {self.cfg.init_from} (step {source_step}, model "
                    f"{source_config['model']['name']}); the adapter is freshly initialised."
                )
            params = parallel.replicate(fresh, self.replicated)
            return TrainState(params, self.functions.init_opt_state(params), step=0)
        abstract_params = checkpoint.abstract_tree(fresh, self.replicated)
        abstract_opt = checkpoint.abstract_tree(
            jax.eval_shape(self.functions.optimizer.init, abstract_params), self.replicated
        )
        restored = checkpoints.restore_checkpoint(
            self.manager, latest, abstract_params=abstract_params, abstract_opt_state=abstract_opt
        )
        meta = restored["meta"]
        self.say(f"Resumed from {self.manager.directory / str(latest)} at step {meta['step']}.")
        return TrainState(
            restored["params"], restored["opt_state"], int(meta["step"]), meta["data"], last_saved=latest
        )

    def open_logs_and_data(self, state: TrainState) -> None:
        data, scale = self.cfg.data, self.cfg.model.scale
        # Records past the restored step belong to steps this run does again: drop them, so that
        # metrics.jsonl holds each step once. A finished run validates its last step again, too.
        redone = ("valid", "final") if state.step >= self.cfg.train.steps else ()
        self.writer = MetricWriter(self.workdir, enabled=self.main_host)
        self.writer.drop_records(after_step=state.step, at_step_splits=redone)
        source = make_source(data.kind, **source_kwargs(data, scale=scale, split="train"))
        self.batches = TrainBatches(
            source,
            batch_size=data.batch_size,
            patch_size=data.patch_size,
            scale=scale,
            seed=self.cfg.train.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            augment=data.augment,
            prefetch=data.prefetch,
        )
        if state.data_state is not None:
            self.batches.set_state(state.data_state)
        self.validation_set = load_validation_set(data, scale=scale)
        # Validation runs on this host's first device alone (every host computes the same numbers), so it
        # needs no global arrays: a one-device mesh replaces the data mesh meanwhile.
        self.eval_mesh = parallel.data_mesh([jax.local_devices()[0]])
        with jax.set_mesh(self.eval_mesh):
            model = nnx.merge(self.functions.graphdef, parallel.local_copy(state.params))
            self.predictor = Predictor(model)

    # ------------------------------------------------------------------ hooks
    def ensure_finite(self, state: TrainState) -> None:
        if not bool(all_finite(state.params)):
            raise NonFiniteLossError(
                f"the parameters became NaN/Inf by step {state.step}; not saving them. The last good "
                f"checkpoint is {self.describe_checkpoint(state.last_saved)}."
            )

    def checked_metrics(self, step: int, metrics: dict) -> dict[str, float]:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(
                f"the training loss became {values['loss']} at step {step}; training stopped and nothing "
                f"after the last good checkpoint was saved "
                f"({self.describe_checkpoint(self.state.last_saved)}). "
                f"Lower optimizer.lr or set optimizer.grad_clip_norm, then rerun to resume from that "
                f"checkpoint."
            )
        return values

    def log(self, step: int, values: dict[str, float], steps_per_sec: float) -> None:
        values = dict(
            values, steps_per_sec=steps_per_sec, patches_per_sec=steps_per_sec * self.cfg.data.batch_size
        )
        self.writer.write(step, "train", values)
        self.progress.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2g}", refresh=False)

    def validate(self, state: TrainState) -> dict[str, float]:
        # Checked first: validating NaN parameters would fail inside the metrics instead.
        self.ensure_finite(state)
        with jax.set_mesh(self.eval_mesh):
            self.predictor.set_params(parallel.local_copy(state.params))
            values = validation_metrics(self.predictor, self.validation_set, self.cfg.train.eval_depths)
        self.writer.write(state.step, "valid", values)
        return values

    def save(self, state: TrainState, validation: dict[str, float] | None) -> None:
        if state.step == state.last_saved:
            return
        self.ensure_finite(state)
        meta = {
            "step": state.step,
            "rng_key": np.asarray(jax.random.key_data(self.base_key)).tolist(),
            "data": self.batches.get_state(),
        }
        metrics = None if validation is None else {BEST_METRIC: validation[BEST_METRIC]}
        with checkpoint.quiet_orbax():
            checkpoints.save_checkpoint(
                self.manager,
                state.step,
                params=state.params,
                opt_state=state.opt_state,
                meta=meta,
                metrics=metrics,
            )
        state.last_saved = state.step

    # ------------------------------------------------------------------ the loop
    def step_loop(self, state: TrainState) -> tuple[str, dict[str, float], int | None]:
        """Train until cfg.train.steps or a stop request; returns (status, last validation, its step)."""
        every = self.cfg.train
        functions = self.functions
        batch_sharding = parallel.batch_sharding(self.mesh)
        validation: dict[str, float] = {}
        validated_at = None
        pending = None  # the last step's metrics, checked while the next step runs
        timer, timer_step = time.perf_counter(), state.step
        while state.step < every.steps:
            if self.stop(state.step):
                return "preempted", validation, validated_at
            batch = parallel.global_batch(next(self.batches), batch_sharding)
            warming_up = state.step < every.backbone_warmup_steps and functions.warmup_step is not None
            step_fn = functions.warmup_step if warming_up else functions.train_step
            state.params, state.opt_state, metrics = step_fn(
                state.params, state.opt_state, batch["lr"], batch["hr"], jnp.int32(state.step), self.base_key
            )
            state.step += 1
            if pending is not None:
                values = self.checked_metrics(*pending)
                self.progress.set_postfix(loss=f"{values['loss']:.3f}", refresh=False)
            pending = (state.step, metrics)
            self.progress.update(1)
            at_end = state.step == every.steps
            do_log = state.step % every.log_every == 0 or at_end
            do_eval = state.step % every.eval_every == 0 or at_end
            do_save = state.step % every.checkpoint_every == 0 or at_end
            if not (do_log or do_eval or do_save):
                continue
            values, pending = self.checked_metrics(*pending), None
            if do_log:
                self.log(
                    state.step, values, (state.step - timer_step) / max(time.perf_counter() - timer, 1e-9)
                )
            if do_eval:
                validation, validated_at = self.validate(state), state.step
                self.progress.write(self.validation_line(state.step, validation))
            if do_save:
                self.save(state, validation if validated_at == state.step else None)
            timer, timer_step = time.perf_counter(), state.step
        if pending is not None:
            self.checked_metrics(*pending)
        return "completed", validation, validated_at

    def finish(
        self, state: TrainState, status: str, validation: dict, validated_at: int | None
    ) -> TrainResult:
        self.progress.close()
        if status == "preempted":
            self.save(state, None)
            self.manager.wait_until_finished()
            self.say(
                f"Stopped by SIGTERM at step {state.step}; checkpoint saved in {self.manager.directory}. "
                f"Run the same command again to resume."
            )
        else:
            self.save(state, validation if validated_at == state.step else None)
            if validated_at != state.step:
                validation = self.validate(state)
            self.writer.write(state.step, "final", validation)
            self.say(self.summary(validation))
        return TrainResult(state.step, status, parallel.host_tree(state.params), validation)

    def run(self) -> TrainResult:
        fresh = jax.device_get(self.functions.init_params(self.base_key))
        with jax.set_mesh(self.mesh):
            self.state = state = self.initialise_or_restore(fresh)
            self.open_logs_and_data(state)
            return self.train_from(state)

    def train_from(self, state: TrainState) -> TrainResult:
        cfg = self.cfg
        self.say(
            f"Training {cfg.model.name} x{cfg.model.scale} for {cfg.train.steps} steps on "
            f"{self.mesh.devices.size} device(s) ({jax.process_count()} process(es)), global batch "
            f"{cfg.data.batch_size}; workdir {self.workdir}"
        )
        self.progress = tqdm(
            total=cfg.train.steps,
            initial=state.step,
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=not (self.main_host and cfg.train.progress_bar),
        )
        status, validation, validated_at = self.step_loop(state)
        return self.finish(state, status, validation, validated_at)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.stop.close()
        if self.batches is not None:
            self.batches.close()
        # Orbax saves are asynchronous: the last (good) checkpoint must be complete before we leave.
        self.manager.wait_until_finished()
        self.manager.close()
        if self.writer is not None:
            self.writer.close()

    # ------------------------------------------------------------------ messages
    def describe_checkpoint(self, step: int | None) -> str:
        if step is None:
            return f"none yet in {self.manager.directory}"
        return f"step {step} in {self.manager.directory}"

    def depth_results(self, validation: dict[str, float]) -> list[tuple[float, float, float]]:
        """(desired depth, PSNR-Y, mean executed depth) per evaluated depth."""
        vset = self.validation_set
        return [
            (
                d,
                validation[metric_name(vset, "psnr_y", f"d{d:g}")],
                validation[metric_name(vset, "mean_depth", f"d{d:g}")],
            )
            for d in self.cfg.train.eval_depths
        ]

    def bicubic_psnr(self, validation: dict[str, float]) -> float:
        return validation[metric_name(self.validation_set, "psnr_y", "bicubic")]

    def validation_line(self, step: int, validation: dict[str, float]) -> str:
        parts = [f"d={d:g}: {p:.2f} dB (depth {md:.2f})" for d, p, md in self.depth_results(validation)]
        bicubic = self.bicubic_psnr(validation)
        return f"[step {step}] valid PSNR-Y " + ", ".join(parts) + f"; bicubic {bicubic:.2f} dB"

    def summary(self, validation: dict[str, float]) -> str:
        vset: ValidationSet = self.validation_set
        names = ", ".join(vset.names[:5])
        lines = [f"Held-out PSNR-Y on {len(vset.names)} image(s) ({names}), x{self.cfg.model.scale}:"]
        results = self.depth_results(validation)
        lines += [f"  desired depth {d:g}: {p:.2f} dB, mean executed depth {md:.2f}" for d, p, md in results]
        best_d, best_psnr, _ = max(results)
        bicubic = self.bicubic_psnr(validation)
        lines.append(
            f"Held-out PSNR-Y: {self.cfg.model.name} {best_psnr:.2f} dB (desired depth {best_d:g}) vs "
            f"bicubic {bicubic:.2f} dB ({best_psnr - bicubic:+.2f} dB)"
        )
        return "\n".join(lines)


def train(
    config: ml_collections.ConfigDict | dict | RunConfig,
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
    mesh = parallel.data_mesh(devices)
    parallel.check_batch_size(cfg.data.batch_size, mesh)
    check_config_matches(workdir, cfg)
    if jax.process_index() == 0:
        checkpoint.write_config(workdir, cfg.to_dict())
    run = Run(cfg, workdir, mesh)
    try:
        return run.run()
    finally:
        run.close()
