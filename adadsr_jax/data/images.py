"""Reading and writing 8-bit RGB images, with clear errors for input we cannot use faithfully.

Policy (also in docs/data.md):
- RGB 8-bit: read as is.
- Grayscale (``L``, 1-bit ``1``): the grey channel is replicated to R, G and B.
- Grey + alpha (``LA``) and ``RGBA``: the alpha channel is dropped (not composited over a background),
  the colour values are kept as stored.
- Palette (``P``, ``PA``): expanded to RGB through the palette; palette transparency is dropped.
- CMYK / YCbCr / LAB: converted to RGB by Pillow.
- 16-bit or wider (16-bit PNG/TIFF, ``I;16``, ``I``, ``F``): refused with ``ImageError``. Pillow would
  silently keep only the high byte of 16-bit RGB PNGs; SR training and PSNR are defined on 8-bit data,
  so the user should convert deliberately (e.g. ``round(x / 257)``) rather than get a silent truncation.
- A file that cannot be decoded (corrupt, truncated, not an image; an empty file): ``ImageError``.
- A path that does not exist: ``FileNotFoundError``.
Every message names the file and the problem.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "ImageError", "decode_image", "list_images", "load_image", "save_png"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageError(ValueError):
    """An image file that cannot be used: corrupt, unsupported bit depth, wrong size, ..."""


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in `folder` (extension in IMAGE_EXTENSIONS, any case), sorted by name.

    Not recursive; may be empty. Raises FileNotFoundError naming the folder when it does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _is_wide(im: Image.Image) -> bool:
    """True for images stored with more than 8 bits per sample (before decoding the pixels)."""
    if im.mode in _WIDE_MODES:
        return True
    for tile in getattr(im, "tile", None) or []:
        args = tile[3] if isinstance(tile, tuple) else getattr(tile, "args", None)
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and (";16" in rawmode or ";32" in rawmode):
            return True
    return False


def _decode(source: str | os.PathLike | io.BytesIO, what: str) -> np.ndarray:
    """Decode a path or in-memory file to uint8 [H, W, 3]; ``what`` names it in error messages."""
    try:
        with Image.open(source) as im:
            if _is_wide(im):
                raise ImageError(
                    f"{what}: {im.mode} image with more than 8 bits per sample is not supported; "
                    "convert it to 8-bit RGB first (e.g. round(x / 257) for 16-bit)"
                )
            im.load()
            mode = im.mode
            if mode in ("RGBA", "RGBa", "RGBX"):
                im = im.convert("RGB")  # alpha dropped, colour kept
            elif mode in ("LA", "La"):
                im = im.getchannel("L").convert("RGB")
            elif mode in ("P", "PA"):
                im = im.convert("RGBA").convert("RGB")
            elif mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...) for bad data
        raise ImageError(f"{what}: cannot decode image ({type(err).__name__}: {err})") from err
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{what}: decoded to unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Load an image file as RGB.

    Args:
      path: image file (PNG, JPEG, BMP, TIFF, WebP, ...).

    Returns:
      uint8 array [H, W, 3], 0..255 (see the module docstring for gray/alpha/palette conversions).

    Raises:
      FileNotFoundError: the path does not exist.
      ImageError: the file cannot be decoded or has more than 8 bits per sample.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    if path.stat().st_size == 0:  # Pillow would say "cannot identify image file", which hides the cause
        raise ImageError(f"{path}: file is empty (0 bytes)")
    return _decode(path, str(path))


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, ...) to uint8 [H, W, 3] with load_image's policy.

    ``what`` names the data in error messages (e.g. a tfds record id).
    """
    if not data:
        raise ImageError(f"{what}: file is empty (0 bytes)")
    return _decode(io.BytesIO(data), what)


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 image [H, W, 3], [H, W, 4] or [H, W] as PNG (parent folders are created).

    Raises ValueError for other dtypes or shapes: quantise (clip, round) float images first.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: save_png needs uint8 data (clip and round first), got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"{path}: save_png needs [H, W], [H, W, 3] or [H, W, 4], got shape {array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
