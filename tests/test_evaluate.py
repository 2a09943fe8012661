"""evaluate.py end to end on tiny benchmark folders; the predictor: tiles, depth sweep, ensemble, budget."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adadsr_jax import metrics
from adadsr_jax.checkpoint import save_inference_checkpoint
from adadsr_jax.data.bicubic import downscale
from adadsr_jax.data.images import load_image, save_png
from adadsr_jax.evaluation.budgets import parse_budget
from adadsr_jax.evaluation.cli import main
from adadsr_jax.evaluation.inference import Predictor, budget_depth, search_depth, tile_windows
from adadsr_jax.evaluation.runner import MEAN_FIELDS, evaluate_set
from adadsr_jax.models import create_model

S = 2
HR_SHAPE = (24, 28, 3)  # every test image has this size: one compiled forward serves the whole run


def _hr(seed):
    # Smooth-ish content so SSIM/PSNR are in a sensible range.
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(6, 7, 3)).astype(np.uint8)
    return np.kron(base, np.ones((4, 4, 1), np.uint8))


@pytest.fixture(scope="module")
def tiny_model():
    return create_model("adaedsr_tiny", scale=S, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory, tiny_model):
    """A data root holding one set in each layout, plus a tiny inference checkpoint."""
    root = tmp_path_factory.mktemp("bench")
    hrs = {}
    for i, name in enumerate(["a", "b"]):
        hr = _hr(i)
        hrs[("Set5", name)] = hr
        save_png(root / "Set5" / "HR" / f"{name}.png", hr)  # EDSR layout
        save_png(root / "Set5" / "LR_bicubic" / "X2" / f"{name}x2.png", downscale(hr, S))
    hr = _hr(10)
    hrs[("Set14", "c")] = hr
    save_png(root / "HR" / "Set14" / "x2" / "c_HR_x2.png", hr)  # RCAN layout
    save_png(root / "LR" / "LRBI" / "Set14" / "x2" / "c_LRBI_x2.png", downscale(hr, S))
    hr = _hr(11)
    hrs[("B100", "d")] = hr
    save_png(root / "BSD100" / "GTmod12" / "d.png", hr)  # BasicSR layout, alias folder name
    save_png(root / "BSD100" / "LRbicx2" / "d.png", downscale(hr, S))
    hr = _hr(12)
    hrs[("Urban100", "e")] = hr
    save_png(root / "Urban100" / "e.png", hr)  # HR only
    ckpt = root / "ckpt"
    save_inference_checkpoint(ckpt, tiny_model, model_name="adaedsr_tiny")
    return root, ckpt, hrs


@pytest.fixture(scope="module")
def e2e(bench_root, tmp_path_factory):
    root, ckpt, hrs = bench_root
    out = tmp_path_factory.mktemp("out")
    argv = ["--checkpoint", str(ckpt), "--data-root", str(root), "--datasets", "Set5,Set14,B100,Urban100"]
    argv += ["--depths", "1,3", "--repeats", "2", "--output", str(out), "--save-images", "--save-depth-maps"]
    argv += ["--no-progress", "--budget", "90%", "--sparse"]
    return main(argv), out, hrs


def test_end_to_end_outputs_and_schema(e2e, capsys):
    rc, out, _ = e2e
    assert rc == 0
    for f in ["results.json", "results.csv", "results.md"]:
        assert (out / f).is_file()
    for name in ["Set5", "Set14", "B100", "Urban100"]:
        assert (out / f"psnr_vs_gmacs_{name}_x2.png").stat().st_size > 1000
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "adadsr-eval/1" and "Y channel" in doc["protocol"]
    assert doc["model"]["name"] == "adaedsr_tiny" and doc["model"]["max_depth"] == 3
    assert doc["settings"]["mode"] == "sparse" and doc["settings"]["depths"] == [1.0, 3.0]
    assert doc["settings"]["budgets"] == ["90%"]
    layouts = {d["name"]: (d["layout"], d["lr_source"]) for d in doc["datasets"]}
    assert layouts == {
        "Set5": ("edsr", "files"),
        "Set14": ("rcan", "files"),
        "B100": ("basicsr", "files"),
        "Urban100": ("hr_only", "generated"),
    }
    assert len(doc["runs"]) == 4 * 4  # bicubic + two depths + one budget per set
    for run in doc["runs"]:
        assert set(run) == {
            "dataset",
            "scale",
            "method",
            "label",
            "desired_depth",
            "budget",
            "mean",
            "images",
        }
        assert set(run["mean"]) == set(MEAN_FIELDS)
        psnrs = [im["psnr_y"] for im in run["images"]]
        assert run["mean"]["psnr_y"] == pytest.approx(np.mean(psnrs), abs=1e-12)
        if run["method"] == "model":
            assert run["mean"]["latency_ms"] > 0 and 0 <= run["mean"]["mean_depth"] <= 3
            # --sparse: the dense forward of the same model is timed in the same run, per image.
            assert run["mean"]["dense_latency_ms"] > 0
            for im in run["images"]:
                assert im["speedup"] == pytest.approx(im["dense_latency_ms"] / im["latency_ms"], rel=1e-12)
            assert run["mean"]["speedup"] == pytest.approx(
                np.mean([im["speedup"] for im in run["images"]]), rel=1e-12
            )
            assert 0 < run["mean"]["gmacs"] <= run["mean"]["dense_gmacs"]
            assert run["mean"]["release_gmacs"] == pytest.approx(
                np.mean([im["release_gmacs"] for im in run["images"]]), rel=1e-12
            )
            for im in run["images"]:
                assert 0 < im["macs"] <= im["dense_macs"]
                assert im["release_gmacs"] > 0
                # The block share, counted on the host from the depth map, against the jitted MACs count:
                # the blocks' dense MACs are 2 D 9 h w C^2 (adaedsr_tiny: D = 3, C = 8; whole images).
                lr_pixels = im["hr_height"] * im["hr_width"] / 4
                body = 2 * 3 * 9 * lr_pixels * 8**2
                rest = im["dense_macs"] - body
                assert im["block_fraction"] == pytest.approx((im["macs"] - rest) / body, rel=1e-5, abs=1e-6)
                if run["budget"] is not None:
                    assert im["budget_met"] and im["macs"] <= im["budget_target_macs"]
                    assert im["budget_target_macs"] == pytest.approx(0.9 * im["dense_macs"])
        else:
            assert run["mean"]["dense_latency_ms"] is None and run["mean"]["speedup"] is None
    assert "executed GMACs" in doc["settings"]["macs_unit"] and "release" in doc["settings"]["macs_unit"]
    md = (out / "results.md").read_text()
    assert (
        "Set5 executed GMACs | Set5 block MACs | Set5 release GMACs |" in md
        and "as the AdaDSR release counts" not in md
    )
    assert "| Set5 ms | Set5 dense ms | Set5 speed-up | Set5 depth |" in md
    assert md.count("_Protocol: Y channel") == 1 and "| adaedsr_tiny (d=3) | x2 |" in md
    assert "| Bicubic | x2 |" in md and "Urban100 (generated LR, 1 images)" in md
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["dataset"]: r["lr_source"] for r in rows} == {
        "Set5": "files",
        "Set14": "files",
        "B100": "files",
        "Urban100": "generated",
    }
    assert all(float(r["release_gmacs"]) > 0 for r in rows if r["method"] == "model")
    means = {(run["dataset"], run["label"]): run["mean"] for run in doc["runs"]}
    for r in rows:
        if r["method"] != "model":
            assert r["dense_latency_ms"] == r["speedup"] == ""
        elif r["name"] == "MEAN":  # the set means, as in results.json
            m = means[(r["dataset"], r["label"])]
            assert float(r["dense_latency_ms"]) == m["dense_latency_ms"]
            assert float(r["speedup"]) == m["speedup"]
        else:
            assert float(r["speedup"]) == float(r["dense_latency_ms"]) / float(r["latency_ms"])
    assert len(rows) == 16 + 4 * (2 + 1 + 1 + 1)  # a MEAN row per run plus one row per image


def test_reported_psnr_equals_recomputation_from_saved_pngs(e2e):
    _, out, hrs = e2e
    doc = json.loads((out / "results.json").read_text())
    checked = 0
    for run in doc["runs"]:
        if run["method"] == "bicubic":
            slug = "bicubic"
        elif run["budget"] is not None:
            slug = "budget-90pct"
        else:
            slug = f"d{run['desired_depth']:g}"
        for im in run["images"]:
            sr = load_image(out / "sr" / run["dataset"] / "x2" / slug / f"{im['name']}.png")
            hr = hrs[(run["dataset"], im["name"])]
            assert im["psnr_y"] == pytest.approx(metrics.psnr(sr, hr, scale=S), abs=1e-9)
            assert im["ssim_y"] == pytest.approx(metrics.ssim(sr, hr, scale=S), abs=1e-9)
            if run["method"] == "model":
                dmap = load_image(out / "depth" / run["dataset"] / "x2" / slug / f"{im['name']}_depth.png")
                assert dmap.shape == hr.shape
            checked += 1
    assert checked == 4 * 5


def test_cli_errors_are_clear(bench_root, tmp_path, capsys):
    root, ckpt, _ = bench_root
    out = str(tmp_path / "o")
    assert main(["--checkpoint", str(tmp_path / "missing"), "--datasets", "demo", "--output", out]) == 2
    assert "missing" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert main(["--checkpoint", str(bad), "--datasets", "demo", "--output", out]) == 2
    assert "config.json" in capsys.readouterr().err
    argv = ["--checkpoint", str(ckpt), "--data-root", str(root), "--datasets", "Manga109", "--output", out]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Manga109" in err and "searched" in err and "LRBI" in err
    assert main(["--checkpoint", str(ckpt), "--scale", "3", "--datasets", "demo", "--output", out]) == 2
    assert "the model is x2 but --scale 3 was given" in capsys.readouterr().err
    assert main(["--checkpoint", str(ckpt), "--budget", "2.5x", "--datasets", "demo", "--output", out]) == 2
    assert "bad budget" in capsys.readouterr().err


# --------------------------------------------------------------------------- predictor


def test_tile_windows_cover_with_context():
    for length, tile, overlap in [(37, 10, 4), (9, 10, 4), (40, 8, 16), (23, 5, 0)]:
        covered = np.zeros(length, int)
        for c0, c1, w0, w1 in tile_windows(length, tile, overlap):
            covered[c0:c1] += 1
            assert w1 - w0 == min(length, tile + 2 * overlap)
            assert w0 <= c0 and c1 <= w1
            assert c0 - w0 >= overlap or w0 == 0
            assert w1 - c1 >= overlap or w1 == length
        assert (covered == 1).all()


def test_tiled_equals_whole_image_and_sweep_reuses_compilation(tiny_model):
    lr = np.random.default_rng(3).integers(0, 256, size=(20, 26, 3)).astype(np.uint8)
    whole = Predictor(tiny_model)
    # Receptive field of adaedsr_tiny in LR pixels: head 1 + adapter 5 + 3 blocks x 2 + body-end 1 +
    # upsampler 1 + tail (at HR) 1 -> 15 < 16, so a 16-pixel overlap reproduces whole-image inference.
    tiled = Predictor(tiny_model, tile=8, overlap=16)
    short = Predictor(tiny_model, tile=8, overlap=2)
    for d in (0.5, 1.7, 3.0):
        a, b = whole.predict(lr, d), tiled.predict(lr, d)
        np.testing.assert_allclose(b.sr, a.sr, atol=2e-3, rtol=0)
        np.testing.assert_allclose(b.depth_map, a.depth_map, atol=1e-5, rtol=0)
        assert b.mean_depth == pytest.approx(a.mean_depth, abs=1e-6)
    assert np.abs(short.predict(lr, 3.0).sr - a.sr).max() > 0.1  # too little context is visible
    # The desired depth is traced: three depths, one compiled forward per input shape.
    assert whole.compiled_count() == 1 and tiled.compiled_count() == 1


def test_sparse_execution_matches_dense(tiny_model):
    lr = np.random.default_rng(6).integers(0, 256, size=(12, 14, 3)).astype(np.uint8)
    dense = Predictor(tiny_model)
    sparse = Predictor(tiny_model, sparse=True)
    assert (dense.mode, sparse.mode) == ("dense", "sparse")
    for d in (0.5, 2.0):
        a, b = dense.predict(lr, d), sparse.predict(lr, d)
        np.testing.assert_allclose(b.sr, a.sr, atol=1e-3, rtol=0)
        assert (b.mean_depth, b.macs, b.dense_macs) == (a.mean_depth, a.macs, a.dense_macs)
        assert a.macs < a.dense_macs  # a shallow depth map executes less than the dense network


def test_plain_backbone_reports_dense_mode_when_sparse_is_asked():
    # A plain EDSR has no adapter: it always runs dense, so the predictor must not claim "sparse".
    plain = create_model("edsr_tiny", scale=S, rngs=nnx.Rngs(0))
    p = Predictor(plain, sparse=True)
    assert (p.sparse, p.mode) == (False, "dense")
    pred = p.predict(np.zeros((8, 9, 3), np.uint8))
    assert pred.macs == pred.dense_macs > 0


def test_self_ensemble_averages_the_eight_dihedral_transforms(tiny_model):
    lr = np.random.default_rng(4).integers(0, 256, size=(10, 10, 3)).astype(np.uint8)
    plain = Predictor(tiny_model)
    outs = []
    for k in range(4):
        for flip in (False, True):
            x = np.rot90(lr, k)
            x = x[:, ::-1] if flip else x
            y = plain.predict(np.ascontiguousarray(x), 2.0).sr
            y = y[:, ::-1] if flip else y
            outs.append(np.rot90(y, -k))
    want = np.mean(outs, axis=0)
    got = Predictor(tiny_model, self_ensemble=True).predict(lr, 2.0)
    np.testing.assert_allclose(got.sr, want, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------- MACs budget


BLOCK = 2 * 9 * 8 * 8  # two 3x3 convs, 8 -> 8 channels, per LR pixel
FIXED = 5000.0  # per LR pixel: head, adapter, upsampler, tail (any positive constant will do)


def counting_macs(config, scale, lr_shape, depth_map):
    """Test stand-in for the MAC counter: body MACs = executed blocks x per-block MACs, plus a fixed part."""
    d = config.max_depth
    pixels = lr_shape[1] * lr_shape[2]
    executed = jnp.ceil(jnp.clip(depth_map, 0.0, d)).sum(axis=(1, 2, 3))
    return pixels * FIXED + BLOCK * executed, jnp.full((lr_shape[0],), pixels * (FIXED + BLOCK * d))


@pytest.fixture(scope="module", params=["stand-in counter", "model counter"])
def counting_predictor(request, tiny_model):
    if request.param == "model counter":  # adadsr_jax.macs.model_macs
        return Predictor(tiny_model)
    return Predictor(tiny_model, macs_counter=counting_macs)


def test_search_depth_is_the_largest_feasible_depth():
    def cost(d):  # a monotone step function
        return math.floor(d * 4) * 10.0

    d, c, met, _ = search_depth(cost, 55.0, lo=0.0, hi=8.0, iterations=20)
    assert met and c == 50.0 and 1.5 - 1e-4 < d < 1.5
    assert search_depth(cost, 1e9, lo=0.0, hi=8.0)[:3] == (8.0, 320.0, True)
    d, c, met, _ = search_depth(lambda d: 5.0 + d, 1.0, lo=0.0, hi=8.0)
    assert (d, c, met) == (0.0, 5.0, False)


def test_budget_mode_meets_its_target(counting_predictor):
    lr = np.random.default_rng(5).integers(0, 256, size=(12, 14, 3)).astype(np.uint8)
    p = counting_predictor
    for budget in ("0.8", "90%"):
        found = budget_depth(p, lr, parse_budget(budget))
        macs, dense = p.macs_at(lr, found.desired_depth)
        assert found.met and macs == found.macs <= found.target_macs
        # The search counted on head + adapter alone; the full forward at that depth counts the same.
        pred = p.predict(lr, found.desired_depth)
        assert (pred.macs, pred.dense_macs) == (found.macs, found.dense_macs)
        assert found.target_macs == pytest.approx(parse_budget(budget)[1] * dense)
        # Maximal: a slightly deeper setting would exceed the target.
        if found.desired_depth < p.max_depth:
            assert p.macs_at(lr, found.desired_depth + 3 / 2**13)[0] > found.target_macs
    tiny = budget_depth(p, lr, ("gmacs", 1e-9))
    assert not tiny.met and tiny.desired_depth == 0.0
    runs = evaluate_set(
        p,
        [type("P", (), {"name": "x", "lr": lr, "hr": np.zeros((24, 28, 3), np.uint8)})()],
        dataset="T",
        model_label="m",
        depths=[],
        budgets=["0.8"],
        bicubic=False,
        repeats=0,
        progress=False,
    )
    rec = runs[0].images[0]
    assert rec.budget_met and rec.macs <= rec.budget_target_macs and runs[0].mean()["gmacs"] is not None


def test_bad_budget_refused():
    with pytest.raises(ValueError, match="bad budget"):
        parse_budget("1.5")


def test_release_gmacs_is_the_release_count_of_the_depth_map(tiny_model):
    from adadsr_jax.macs import release_gmacs

    lr = np.random.default_rng(7).integers(0, 256, size=(12, 14, 3)).astype(np.uint8)
    for d in (0.5, 2.0, 3.0):
        pred = Predictor(tiny_model).predict(lr, d)
        want = release_gmacs(tiny_model.config, S, pred.depth_map[None])[0]
        assert pred.release_gmacs == pytest.approx(want, rel=1e-12) and want > 0
    # x8 self-ensemble runs eight forwards: the figure is the sum over the eight transformed inputs.
    members = []
    for k in range(4):
        for flip in (False, True):
            x = np.rot90(lr, k)
            x = np.ascontiguousarray(x[:, ::-1] if flip else x)
            members.append(Predictor(tiny_model).predict(x, 2.0).release_gmacs)
    ens = Predictor(tiny_model, self_ensemble=True).predict(lr, 2.0)
    assert ens.release_gmacs == pytest.approx(sum(members), rel=1e-9)


class _HostOnly:
    """A device output that can only be copied whole to the host (no device-side indexing)."""

    def __init__(self, value):
        self.value = value

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype=dtype)


def test_outputs_are_copied_whole_then_sliced_and_timing_reuses_device_inputs(tiny_model):
    lr = np.random.default_rng(8).integers(0, 256, size=(10, 12, 3)).astype(np.uint8)
    for tile in (None, 6):
        p = Predictor(tiny_model, tile=tile, overlap=2)
        want = p.predict(lr, 2.0)
        forward, seen = p._forward, []

        def wrapped(state, x, d, forward=forward, seen=seen):
            seen.append(x)
            out = forward(state, x, d)
            return {**out, "sr": _HostOnly(out["sr"]), "depth_map": _HostOnly(out["depth_map"])}

        p._forward = wrapped
        got = p.predict(lr, 2.0)  # stitching must not index a device array per window
        np.testing.assert_array_equal(got.sr, want.sr)
        np.testing.assert_array_equal(got.depth_map, want.depth_map)
        windows = len(seen)
        seen.clear()
        assert p.time_forward(lr.astype(np.float32), jnp.float32(2.0), 3) > 0
        # The timed loop reruns the forwards on inputs put on the device once, before timing.
        assert len(seen) == 3 * windows and len({id(x) for x in seen}) == windows
        assert all(isinstance(x, jax.Array) for x in seen)


def test_sparse_timing_alternates_with_the_dense_forward_and_changes_no_output(tiny_model):
    lr = np.random.default_rng(9).integers(0, 256, size=(10, 12, 3)).astype(np.uint8)
    for tile in (None, 6):
        p = Predictor(tiny_model, sparse=True, tile=tile, overlap=2)
        untimed = p.predict(lr, 1.5)
        assert untimed.latency_ms is None and untimed.dense_latency_ms is None and untimed.speedup is None
        calls: list[tuple[str, int]] = []

        def recording(fn, tag, calls=calls):
            def wrapped(state, x, d):
                calls.append((tag, id(x)))
                return fn(state, x, d)

            return wrapped

        p._forward = recording(p._forward, "sparse")
        p._dense_forward = recording(p._dense_forward, "dense")
        timed = p.predict(lr, 1.5, repeats=3)
        # Timing reports only times: the SR, depth map and MACs are the untimed sparse prediction's.
        np.testing.assert_array_equal(timed.sr, untimed.sr)
        np.testing.assert_array_equal(timed.depth_map, untimed.depth_map)
        assert (timed.macs, timed.mean_depth) == (untimed.macs, untimed.mean_depth)
        assert timed.latency_ms > 0 and timed.dense_latency_ms > 0
        assert timed.speedup == timed.dense_latency_ms / timed.latency_ms
        windows = len(p._inputs(lr.astype(np.float32))[0])
        # One sparse run (the prediction), one dense warm-up (compile), then alternating timed pairs.
        runs = [calls[i][0] for i in range(0, len(calls), windows)]
        assert runs == ["sparse", "dense", "sparse", "dense", "dense", "sparse", "sparse", "dense"]
        # Both timed forwards run on the same device inputs, put there once before the loop.
        timed_ids = {i for _, i in calls[2 * windows :]}
        assert len(timed_ids) == windows


def test_dense_predictor_reports_no_dense_latency(tiny_model):
    lr = np.random.default_rng(10).integers(0, 256, size=(8, 9, 3)).astype(np.uint8)
    pred = Predictor(tiny_model).predict(lr, 2.0, repeats=2)
    assert pred.latency_ms > 0 and pred.dense_latency_ms is None and pred.speedup is None
    runs = evaluate_set(
        Predictor(tiny_model),
        [type("P", (), {"name": "x", "lr": lr, "hr": np.zeros((16, 18, 3), np.uint8)})()],
        dataset="T",
        model_label="m",
        depths=[2.0],
        bicubic=False,
        repeats=2,
        progress=False,
    )
    line = runs[0].summary_line()
    assert "dense n/a, speed-up n/a (1 images)" in line and runs[0].mean()["dense_latency_ms"] is None
    rec = runs[0].images[0]
    rec.dense_latency_ms, rec.speedup = 30.0, 1.5
    assert "dense 30.0 ms, speed-up 1.50x (1 images)" in runs[0].summary_line()
