"""load_image / save_png: colour-mode policy and clear errors for unusable files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adadsr_jax.data.images import ImageError, decode_image, load_image, save_png


def _rgb(h: int = 6, w: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png16(path: Path, array: np.ndarray) -> None:
    """A genuine 16-bit PNG (gray [H, W] or RGB [H, W, 3]) written byte by byte (Pillow cannot write one)."""
    a = np.asarray(array, dtype=">u2")
    h, w = a.shape[:2]
    color_type = 2 if a.ndim == 3 else 0
    raw = b"".join(b"\x00" + a[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_rgb_roundtrip(tmp_path: Path) -> None:
    img = _rgb()
    save_png(tmp_path / "sub" / "a.png", img)  # parent folder is created
    out = load_image(tmp_path / "sub" / "a.png")
    assert out.dtype == np.uint8 and out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out, img)


def test_gray_is_replicated(tmp_path: Path) -> None:
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (6, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_one_bit_is_black_and_white(tmp_path: Path) -> None:
    bits = _rgb()[..., 0] > 127
    Image.fromarray(bits).save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 1], np.where(bits, 255, 0))


def test_rgba_drops_alpha_and_keeps_colour(tmp_path: Path) -> None:
    rgba = np.concatenate([_rgb(), np.zeros((6, 5, 1), np.uint8) + 7], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgba[..., :3])


def test_gray_alpha_drops_alpha(tmp_path: Path) -> None:
    la = np.stack([_rgb()[..., 0], np.full((6, 5), 9, np.uint8)], axis=-1)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out, np.repeat(la[..., :1], 3, axis=-1))


def test_palette_is_expanded(tmp_path: Path) -> None:
    palette = np.array([[10, 20, 30], [200, 100, 0], [1, 2, 3]], np.uint8)
    index = np.random.default_rng(3).integers(0, 3, (6, 5)).astype(np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(palette.ravel().tolist())
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png"), palette[index])


@pytest.mark.parametrize("rgb", [True, False])
def test_16_bit_is_refused(tmp_path: Path, rgb: bool) -> None:
    data = np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000
    write_png16(tmp_path / "d.png", np.stack([data] * 3, -1) if rgb else data)
    with pytest.raises(ImageError, match=r"d\.png.*more than 8 bits"):
        load_image(tmp_path / "d.png")


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all")
    with pytest.raises(ImageError, match=r"junk\.png: cannot decode"):
        load_image(tmp_path / "junk.png")
    save_png(tmp_path / "t.png", _rgb(64, 64))
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"t\.png: cannot decode"):
        load_image(tmp_path / "t.png")
    with pytest.raises(ImageError, match="record 7: cannot decode"):
        decode_image(b"garbage", "record 7")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.png: no such image file"):
        load_image(tmp_path / "nope.png")


def test_jpeg_and_decode_bytes(tmp_path: Path) -> None:
    img = _rgb(16, 16)
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(decode_image((tmp_path / "a.jpg").read_bytes(), "x"), out)


def test_save_png_refuses_float_and_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "f.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        save_png(tmp_path / "s.png", np.zeros((4, 4, 2), np.uint8))
