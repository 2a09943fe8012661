"""Write evaluation results: results.json, results.csv, results.md (paper-style tables) and plots.

results.json schema ("adadsr-eval/1"), documented in docs/evaluation.md:
  {"schema": "adadsr-eval/1", "created": ISO time, "protocol": str,
   "model": {"name", "scale", "overrides", "path", "which", "adaptive", "max_depth"},
   "settings": {"mode", "sparse_requested", "tile", "tile_overlap", "self_ensemble", "repeats",
                "macs_unit", "depths", "budgets", "budgets_ms", "cost_model"},
   "datasets": [{"name", "scale", "layout", "lr_source", "root", "num_images"}],
   "runs": [{"dataset", "scale", "method", "label", "desired_depth", "budget",
             "mean": {"psnr_y", "ssim_y", "psnr_rgb", "mean_depth", "depth_map_mean",
                      "block_fraction", "gmacs", "dense_gmacs",
                      "release_gmacs", "latency_ms", "dense_latency_ms", "speedup", "predicted_ms"},
             "images": [{"name", "hr_height", "hr_width", "desired_depth", "psnr_y", "ssim_y", "psnr_rgb",
                         "mean_depth", "depth_map_mean", "block_fraction", "macs", "dense_macs",
                         "release_gmacs", "latency_ms", "dense_latency_ms", "speedup",
                         "budget_target_macs", "budget_met", "budget_ms", "predicted_ms"}]}]}
gmacs / dense_gmacs are what inference executes (MACS_UNIT); release_gmacs is the AdaDSR release's
FLOPs figure, the one the paper's tables report. dense_latency_ms / speedup: the dense forward of the
same model timed in the same loop as a sparse run, and dense / sparse latency. Absent quantities (MACs
and depth for bicubic, latency without timing, dense latency of a dense run) are null; an infinite PSNR
(identical images) is the string "inf". depth_map_mean is the plain mean of the adapter's depth map (the
quantity the training hinge keeps below d); block_fraction the executed share of the residual blocks'
MACs. Time budgets (--budget-ms): budget "40ms", images' budget_ms (asked) and predicted_ms (the latency
model's time at the chosen d; latency_ms is the measured one); settings.cost_model says where the model
came from (adadsr_jax.evaluation.cost_model).
"""

from __future__ import annotations

import csv
import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path

from adadsr_jax import metrics
from adadsr_jax.evaluation.runner import IMAGE_FIELDS, RunResult, finite_or_none, setting_slug
from adadsr_jax.macs import GIGA

SCHEMA = "adadsr-eval/1"
MACS_UNIT = (
    "gmacs / dense_gmacs: executed GMACs, the MACs sparse inference runs (dilation included; conv "
    "multiply-accumulates only), units of 2^30 per image; release_gmacs: the AdaDSR release's count "
    "(units of 2^30; no dilation, bias/ReLU/residual adds included), the figure to compare with the paper"
)


