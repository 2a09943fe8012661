"""Command line of evaluate.py: benchmark a trained model over test sets, depths, MACs and time budgets."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adadsr_jax.cli import UserError, require_checkpoint_dir, require_dir, require_output_dir, run_cli
from adadsr_jax.evaluation.budgets import check_cache_path, parse_budget, parse_budget_ms
from adadsr_jax.evaluation.datasets import find_dataset

if TYPE_CHECKING:
    from adadsr_jax.evaluation.inference import Predictor
    from adadsr_jax.evaluation.runner import RunResult


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate an AdaDSR/EDSR/RCAN model with the SR benchmark protocol (PSNR/SSIM on Y, "
        "shave = scale) over a sweep of desired depths, writing results.json/.csv/.md and plots.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir (config.json + checkpoints)")
    src.add_argument("--checkpoint", help="a directory written by save_inference_checkpoint")
    src.add_argument(
        "--model",
        help="preset name with RANDOM weights (smoke tests and timing only; numbers are meaningless)",
    )
    p.add_argument("--which", choices=("best", "latest"), default="best", help="checkpoint to load")
    p.add_argument("--data-root", help="folder holding the test sets (not needed for 'demo')")
    p.add_argument(
        "--datasets",
        default="Set5",
        help="comma list of Set5,Set14,B100,Urban100,Manga109,DIV2K,demo or folder names",
    )
    p.add_argument("--scale", type=int, help="SR factor; must match the model's (default: the model's)")
    p.add_argument(
        "--depths", help="comma list of desired depths (default D/4,D/2,3D/4,D, e.g. 8,16,24,32 for AdaEDSR)"
    )
    p.add_argument(
        "--budget",
        action="append",
        default=[],
        help="MACs budget per image, searched per image: a fraction of dense (0.5 or 50%%) or executed "
        "GMACs (12.5G); repeatable",
    )
    p.add_argument(
        "--budget-ms",
        action="append",
        default=[],
        help="time budget per image in ms (50 or 50ms), searched per image on a latency model of this "
        "machine (calibrated once, seconds, and cached); use with --sparse (a dense forward's time does "
        "not depend on d); repeatable",
    )
    p.add_argument(
        "--cost-model",
        help="latency model cache file for --budget-ms (default: <checkpoint>/cost_model.json when "
        "writable, else the user cache folder)",
    )
    p.add_argument("--sparse", action="store_true", help="sparse execution (plain backbones run dense)")
    p.add_argument("--tile", type=int, help="tiled inference: LR tile size in pixels (default: whole image)")
    p.add_argument("--tile-overlap", type=int, default=16, help="LR pixels of context around each tile")
    p.add_argument("--self-ensemble", action="store_true", help="x8 self-ensemble (flips and transpose)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per image after warm-up (0: none)")
    p.add_argument("--no-bicubic", action="store_true", help="skip the bicubic baseline row")
    p.add_argument("--save-images", action="store_true", help="write SR PNGs to <output>/sr/...")
    p.add_argument(
        "--save-depth-maps", action="store_true", help="write colour-mapped depth maps to <output>/depth/..."
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--compilation-cache", help="folder for JAX's persistent compilation cache (reruns skip compiling)"
    )
    return p


def _load(args) -> tuple[object, dict, str]:
    """(model, model description for results.json, label for tables)."""
    if args.model:
        from flax import nnx

        from adadsr_jax.models import create_model

        print(f"note: --model {args.model}: random weights, results are meaningless", file=sys.stderr)
        model = create_model(args.model, scale=args.scale or 2, rngs=nnx.Rngs(0))
        info = {
            "name": args.model,
            "scale": model.scale,
            "overrides": {},
            "path": None,
            "which": "random-init",
        }
        return model, info, f"{args.model} (random)"
    from adadsr_jax.checkpoint import load_model, model_source

    path = args.workdir or args.checkpoint
    model = load_model(path, which=args.which)
    name, overrides = model_source(path)
    info = {
        "name": name,
        "scale": int(model.scale),
        "overrides": overrides,
        "path": str(Path(path).absolute()),
        "which": args.which,
    }
    return model, info, name


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"bad {what} {text!r}: expected a comma list of numbers") from None
    if not values or any(not (v >= 0) for v in values):  # `not >=` also refuses nan
        raise ValueError(f"bad {what} {text!r}: expected non-negative numbers")
    return values


def check_args(args) -> None:
    """Every flag value and path, checked before anything is loaded (UserError / ValueError naming it):
    a typo fails at once, and nothing is created when it does."""
    for b in args.budget:
        parse_budget(b)
    for b in args.budget_ms:
        parse_budget_ms(b)
    check_cache_path(args.cost_model)
    if args.depths:
        _floats(args.depths, "--depths")
    for flag, value in (
        ("--tile", args.tile),
        ("--tile-overlap", args.tile_overlap),
        ("--repeats", args.repeats),
    ):
        if value is not None and value < 0:
            raise UserError(flag, f"must be >= 0, got {value}")
    if args.workdir or args.checkpoint:
        flag = "--workdir" if args.workdir else "--checkpoint"
        require_checkpoint_dir(args.workdir or args.checkpoint, flag)
    if args.data_root:
        require_dir(args.data_root, "--data-root")
    require_output_dir(args.output, "--output")
    if args.compilation_cache:
        require_output_dir(args.compilation_cache, "--compilation-cache")


def run(args) -> list[RunResult]:
    """Evaluate as `args` says, write the outputs and print one summary line per set and setting."""
    check_args(args)
    # Imported once the arguments are known to be good: a wrong path is reported in well under a second.
    import jax

    from adadsr_jax.evaluation.inference import Predictor
    from adadsr_jax.evaluation.reports import write_all
    from adadsr_jax.evaluation.runner import evaluate_set

    if args.compilation_cache:
        # Every benchmark image has its own shape, hence its own compile; a persistent cache makes reruns
        # (other depths, other checkpoints of the same architecture) skip them.
        jax.config.update("jax_compilation_cache_dir", str(Path(args.compilation_cache).absolute()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    model, info, label = _load(args)
    if args.scale is not None and args.scale != model.scale:
        raise UserError(
            info["path"] or "--scale",
            f"the model is x{model.scale} but --scale {args.scale} was given",
            f"drop --scale or pass --scale {model.scale}",
        )
    scale = int(model.scale)
    cfg = model.config
    if args.budget and not cfg.adaptive:
        raise ValueError(f"--budget needs an adaptive model; {label} has no adapter (one fixed cost)")
    if args.budget_ms and not cfg.adaptive:
        raise ValueError(f"--budget-ms needs an adaptive model; {label} has no adapter (one fixed cost)")
    info.update({"adaptive": bool(cfg.adaptive), "max_depth": int(cfg.max_depth)})
    if cfg.adaptive:
        depths = _floats(args.depths, "--depths") if args.depths else list(cfg.default_depths)
    else:
        if args.depths:
            print(f"note: {label} has no adapter; --depths ignored (it always runs all blocks)")
        depths = [None]
    # Resolve every set before the (slow) model runs so a typo fails fast with the searched paths.
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    benches = [find_dataset(n, args.data_root, scale=scale) for n in names]
    predictor = Predictor(
        model, sparse=args.sparse, tile=args.tile, overlap=args.tile_overlap, self_ensemble=args.self_ensemble
    )
    budgets_ms = [parse_budget_ms(b) for b in args.budget_ms]
    cost_model, cost_info = None, None
    if budgets_ms:
        cost_model, cost_info = _latency_model(args, predictor)
    # Created by the first file written (write_all, save_png), so a run that fails early leaves nothing.
    out = Path(args.output)
    runs: list[RunResult] = []
    for bench in benches:
        sub = Path(bench.name) / f"x{scale}"
        set_runs = evaluate_set(
            predictor,
            bench,
            dataset=bench.name,
            model_label=label,
            depths=depths,
            budgets=args.budget,
            ms_budgets=budgets_ms,
            cost_model=cost_model,
            bicubic=not args.no_bicubic,
            repeats=args.repeats,
            sr_dir=out / "sr" / sub if args.save_images else None,
            depth_dir=out / "depth" / sub if args.save_depth_maps else None,
            progress=not args.no_progress,
        )
        # HR-only sets: LR made here, not the standard files; said on every line, as in every output file.
        tag = " [LR generated from HR by MATLAB-style bicubic]" if bench.lr_source == "generated" else ""
        for r in set_runs:
            print(r.summary_line() + tag, flush=True)
        runs += set_runs
    settings = {
        "mode": predictor.mode,
        "sparse_requested": bool(args.sparse),
        "tile": args.tile,
        "tile_overlap": args.tile_overlap if args.tile else None,
        "self_ensemble": bool(args.self_ensemble),
        "repeats": args.repeats,
        "depths": depths,
        "budgets": list(args.budget),
        "budgets_ms": budgets_ms,
        "cost_model": cost_info,
    }
    files = write_all(out, runs, model=info, settings=settings, datasets=[b.describe() for b in benches])
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    return runs


def _latency_model(args, predictor: Predictor):
    """The cached or freshly calibrated latency model for --budget-ms, and its description for
    results.json."""
    from adadsr_jax.evaluation.cost_model import open_for_cli

    if args.repeats == 0:
        print("note: --repeats 0: the time budgets' measured latency is not reported")
    model, info = open_for_cli(
        predictor, checkpoint_dir=args.workdir or args.checkpoint, cache_path=args.cost_model
    )
    return model, {
        "status": info.status,
        "path": None if info.path is None else str(info.path),
        "seconds": round(info.seconds, 3),
        "features": list(model.feature_names),
        "coefficients_ms": [float(c) for c in model.coefficients],
        "calibration_rms_rel_error": model.calibration.get("rms_rel_error"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one `error: <path>: <problem>` line (adadsr_jax.cli's convention)."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))
