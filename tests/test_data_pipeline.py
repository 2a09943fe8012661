"""TrainBatches: shapes, determinism, exact state restore, per-host split, aligned augmentation, errors."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from adadsr_jax.data.bicubic import downscale
from adadsr_jax.data.images import ImageError, save_png
from adadsr_jax.data.pipeline import TrainBatches, augment_pair
from adadsr_jax.data.sources import PairSource, demo_source, folder_source


def _textured_hr(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth structure plus noise: any misalignment between LR and HR shows up as a large error."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 60 * np.sin(xx / (3 + seed)) * np.cos(yy / 5) + rng.normal(0, 25, (h, w))
    img = np.stack([base, base[::-1], base[:, ::-1]], axis=-1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def make_source(scale: int = 2, sizes=((40, 56), (48, 36), (36, 60))) -> PairSource:
    hrs = [_textured_hr(scale * h, scale * w, i) for i, (h, w) in enumerate(sizes)]
    lrs = [downscale(hr, scale) for hr in hrs]
    return PairSource([f"img{i}" for i in range(len(hrs))], lambda i: (lrs[i], hrs[i]), scale=scale)


@pytest.fixture(scope="module")
def source() -> PairSource:
    return make_source()


def _take(it: TrainBatches, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def _equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("lr", "hr"))


def test_shapes_and_dtypes(source) -> None:
    with TrainBatches(source, batch_size=6, patch_size=12, scale=2, seed=0) as it:
        b = next(it)
    assert b["lr"].shape == (6, 12, 12, 3) and b["hr"].shape == (6, 24, 24, 3)
    assert b["lr"].dtype == np.uint8 and b["hr"].dtype == np.uint8
    with TrainBatches(
        source, batch_size=6, patch_size=12, scale=2, seed=0, process_index=1, process_count=3
    ) as it:
        assert it.per_host_batch_size == 2
        assert next(it)["lr"].shape == (2, 12, 12, 3)


def test_deterministic_and_seed_dependent(source) -> None:
    kw = dict(batch_size=4, patch_size=10, scale=2)
    a = _take(TrainBatches(source, seed=3, **kw), 3)
    b = _take(TrainBatches(source, seed=3, prefetch=0, **kw), 3)  # synchronous path gives the same stream
    c = _take(TrainBatches(source, seed=4, **kw), 3)
    assert all(_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not _equal(a[0], a[1])
    pure = TrainBatches(source, seed=3, **kw)
    assert _equal(pure.make_batch(2), a[2])  # batch k is a pure function of k


def test_state_restore_is_exact(source) -> None:
    kw = dict(batch_size=4, patch_size=10, scale=2, seed=11)
    first = TrainBatches(source, **kw)
    _take(first, 5)
    state = json.loads(json.dumps(first.get_state()))
    assert state["step"] == 5
    expected = _take(first, 2)
    resumed = TrainBatches(source, **kw)
    next(resumed)  # a resumed iterator may already have run and prefetched
    resumed.set_state(state)
    got = _take(resumed, 2)
    assert all(_equal(x, y) for x, y in zip(expected, got, strict=True))
    assert resumed.get_state()["step"] == 7
    with pytest.raises(ValueError, match="saved seed=11 differs"):
        TrainBatches(source, **{**kw, "seed": 12}).set_state(state)
    for it in (first, resumed):
        it.close()


def test_per_host_split(source) -> None:
    kw = dict(batch_size=8, patch_size=10, scale=2, seed=5)
    single = _take(TrainBatches(source, **kw), 2)
    hosts = [_take(TrainBatches(source, process_index=p, process_count=2, **kw), 2) for p in range(2)]
    for k in range(2):
        lr0, lr1 = hosts[0][k]["lr"], hosts[1][k]["lr"]
        assert lr0.shape[0] == lr1.shape[0] == 4
        # Hosts draw different samples, and together they form exactly the single-process global batch.
        assert not {x.tobytes() for x in lr0} & {x.tobytes() for x in lr1}
        for key in ("lr", "hr"):
            np.testing.assert_array_equal(
                np.concatenate([hosts[0][k][key], hosts[1][k][key]]), single[k][key]
            )


def test_augmentation_keeps_lr_and_hr_aligned(source) -> None:
    p, s, border = 16, 2, 3  # bicubic x2 support reaches 2 LR pixels past the patch edge
    aug = TrainBatches(source, batch_size=32, patch_size=p, scale=s, seed=1, augment=True).make_batch(0)
    plain = TrainBatches(source, batch_size=32, patch_size=p, scale=s, seed=1, augment=False).make_batch(0)
    n_changed = 0
    for j in range(32):
        lr, hr = aug["lr"][j], aug["hr"][j]
        err = np.abs(downscale(hr, s).astype(int) - lr.astype(int))[border:-border, border:-border]
        assert err.max() <= 1, f"patch {j}: HR does not downscale to its LR patch (max err {err.max()})"
        # Same crop as without augmentation, transformed by one of the 8 flip/transpose combinations.
        variants = [
            augment_pair(plain["lr"][j], plain["hr"][j], hf, vf, tr)
            for hf in (False, True)
            for vf in (False, True)
            for tr in (False, True)
        ]
        assert any(np.array_equal(lr, a) and np.array_equal(hr, b) for a, b in variants)
        n_changed += not np.array_equal(lr, plain["lr"][j])
    assert n_changed >= 20  # 7 of 8 combinations change a textured patch


def test_misaligned_hr_would_be_detected(source) -> None:
    # Guard for the alignment test: a 1-pixel HR shift gives errors far above 1 grey level.
    pair = source[0]
    lr = pair.lr[4:20, 4:20]
    hr_shifted = pair.hr[9:41, 8:40]
    err = np.abs(downscale(hr_shifted, 2).astype(int) - lr.astype(int))[3:-3, 3:-3]
    assert err.max() > 5


def test_bad_configuration(source) -> None:
    with pytest.raises(ValueError, match=r"img1: LR image 36x48 \(WxH\) is smaller than the 40x40 patch"):
        TrainBatches(source, batch_size=2, patch_size=40, scale=2, seed=0)
    with pytest.raises(ValueError, match="multiple of process_count 3"):
        TrainBatches(source, batch_size=4, patch_size=8, scale=2, seed=0, process_count=3)
    with pytest.raises(ValueError, match="scale 3 differs from the source's scale 2"):
        TrainBatches(source, batch_size=4, patch_size=8, scale=3, seed=0)
    with pytest.raises(ValueError, match="no images"):
        TrainBatches(PairSource([], lambda i: None, scale=2), batch_size=4, patch_size=8, scale=2, seed=0)


def test_source_errors_reach_the_consumer() -> None:
    def load(i: int):
        raise ImageError(f"/data/{i:04d}.png: cannot decode image (broken)")

    src = PairSource(["a", "b"], load, scale=2, lr_size=lambda i: (32, 32))
    it = TrainBatches(src, batch_size=2, patch_size=8, scale=2, seed=0)
    with pytest.raises(ImageError, match=r"/data/000\d\.png: cannot decode"):
        next(it)
    it.close()


def _prefetch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("grain-prefetch")}


def test_close_stops_prefetch_threads(source) -> None:
    before = _prefetch_threads()  # other tests' iterators may still be winding down
    it = TrainBatches(source, batch_size=4, patch_size=8, scale=2, seed=0, prefetch=3)
    _take(it, 3)
    ours = _prefetch_threads() - before
    assert ours
    it.close()
    for t in ours:
        t.join(timeout=5)
        assert not t.is_alive()
    assert next(it)["lr"].shape == (4, 8, 8, 3)  # iterating after close restarts prefetching
    it.close()


def test_demo_photos_feed_the_pipeline() -> None:
    it = TrainBatches(demo_source(scale=4), batch_size=4, patch_size=24, scale=4, seed=0)
    b = next(it)
    it.close()
    assert b["hr"].shape == (4, 96, 96, 3) and b["hr"].std() > 10


def test_lazy_folder_source_in_prefetch_threads(tmp_path) -> None:
    for i in range(3):
        save_png(tmp_path / "DIV2K_train_HR" / f"{i:04d}.png", _textured_hr(64, 80, i))
    src = folder_source(tmp_path, scale=2)  # no LR folder: generated on first access, in the threads
    with TrainBatches(src, batch_size=8, patch_size=16, scale=2, seed=0, prefetch=4) as it:
        got = _take(it, 4)
    direct = TrainBatches(
        folder_source(tmp_path, scale=2), batch_size=8, patch_size=16, scale=2, seed=0, prefetch=0
    )
    assert all(_equal(a, direct.make_batch(k)) for k, a in enumerate(got))
    assert len(src._cache) == 3  # each image decoded once and kept