def _clean(obj):
    """Recursively replace inf/nan floats with JSON-safe values."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def results_dict(runs: Sequence[RunResult], *, model: dict, settings: dict, datasets: Sequence[dict]) -> dict:
    """The results.json document (see the module docstring for the schema)."""
    return _clean(
        {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "protocol": metrics.PROTOCOL,
            "model": model,
            "settings": {**settings, "macs_unit": MACS_UNIT},
            "datasets": list(datasets),
            "runs": [r.to_json() for r in runs],
        }
    )


def write_json(path: str | Path, document: dict) -> Path:
    path = Path(path)
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    return path


def write_csv(path: str | Path, runs: Sequence[RunResult], *, datasets: Sequence[dict] = ()) -> Path:
    """One row per (dataset, setting, image), plus a row per (dataset, setting) with image "MEAN".

    lr_source is the set's "files" or "generated" (LR made from HR here) from `datasets` (describe()
    dicts); empty when the set is not described.
    """
    path = Path(path)
    lr_source = {(d["name"], d["scale"]): d["lr_source"] for d in datasets}
    header = ["dataset", "scale", "lr_source", "method", "label", "setting", *IMAGE_FIELDS]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for run in runs:
            source = lr_source.get((run.dataset, run.scale), "")
            lead = [run.dataset, run.scale, source, run.method, run.label, setting_slug(run)]
            for rec in run.images:
                writer.writerow(lead + [_cell(getattr(rec, k)) for k in IMAGE_FIELDS])
            m = run.mean()
            mean_row = {
                "name": "MEAN",
                "desired_depth": run.desired_depth,
                "psnr_y": m["psnr_y"],
                "ssim_y": m["ssim_y"],
                "psnr_rgb": m["psnr_rgb"],
                "mean_depth": m["mean_depth"],
                "depth_map_mean": m["depth_map_mean"],
                "block_fraction": m["block_fraction"],
                "macs": None if m["gmacs"] is None else m["gmacs"] * GIGA,
                "dense_macs": None if m["dense_gmacs"] is None else m["dense_gmacs"] * GIGA,
                "release_gmacs": m["release_gmacs"],
                "latency_ms": m["latency_ms"],
                "dense_latency_ms": m["dense_latency_ms"],
                "speedup": m["speedup"],
                "budget_ms": run.budget_ms,
                "predicted_ms": m["predicted_ms"],
            }
            writer.writerow(lead + [_cell(mean_row.get(k)) for k in IMAGE_FIELDS])
    return path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def _fmt(value: float | None, digits: int, kind: str = "f") -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}{kind}}"


def _datasets_in_order(runs: Sequence[RunResult]) -> list[str]:
    seen: list[str] = []
    for r in runs:
        if r.dataset not in seen:
            seen.append(r.dataset)
    return seen


def _num_images(runs: Sequence[RunResult], dataset: str) -> int:
    return next(len(r.images) for r in runs if r.dataset == dataset)


def _settings_in_order(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in runs:
        key = (r.method, r.label)
        if key not in seen:
            seen.append(key)
    return seen


def markdown_tables(runs: Sequence[RunResult], *, datasets: Sequence[dict] = ()) -> str:
    """Paper-style tables, one pair per scale: quality (Table 1 shape) and cost (Table 2 shape).

    Rows: Bicubic then the model at each desired depth / budget; columns: the test sets.
    """
    lr_source = {(d["name"], d["scale"]): d["lr_source"] for d in datasets}
    out = ["# Evaluation results", "", f"**Protocol.** {metrics.PROTOCOL}", ""]
    for scale in sorted({r.scale for r in runs}):
        sruns = [r for r in runs if r.scale == scale]
        names = _datasets_in_order(sruns)
        by_key = {(r.method, r.label, r.dataset): r for r in sruns}
        sets = " ".join(
            f"{n} ({lr_source.get((n, scale), 'files')} LR, {_num_images(sruns, n)} images)" for n in names
        )
        out += [f"## Scale x{scale}", "", f"Test sets: {sets}.", ""]
        out += [
            f"### Quality (PSNR-Y dB / SSIM-Y), x{scale}",
            "",
            f"_Protocol: Y channel, SR quantised to uint8, {scale}-pixel border shaved, float64, "
            "mean over images._",
            "",
        ]
        out.append("| Method | Scale | " + " | ".join(f"{n} PSNR | {n} SSIM" for n in names) + " |")
        out.append("|---|---|" + "---:|---:|" * len(names))
        for method, label in _settings_in_order(sruns):
            cells = []
            for n in names:
                r = by_key.get((method, label, n))
                m = r.mean() if r else {}
                cells += [_fmt(m.get("psnr_y"), 2), _fmt(m.get("ssim_y"), 4)]
            out.append(f"| {label} | x{scale} | " + " | ".join(cells) + " |")
        out += [
            "",
            f"### Cost (GMACs per image, latency ms, mean executed depth), x{scale}",
            "",
            "_Executed GMACs: the MACs sparse inference runs, dilation included, units of 2^30. Release "
            "GMACs: the AdaDSR release's count of the same depth maps (no dilation; bias, ReLU and "
            "residual adds included), units of 2^30: the figure to compare with the paper. Latency is the "
            "median of timed repeats after a warm-up run; dense ms is the dense forward of the same model "
            "timed in the same loop (sparse runs), speed-up = dense ms / ms (mean of per-image ratios); "
            "mean depth is the mean over pixels of ceil(clip(depth map, 0, D))._",
            "",
        ]
        # A predicted-ms column only when a time budget ran (the latency model's time at the chosen d).
        timed = any(r.budget_ms is not None for r in sruns)
        predicted_head = "{n} predicted ms | " if timed else ""
        out.append(
            "| Method | Scale | "
            + " | ".join(
                f"{n} executed GMACs | {n} block MACs | {n} release GMACs | "
                + predicted_head.format(n=n)
                + f"{n} ms | {n} dense ms | {n} speed-up | {n} depth"
                for n in names
            )
            + " |"
        )
        out.append("|---|---|" + "---:|" * (8 if timed else 7) * len(names))
        for method, label in _settings_in_order(sruns):
            if method == "bicubic":
                continue
            cells = []
            for n in names:
                r = by_key.get((method, label, n))
                m = r.mean() if r else {}
                cells += [
                    _fmt(m.get("gmacs"), 4, "g"),
                    _fmt(m.get("block_fraction"), 3),
                    _fmt(m.get("release_gmacs"), 4, "g"),
                    *([_fmt(m.get("predicted_ms"), 1)] if timed else []),
                    _fmt(m.get("latency_ms"), 1),
                    _fmt(m.get("dense_latency_ms"), 1),
                    _fmt(m.get("speedup"), 2),
                    _fmt(m.get("mean_depth"), 2),
                ]
            out.append(f"| {label} | x{scale} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_markdown(path: str | Path, runs: Sequence[RunResult], *, datasets: Sequence[dict] = ()) -> Path:
    path = Path(path)
    path.write_text(markdown_tables(runs, datasets=datasets))
    return path


def plot_psnr_vs_gmacs(path: str | Path, runs: Sequence[RunResult], *, dataset: str, scale: int) -> Path:
    """PSNR-Y against executed GMACs over the depth sweep of one set (the paper's Fig. 5 shape).

    Points are labelled with their setting. A dashed vertical line marks the dense network's GMACs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sruns = [r for r in runs if r.dataset == dataset and r.scale == scale]
    model_runs = [r for r in sruns if r.method == "model"]
    means = [r.mean() for r in model_runs]
    xkey, xlabel = "gmacs", "executed GMACs per image (2^30 MACs)"
    fig, ax = plt.subplots(figsize=(5.0, 3.8), dpi=120)
    sweep = [(m[xkey], m["psnr_y"], r) for m, r in zip(means, model_runs, strict=True) if r.budget is None]
    budget = [
        (m[xkey], m["psnr_y"], r)
        for m, r in zip(means, model_runs, strict=True)
        if r.budget is not None and r.budget_ms is None
    ]
    time_budget = [(m[xkey], m["psnr_y"], r) for m, r in zip(means, model_runs, strict=True) if r.budget_ms]
    if sweep:
        sweep.sort(key=lambda t: t[0])
        ax.plot([t[0] for t in sweep], [t[1] for t in sweep], "o-", label="desired depth sweep")
        for x, y, r in sweep:
            ax.annotate(setting_slug(r), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if budget:
        ax.plot([t[0] for t in budget], [t[1] for t in budget], "s", label="MACs budget")
    if time_budget:
        ax.plot([t[0] for t in time_budget], [t[1] for t in time_budget], "^", label="time budget")
    # The dense cost of the same network, for reference (the bicubic PSNR is left out: far below a trained
    # model, it would flatten the curve; it is in the tables).
    dense = [m["dense_gmacs"] for m in means if m["dense_gmacs"] is not None]
    if dense:
        ax.axvline(max(dense), color="gray", linestyle="--", linewidth=1, label="dense network")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("PSNR-Y (dB)")
    ax.set_title(f"{dataset} x{scale}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_all(
    output: str | Path, runs: Sequence[RunResult], *, model: dict, settings: dict, datasets: Sequence[dict]
) -> dict[str, Path]:
    """results.json, results.csv, results.md and psnr_vs_gmacs_<set>_x<s>.png in `output`."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    files = {
        "json": write_json(
            output / "results.json", results_dict(runs, model=model, settings=settings, datasets=datasets)
        ),
        "csv": write_csv(output / "results.csv", runs, datasets=datasets),
        "md": write_markdown(output / "results.md", runs, datasets=datasets),
    }
    for scale in sorted({r.scale for r in runs}):
        for name in _datasets_in_order([r for r in runs if r.scale == scale]):
            files[f"plot/{name}/x{scale}"] = plot_psnr_vs_gmacs(
                output / f"psnr_vs_gmacs_{name}_x{scale}.png", runs, dataset=name, scale=scale
            )
    return files
