"""Evaluate a model on a test set over a depth sweep (and MACs and time budgets): per-image and mean
records.

The loop loads each image once and runs every requested desired depth on it, so one compiled forward
per image shape serves the whole sweep. Metrics follow adadsr_jax.metrics (the SR benchmark protocol).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from adadsr_jax import metrics
from adadsr_jax.evaluation.budgets import parse_budget
from adadsr_jax.evaluation.cost_model import CostModel, budget_ms_depth, retry_budget_ms_depth
from adadsr_jax.evaluation.inference import Predictor, budget_depth, gmacs

IMAGE_FIELDS = (
    "name",
    "hr_height",
    "hr_width",
    "desired_depth",
    "psnr_y",
    "ssim_y",
    "psnr_rgb",
    "mean_depth",
    "depth_map_mean",
    "block_fraction",
    "macs",
    "dense_macs",
    "release_gmacs",
    "latency_ms",
    "dense_latency_ms",
    "speedup",
    "budget_target_macs",
    "budget_met",
    "budget_ms",
    "predicted_ms",
    "budget_slowdown",
)
MEAN_FIELDS = (
    "psnr_y",
    "ssim_y",
    "psnr_rgb",
    "mean_depth",
    "depth_map_mean",
    "block_fraction",
    "gmacs",
    "dense_gmacs",
    "release_gmacs",
    "latency_ms",
    "dense_latency_ms",
    "speedup",
    "predicted_ms",
)


@dataclasses.dataclass
class ImageRecord:
    """Metrics of one image at one setting (None: does not apply, e.g. MACs of bicubic).

    mean_depth: mean executed depth; depth_map_mean: the depth map's plain mean (the hinge's quantity);
    block_fraction: executed / dense residual-block MACs.
    macs / dense_macs: raw executed / dense multiply-accumulates of the forwards run; release_gmacs: the
    AdaDSR release's FLOPs figure in units of 2^30 (adadsr_jax.macs.release_gmacs), for the paper.
    latency_ms: median time of the predictor's forwards; dense_latency_ms: the dense forward of the same
    model timed in the same loop (sparse predictors only); speedup: dense_latency_ms / latency_ms.
    budget_ms / predicted_ms: a time budget's target and the cost model's time at the chosen depth
    (adadsr_jax.evaluation.cost_model); latency_ms is the measured time of that prediction.
    budget_slowdown: 1, or the measured / predicted factor of a retry (cost_model.retry_budget_ms_depth:
    the first forward ran over budget_ms, and the image was searched and run again at a lower depth).
    """

    name: str
    hr_height: int
    hr_width: int
    desired_depth: float | None
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    mean_depth: float | None = None
    depth_map_mean: float | None = None
    block_fraction: float | None = None
    macs: float | None = None
    dense_macs: float | None = None
    release_gmacs: float | None = None
    latency_ms: float | None = None
    dense_latency_ms: float | None = None
    speedup: float | None = None
    budget_target_macs: float | None = None
    budget_met: bool | None = None
    budget_ms: float | None = None
    predicted_ms: float | None = None
    budget_slowdown: float | None = None


@dataclasses.dataclass
class RunResult:
    """One row of the tables: a method setting (model at a depth or budget, or bicubic) on one set."""

    dataset: str
    scale: int
    method: str  # "model" or "bicubic"
    label: str  # e.g. "adaedsr (d=16)", "adaedsr (budget 50%)", "adaedsr (budget 40ms)", "Bicubic"
    desired_depth: float | None
    budget: str | None  # a MACs budget ("50%", "12G") or a time budget ("40ms", see ms_budget_label)
    images: list[ImageRecord] = dataclasses.field(default_factory=list)

    @property
    def budget_ms(self) -> float | None:
        """The time budget (ms per image) of a --budget-ms run, else None."""
        return None if self.budget is None or not self.budget.endswith("ms") else float(self.budget[:-2])

    def mean(self) -> dict[str, float | None]:
        """Per-set means (over images) of MEAN_FIELDS; a field is None when any image lacks it. The
        speed-up is the mean of the per-image speed-ups, like every other per-image value."""

        def avg(values: list[float | None]) -> float | None:
            if not values or any(v is None for v in values):
                return None
            return metrics.mean_over_images([float(v) for v in values])

        imgs = self.images
        return {
            "psnr_y": avg([r.psnr_y for r in imgs]),
            "ssim_y": avg([r.ssim_y for r in imgs]),
            "psnr_rgb": avg([r.psnr_rgb for r in imgs]),
            "mean_depth": avg([r.mean_depth for r in imgs]),
            "depth_map_mean": avg([r.depth_map_mean for r in imgs]),
            "block_fraction": avg([r.block_fraction for r in imgs]),
            "gmacs": avg([gmacs(r.macs) for r in imgs]),
            "dense_gmacs": avg([gmacs(r.dense_macs) for r in imgs]),
            "release_gmacs": avg([r.release_gmacs for r in imgs]),
            "latency_ms": avg([r.latency_ms for r in imgs]),
            "dense_latency_ms": avg([r.dense_latency_ms for r in imgs]),
            "speedup": avg([r.speedup for r in imgs]),
            "predicted_ms": avg([r.predicted_ms for r in imgs]),
        }

    def to_json(self) -> dict:
        return {
            "dataset": self.dataset,
            "scale": self.scale,
            "method": self.method,
            "label": self.label,
            "desired_depth": self.desired_depth,
            "budget": self.budget,
            "mean": self.mean(),
            "images": [dataclasses.asdict(r) for r in self.images],
        }

    def summary_line(self) -> str:
        """One line for stdout: set, scale, setting, PSNR/SSIM, mean depth, GMACs, latency (sparse runs:
        also the dense latency of the same model and the speed-up; time budgets: what was asked, the
        mean predicted time and how many of the images that can fit it were measured within +10%)."""
        m = self.mean()

        def fmt(v, spec, unit=""):
            return "n/a" if v is None else f"{v:{spec}}{unit}"

        return (
            f"{self.dataset} x{self.scale} {self.label}: PSNR-Y {fmt(m['psnr_y'], '.3f')} dB, "
            f"SSIM-Y {fmt(m['ssim_y'], '.4f')}, mean depth {fmt(m['mean_depth'], '.2f')} "
            f"(depth map mean {fmt(m['depth_map_mean'], '.2f')}), "
            f"block MACs {fmt(m['block_fraction'], '.1%')}, "
            f"executed GMACs {fmt(m['gmacs'], '.4g')} / dense {fmt(m['dense_gmacs'], '.4g')} "
            f"(release count {fmt(m['release_gmacs'], '.4g')}), "
            f"latency {fmt(m['latency_ms'], '.1f', ' ms')}, "
            f"dense {fmt(m['dense_latency_ms'], '.1f', ' ms')}, "
            f"speed-up {fmt(m['speedup'], '.2f', 'x')}{self._ms_budget_text()} ({len(self.images)} images)"
        )

    def _ms_budget_text(self) -> str:
        target = self.budget_ms
        if target is None:
            return ""
        m = self.mean()
        predicted = "n/a" if m["predicted_ms"] is None else f"{m['predicted_ms']:.1f} ms"
        measured = "n/a" if m["latency_ms"] is None else f"{m['latency_ms']:.1f} ms"
        # An image whose d = 0 is predicted over the aim (budget_met False; cost_model.budget_ms_depth)
        # cannot fit at any d: it is counted apart, not as a miss of the latency model.
        timed = [r for r in self.images if r.latency_ms is not None]
        feasible = [r.latency_ms for r in timed if r.budget_met is not False]
        within = ""
        if timed:
            within = f", {within_budget(feasible, target)}/{len(feasible)} measured within +10%"
            if len(feasible) < len(timed):
                within += f" ({len(timed) - len(feasible)} predicted over the aim even at d = 0)"
            retried = sum(1 for r in timed if r.budget_slowdown not in (None, 1.0))
            if retried:
                within += f", {retried} run again at a lower d after running over"
        return f"; time budget: asked {target:g} ms, predicted {predicted}, measured {measured}{within}"

    def metric_pairs(self, prefix: str = "val") -> Iterator[tuple[str, float]]:
        """(name, value) pairs of the per-set means for loggers, named
        `<prefix>/<dataset>/<metric>/<setting>`, e.g. ("val/demo/psnr_y/d8", 32.1) or
        ("val/Set5/psnr_y/bicubic", 30.4); metrics that do not apply (None) are skipped."""
        slug = setting_slug(self)
        for field, value in self.mean().items():
            if value is not None:
                yield f"{prefix}/{self.dataset}/{field}/{slug}", float(value)


def ms_budget_label(target_ms: float) -> str:
    """RunResult.budget of a time budget: "40ms", "12.5ms"."""
    return f"{target_ms:g}ms"


def within_budget(latencies_ms: Sequence[float], target_ms: float, slack: float = 0.10) -> int:
    """How many measured times are at most (1 + slack) x the target."""
    return sum(1 for t in latencies_ms if t <= (1.0 + slack) * target_ms)


def setting_slug(run: RunResult) -> str:
    """A file-name-safe tag of a setting: "d16", "d2.5", "budget-50pct", "budget-40ms", "bicubic", "full"."""
    if run.method == "bicubic":
        return "bicubic"
    if run.budget is not None:
        return "budget-" + run.budget.replace("%", "pct").replace(".", "p")
    if run.desired_depth is None:
        return "full"
    return f"d{run.desired_depth:g}"


def image_record(
    name: str, sr: np.ndarray, hr: np.ndarray, scale: int, desired_depth: float | None, **extra
) -> ImageRecord:
    """Metrics of one SR [H, W, 3] (float or uint8) against HR uint8 [H, W, 3] per the protocol."""
    return ImageRecord(
        name=name,
        hr_height=int(hr.shape[0]),
        hr_width=int(hr.shape[1]),
        desired_depth=desired_depth,
        psnr_y=metrics.psnr(sr, hr, scale=scale),
        ssim_y=metrics.ssim(sr, hr, scale=scale),
        psnr_rgb=metrics.psnr(sr, hr, scale=scale, y_channel=False),
        **extra,
    )


def colorize_depth(depth_map: np.ndarray, max_depth: int, *, upscale: int = 1) -> np.ndarray:
    """Colour-mapped depth map (the paper's Fig. 1b/4): [h, w, G] -> uint8 [h*u, w*u, 3].

    Maps are averaged over G (one per RCAN group); colours span 0..max_depth (matplotlib "turbo"), so
    images at different desired depths share one scale.
    """
    from matplotlib import colormaps

    d = np.asarray(depth_map, np.float64).mean(axis=-1)
    rgb = colormaps["turbo"](np.clip(d / max(max_depth, 1), 0.0, 1.0))[..., :3]
    img = np.rint(rgb * 255.0).astype(np.uint8)
    if upscale > 1:
        img = img.repeat(upscale, axis=0).repeat(upscale, axis=1)
    return img


def evaluate_set(
    predictor: Predictor,
    bench: Sequence,
    *,
    dataset: str,
    model_label: str,
    depths: Sequence[float | None],
    budgets: Sequence[str] = (),
    ms_budgets: Sequence[float] = (),
    cost_model: CostModel | None = None,
    bicubic: bool = True,
    repeats: int = 3,
    sr_dir: str | Path | None = None,
    depth_dir: str | Path | None = None,
    progress: bool = True,
) -> list[RunResult]:
    """Evaluate `predictor` on the pairs of `bench` (objects with name, lr, hr) at every depth/budget.

    depths: desired depths (None = D, the only setting of a plain backbone); budgets: parse_budget
    strings, each searched per image; ms_budgets: time budgets (ms per image), each searched per image
    on `cost_model`'s predicted time (cost_model.budget_ms_depth; needed with ms_budgets). bicubic adds
    the MATLAB-bicubic baseline row. repeats: timed runs
    after the warm-up (0 = no timing). sr_dir / depth_dir: when given, SR PNGs and colour-mapped depth maps
    are written to <dir>/<setting>/<image>.png. Returns one RunResult per setting, in order
    [bicubic?] + depths + budgets + ms_budgets.
    """
    from tqdm import tqdm

    from adadsr_jax.data.images import save_png

    scale = predictor.scale
    runs: list[RunResult] = []
    bicubic_run = None
    if bicubic:
        bicubic_run = RunResult(dataset, scale, "bicubic", "Bicubic", None, None)
        runs.append(bicubic_run)
    depth_runs = []
    for d in depths:
        label = model_label if d is None else f"{model_label} (d={d:g})"
        depth_runs.append(RunResult(dataset, scale, "model", label, d, None))
    parsed = [(b, parse_budget(b)) for b in budgets]
    budget_runs = [
        RunResult(dataset, scale, "model", f"{model_label} (budget {b})", None, b) for b, _ in parsed
    ]
    if ms_budgets and cost_model is None:
        raise ValueError(
            "time budgets need a cost model (adadsr_jax.evaluation.cost_model.load_or_calibrate)"
        )
    ms_runs = [
        RunResult(
            dataset, scale, "model", f"{model_label} (budget {ms_budget_label(t)})", None, ms_budget_label(t)
        )
        for t in ms_budgets
    ]
    runs += depth_runs + budget_runs + ms_runs

    def save(run: RunResult, name: str, sr: np.ndarray, dmap: np.ndarray | None) -> None:
        if sr_dir is not None:
            save_png(Path(sr_dir) / setting_slug(run) / f"{name}.png", metrics.quantize(sr))
        if depth_dir is not None and dmap is not None:
            save_png(
                Path(depth_dir) / setting_slug(run) / f"{name}_depth.png",
                colorize_depth(dmap, predictor.max_depth, upscale=scale),
            )

    for pair in tqdm(bench, desc=f"{dataset} x{scale}", unit="img", disable=not progress, leave=False):
        name, lr, hr = str(pair.name), np.asarray(pair.lr), np.asarray(pair.hr)
        if hr.shape[:2] != (lr.shape[0] * scale, lr.shape[1] * scale):
            raise ValueError(f"{dataset}/{name}: HR {hr.shape} is not x{scale} of LR {lr.shape}")
        if bicubic_run is not None:
            from adadsr_jax.data.bicubic import upscale as bicubic_upscale

            sr = bicubic_upscale(lr, scale)
            bicubic_run.images.append(image_record(name, sr, hr, scale, None))
            save(bicubic_run, name, sr, None)
        for run in depth_runs:
            pred = predictor.predict(lr, run.desired_depth, repeats=repeats)
            run.images.append(_model_record(name, pred, hr, scale))
            save(run, name, pred.sr, pred.depth_map)
        for run, (_, budget) in zip(budget_runs, parsed, strict=True):
            found = budget_depth(predictor, lr, budget)
            pred = predictor.predict(lr, found.desired_depth, repeats=repeats)
            rec = _model_record(name, pred, hr, scale)
            rec.budget_target_macs, rec.budget_met = found.target_macs, found.met
            run.images.append(rec)
            save(run, name, pred.sr, pred.depth_map)
        for run, target in zip(ms_runs, ms_budgets, strict=True):
            chosen = budget_ms_depth(predictor, lr, target, cost_model)
            pred = predictor.predict(lr, chosen.desired_depth, repeats=repeats)
            if pred.latency_ms is not None:
                retry = retry_budget_ms_depth(predictor, chosen, pred.latency_ms, cost_model)
                if retry is not None:
                    chosen, pred = retry, predictor.predict(lr, retry.desired_depth, repeats=repeats)
            rec = _model_record(name, pred, hr, scale)
            # budget_met: whether the model predicted a depth that fits (the measured time is latency_ms).
            rec.budget_met, rec.budget_ms, rec.predicted_ms = chosen.met, float(target), chosen.predicted_ms
            rec.budget_slowdown = chosen.slowdown
            run.images.append(rec)
            save(run, name, pred.sr, pred.depth_map)
    return runs


def _model_record(name: str, pred, hr: np.ndarray, scale: int) -> ImageRecord:
    return image_record(
        name,
        pred.sr,
        hr,
        scale,
        pred.desired_depth,
        mean_depth=pred.mean_depth,
        depth_map_mean=pred.depth_map_mean,
        block_fraction=pred.block_fraction,
        macs=pred.macs,
        dense_macs=pred.dense_macs,
        release_gmacs=pred.release_gmacs,
        latency_ms=pred.latency_ms,
        dense_latency_ms=pred.dense_latency_ms,
        speedup=pred.speedup,
    )


def finite_or_none(value: float | None) -> float | str | None:
    """JSON has no inf/nan: +inf PSNR (identical images) is written as the string "inf"."""
    if value is None:
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        return None
    return value
