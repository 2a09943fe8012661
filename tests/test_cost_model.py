"""--budget-ms: the latency model's features follow the code the sparse forward executes, its fit recovers a
known (fake) clock, the search picks the largest d that fits without any full forward, and the cache is
written, reused, and rebuilt when its key changes or the file is corrupt."""

import json
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adadsr_jax.checkpoint import save_inference_checkpoint
from adadsr_jax.data import demo_source
from adadsr_jax.evaluation import cost_model as cm
from adadsr_jax.evaluation.budgets import parse_budget_ms
from adadsr_jax.evaluation.cli import main as evaluate_main
from adadsr_jax.evaluation.inference import Predictor
from adadsr_jax.kernels.dispatch import threshold_for, tiled_stack_plan
from adadsr_jax.kernels.plan import make_plan, use_dense_stack
from adadsr_jax.kernels.sparse_tiles import DEFAULT_TILE as TILE_SIDE
from adadsr_jax.kernels.sparse_tiles import TileGrid, nested_tiles, tile_levels
from adadsr_jax.masks import executed_levels
from adadsr_jax.models import create_model, get_model_config
from adadsr_jax.upscale import main as upscale_main

S = 2
PHOTO = np.asarray(demo_source(scale=S, split="valid")[0].lr)  # 150 x 225, a real photograph
CROPS = [PHOTO[30:54, 40:72], PHOTO[60:92, 100:140]]  # 24 x 32 and 32 x 40: calibration
UNSEEN = PHOTO[10:38, 150:186]  # 28 x 36: never calibrated on
# The fake machine: ms per unit of each feature of an EDSR sparse forward.
TRUE_BY_FEATURE = {
    "forwards": 0.3,
    "sparse_stack_pixels": 2e-3,
    "sparse_rows": 1e-3,
    "dense_conv_pixels": 1.5e-3,
    "dense_stack_pixels": 9e-3,
}
TRUE = np.array(
    [TRUE_BY_FEATURE[n] for n in cm.exec_spec(get_model_config("adaedsr_tiny"), sparse=True).feature_names]
)


def _adapter_pre_relu(model, lr: np.ndarray) -> np.ndarray:
    @nnx.jit
    def pre(model, x):
        x = model.adapter.layer0(model._head(x))
        for layer in model.adapter.layers:
            x = layer(x)
        return x

    return np.asarray(pre(model, jnp.asarray(lr[None], jnp.float32)))


def _like_trained(model):
    """Shift and scale the adapter's last conv so its map is zero on 40% of the photo's pixels (a trained
    adapter's flat regions) and reaches 4 at d = 1: a random one is positive almost everywhere, so every
    conv of its sparse stack would switch dense and the sparse rows would never be exercised; with
    these, the calibration's depths meet every regime (tile loops, dense blocks, the dense stack)."""
    pre = np.concatenate([_adapter_pre_relu(model, c).ravel() for c in CROPS])
    q = np.quantile(pre, 0.4)
    s = 4.0 / (pre.max() - q)
    conv = model.adapter.layers[-1].conv
    conv.kernel[...] = conv.kernel[...] * s
    conv.bias[...] = (conv.bias[...] - q) * s
    return model


