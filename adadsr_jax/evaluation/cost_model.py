"""A per-machine latency model of the predictor's forward, and the `--budget-ms T` search it serves.

predicted_ms = coefficients . features(depth map), where the features count the work the code executes
for that depth map (`forward_features`, a pure function of the map and an `ExecSpec`):

  forwards             1 per forward call: dispatch, the fixed part of the program;
  sparse_stack_pixels  LR pixels of each residual stack that runs its sparse path (plan building, layout
                       conversions, the per-block soft masks), plus the head, adapter, body-end conv,
                       upsampler and tail, which cost per pixel whatever the stack does;
  sparse_rows          rows the pixel-list convs compute: per conv (first on the 3x3-dilated set, second
                       on the active set) its active count rounded up as the JAX path walks it (whole
                       tiles, then whole tail tiles: `sparse_conv_jax.computed_rows`), or to the Pallas
                       kernel's `block_rows` on a GPU;
                       for a tiled EDSR stack (CPU, <= 64 features), the pixels of the T x T tiles its
                       two loops per block compute, rounded up to whole chunks of tiles;
  dense_conv_pixels    LR pixels of the convs that the per-conv dispatcher switches to XLA's dense conv
                       (active count above the crossover fraction) inside a sparse stack;
  dense_stack_pixels   LR pixels of each stack that `kernels.plan.use_dense_stack` switches to the dense
                       masked loop (all blocks, every pixel), plus the fixed per-pixel parts as above;
  active_block_pixels  (RCAN only) LR pixels of each sparse block that runs at all: channel attention
                       and the residual add are dense per block.

The fixed per-pixel cost (head, adapter, upsampler, tail) is folded into the two stack features: every
stack runs either sparse or dense, so a separate "pixels" feature would be their exact sum (one stack) and
the fit could not tell the three apart. A dense predictor (no --sparse) runs every stack dense whatever
d is: its features are forwards and pixels, and its time does not depend on d.

The coefficients are fitted by least squares (float64, relative error weighted) to a calibration run on
this machine: the demo photo, its centre crop at half the side and a 240 x 240 crop of a training
photo, at d from 0 to D, timed with
`Predictor.time_forward` (median of repeats, compile excluded). They are cached as JSON next to the
checkpoint (`<checkpoint dir>/cost_model.json`) or in the user cache folder, keyed by the model's
fingerprint (parameters and config), the JAX and package versions, backend, device kind, machine and
sparse mode; a different key recalibrates and overwrites, a corrupt file is rebuilt with a warning.

`budget_ms_depth` is the per-image search: the largest d in [0, D] whose predicted time fits T, by
`search_depth` on depth maps from the head conv and adapter alone (`Predictor.adapter_costs`; an
output-scaling adapter runs once per image), never the full network.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import platform as platform_module
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import adadsr_jax
from adadsr_jax.evaluation.inference import AdapterCosts, Predictor, search_depth
from adadsr_jax.kernels.dispatch import stack_threshold_for, tiled_stack_plan, uses_pallas
from adadsr_jax.kernels.layout import prefix_counts
from adadsr_jax.kernels.plan import use_dense_stack
from adadsr_jax.kernels.sparse_conv_jax import computed_rows, tile_sizes
from adadsr_jax.kernels.sparse_conv_pallas import PallasTiles
from adadsr_jax.kernels.sparse_tiles import DEFAULT_TILE as TILE_SIDE
from adadsr_jax.kernels.sparse_tiles import TileGrid, tile_levels
from adadsr_jax.masks import executed_levels
from adadsr_jax.models import ModelConfig

SCHEMA = "adadsr-cost-model/1"
# Bump when the executed code paths or the calibration change (e.g. a new sparse stack kernel): old
# caches then recalibrate. 4: the upsampler folded into the tail (models.layers.upsample_and_tail), the
# third calibration size. 5: the pixel-list path's tail tiles, 3-row gathers and loop switch to the
# dense conv; the folded tail's border ring. 6: the third calibration image is a 240 x 240 crop of a
# training photo instead of the held-out photo beside its mirror image.
FEATURES_VERSION = 6
CACHE_NAME = "cost_model.json"

Timer = Callable[[np.ndarray, float], float]
NEEDS_ADAPTIVE = "a time budget needs an adaptive model (AdaEDSR/AdaRCAN): a plain backbone has one cost"


# ---------------------------------------------------------------------------------------------- features
@dataclasses.dataclass(frozen=True)
class ExecSpec:
    """What, besides the depth map, decides the work of one forward.

    threshold: the dense-crossover active fraction of the stack switch and the per-conv dispatcher
    (`kernels.dispatch.stack_threshold_for(C)`, on CPU also the per-conv one; on a GPU it is 0, so a
    sparse stack runs only when nothing executes; for a tiled EDSR stack, its plan's stack_dense); tile: rows
    per sparse conv tile, None for the JAX path's `tile_sizes(None, pixels, C, C)`, or the tile side T
    of a tiled stack; tiled_chunk: tiles per chunk when the stacks run tiled (kernels/sparse_tiles.py),
    else None; block_dense: a tiled stack's per-block dense switch (`TiledStackPlan.block_dense`).
    """

    backbone: str
    num_blocks: int
    channels: int
    num_maps: int
    sparse: bool
    threshold: float
    tile: int | None
    tiled_chunk: int | None = None
    block_dense: float | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        if not self.sparse:
            return ("forwards", "pixels")
        # A pure tiled stack has no dense switch inside; only RCAN runs per-block channel attention.
        tiles_only = self.tiled_chunk is not None and self.block_dense is None
        per_conv = () if tiles_only else ("dense_conv_pixels",)
        rcan = ("active_block_pixels",) if self.backbone == "rcan" else ()
        return ("forwards", "sparse_stack_pixels", "sparse_rows", *per_conv, "dense_stack_pixels", *rcan)


def exec_spec(config: ModelConfig, *, sparse: bool, platform: str | None = None) -> ExecSpec:
    """The ExecSpec of a model's forward on `platform` (a JAX backend name; default the current one)."""
    platform = jax.default_backend() if platform is None else platform
    c = int(config.num_features)
    tile = None
    if uses_pallas(c, c, platform):
        tile = PallasTiles().block_rows
    threshold = float(stack_threshold_for(c, platform))
    tiled = tiled_stack_plan(c, platform) if config.backbone == "edsr" else None
    if tiled is not None:
        tile, threshold = TILE_SIDE, float(tiled.stack_dense)
    return ExecSpec(
        backbone=config.backbone,
        num_blocks=int(config.num_blocks),
        channels=c,
        num_maps=int(config.num_maps),
        sparse=bool(sparse and config.adaptive),
        threshold=threshold,
        tile=tile,
        tiled_chunk=None if tiled is None else int(tiled.chunk),
        block_dense=None if tiled is None or tiled.block_dense is None else float(tiled.block_dense),
    )


def _counts(levels: np.ndarray, num_blocks: int) -> np.ndarray:
    """count_l = #{entries with level > l}, l = 0..D-1 (`kernels.layout.prefix_counts`), int64 [D]."""
    return np.asarray(prefix_counts(jnp.asarray(levels), num_blocks), np.int64)


def forward_features(depth_map: np.ndarray, spec: ExecSpec) -> np.ndarray:
    """Work of one forward on depth map [N, h, w, G] (float32), float64 [len(spec.feature_names)].

    Follows the code: per stack g, the stack runs dense when `use_dense_stack` says so (at
    spec.threshold); else, from `masks.executed_levels`, block l's first conv runs on count_dil_l rows and
    its second on count_act_l rows, each switched to the dense conv when its count > int(threshold *
    pixels); a tiled stack walks the tiles holding those rows (`sparse_tiles.tile_levels`), except in
    the blocks whose tiles exceed spec.block_dense of the map, which run both convs dense.
    """
    dm = np.asarray(depth_map, np.float32)
    if dm.ndim != 4 or dm.shape[-1] != spec.num_maps:
        raise ValueError(f"depth map must be [N, h, w, {spec.num_maps}], got {dm.shape}")
    n, h, w, _ = dm.shape
    pixels = n * h * w
    if not spec.sparse:
        return np.array([1.0, float(pixels)])
    d = spec.num_blocks
    # The JAX path's tiles and tails, or the Pallas kernel's one tile size.
    c = spec.channels
    list_tiles = tile_sizes(None, pixels, c, c) if spec.tile is None else (spec.tile, spec.tile)
    conv_limit = int(spec.threshold * pixels) if spec.threshold < 1.0 else None
    sparse_px = rows = dense_conv_px = dense_px = active_px = 0.0
    # The definitions the kernels use: executed levels and their dilation, the stack switch, list counts.
    all_levels, all_dilated = (np.asarray(a) for a in executed_levels(jnp.asarray(dm), d))
    for g in range(spec.num_maps):
        if bool(use_dense_stack(jnp.asarray(dm[..., g : g + 1]), d, spec.channels, spec.threshold)):
            dense_px += pixels
            continue
        sparse_px += pixels
        levels, dilated = all_levels[..., g], all_dilated[..., g]
        if spec.tiled_chunk is not None:
            # Tiled stack: each block's two loops walk whole chunks of T x T tiles, or, above the block
            # switch, the block runs two dense convs.
            k, t = spec.tiled_chunk, spec.tile
            grid = TileGrid(n, h, w, t)
            tiles = np.stack([_counts(tile_levels(jnp.asarray(x), grid), d) for x in (dilated, levels)])
            dense = np.zeros(d, bool)
            if spec.block_dense is not None:
                dense = tiles.sum(axis=0) > spec.block_dense * 2 * grid.count
            dense_conv_px += 2.0 * pixels * float(dense.sum())
            rows += float((-(-tiles[:, ~dense] // k) * k).sum() * t * t)
            continue
        counts = np.concatenate([_counts(dilated, d), _counts(levels, d)])
        dense = counts > conv_limit if conv_limit is not None else np.zeros(counts.shape, bool)
        dense_conv_px += pixels * float(dense.sum())
        rows += float(computed_rows(counts[~dense], *list_tiles).sum())
        active_px += pixels * float((_counts(levels, d) > 0).sum())
    values = {
        "forwards": 1.0,
        "sparse_stack_pixels": sparse_px,
        "sparse_rows": rows,
        "dense_conv_pixels": dense_conv_px,
        "dense_stack_pixels": dense_px,
        "active_block_pixels": active_px,
    }
    return np.array([values[name] for name in spec.feature_names], np.float64)


# ---------------------------------------------------------------------------------------------- the model
@dataclasses.dataclass
class CostModel:
    """Latency model of one predictor's forwards: predicted ms = coefficients . summed features.

    coefficients: float64 [F], ms per unit of each of spec.feature_names; key: the cache key it was
    calibrated under; calibration: how (samples, seconds, fit error).
    """

    spec: ExecSpec
    coefficients: np.ndarray
    key: dict = dataclasses.field(default_factory=dict)
    calibration: dict = dataclasses.field(default_factory=dict)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.spec.feature_names

    def features(self, depth_maps: Sequence[np.ndarray]) -> np.ndarray:
        """Features summed over the forwards of one image (its windows and ensemble members' maps)."""
        return np.sum([forward_features(m, self.spec) for m in depth_maps], axis=0)

    @property
    def margin(self) -> float:
        """The headroom a time budget keeps under its target, relative: the rms relative error of this
        model's fit on its own calibration samples (0 for a model without a calibration record)."""
        return float(self.calibration.get("rms_rel_error", 0.0))

    def predict_ms(self, depth_maps: Sequence[np.ndarray]) -> float:
        """Predicted time (ms) of the forwards whose depth maps [N, h, w, G] are given."""
        return float(self.features(depth_maps) @ self.coefficients)

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "key": self.key,
            "spec": dataclasses.asdict(self.spec),
            "feature_names": list(self.feature_names),
            "coefficients": [float(c) for c in self.coefficients],
            "calibration": self.calibration,
        }


def fit_coefficients(features: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Non-negative least-squares coefficients [F] of ms [S] ~ features [S, F] . c, in float64.

    Rows are weighted by 1 / ms (the relative error is what a time budget feels: 10% of a small image
    matters as much as 10% of a large one) and columns scaled to unit max (the features span 1 to 1e6),
    then numpy's lstsq. Work never saves time, so a negative coefficient is timing noise: the most
    negative feature is dropped (coefficient 0) and the rest refitted until none is negative. A feature
    the calibration never exercised (an all-zero column) gets 0. Exact data with non-negative true
    coefficients is fitted exactly (the first lstsq already has no negative coefficient).
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(ms, np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be [S, F] and ms [S], got {x.shape} and {y.shape}")
    weights = 1.0 / np.maximum(np.abs(y), 1e-9)
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    a, b = x * weights[:, None] / scale, y * weights
    active = np.ones(x.shape[1], bool)
    coef = np.zeros(x.shape[1])
    while active.any():
        coef[:] = 0.0
        coef[active], *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if coef.min() >= 0.0:
            break
        active[np.argmin(coef)] = False
    return coef / scale


# ---------------------------------------------------------------------------------------------- calibration
def forward_timer(predictor: Predictor, repeats: int = 1) -> Timer:
    """timer(lr, d) -> median ms of `repeats` forwards of lr at d; each new shape's compile is run
    untimed first."""
    seen: set[tuple[int, ...]] = set()

    def timer(lr: np.ndarray, d: float) -> float:
        x = np.asarray(lr, np.float32)
        depth = jnp.asarray(d, jnp.float32)
        if x.shape not in seen:
            seen.add(x.shape)
            predictor.time_forward(x, depth, 1)
        return predictor.time_forward(x, depth, repeats)

    return timer


def calibration_images(scale: int) -> list[np.ndarray]:
    """The calibration inputs, uint8 [h, w, 3]: the held-out demo photo's LR at `scale` (150 x 225 at
    x2), its centre crop at half the side, and a centre crop of at most 240 x 240 of the first training
    photo's LR (astronaut). Smooth synthetic images stand in when the photos are not installed.

    Three sizes so that the fit interpolates over the sizes users run instead of extrapolating (fitted on
    the two smaller images alone, 240 x 240 photos took 1.1-1.7x their predicted time), and two photos:
    with the held-out photo beside its mirror image (150 x 450) as the third, the demo model trained with
    b2 = 0.99 ran the five unseen 240 x 240 photos at 1.04-1.30x their prediction (8 of 12 budget pairs
    within +10%, README's photos at T = 120 / 200 ms); with the astronaut crop at 0.85-1.07x (12 of 12)."""
    try:
        from adadsr_jax.data import demo_source

        photo = np.asarray(demo_source(scale=scale, split="valid")[0].lr)
        other = np.asarray(demo_source(scale=scale)[0].lr)
    except (FileNotFoundError, ImportError):
        yy, xx = np.mgrid[0:256, 0:256]
        other = (127 + 100 * np.sin(np.stack([xx / 9.0, yy / 13.0, (xx + yy) / 17.0], -1))).astype(np.uint8)
        photo = other[:150, :224]
    h, w = photo.shape[:2]
    crop = np.ascontiguousarray(photo[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2])
    side_h, side_w = min(other.shape[0], 240), min(other.shape[1], 240)
    y0, x0 = (other.shape[0] - side_h) // 2, (other.shape[1] - side_w) // 2
    return [crop, photo, np.ascontiguousarray(other[y0 : y0 + side_h, x0 : x0 + side_w])]


def calibration_depths(counter: AdapterCosts, spec: ExecSpec, max_depth: int, count: int = 6) -> list[float]:
    """Desired depths to time for one image: `count` spread over the d whose stacks all run sparse (the
    regime a budget search bisects; found on a 33-point grid of [0, D] from the adapter's maps) plus D
    (the dense regime, constant in d). A dense predictor: 0 and D (its time does not depend on d)."""
    if not spec.sparse:
        return [0.0, float(max_depth)]
    grid = np.linspace(0.0, float(max_depth), 33)
    dense_stack = spec.feature_names.index("dense_stack_pixels")
    sparse = [
        float(d)
        for d in grid
        if all(forward_features(m, spec)[dense_stack] == 0 for m in counter.depth_maps_at(float(d)))
    ]
    if not sparse:
        return [0.0, float(max_depth)]
    picks = np.unique(np.round(np.linspace(0, len(sparse) - 1, min(count, len(sparse)))).astype(int))
    return sorted({*(sparse[i] for i in picks), float(max_depth)})


def calibrate(
    predictor: Predictor,
    *,
    timer: Timer | None = None,
    images: Sequence[np.ndarray] | None = None,
    repeats: int = 3,
) -> CostModel:
    """Fit a CostModel for `predictor`'s forward (its model and sparse mode) on this machine.

    Timed on a plain predictor of the same model and mode (no tiles, no ensemble: the features count
    per forward, so tiled and ensembled predictions sum them): every image of `images` (default
    `calibration_images`) at `calibration_depths`, each sample's time the median of `repeats` rounds
    over all samples (interleaved: a burst of load from another process spoils one round of many
    samples, which the median discards, rather than every repeat of one sample). timer(lr, d) -> ms of
    one forward replaces the clock (tests); it is called repeats times per sample.
    """
    if not predictor.adaptive:
        raise ValueError(NEEDS_ADAPTIVE)
    start = time.perf_counter()
    plain = predictor
    if predictor.tile is not None or predictor.self_ensemble:
        plain = Predictor(predictor.model, sparse=predictor.sparse)
    spec = exec_spec(predictor.config, sparse=predictor.sparse)
    timer = forward_timer(plain) if timer is None else timer
    images = calibration_images(predictor.scale) if images is None else images
    todo, rows = [], []
    for lr in images:
        lr = np.asarray(lr)
        counter = plain.adapter_costs(lr)
        for d in calibration_depths(counter, spec, predictor.max_depth):
            rows.append(np.sum([forward_features(m, spec) for m in counter.depth_maps_at(d)], axis=0))
            todo.append((lr, d))
    times = [[float(timer(lr, d)) for lr, d in todo] for _ in range(max(1, repeats))]
    ms = [float(np.median(t)) for t in zip(*times, strict=True)]
    samples = [
        {"shape": list(lr.shape[:2]), "desired_depth": d, "features": f.tolist(), "ms": t}
        for (lr, d), f, t in zip(todo, rows, ms, strict=True)
    ]
    x, y = np.array(rows), np.array(ms)
    coef = fit_coefficients(x, y)
    rel = (x @ coef - y) / np.maximum(y, 1e-9)
    calibration = {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - start, 3),
        "repeats": repeats,
        "rank": int(np.linalg.matrix_rank(x / np.maximum(np.abs(x).max(axis=0), 1e-300))),
        "max_rel_error": float(np.abs(rel).max()),
        "rms_rel_error": float(np.sqrt(np.mean(rel**2))),
        "samples": samples,
    }
    return CostModel(spec, coef, calibration=calibration)


# ---------------------------------------------------------------------------------------------- cache
def model_fingerprint(model) -> str:
    """sha256 hex of the model's config, scale and parameters (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    arch = {"config": dataclasses.asdict(model.config), "scale": int(model.scale)}
    h.update(json.dumps(arch, sort_keys=True).encode())
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cache_key(predictor: Predictor, *, jax_version: str | None = None) -> dict:
    """What a cached model is valid for: this model, code, JAX, backend, device, machine, sparse mode.
    jax_version overrides jax.__version__ (tests)."""
    device = jax.devices()[0]
    return {
        "schema": SCHEMA,
        "features_version": FEATURES_VERSION,
        "model": model_fingerprint(predictor.model),
        "adadsr_jax": adadsr_jax.__version__,
        "jax": jax.__version__ if jax_version is None else jax_version,
        "platform": jax.default_backend(),
        "device_kind": str(device.device_kind),
        "machine": platform_module.node(),
        "cpus": os.cpu_count(),
        "mode": predictor.mode,
        # The dense-switch thresholds and tile sizes: a change in the kernels' tables recalibrates.
        "spec": dataclasses.asdict(exec_spec(predictor.config, sparse=predictor.sparse)),
    }


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/adadsr_jax, else ~/.cache/adadsr_jax."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adadsr_jax"


def cache_paths(checkpoint_dir: str | os.PathLike | None, fingerprint: str) -> list[Path]:
    """Where a cache is looked for and written, in order: <checkpoint dir>/cost_model.json (when a
    checkpoint is given), then the user cache folder's cost_model_<fingerprint[:16]>.json."""
    paths = [] if checkpoint_dir is None else [Path(checkpoint_dir) / CACHE_NAME]
    return [*paths, user_cache_dir() / f"cost_model_{fingerprint[:16]}.json"]


@dataclasses.dataclass
class CacheInfo:
    """How a CostModel was obtained: status "cached" (read from path), "calibrated" (no cache found),
    "recalibrated (key changed: ...)" or "recalibrated (corrupt cache)"; path: the file read or written
    (None when none could be written); seconds: time spent (calibration included)."""

    status: str
    path: Path | None
    seconds: float


def read_cache(path: Path, spec: ExecSpec) -> tuple[CostModel, tuple[str, ...]]:
    """(CostModel, its feature names) stored in `path`; ValueError when it is no valid cache for `spec`."""
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ValueError(f"not a {SCHEMA} file")
        coef = np.asarray(doc["coefficients"], np.float64)
        names = tuple(doc["feature_names"])
        key, calibration = doc["key"], doc.get("calibration", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None
    if not isinstance(key, dict) or not isinstance(calibration, dict):
        raise ValueError("key and calibration must be objects")
    if coef.shape != (len(spec.feature_names),) or not np.all(np.isfinite(coef)):
        raise ValueError(f"expected {len(spec.feature_names)} finite coefficients, got {coef.tolist()}")
    return CostModel(spec, coef, key=key, calibration=calibration), names


def _write_cache(path: Path, model: CostModel, *, make_folder: bool) -> None:
    """Write atomically (a temporary file, then a rename): a reader never sees half a file."""
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(model.to_json(), indent=1) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def load_or_calibrate(
    predictor: Predictor,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_path: str | os.PathLike | None = None,
    timer: Timer | None = None,
    jax_version: str | None = None,
    images: Sequence[np.ndarray] | None = None,
    repeats: int = 3,
) -> tuple[CostModel, CacheInfo]:
    """The cached CostModel of `predictor` when one with its key exists, else a fresh calibration (written
    to the first writable location: `cache_path` when given, else `cache_paths(checkpoint_dir, ...)`).

    A cache with another key is recalibrated and overwritten; an unreadable or malformed one is rebuilt
    with a warning on stderr, never an exception. timer / images / repeats go to `calibrate`.
    """
    start = time.perf_counter()
    spec = exec_spec(predictor.config, sparse=predictor.sparse)
    key = cache_key(predictor, jax_version=jax_version)
    paths = [Path(cache_path)] if cache_path is not None else cache_paths(checkpoint_dir, key["model"])
    status = "calibrated"
    for path in paths:
        if not path.exists():
            continue
        try:
            model, names = read_cache(path, spec)
        except ValueError as err:
            _warn(f"{path}: unreadable latency cache ({err}); recalibrating")
            status = "recalibrated (corrupt cache)"
            continue
        if model.key == key and names == spec.feature_names:
            return model, CacheInfo("cached", path, time.perf_counter() - start)
        changed = sorted(k for k in key.keys() | model.key.keys() if key.get(k) != model.key.get(k))
        status = f"recalibrated (key changed: {', '.join(changed) or 'features'})"
    model = calibrate(predictor, timer=timer, images=images, repeats=repeats)
    model.key = key
    written = None
    checkpoint_file = paths[0] if cache_path is None and checkpoint_dir is not None else None
    for path in paths:
        try:
            # The checkpoint's own folder is never created here: a missing one means the user cache.
            _write_cache(path, model, make_folder=path != checkpoint_file)
            written = path
            break
        except OSError as err:
            if path == paths[-1]:
                _warn(f"{path}: cannot write the latency cache ({err}); it will be recalibrated next time")
    return model, CacheInfo(status, written, time.perf_counter() - start)


def open_for_cli(
    predictor: Predictor, *, checkpoint_dir: str | os.PathLike | None, cache_path: str | os.PathLike | None
) -> tuple[CostModel, CacheInfo]:
    """`load_or_calibrate` for evaluate.py and upscale --budget-ms, saying on stdout what will be timed
    (a note for a dense predictor) and where the latency model came from."""
    if not predictor.sparse:
        print(
            "note: --budget-ms without --sparse times the dense forward, whose time does not depend on d: "
            "each image runs at d = D when the dense forward is predicted to fit, else at d = 0"
        )
    model, info = load_or_calibrate(predictor, checkpoint_dir=checkpoint_dir, cache_path=cache_path)
    where = info.path if info.path is not None else "not cached"
    print(
        f"latency model ({predictor.mode} forward): {info.status}, {where}, {info.seconds:.1f} s; fit error "
        f"{model.margin:.1%} rms, so each time budget T aims at T / {1 + model.margin:.3f}",
        flush=True,
    )
    return model, info


# ---------------------------------------------------------------------------------------------- budget
@dataclasses.dataclass
class MsBudgetResult:
    """Outcome of a per-image time budget search.

    target_ms: asked; aimed_ms: what the search fits, target_ms / (1 + the model's margin);
    predicted_ms: the cost model's time at desired_depth; met: False when even d = 0 is predicted over
    aimed_ms (then d = 0); evaluations: predictions the search made; adapter_passes: head + adapter runs
    (1 for an output-scaling adapter); the body never runs. slowdown: the factor the predicted times
    were multiplied by (1, or this image's measured / predicted time after `retry_budget_ms_depth`).
    """

    target_ms: float
    aimed_ms: float
    predicted_ms: float
    desired_depth: float
    met: bool
    evaluations: int
    adapter_passes: int
    slowdown: float
    # The image's head + adapter maps, so that a retry searches again without another adapter pass.
    counter: AdapterCosts = dataclasses.field(repr=False, compare=False)


def budget_ms_depth(
    predictor: Predictor, lr: np.ndarray, target_ms: float, model: CostModel
) -> MsBudgetResult:
    """The largest d in [0, D] whose predicted time for `lr` fits target_ms / (1 + model.margin)
    (bisection, `search_depth`).

    The margin is the model's own rms error on its calibration: a prediction aimed exactly at T lands
    over T about half the time, and over 1.1 T whenever timing noise and model error add up to 10%
    (on the demo model, 2-core CPU: 14 of 24 (image, T) pairs within +10% without it, 19 of 20 with it;
    docs/evaluation.md).

    Every evaluation predicts from depth maps of the head conv and adapter alone; the full network runs
    only in the caller's predict at the found d. The predicted time grows with d while the stacks run
    sparse; above the dense switch it is the dense stack's, constant in d, and the search checks d = D
    first, so a budget the dense forward fits gets d = D.
    """
    if not predictor.adaptive:
        raise ValueError(NEEDS_ADAPTIVE)
    if model.spec != exec_spec(predictor.config, sparse=predictor.sparse):
        raise ValueError(f"this latency model is for {model.spec}, not for this predictor ({predictor.mode})")
    return _search_ms(predictor, predictor.adapter_costs(lr), target_ms, model, slowdown=1.0)


def _search_ms(
    predictor: Predictor, counter: AdapterCosts, target_ms: float, model: CostModel, *, slowdown: float
) -> MsBudgetResult:
    """budget_ms_depth's search on the image's adapter maps, its predicted times times `slowdown`."""
    cache: dict[float, float] = {}

    def cost(d: float) -> float:
        if d not in cache:
            cache[d] = slowdown * model.predict_ms(counter.depth_maps_at(d))
        return cache[d]

    aimed = float(target_ms) / (1.0 + model.margin)
    d, predicted, met, n = search_depth(cost, aimed, lo=0.0, hi=float(predictor.max_depth))
    return MsBudgetResult(
        float(target_ms), aimed, predicted, d, met, n, counter.adapter_passes, slowdown, counter
    )


def retry_budget_ms_depth(
    predictor: Predictor, first: MsBudgetResult, measured_ms: float, model: CostModel
) -> MsBudgetResult | None:
    """The search again for an image whose forward at first.desired_depth measured over its target, with
    this image's predicted times multiplied by its measured / predicted time; None when the forward fit
    the target, ran at d = 0 (nothing to cut) or the scaled search keeps the same d.

    The latency model fits its calibration images on average; one image can run slower than its features
    say, or the machine slower than at calibration. On a second 2-core host the demo model's 240 x 240
    photos ran 1.1-1.4x their prediction (11 of 24 (image, T) pairs within +10% of T; README). The
    callers run the forward once more at the returned depth, so a retried image costs two forwards; the
    search reuses `first`'s adapter maps."""
    if measured_ms <= first.target_ms or first.desired_depth <= 0 or first.predicted_ms <= 0:
        return None
    slowdown = first.slowdown * measured_ms / first.predicted_ms
    retry = _search_ms(predictor, first.counter, first.target_ms, model, slowdown=slowdown)
    return retry if retry.desired_depth < first.desired_depth else None
