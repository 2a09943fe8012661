"""Run a model on whole images: one jitted forward per input shape, the desired depth a traced argument.

`Predictor` wraps an AdaDSR model for evaluation and for upscaling a user's images:
  * the desired depth is a runtime (traced) scalar, so a depth sweep or a budget search reuses the
    compiled function of an input shape instead of recompiling per depth;
  * dense or sparse execution (`sparse=True` runs the adaptive model's sparse path; a plain backbone
    has no adapter and always runs dense, which `mode` says);
  * optional tiled inference for large images: the LR image is cut into tiles of `tile` x `tile`
    pixels, each run with `overlap` pixels of real context on every side that is not an image border,
    and only the tile's own pixels are kept. All windows have one shape (one compile). When the overlap
    covers the model's receptive field the result equals whole-image inference. RCAN's channel attention
    pools over the whole input, so for RCAN models tiling is an approximation (as in the release's chop);
  * optional x8 self-ensemble (flips and transpose of the LR input, outputs mapped back and averaged);
  * latency: a warm-up run (compilation) is excluded, then the median of `repeats` timed runs. A sparse
    predictor also times the dense forward of the same model on the same inputs, alternating with the
    sparse runs so that machine load falls on both alike: `dense_latency_ms` and `speedup` (dense /
    sparse). The dense runs are timed only: the reported SR, depth map and MACs are the sparse run's;
  * cheap MACs: `macs_at` and the budget search run the head conv and adapter alone (the MACs depend
    only on the depth map), never the body. For output-scaling adapters (depth map = d * relu(P(z0)))
    one adapter pass gives the map at every d, so a search needs a single adapter pass per window.
MACs: executed and dense multiply-accumulates of each forward's depth map (`macs_counter`, by default
adadsr_jax.macs.model_macs, traced in the same jit as the forward) are summed over every forward that
ran (tiles with their overlap, ensemble members). `release_gmacs` is the AdaDSR
release's FLOPs figure (adadsr_jax.macs.release_gmacs) of the whole-image depth map, summed over the
ensemble members: the number to compare with the paper's tables.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adadsr_jax.macs import GIGA, block_macs_fraction, model_macs, release_gmacs
from adadsr_jax.masks import executed_depth
from adadsr_jax.models.network import AdaDSR


@dataclasses.dataclass
class Prediction:
    """Outputs for one LR image.

    sr: [s*h, s*w, 3] float32 0..255 (unclipped, unquantised); depth_map: [h, w, G] float32;
    mean_depth: mean over pixels and maps of ceil(clip(depth_map, 0, D)) (the release's statistic);
    depth_map_mean: the plain mean of the depth map (what the hinge term holds below d);
    block_fraction: executed residual-block MACs / dense blocks' MACs of the whole-image map(s);
    macs / dense_macs: executed and dense multiply-accumulates over all forwards run;
    release_gmacs: the release's figure (units of 2^30) for the whole image's depth map(s);
    latency_ms: median forward time (None unless timed);
    dense_latency_ms: median time of the dense forward of the same model on the same inputs, timed in
    the same loop (None unless a sparse predictor was timed); speedup: dense / sparse latency.
    """

    sr: np.ndarray
    depth_map: np.ndarray
    mean_depth: float
    macs: float
    dense_macs: float
    release_gmacs: float
    depth_map_mean: float = float("nan")
    block_fraction: float = float("nan")
    latency_ms: float | None = None
    desired_depth: float | None = None
    dense_latency_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        """dense_latency_ms / latency_ms: what the sparse path bought (None when not measured)."""
        if self.dense_latency_ms is None or not self.latency_ms:
            return None
        return self.dense_latency_ms / self.latency_ms


def tile_windows(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Split one axis of `length` pixels into cores of `tile` pixels and equal-size context windows.

    Returns (core_start, core_end, window_start, window_end) per tile. Every window has size
    min(length, tile + 2 * overlap); every core pixel has >= `overlap` pixels of context on both sides
    inside its window, or lies within `overlap` of the true image border.
    """
    if tile <= 0 or overlap < 0:
        raise ValueError(f"tile must be > 0 and overlap >= 0, got tile={tile}, overlap={overlap}")
    size = min(length, tile + 2 * overlap)
    out = []
    for start in range(0, length, tile):
        end = min(start + tile, length)
        w0 = max(0, min(start - overlap, length - size))
        out.append((start, end, w0, w0 + size))
    return out


# The eight dihedral transforms of an image [h, w, C] (x8 self-ensemble) and their inverses.
def _transform(x: np.ndarray, k: int) -> np.ndarray:
    if k & 1:
        x = x[:, ::-1]
    if k & 2:
        x = x[::-1, :]
    if k & 4:
        x = np.swapaxes(x, 0, 1)
    return np.ascontiguousarray(x)


def _inverse_transform(x: np.ndarray, k: int) -> np.ndarray:
    if k & 4:
        x = np.swapaxes(x, 0, 1)
    if k & 2:
        x = x[::-1, :]
    if k & 1:
        x = x[:, ::-1]
    return np.ascontiguousarray(x)


class Predictor:
    """Evaluation-time wrapper around an AdaDSR model (batch of one image at a time)."""

    def __init__(
        self,
        model: AdaDSR,
        *,
        sparse: bool = False,
        tile: int | None = None,
        overlap: int = 16,
        self_ensemble: bool = False,
        macs_counter: Callable[..., tuple[jax.Array, jax.Array]] = model_macs,
    ):
        """macs_counter(config, scale, lr_shape, depth_map) -> (executed, dense) MACs [N]: how each
        forward's cost is counted (adadsr_jax.macs.model_macs; tests substitute a stand-in)."""
        self.model = model
        self.scale = int(model.scale)
        self.config = model.config
        self.adaptive = bool(model.config.adaptive)
        self.max_depth = int(model.config.max_depth)
        self.tile = tile
        self.overlap = int(overlap)
        self.self_ensemble = self_ensemble
        if tile is not None and tile <= 0:
            raise ValueError(f"tile must be a positive number of LR pixels, got {tile}")
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        # A plain backbone has no depth map to skip by: it always runs dense, whatever was asked.
        self.sparse = bool(sparse and model.config.adaptive)
        self.mode = "sparse" if self.sparse else "dense"
        # Output-scaling adapters: depth map = d * relu(P(z0)), so the map at d = 1 gives every d.
        self.scales_output = self.adaptive and model.config.depth_input == "output"
        graphdef, state = nnx.split(model)
        self._state = state
        config, scale = model.config, self.scale

        def costs(depth_map, lr_shape):
            macs, dense_macs = macs_counter(config, scale, lr_shape, depth_map if config.adaptive else None)
            return {
                "macs": jnp.asarray(macs, jnp.float32),
                "dense_macs": jnp.asarray(dense_macs, jnp.float32),
            }

        def make_forward(sparse: bool):
            extra = {"sparse": True} if sparse else {}

            def forward(state, lr, desired_depth):
                sr, aux = nnx.merge(graphdef, state)(lr, desired_depth=desired_depth, **extra)
                return {"sr": sr, "depth_map": aux["depth_map"], **costs(aux["depth_map"], lr.shape)}

            # One compile per input shape: the desired depth is a traced float32 scalar.
            return jax.jit(forward)

        def adapter_only(state, lr, desired_depth):
            depth_map = nnx.merge(graphdef, state).depth_map_of(lr, desired_depth)
            return {"depth_map": depth_map, **costs(depth_map, lr.shape)}

        def scaled_costs(unit_map, desired_depth):
            # The same float32 product the adapter forms (relu(P) * d), so the counts are the forward's.
            depth_map = unit_map * desired_depth.astype(unit_map.dtype)
            return costs(depth_map, (*unit_map.shape[:3], 3))

        self._forward = make_forward(self.sparse)
        # The dense forward of the same model, for the speed-up a sparse predictor reports (timed only).
        self._dense_forward = make_forward(False) if self.sparse else None
        self._adapter_forward = jax.jit(adapter_only)
        self._scaled_costs = jax.jit(scaled_costs)

    # ------------------------------------------------------------------ core runs
    def set_params(self, params: dict) -> None:
        """Run from now on with `params` (a pure dict of the model's nnx.Param state, the training
        loop's form), reusing every compiled forward: the tree structure is unchanged."""
        nnx.replace_by_pure_dict(self._state, params)

    def compiled_count(self) -> int:
        """Number of compiled variants of the forward (one per distinct input shape)."""
        return self._forward._cache_size()

    def _depth_arg(self, desired_depth: float | None) -> jax.Array:
        d = self.max_depth if desired_depth is None else desired_depth
        return jnp.asarray(d, jnp.float32)

    def _windows(self, lr: np.ndarray) -> list[tuple[tuple | None, jax.Array]]:
        """(placement, device input [1, h', w', 3] float32) of every forward for one transformed image."""
        h, w, _ = lr.shape
        if self.tile is None or (h <= self.tile and w <= self.tile):
            return [(None, jax.device_put(np.asarray(lr[None], np.float32)))]
        out = []
        for ys in tile_windows(h, self.tile, self.overlap):
            for xs in tile_windows(w, self.tile, self.overlap):
                window = np.ascontiguousarray(lr[None, ys[2] : ys[3], xs[2] : xs[3]], np.float32)
                out.append(((ys, xs), jax.device_put(window)))
        return out

    def _inputs(self, lr: np.ndarray) -> list[list[tuple[tuple | None, jax.Array]]]:
        """Device inputs of every forward for one LR image: per ensemble member, per window."""
        ks = range(8) if self.self_ensemble else [0]
        return [self._windows(_transform(lr, k)) for k in ks]

    def _run(self, inputs: list[list[tuple[tuple | None, jax.Array]]], d: jax.Array):
        """Dispatch the forwards (asynchronously); returns (placement, device outputs) per member/window."""
        return [[(place, self._forward(self._state, x, d)) for place, x in member] for member in inputs]

    def _dispatch_all(self, lr: np.ndarray, d: jax.Array) -> list[list[tuple[tuple, dict]]]:
        return self._run(self._inputs(lr), d)

    def _stitch(self, shape: tuple[int, int], runs: list[tuple[tuple, dict]]):
        """Assemble SR [s*h, s*w, 3] and depth map [h, w, G] from window outputs (numpy)."""
        s = self.scale
        h, w = shape
        if runs[0][0] is None:
            out = runs[0][1]
            # Copy whole arrays to the host, then slice: indexing a jax.Array would run a device op.
            return np.asarray(out["sr"])[0], np.asarray(out["depth_map"])[0]
        sr = np.zeros((s * h, s * w, 3), np.float32)
        dmap = None
        for (ys, xs), out in runs:
            (c0, c1, w0, _), (e0, e1, v0, _) = ys, xs
            tile_sr = np.asarray(out["sr"])[0]
            tile_d = np.asarray(out["depth_map"])[0]
            if dmap is None:
                dmap = np.zeros((h, w, tile_d.shape[-1]), np.float32)
            sr[s * c0 : s * c1, s * e0 : s * e1] = tile_sr[
                s * (c0 - w0) : s * (c1 - w0), s * (e0 - v0) : s * (e1 - v0)
            ]
            dmap[c0:c1, e0:e1] = tile_d[c0 - w0 : c1 - w0, e0 - v0 : e1 - v0]
        return sr, dmap

    @staticmethod
    def _sum_macs(all_runs: list[list[tuple[tuple, dict]]], key: str) -> float:
        return float(sum(float(np.asarray(out[key]).sum()) for runs in all_runs for _, out in runs))

    def _collect(self, lr: np.ndarray, all_runs: list[list[tuple[tuple, dict]]]) -> Prediction:
        ks = range(8) if self.self_ensemble else [0]
        srs, dmaps = [], []
        for k, runs in zip(ks, all_runs, strict=True):
            t = _transform(lr[..., :1], k)
            sr, dmap = self._stitch(t.shape[:2], runs)
            srs.append(_inverse_transform(sr, k))
            dmaps.append(_inverse_transform(dmap, k))
        sr = np.mean(srs, axis=0, dtype=np.float64).astype(np.float32) if len(srs) > 1 else srs[0]
        dmap = np.mean(dmaps, axis=0) if len(dmaps) > 1 else dmaps[0]
        # Mean executed depth of the release: ceil(clip(d, 0, D)) averaged over pixels and maps. With an
        # ensemble this is the mean over the members' maps (each member executes its own map).
        executed = [executed_depth(m, self.max_depth).mean() for m in dmaps]
        return Prediction(
            sr=sr,
            depth_map=dmap.astype(np.float32),
            mean_depth=float(np.mean(executed)),
            depth_map_mean=float(np.mean([np.mean(m) for m in dmaps])),
            block_fraction=float(np.mean([block_macs_fraction(m, self.max_depth) for m in dmaps])),
            macs=self._sum_macs(all_runs, "macs"),
            dense_macs=self._sum_macs(all_runs, "dense_macs"),
            # The release counts whole images (its chop overlap aside): one figure per ensemble member's
            # stitched map, in the member's orientation (the dense part depends only on h * w).
            release_gmacs=float(
                sum(release_gmacs(self.config, self.scale, np.asarray(m)[None])[0] for m in dmaps)
            ),
        )

    # ------------------------------------------------------------------ public API
    def predict(self, lr: np.ndarray, desired_depth: float | None = None, *, repeats: int = 0) -> Prediction:
        """Super-resolve one LR image [h, w, 3] (uint8 or float, 0..255).

        desired_depth: the AdaDSR desired depth d (ignored by plain backbones; None means D).
        repeats: when > 0, time that many extra runs after this first (warm-up) one and report their
        median as latency_ms. The first run includes compilation for a new input shape.
        """
        lr = np.asarray(lr)
        if lr.ndim != 3 or lr.shape[-1] != 3:
            raise ValueError(f"lr must be an [h, w, 3] image, got shape {lr.shape}")
        lr = lr.astype(np.float32)
        d = self._depth_arg(desired_depth)
        all_runs = self._dispatch_all(lr, d)
        pred = self._collect(lr, all_runs)
        pred.desired_depth = None if not self.adaptive else float(d)
        if repeats > 0:
            if self._dense_forward is not None:
                pred.latency_ms, pred.dense_latency_ms = self.time_sparse_and_dense(lr, d, repeats)
            else:
                pred.latency_ms = self.time_forward(lr, d, repeats)
        return pred

    def time_forward(self, lr: np.ndarray, d: jax.Array, repeats: int) -> float:
        """Median wall time (ms) of the device forwards for one image (already compiled), over repeats.

        The inputs (transforms, tiles) are put on the device once, before the timed loop, so the latency
        is the forward passes alone, not host preparation or host-to-device copies.
        """
        inputs = self._inputs(lr)
        jax.block_until_ready(inputs)
        times = [self._time_once(self._run, inputs, d) for _ in range(repeats)]
        return float(statistics.median(times))

    def time_sparse_and_dense(self, lr: np.ndarray, d: jax.Array, repeats: int) -> tuple[float, float]:
        """(sparse, dense) median wall times (ms) of one image's forwards, over `repeats` runs of each.

        For a sparse predictor whose sparse forward has already run on this shape (predict's warm-up).
        The dense forward gets one untimed warm-up (its compile for a new shape), then the timed runs
        alternate sparse-dense, dense-sparse, ... so that a change in machine load during the loop falls
        on both alike. Inputs are put on the device once, as in time_forward.
        """
        if self._dense_forward is None:
            raise ValueError("time_sparse_and_dense needs a sparse predictor")
        inputs = self._inputs(lr)
        jax.block_until_ready(inputs)
        dense = self._run_dense
        jax.block_until_ready(self._outputs(dense(inputs, d)))
        sparse_ms, dense_ms = [], []
        for i in range(repeats):
            order = ((self._run, sparse_ms), (dense, dense_ms))
            for run, times in order if i % 2 == 0 else order[::-1]:
                times.append(self._time_once(run, inputs, d))
        return float(statistics.median(sparse_ms)), float(statistics.median(dense_ms))

    def _run_dense(self, inputs: list[list[tuple[tuple | None, jax.Array]]], d: jax.Array):
        return [[(place, self._dense_forward(self._state, x, d)) for place, x in member] for member in inputs]

    @staticmethod
    def _outputs(all_runs) -> list:
        return [out for runs in all_runs for _, out in runs]

    def _time_once(self, run: Callable, inputs, d: jax.Array) -> float:
        t0 = time.perf_counter()
        jax.block_until_ready(self._outputs(run(inputs, d)))
        return (time.perf_counter() - t0) * 1e3

    # ------------------------------------------------------------------ MACs without the body
    def adapter_costs(self, lr: np.ndarray) -> AdapterCosts:
        """The MACs of `lr` at any desired depth, from the head conv and adapter alone (see macs_at)."""
        return AdapterCosts(self, self._inputs(np.asarray(lr, np.float32)))

    def macs_at(self, lr: np.ndarray, desired_depth: float) -> tuple[float, float]:
        """(executed, dense) MACs of predicting `lr` at `desired_depth`, summed over the forwards predict
        runs (windows, ensemble members), from one pass of the head conv and adapter: the body never
        runs. Equal to predict's macs / dense_macs (the same depth maps; tested)."""
        return self.adapter_costs(lr).macs_at(desired_depth)


class AdapterCosts:
    """(executed, dense) MACs of one image at any desired depth, counted on head + adapter passes.

    The inputs (transforms, tiles) are put on the device once. Output-scaling adapters run once, at
    d = 1, on the first query; every later depth only rescales those maps and counts (no adapter pass).
    Weight-scaling adapters run once per queried depth. `adapter_passes` counts the adapter runs (each
    over every window and ensemble member of the image).
    """

    def __init__(self, predictor: Predictor, inputs: list[list[tuple[tuple | None, jax.Array]]]):
        self._p = predictor
        self._inputs = [x for member in inputs for _, x in member]
        self._unit_maps: list[jax.Array] | None = None
        self.adapter_passes = 0

    def _adapter(self, d: jax.Array) -> list[dict]:
        self.adapter_passes += 1
        return [self._p._adapter_forward(self._p._state, x, d) for x in self._inputs]

    def _units(self) -> list[jax.Array]:
        """The maps at d = 1 of an output-scaling adapter (one adapter pass, on the first call)."""
        if self._unit_maps is None:
            self._unit_maps = [out["depth_map"] for out in self._adapter(jnp.float32(1.0))]
        return self._unit_maps

    def depth_maps_at(self, desired_depth: float) -> list[np.ndarray]:
        """The depth maps [1, h, w, G] of every forward of the image at `desired_depth` (host arrays):
        output-scaling adapters rescale the d = 1 maps by the same float32 product the forward forms."""
        d = self._p._depth_arg(desired_depth)
        if self._p.scales_output:
            return [np.asarray(m) * np.float32(d) for m in self._units()]
        return [np.asarray(out["depth_map"]) for out in self._adapter(d)]

    def macs_at(self, desired_depth: float) -> tuple[float, float]:
        d = self._p._depth_arg(desired_depth)
        if self._p.scales_output:
            outs = [self._p._scaled_costs(m, d) for m in self._units()]
        else:
            outs = self._adapter(d)
        return (
            float(sum(float(np.asarray(o["macs"]).sum()) for o in outs)),
            float(sum(float(np.asarray(o["dense_macs"]).sum()) for o in outs)),
        )


# ---------------------------------------------------------------------- MACs budget
@dataclasses.dataclass
class BudgetResult:
    """Outcome of a per-image budget search: the chosen desired depth and its executed/dense MACs.

    met is False when even d = 0 exceeds the target (the fixed head/tail/adapter cost): then d = 0.
    evaluations: MAC counts the search made; adapter_passes: head + adapter runs it took (1 for an
    output-scaling adapter, one per evaluation for a weight-scaling one); the body never runs.
    """

    desired_depth: float
    macs: float
    dense_macs: float
    target_macs: float
    met: bool
    evaluations: int
    adapter_passes: int = 0


def search_depth(
    cost: Callable[[float], float], target: float, *, lo: float, hi: float, iterations: int = 14
) -> tuple[float, float, bool, int]:
    """Largest d in [lo, hi] with cost(d) <= target, for a non-decreasing cost (bisection).

    Returns (d, cost(d), met, evaluations); met is False (and d = lo) when cost(lo) > target.
    """
    evaluations = 1
    c_hi = cost(hi)
    if c_hi <= target:
        return hi, c_hi, True, evaluations
    c_lo = cost(lo)
    evaluations += 1
    if c_lo > target:
        return lo, c_lo, False, evaluations
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        c_mid = cost(mid)
        evaluations += 1
        if c_mid <= target:
            lo, c_lo = mid, c_mid
        else:
            hi = mid
    return lo, c_lo, True, evaluations


def budget_depth(predictor: Predictor, lr: np.ndarray, budget: tuple[str, float]) -> BudgetResult:
    """Per-image desired depth meeting a MACs budget (see budgets.parse_budget) by a monotone search over d.

    The executed MACs grow with d (deeper maps run more blocks at more pixels), so bisection finds the
    largest d whose MACs are within the target. The MACs depend only on the adapter's depth maps, so
    every evaluation runs the head conv and adapter alone (Predictor.adapter_costs), never the body;
    the predict at the found d is then the image's one full-network pass.
    """
    if not predictor.adaptive:
        raise ValueError(
            "a MACs budget needs an adaptive model (AdaEDSR/AdaRCAN): a plain backbone has one cost"
        )
    counter = predictor.adapter_costs(lr)
    macs_max, dense = counter.macs_at(predictor.max_depth)
    kind, value = budget
    target = value * dense if kind == "fraction" else value * GIGA
    cache: dict[float, float] = {float(predictor.max_depth): macs_max}

    def cost(d: float) -> float:
        if d not in cache:
            cache[d] = counter.macs_at(d)[0]
        return cache[d]

    d, macs, met, n = search_depth(cost, target, lo=0.0, hi=float(predictor.max_depth))
    return BudgetResult(
        desired_depth=d,
        macs=macs,
        dense_macs=dense,
        target_macs=target,
        met=met,
        evaluations=n,
        adapter_passes=counter.adapter_passes,
    )


def gmacs(macs: float | None) -> float | None:
    """MACs -> GMACs in units of 2^30 (the release's unit); None (no MACs, e.g. bicubic) stays None."""
    return None if macs is None or math.isnan(macs) else macs / GIGA