@pytest.fixture(scope="module")
def model():
    return _like_trained(create_model("adaedsr_tiny", scale=S, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def predictor(model):
    return Predictor(model, sparse=True)


class FakeClock:
    """timer(lr, d): TRUE . features of the depth map the model's own forward uses (counts its calls)."""

    _forwards: ClassVar[dict] = {}  # one jitted forward per model, shared by its clocks

    def __init__(self, model, coefficients=TRUE):
        self.coefficients, self.calls = coefficients, 0
        self.spec = cm.exec_spec(model.config, sparse=True)
        if id(model) not in self._forwards:
            graphdef, state = nnx.split(model)
            forward = jax.jit(lambda x, d: nnx.merge(graphdef, state)(x, desired_depth=d)[1]["depth_map"])
            self._forwards[id(model)] = (model, forward)  # the model kept alive: its id stays its own
        self.forward = self._forwards[id(model)][1]

    def __call__(self, lr: np.ndarray, d: float) -> float:
        self.calls += 1
        depth_map = self.forward(jnp.asarray(np.asarray(lr)[None], jnp.float32), jnp.float32(d))
        return float(cm.forward_features(np.asarray(depth_map), self.spec) @ self.coefficients)


# ---------------------------------------------------------------------------------------------- features
def _maps(shape, g: int, d_max: float, seed: int) -> list[np.ndarray]:
    """Depth maps [1, h, w, g] from empty to full: blocky random levels times masks of rising density."""
    rng = np.random.default_rng(seed)
    h, w = shape
    out = [np.zeros((1, h, w, g), np.float32), np.full((1, h, w, g), d_max + 0.5, np.float32)]
    for density in (0.02, 0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.9):
        values = rng.uniform(0.0, d_max + 0.5, size=(1, h, w, g))
        mask = rng.uniform(size=(1, h, w, g)) < density
        out.append((values * mask).astype(np.float32))
    return out


# Jitted (one compile per map shape instead of one per eager op).
_use_dense_stack = jax.jit(use_dense_stack, static_argnums=(1, 2, 3))
_make_plan = jax.jit(make_plan, static_argnums=(1, 2))


def _reference(depth_map: np.ndarray, config, sparse: bool = True) -> np.ndarray:
    """The features from the code itself: the stack switch (`use_dense_stack`), the blocks' list counts
    (`make_plan`), the per-conv crossover of `sparse_conv3x3` and the JAX path's tile rounding."""
    n, h, w, g = depth_map.shape
    p = n * h * w
    if not sparse:
        return np.array([1.0, p])
    d, c = config.num_blocks, config.num_features
    thr = threshold_for(c, c)
    tiled = tiled_stack_plan(c) if config.backbone == "edsr" else None
    if tiled is not None:
        thr = tiled.stack_dense
    # The JAX path: tiles of 512 rows (at most the list, at least 8, a multiple of the tail), then the
    # rest rounded up to tails of 32 rows above 128 features, else to a whole tile.
    tile = min(512, max(8, p))
    tail = min(32, tile) if c > 128 else tile
    tile = -(-tile // tail) * tail
    f = {"sparse": 0, "rows": 0, "dense_conv": 0, "dense": 0, "blocks": 0}
    for k in range(g):
        stack_map = jnp.asarray(depth_map[..., k : k + 1])
        if bool(_use_dense_stack(stack_map, d, c, thr)):
            f["dense"] += p
            continue
        f["sparse"] += p
        if tiled is not None:
            # The tiled stack's own tile levels and per-block tile counts, walked in whole chunks, or
            # both convs dense in a block whose tiles exceed the block switch.
            grid = TileGrid(n, h, w, TILE_SIDE)
            levels, dilated = executed_levels(stack_map, d)
            counts = [
                np.asarray(nested_tiles(tile_levels(lv[..., 0], grid), d)[1]) for lv in (dilated, levels)
            ]
            for block in range(d):
                if counts[0][block] + counts[1][block] > tiled.block_dense * 2 * grid.count:
                    f["dense_conv"] += 2 * p
                    continue
                for k in (counts[0][block], counts[1][block]):
                    f["rows"] += -(-int(k) // tiled.chunk) * tiled.chunk * TILE_SIDE**2
            continue
        plan = _make_plan(stack_map, d, "nested")
        for count in np.concatenate([np.asarray(plan["counts_dil"]), np.asarray(plan["counts_act"])]):
            if count > int(thr * p):
                f["dense_conv"] += p
            else:
                f["rows"] += int(count) // tile * tile + -(-(int(count) % tile) // tail) * tail
        f["blocks"] += p * int((np.asarray(plan["counts_act"]) > 0).sum())
    out = [1.0, f["sparse"], f["rows"], f["dense_conv"], f["dense"]]
    return np.array(out + ([f["blocks"]] if config.backbone == "rcan" else []), np.float64)


@pytest.mark.parametrize("name", ["adaedsr_tiny", "adarcan_tiny", "adaedsr_small"])
@pytest.mark.parametrize("shape", [(9, 11), (30, 40)], ids=["one-tile", "tiles-and-tails"])
def test_features_follow_the_executed_code(name, shape):
    config = get_model_config(name)
    spec = cm.exec_spec(config, sparse=True)
    regimes, mixed = set(), False
    for dm in _maps(shape, config.num_maps, config.max_depth, seed=len(name)):
        got = cm.forward_features(dm, spec)
        np.testing.assert_array_equal(got, _reference(dm, config))
        regimes.add((got[1] > 0, got[spec.feature_names.index("dense_stack_pixels")] > 0))
        mixed |= bool(got[spec.feature_names.index("dense_conv_pixels")] > 0 and got[2] > 0)
    assert regimes >= {(True, False), (False, True)}  # both sides of the stack switch were checked
    assert mixed  # and a sparse stack with both dense and sparse convs (tiled: the block switch)
    dense = cm.exec_spec(config, sparse=False)
    np.testing.assert_array_equal(cm.forward_features(dm, dense), _reference(dm, config, sparse=False))
    assert dense.feature_names == ("forwards", "pixels")


# ---------------------------------------------------------------------------------------------- fit
def test_calibration_recovers_a_known_clock(model, predictor):
    clock = FakeClock(model)
    fitted = cm.calibrate(predictor, timer=clock, images=CROPS)
    assert fitted.calibration["rank"] == len(TRUE)  # every feature was exercised
    np.testing.assert_allclose(fitted.coefficients, TRUE, rtol=1e-6)
    # Each sample is the median of 3 interleaved rounds over all the samples.
    assert clock.calls == 3 * len(fitted.calibration["samples"]) >= 30
    # Unseen image and depths: the prediction from the adapter's maps is the clock of the full forward.
    counter = predictor.adapter_costs(UNSEEN)
    for d in (0.05, 0.4, 0.9, 1.7, 2.6, 3.0):
        want = clock(UNSEEN, d)
        assert fitted.predict_ms(counter.depth_maps_at(d)) == pytest.approx(want, rel=1e-9)


def test_fit_weights_rows_by_relative_error():
    # Two inconsistent rows of one feature: the relative-error fit lands nearer the smaller time's ratio.
    coef = cm.fit_coefficients(np.array([[1.0], [10.0]]), np.array([1.0, 20.0]))
    assert coef[0] == pytest.approx(1.2)  # argmin (c - 1)^2 + (c/2 - 1)^2, not the plain lstsq's 201/101


def test_fit_never_makes_work_save_time():
    # Times that fall as a feature grows (noise): plain lstsq gives that feature a negative cost; the fit
    # drops it and refits the rest instead: argmin_c sum (c / y - 1)^2 = sum(1 / y) / sum(1 / y^2).
    x = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    y = np.array([1.0, 0.9, 0.8])
    assert np.linalg.lstsq(x, y, rcond=None)[0][1] < 0
    coef = cm.fit_coefficients(x, y)
    assert coef[1] == 0.0 and coef[0] == pytest.approx(np.sum(1 / y) / np.sum(1 / y**2))


# ---------------------------------------------------------------------------------------------- search
def _count_full_forwards(p: Predictor) -> list[int]:
    calls = [0]
    for attr in ("_forward", "_dense_forward"):
        fn = getattr(p, attr)

        def counted(*args, _fn=fn):
            calls[0] += 1
            return _fn(*args)

        setattr(p, attr, counted)
    return calls


def test_budget_search_picks_the_largest_d_that_fits(model):
    p = Predictor(model, sparse=True)
    known = cm.CostModel(cm.exec_spec(model.config, sparse=True), TRUE)
    counter = p.adapter_costs(UNSEEN)

    def predicted(d):
        return known.predict_ms(counter.depth_maps_at(d))

    grid = np.linspace(0.0, 3.0, 301)
    costs = np.array([predicted(d) for d in grid])
    # A target inside the sparse regime, below the dense stack's time at d = D.
    target = 0.5 * (costs[0] + costs[-1])
    assert costs[0] < target < costs[-1]
    calls = _count_full_forwards(p)
    found = cm.budget_ms_depth(p, UNSEEN, target, known)
    assert calls == [0]  # head + adapter only
    assert found.adapter_passes == 1  # output scaling: one adapter pass served every depth
    assert found.met and 0.0 < found.desired_depth < 3.0
    assert found.predicted_ms == predicted(found.desired_depth) <= target
    eps = 3.0 / 2**14  # the bisection's resolution
    assert predicted(found.desired_depth + eps) > target
    assert np.all(costs[grid >= found.desired_depth + eps] > target)  # nothing deeper fits either
    # Nothing fits: d = 0, met False, the predicted time of d = 0.
    low = cm.budget_ms_depth(p, UNSEEN, 0.5 * costs[0], known)
    assert (low.desired_depth, low.met, low.predicted_ms) == (0.0, False, costs[0])
    # Everything fits: d = D.
    high = cm.budget_ms_depth(p, UNSEEN, costs.max() + 1.0, known)
    assert (high.desired_depth, high.met) == (3.0, True)
    assert known.margin == 0.0 and found.aimed_ms == target  # no calibration record: no headroom
    # A model whose calibration fit was 10% off (rms) keeps 10% under T: it fits T / 1.1.
    unsure = cm.CostModel(known.spec, TRUE, calibration={"rms_rel_error": 0.1})
    careful = cm.budget_ms_depth(p, UNSEEN, target, unsure)
    assert careful.aimed_ms == pytest.approx(target / 1.1)
    assert careful.predicted_ms == predicted(careful.desired_depth) <= careful.aimed_ms
    assert predicted(careful.desired_depth + eps) > careful.aimed_ms
    assert careful.desired_depth < found.desired_depth
    assert calls == [0]


def test_an_image_that_runs_slower_than_predicted_is_searched_again_at_its_own_speed(model):
    """retry_budget_ms_depth: measured over T at the found d -> the search on this image's predicted
    times times measured / predicted, a smaller d whose scaled time fits; nothing to retry otherwise."""
    p = Predictor(model, sparse=True)
    known = cm.CostModel(cm.exec_spec(model.config, sparse=True), TRUE)
    counter = p.adapter_costs(UNSEEN)

    def predicted(d):
        return known.predict_ms(counter.depth_maps_at(d))

    target = 0.5 * (predicted(0.0) + predicted(3.0))
    first = cm.budget_ms_depth(p, UNSEEN, target, known)
    assert first.slowdown == 1.0 and 0.0 < first.desired_depth < 3.0
    # The forward ran 1.3x its prediction (over T): searched again on 1.3x the predicted curve.
    retry = cm.retry_budget_ms_depth(p, first, 1.3 * first.predicted_ms, known)
    assert retry is not None and retry.slowdown == pytest.approx(1.3)
    assert retry.desired_depth < first.desired_depth and retry.target_ms == target
    assert retry.adapter_passes == 1  # the first search's adapter maps, not another pass
    assert (
        retry.predicted_ms == pytest.approx(1.3 * predicted(retry.desired_depth))
        and retry.predicted_ms <= target
    )
    assert 1.3 * predicted(retry.desired_depth + 3.0 / 2**14) > target  # the largest d that fits at 1.3x
    # A second miss compounds: slowdown 1.3 * measured / (its scaled prediction).
    again = cm.retry_budget_ms_depth(p, retry, 1.1 * retry.predicted_ms, known)
    assert again is None or again.slowdown == pytest.approx(1.3 * 1.1)
    # Within T (even if over the prediction), or at d = 0 already: no retry.
    assert cm.retry_budget_ms_depth(p, first, target, known) is None
    low = cm.budget_ms_depth(p, UNSEEN, 0.5 * predicted(0.0), known)
    assert low.desired_depth == 0.0 and cm.retry_budget_ms_depth(p, low, 10 * target, known) is None
    # An image 100x slower than predicted fits at no depth: d = 0, met False (said as for any image).
    hopeless = cm.retry_budget_ms_depth(p, first, 100 * first.predicted_ms, known)
    assert (hopeless.desired_depth, hopeless.met) == (0.0, False)


def test_budget_ms_refuses_what_it_cannot_serve(model):
    known = cm.CostModel(cm.exec_spec(model.config, sparse=True), TRUE)
    with pytest.raises(ValueError, match="not for this predictor"):
        cm.budget_ms_depth(Predictor(model), UNSEEN, 10.0, known)  # a dense predictor
    for bad in ("0", "-3", "nan", "inf", "fast", ""):
        with pytest.raises(ValueError, match="bad --budget-ms"):
            parse_budget_ms(bad)
    assert parse_budget_ms(" 12.5 ms") == 12.5 and parse_budget_ms("40") == 40.0


# ---------------------------------------------------------------------------------------------- cache
@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "adadsr_jax"


def test_cache_written_reused_and_rebuilt_when_the_key_changes(model, predictor, tmp_path, user_cache):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    clock = FakeClock(model)
    first, info = cm.load_or_calibrate(predictor, checkpoint_dir=ckpt, timer=clock, images=CROPS)
    assert info.status == "calibrated" and info.path == ckpt / "cost_model.json"
    assert json.loads(info.path.read_text())["key"] == cm.cache_key(predictor)
    timed = clock.calls
    assert timed > 0
    again, info = cm.load_or_calibrate(predictor, checkpoint_dir=ckpt, timer=clock, images=CROPS)
    assert info.status == "cached" and clock.calls == timed  # no recalibration
    np.testing.assert_array_equal(again.coefficients, first.coefficients)
    # Another JAX version: recalibrated and overwritten, then reused under the new key.
    _, info = cm.load_or_calibrate(predictor, checkpoint_dir=ckpt, timer=clock, images=CROPS, jax_version="9")
    assert info.status == "recalibrated (key changed: jax)" and clock.calls > timed
    assert json.loads(info.path.read_text())["key"]["jax"] == "9"
    timed = clock.calls
    _, info = cm.load_or_calibrate(predictor, checkpoint_dir=ckpt, timer=clock, images=CROPS, jax_version="9")
    assert info.status == "cached" and clock.calls == timed
    # Other parameters (one weight changed): another fingerprint, recalibrated.
    other = _like_trained(create_model("adaedsr_tiny", scale=S, rngs=nnx.Rngs(0)))
    other.tail.bias[...] = other.tail.bias[...] + 1.0
    p2 = Predictor(other, sparse=True)
    assert cm.model_fingerprint(other) != cm.model_fingerprint(model)
    _, info = cm.load_or_calibrate(p2, checkpoint_dir=ckpt, timer=clock, images=CROPS, jax_version="9")
    assert info.status == "recalibrated (key changed: model)" and clock.calls > timed
    assert json.loads(info.path.read_text())["key"]["model"] == cm.model_fingerprint(other)
    assert not user_cache.exists()  # the checkpoint folder was writable


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe\x00", b'{"schema": "adadsr-cost-model/1"}', b"[1, 2]", "coefficients"],
    ids=["syntax", "binary", "fields", "type", "values"],
)
def test_corrupt_cache_is_rebuilt_with_a_warning(model, predictor, tmp_path, user_cache, capsys, content):
    path = tmp_path / "cm.json"
    clock = FakeClock(model)
    if content == "coefficients":  # a well-formed file with unusable coefficients
        cm.load_or_calibrate(predictor, cache_path=path, timer=clock, images=CROPS)
        doc = json.loads(path.read_text())
        doc["coefficients"] = ["fast", None, 1, 2, 3]
        content = json.dumps(doc).encode()
    path.write_bytes(content)
    calls = clock.calls
    fitted, info = cm.load_or_calibrate(predictor, cache_path=path, timer=clock, images=CROPS)
    assert info.status == "recalibrated (corrupt cache)" and clock.calls > calls
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {path}: unreadable latency cache") and "Traceback" not in err
    reread, _ = cm.read_cache(path, fitted.spec)
    np.testing.assert_array_equal(reread.coefficients, fitted.coefficients)


def test_cache_falls_back_to_the_user_cache(model, predictor, tmp_path, user_cache):
    missing = tmp_path / "gone"  # not a folder we may write to: the user cache is used, nothing created
    _, info = cm.load_or_calibrate(predictor, checkpoint_dir=missing, timer=FakeClock(model), images=CROPS)
    assert info.path == user_cache / f"cost_model_{cm.model_fingerprint(model)[:16]}.json"
    assert info.path.is_file() and not missing.exists()
    _, info = cm.load_or_calibrate(predictor, checkpoint_dir=missing, timer=FakeClock(model), images=CROPS)
    assert info.status == "cached"


# ---------------------------------------------------------------------------------------------- CLIs
@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_bad_budget_ms_refused_before_loading(tmp_path, capsys, value):
    out = str(tmp_path / "out")
    # --model would build a model: the bad value must be refused first (nothing created either).
    argv = ["--model", "adaedsr_tiny", "--datasets", "demo", "--budget-ms", value, "--output", out]
    assert evaluate_main(argv) == 2
    assert capsys.readouterr().err.startswith("error: bad --budget-ms")
    argv = [str(tmp_path / "none.png"), "--checkpoint", str(tmp_path / "nope"), "--out", out]
    assert upscale_main([*argv, "--budget-ms", value]) == 2
    assert capsys.readouterr().err.startswith("error: bad --budget-ms")
    assert not (tmp_path / "out").exists()


def test_evaluate_and_upscale_budget_ms(tmp_path, capsys):
    # The model `--model adaedsr_tiny` builds, its latency cache made here with the fake clock (so the
    # commands reuse it, and the asked/predicted numbers are known).
    tiny = create_model("adaedsr_tiny", scale=S, rngs=nnx.Rngs(0))
    p = Predictor(tiny, sparse=True)
    cache = tmp_path / "cm.json"
    known, _ = cm.load_or_calibrate(p, cache_path=cache, timer=FakeClock(tiny), images=CROPS)
    out = tmp_path / "eval"
    argv = ["--model", "adaedsr_tiny", "--datasets", "demo", "--sparse", "--depths", "3", "--no-bicubic"]
    argv += ["--budget-ms", "2", "--budget-ms", "1e6", "--cost-model", str(cache), "--repeats", "1"]
    assert evaluate_main([*argv, "--no-progress", "--output", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert f"latency model (sparse forward): cached, {cache}" in stdout
    assert "(budget 2ms): " in stdout and "time budget: asked 2 ms, predicted " in stdout
    doc = json.loads((out / "results.json").read_text())
    runs = {r["budget"]: r for r in doc["runs"]}
    assert doc["settings"]["budgets_ms"] == [2.0, 1e6] and doc["settings"]["cost_model"]["status"] == "cached"
    lr = PHOTO
    for budget, target in (("2ms", 2.0), ("1e+06ms", 1e6)):
        (im,) = runs[budget]["images"]
        want = cm.budget_ms_depth(p, lr, target, known)
        assert im["budget_ms"] == target and im["latency_ms"] > 0
        assert (im["desired_depth"], im["predicted_ms"], im["budget_met"]) == pytest.approx(
            (want.desired_depth, want.predicted_ms, want.met)
        )
        assert runs[budget]["mean"]["predicted_ms"] == im["predicted_ms"]
    assert runs["1e+06ms"]["images"][0]["desired_depth"] == 3.0
    assert runs[None]["images"][0]["budget_ms"] is None
    assert "| demo predicted ms | demo ms |" in (out / "results.md").read_text()
    assert "budget_ms,predicted_ms" in (out / "results.csv").read_text().splitlines()[0]

    # upscale: the cache next to the checkpoint, made beforehand; asked, predicted and measured printed.
    ckpt = tmp_path / "ckpt"
    save_inference_checkpoint(ckpt, tiny, model_name="adaedsr_tiny")
    cm.load_or_calibrate(p, checkpoint_dir=ckpt, timer=FakeClock(tiny), images=CROPS)
    from adadsr_jax.data.images import save_png

    save_png(tmp_path / "in.png", CROPS[0])
    argv = [str(tmp_path / "in.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "sr"), "--sparse"]
    assert upscale_main([*argv, "--budget-ms", "2", "--repeats", "1"]) == 0
    stdout = capsys.readouterr().out
    want = cm.budget_ms_depth(p, CROPS[0], 2.0, known)
    assert f"latency model (sparse forward): cached, {ckpt / 'cost_model.json'}" in stdout
    assert (
        f"time budget: asked 2 ms, aimed {want.aimed_ms:.1f} ms, predicted {want.predicted_ms:.1f} ms"
        in stdout
    )
    assert f"so each time budget T aims at T / {1 + known.margin:.3f}" in stdout
    assert "measured " in stdout and (tmp_path / "sr" / "in_x2.png").is_file()


def test_summary_counts_budget_misses_only_among_images_that_can_fit():
    """k/n within +10% counts the images whose d = 0 is predicted to fit T; the others are named apart."""
    from adadsr_jax.evaluation.runner import ImageRecord, RunResult

    def image(ms: float, met: bool) -> ImageRecord:
        return ImageRecord("x", 8, 8, 0.0, 30.0, 0.9, 29.0, latency_ms=ms, budget_met=met, budget_ms=100.0)

    run = RunResult("set", 2, "model", "m (budget 100ms)", None, "100ms")
    run.images = [image(105.0, True), image(111.0, True), image(140.0, False)]
    assert run.summary_line().endswith(
        "time budget: asked 100 ms, predicted n/a, measured 118.7 ms, 1/2 measured within +10% "
        "(1 predicted over the aim even at d = 0) (3 images)"
    )
    run.images = run.images[:2]
    assert "1/2 measured within +10% (2 images)" in run.summary_line()


def test_cost_model_folder_refused_before_loading(tmp_path, capsys):
    folder = tmp_path / "caches"
    folder.mkdir()
    out = str(tmp_path / "out")
    argv = ["--model", "adaedsr_tiny", "--datasets", "demo", "--budget-ms", "50", "--cost-model", str(folder)]
    assert evaluate_main([*argv, "--output", out]) == 2
    assert capsys.readouterr().err.startswith(f"error: {folder}: --cost-model is a folder")
    argv = [str(tmp_path / "none.png"), "--checkpoint", str(tmp_path / "nope"), "--out", out]
    assert upscale_main([*argv, "--budget-ms", "50", "--cost-model", str(folder)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {folder}: --cost-model is a folder")
    assert not (tmp_path / "out").exists()
