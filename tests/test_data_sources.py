"""Sources: DIV2K folders (with and without LR), tfds array_record data, the demo photos, bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adadsr_jax.data.bicubic import downscale, make_lr, mod_crop
from adadsr_jax.data.images import ImageError, list_images, save_png
from adadsr_jax.data.pipeline import TrainBatches
from adadsr_jax.data.sources import (
    DEMO_TRAIN_PHOTOS,
    ImagePair,
    demo_source,
    folder_source,
    make_source,
    tfds_source,
)


def _hr(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def make_div2k(root: Path, *, scale: int, split: str = "train", n: int = 3, with_lr: bool = True) -> list:
    """Tiny DIV2K tree; returns the HR arrays in file order."""
    hrs = []
    for i in range(n):
        hr = _hr(12 * scale + 6 * i, 10 * scale, seed=i)
        save_png(root / f"DIV2K_{split}_HR" / f"{i + 1:04d}.png", hr)
        if with_lr:
            save_png(
                root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}" / f"{i + 1:04d}x{scale}.png",
                downscale(hr, scale),
            )
        hrs.append(hr)
    return hrs


@pytest.mark.parametrize("split", ["train", "valid"])
def test_folder_with_lr(tmp_path: Path, split: str) -> None:
    hrs = make_div2k(tmp_path, scale=3, split=split)
    src = folder_source(tmp_path, scale=3, split=split)
    assert len(src) == 3 and src.scale == 3
    assert [p.name for p in src] == ["0001", "0002", "0003"]
    for i, pair in enumerate(src):
        assert isinstance(pair, ImagePair)
        np.testing.assert_array_equal(pair.hr, hrs[i])
        np.testing.assert_array_equal(pair.lr, downscale(hrs[i], 3))
        assert src.lr_size(i) == pair.lr.shape[:2]
    assert src[1] is src[1]  # cached after the first decode
    assert not src[0].hr.flags.writeable


def test_folder_generates_lr_from_mod_cropped_hr(tmp_path: Path) -> None:
    hr = _hr(25, 31, seed=5)  # not a multiple of 4
    save_png(tmp_path / "DIV2K_train_HR" / "0001.png", hr)
    (tmp_path / "DIV2K_train_HR" / "notes.txt").write_text("not an image: ignored")
    src = folder_source(tmp_path, scale=4, cache=False)
    assert len(src) == 1 and src.lr_size(0) == (6, 7)
    pair = src[0]
    np.testing.assert_array_equal(pair.hr, hr[:24, :28])
    np.testing.assert_array_equal(pair.lr, downscale(mod_crop(hr, 4), 4))
    assert src[0] is not pair  # cache=False decodes again


def test_folder_missing_and_empty(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data root folder not found"):
        folder_source(tmp_path / "absent", scale=2)
    with pytest.raises(FileNotFoundError, match=r"DIV2K_train_HR: folder not found"):
        folder_source(tmp_path, scale=2)
    (tmp_path / "DIV2K_train_HR").mkdir()
    with pytest.raises(FileNotFoundError, match=r"DIV2K_train_HR: folder contains no images"):
        folder_source(tmp_path, scale=2)
    with pytest.raises(ValueError, match="split"):
        folder_source(tmp_path, scale=2, split="test")


def test_folder_missing_lr_file(tmp_path: Path) -> None:
    make_div2k(tmp_path, scale=2)
    (tmp_path / "DIV2K_train_LR_bicubic" / "X2" / "0002x2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"0002x2\.png: LR image for .*0002\.png is missing"):
        folder_source(tmp_path, scale=2)


def test_folder_empty_lr_folder(tmp_path: Path) -> None:
    make_div2k(tmp_path, scale=2, with_lr=False)
    (tmp_path / "DIV2K_train_LR_bicubic" / "X2").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"0001x2\.png: LR image .* is missing"):
        folder_source(tmp_path, scale=2)


def test_folder_size_mismatch(tmp_path: Path) -> None:
    make_div2k(tmp_path, scale=2)
    save_png(tmp_path / "DIV2K_train_LR_bicubic" / "X2" / "0003x2.png", _hr(9, 10, 0))
    with pytest.raises(ImageError, match=r"0003x2\.png vs .*0003\.png: LR size 10x9 .* do not match scale 2"):
        folder_source(tmp_path, scale=2)
    # The same folder read with the wrong scale fails on the first pair.
    with pytest.raises(FileNotFoundError, match=r"0001x4\.png"):
        (tmp_path / "DIV2K_train_LR_bicubic" / "X4").mkdir()
        folder_source(tmp_path, scale=4)


def test_folder_corrupt_files(tmp_path: Path) -> None:
    make_div2k(tmp_path, scale=2)
    bad = tmp_path / "DIV2K_train_HR" / "0002.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageError, match=r"0002\.png: cannot read image header"):
        folder_source(tmp_path, scale=2)
    # A valid header with a truncated body passes the size check and fails on first access, by name.
    make_div2k(tmp_path, scale=2)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    src = folder_source(tmp_path, scale=2)
    assert src[0].name == "0001"
    with pytest.raises(ImageError, match=r"0002\.png: cannot decode"):
        src[1]


def test_folder_hr_smaller_than_scale(tmp_path: Path) -> None:
    save_png(tmp_path / "DIV2K_train_HR" / "0001.png", _hr(3, 40, 0))
    with pytest.raises(ImageError, match=r"0001\.png: HR image 40x3 is smaller than the scale 4"):
        folder_source(tmp_path, scale=4)


def test_demo_source() -> None:
    train = demo_source(scale=2)
    valid = demo_source(scale=2, split="valid")
    assert len(train) == len(DEMO_TRAIN_PHOTOS) >= 5 and len(valid) == 1
    train_names = {p.name for p in train}
    assert valid[0].name not in train_names and "astronaut" in train_names
    for pair in [*train, *valid]:
        assert pair.lr.dtype == np.uint8 and pair.hr.dtype == np.uint8
        assert pair.hr.shape == (2 * pair.lr.shape[0], 2 * pair.lr.shape[1], 3)
        # A real photo, not a flat or synthetic image.
        assert pair.hr.std() > 20 and min(pair.hr.shape[:2]) >= 256
    np.testing.assert_array_equal(valid[0].lr, downscale(valid[0].hr, 2))
    v3 = demo_source(scale=3, split="valid")[0]
    assert v3.hr.shape[0] % 3 == 0 and v3.hr.shape[1] % 3 == 0
    assert v3.lr.shape == (v3.hr.shape[0] // 3, v3.hr.shape[1] // 3, 3)


def test_make_source(tmp_path: Path) -> None:
    make_div2k(tmp_path, scale=2)
    assert len(make_source("folder", root=tmp_path, scale=2)) == 3
    with pytest.raises(ValueError, match="unknown data source kind 'div2k'"):
        make_source("div2k", root=tmp_path, scale=2)
    assert make_source("demo", scale=2, split="valid")[0].name == "chelsea"
    with pytest.raises(ValueError, match="unknown data source kind 'nope'"):
        make_source("nope")


# ------------------------------------------------------------------------------------------------ tfds


def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def build_tfds_div2k(
    data_dir: Path, scale: int, examples: dict[str, list[tuple[np.ndarray, np.ndarray]]]
) -> None:
    """Prepare a real array_record ``div2k/bicubic_x{scale}`` in data_dir, without TensorFlow.

    A private subclass of tfds' own div2k builder whose split generators yield our tiny (lr, hr) images as
    encoded PNG bytes instead of downloading the zips.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import registered
    from tensorflow_datasets.datasets.div2k import div2k_dataset_builder

    with registered.skip_registration():

        class Builder(div2k_dataset_builder.Builder):
            name = "div2k"

            def _info(self):
                features = tfds.features.FeaturesDict(
                    {"lr": tfds.features.Image(), "hr": tfds.features.Image()}
                )
                return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("lr", "hr"))

            def _split_generators(self, dl_manager):
                return {split: self._generate_examples(split) for split in examples}

            def _generate_examples(self, split):
                for i, (lr, hr) in enumerate(examples[split]):
                    yield f"{i:04d}x{scale}.png", {"lr": _png_bytes(lr), "hr": _png_bytes(hr)}

    builder = Builder(config=f"bicubic_x{scale}", data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    data_dir = tmp_path_factory.mktemp("tfds")
    hrs = {"train": [_hr(16, 24, s) for s in range(3)], "validation": [_hr(20, 12, 9)]}
    examples = {k: [(downscale(h, 2), h) for h in v] for k, v in hrs.items()}
    bad = {"train": [(_hr(8, 8, 0), _hr(16, 20, 1))]}  # HR is not 2x LR
    build_tfds_div2k(data_dir / "good", 2, examples)
    build_tfds_div2k(data_dir / "bad", 2, bad)
    return data_dir, examples


def _as_set(pairs) -> set[bytes]:
    return {p[1].tobytes() if isinstance(p, tuple) else p.hr.tobytes() for p in pairs}


def test_tfds_source_reads_prepared_data(tfds_dir) -> None:
    data_dir, examples = tfds_dir
    train = tfds_source(data_dir / "good", scale=2, split="train")
    valid = make_source("tfds", data_dir=data_dir / "good", scale=2, split="valid")
    assert len(train) == 3 and len(valid) == 1 and train.scale == 2
    # tfds shuffles records by key hash: compare as sets, and check each pair is consistent.
    assert _as_set(train) == _as_set(examples["train"])
    for i, pair in enumerate(train):
        assert pair.name == f"div2k/bicubic_x2/train/{i}"
        assert pair.lr.dtype == np.uint8 and pair.lr.shape[2] == 3
        np.testing.assert_array_equal(pair.lr, downscale(pair.hr, 2))
        assert train.lr_size(i) == pair.lr.shape[:2]
    np.testing.assert_array_equal(valid[0].hr, examples["validation"][0][1])
    batch = TrainBatches(train, batch_size=4, patch_size=6, scale=2, seed=0, prefetch=0).make_batch(0)
    assert batch["lr"].shape == (4, 6, 6, 3) and batch["hr"].shape == (4, 12, 12, 3)


def test_tfds_errors(tfds_dir, tmp_path: Path) -> None:
    data_dir, _ = tfds_dir
    with pytest.raises(FileNotFoundError, match=r"bicubic_x3: no prepared tfds dataset 'div2k/bicubic_x3'"):
        tfds_source(data_dir / "good", scale=3)
    with pytest.raises(FileNotFoundError, match="no prepared tfds dataset"):
        tfds_source(tmp_path, scale=2)
    bad = tfds_source(data_dir / "bad", scale=2)
    with pytest.raises(ImageError, match=r"div2k/bicubic_x2/train/0: LR size 8x8 and HR size 20x16"):
        bad.lr_size(0)
    with pytest.raises(ImageError, match=r"div2k/bicubic_x2/train/0: LR size"):
        bad[0]


def test_shared_helpers_mod_crop_make_lr_list_images(tmp_path: Path) -> None:
    hr = _hr(25, 31, seed=7)
    assert mod_crop(hr, 1).shape == hr.shape
    np.testing.assert_array_equal(mod_crop(hr, 4), hr[:24, :28])
    lr, hr_c = make_lr(hr, 4)
    np.testing.assert_array_equal(hr_c, hr[:24, :28])
    np.testing.assert_array_equal(lr, downscale(hr[:24, :28], 4))
    with pytest.raises(ValueError, match="smaller than the scale 4"):
        make_lr(hr[:3], 4)
    # One listing for every folder reader: image extensions in any case, sorted, files only.
    for name in ("b.PNG", "a.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    with pytest.raises(FileNotFoundError, match="folder not found"):
        list_images(tmp_path / "missing")
