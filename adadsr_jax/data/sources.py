"""Image-pair sources: DIV2K folders, tfds ``div2k`` data sources and a built-in demo set of real photos.

A source is a ``Sequence[ImagePair]`` (``len`` and random access by index) with two extra attributes the
patch pipeline uses: ``scale`` (int) and ``lr_size(i) -> (h, w)``, which answers without decoding pixels
where the format allows it, so that sizes can be checked up front.

Decoding policy: folder and tfds sources decode lazily on first access and, with ``cache=True`` (the
default), keep the decoded uint8 arrays in memory, so every image is decoded once per process. Memory is
what the process touches: DIV2K train x2 holds about 8.6 GB (HR 6.9 GB + LR 1.7 GB) once all 800 images
were drawn. Pass ``cache=False`` to decode on every access instead (slow for 2K PNGs, ~0.1 s each).
The demo source is small and is decoded eagerly (once per process, then shared read-only).

Every problem is an error that names the file (or item) and the problem; nothing is skipped silently.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
from PIL import Image

from adadsr_jax.data.bicubic import make_lr
from adadsr_jax.data.images import IMAGE_EXTENSIONS, ImageError, decode_image, list_images, load_image

__all__ = [
    "DEMO_TRAIN_PHOTOS",
    "DEMO_VALID_PHOTOS",
    "ImagePair",
    "PairSource",
    "check_sizes",
    "demo_source",
    "folder_source",
    "make_source",
    "tfds_source",
]


@dataclass(frozen=True)
class ImagePair:
    """One training/validation example.

    name: identifier (file stem, photo name or tfds index); lr: uint8 [h, w, 3]; hr: uint8 [s*h, s*w, 3].
    """

    name: str
    lr: np.ndarray
    hr: np.ndarray


def check_sizes(lr_hw: Sequence[int], hr_hw: Sequence[int], scale: int, what: str) -> None:
    """Raise ImageError unless HR (h, w) is exactly ``scale`` times LR (h, w)."""
    (lh, lw), (hh, hw) = lr_hw[:2], hr_hw[:2]
    if lh * scale != hh or lw * scale != hw:
        raise ImageError(
            f"{what}: LR size {lw}x{lh} and HR size {hw}x{hh} (WxH) do not match scale {scale} "
            f"(HR must be exactly {scale} x LR)"
        )


def _check_scale(scale: int) -> int:
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


class PairSource(Sequence[ImagePair]):
    """A Sequence of ImagePair built from per-item loader functions, with optional in-memory caching.

    Args:
      names: item names, one per example.
      load: ``load(i) -> (lr, hr)`` uint8 arrays; called lazily.
      scale: SR factor; every pair is checked to have HR = scale x LR.
      lr_size: optional ``lr_size(i) -> (h, w)`` that avoids decoding; defaults to decoding item i.
      cache: keep decoded arrays in memory (thread-safe; each item is decoded once).
      describe: ``describe(i) -> str`` naming item i's file(s) for error messages.
    """

    def __init__(
        self,
        names: Sequence[str],
        load: Callable[[int], tuple[np.ndarray, np.ndarray]],
        *,
        scale: int,
        lr_size: Callable[[int], tuple[int, int]] | None = None,
        cache: bool = True,
        describe: Callable[[int], str] | None = None,
    ) -> None:
        self.names = list(names)
        self.scale = _check_scale(scale)
        self._load = load
        self._lr_size = lr_size
        self._describe = describe or (lambda i: self.names[i])
        self.cache = cache
        self._cache: dict[int, ImagePair] = {}
        self._locks = [threading.Lock() for _ in self.names] if cache else []

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, index: int) -> ImagePair: ...
    @overload
    def __getitem__(self, index: slice) -> list[ImagePair]: ...
    def __getitem__(self, index: int | slice) -> ImagePair | list[ImagePair]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {index} out of range for a source of {len(self)} images")
        if not self.cache:
            return self._make(i)
        pair = self._cache.get(i)
        if pair is None:
            with self._locks[i]:  # two prefetch threads must not decode the same 2K image twice
                pair = self._cache.get(i)
                if pair is None:
                    pair = self._make(i)
                    self._cache[i] = pair
        return pair

    def _make(self, i: int) -> ImagePair:
        lr, hr = self._load(i)
        check_sizes(lr.shape, hr.shape, self.scale, self._describe(i))
        lr, hr = np.ascontiguousarray(lr), np.ascontiguousarray(hr)
        lr.setflags(write=False)  # shared between batches and threads: never modified in place
        hr.setflags(write=False)
        return ImagePair(self.names[i], lr, hr)

    def lr_size(self, i: int) -> tuple[int, int]:
        """(h, w) of item i's LR image, from file headers where possible."""
        if self._lr_size is not None:
            return self._lr_size(i)
        return tuple(self[i].lr.shape[:2])  # type: ignore[return-value]

    def describe(self, i: int) -> str:
        """The file(s) behind item i, for error messages."""
        return self._describe(i)


# ----------------------------------------------------------------------------------------------- folders


def _header_size(path: Path) -> tuple[int, int]:
    """(h, w) from the file header, without decoding pixels."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises many types for garbage input
        raise ImageError(f"{path}: cannot read image header ({type(err).__name__}: {err})") from err
    return h, w


def _list_images(folder: Path) -> list[Path]:
    """list_images, with an empty folder an error too (a training split needs images)."""
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: folder contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def folder_source(
    root: str | os.PathLike, *, scale: int, split: str = "train", cache: bool = True
) -> PairSource:
    """DIV2K folder layout.

    ``<root>/DIV2K_{split}_HR/0001.png`` with ``<root>/DIV2K_{split}_LR_bicubic/X{scale}/0001x{scale}.png``.
    When the ``X{scale}`` LR folder does not exist, LR images are generated with MATLAB-style bicubic
    (:func:`adadsr_jax.data.bicubic.downscale`) from the HR image mod-cropped to a multiple of ``scale``.
    When it exists, every HR image must have its LR file and HR must be exactly scale x LR (checked from the
    file headers at construction). Files in the folders that are not images (by extension) are ignored;
    LR files without an HR file are ignored.

    Args:
      root: folder holding ``DIV2K_train_HR`` etc.
      scale: 2, 3, 4, ...
      split: "train" or "valid".
      cache: keep decoded uint8 images in memory.

    Returns:
      PairSource of ImagePair(name="0001", lr [h, w, 3], hr [s*h, s*w, 3]), sorted by file name.
    """
    scale = _check_scale(scale)
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root folder not found")
    hr_files = _list_images(root / f"DIV2K_{split}_HR")
    names = [p.stem for p in hr_files]
    lr_dir = root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}"

    if lr_dir.is_dir():
        lr_files = []
        for hr_path in hr_files:
            lr_path = lr_dir / f"{hr_path.stem}x{scale}{hr_path.suffix}"
            if not lr_path.is_file():
                raise FileNotFoundError(f"{lr_path}: LR image for {hr_path} is missing")
            lr_files.append(lr_path)
        lr_sizes = []
        for lr_path, hr_path in zip(lr_files, hr_files, strict=True):
            lh, lw = _header_size(lr_path)
            hh, hw = _header_size(hr_path)
            check_sizes((lh, lw), (hh, hw), scale, f"{lr_path} vs {hr_path}")
            lr_sizes.append((lh, lw))

        def load(i: int) -> tuple[np.ndarray, np.ndarray]:
            return load_image(lr_files[i]), load_image(hr_files[i])

        def describe(i: int) -> str:
            return f"{lr_files[i]} vs {hr_files[i]}"

    else:
        lr_sizes = []
        for hr_path in hr_files:
            hh, hw = _header_size(hr_path)
            if hh < scale or hw < scale:
                raise ImageError(f"{hr_path}: HR image {hw}x{hh} is smaller than the scale {scale}")
            lr_sizes.append((hh // scale, hw // scale))

        def load(i: int) -> tuple[np.ndarray, np.ndarray]:
            return make_lr(load_image(hr_files[i]), scale)

        def describe(i: int) -> str:
            return f"{hr_files[i]} (LR generated by bicubic x{scale})"

    return PairSource(names, load, scale=scale, lr_size=lambda i: lr_sizes[i], cache=cache, describe=describe)


# -------------------------------------------------------------------------------------------------- tfds

_TFDS_SPLITS = {"train": "train", "valid": "validation", "validation": "validation"}


def tfds_source(
    data_dir: str | os.PathLike, *, scale: int, split: str = "train", cache: bool = True
) -> PairSource:
    """tfds ``div2k/bicubic_x{scale}`` read with ``tfds.data_source`` (random access, no TensorFlow).

    The dataset must already be prepared in ``data_dir`` in the array_record format (see docs/data.md);
    nothing is downloaded. Images are read as encoded bytes (``tfds.decode.SkipDecoding``) so sizes can be
    checked from headers, then decoded with Pillow on first access.

    Args:
      data_dir: the tfds data_dir holding ``div2k/bicubic_x{scale}/<version>/``.
      scale: 2, 3, 4 (or 8).
      split: "train" or "valid" (tfds "validation").
      cache: keep decoded uint8 images in memory.

    Returns:
      PairSource of ImagePair(name="div2k/bicubic_x{s}/{split}/{index}", lr, hr).
    """
    scale = _check_scale(scale)
    if split not in _TFDS_SPLITS:
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    data_dir = Path(data_dir)
    name = f"div2k/bicubic_x{scale}"
    prepared = data_dir / "div2k" / f"bicubic_x{scale}"
    if not any(prepared.glob("*/dataset_info.json")):
        raise FileNotFoundError(
            f"{prepared}: no prepared tfds dataset {name!r} in data_dir {data_dir}; prepare it with "
            "file_format='array_record' on a machine with TensorFlow (see docs/data.md) and point "
            "data_dir at it"
        )
    import tensorflow_datasets as tfds  # heavy import: only when this source is used

    tfds_split = _TFDS_SPLITS[split]
    try:
        ds = tfds.data_source(
            name,
            split=tfds_split,
            data_dir=os.fspath(data_dir),
            download=False,
            decoders={"lr": tfds.decode.SkipDecoding(), "hr": tfds.decode.SkipDecoding()},
        )
    except Exception as err:
        raise ValueError(
            f"{prepared}: cannot open tfds {name!r} split {tfds_split!r} as a random-access data source "
            f"({type(err).__name__}: {err}); it must be prepared with file_format='array_record'"
        ) from err
    n = len(ds)
    if n == 0:
        raise FileNotFoundError(f"{prepared}: tfds {name!r} split {tfds_split!r} is empty")
    names = [f"{name}/{split}/{i}" for i in range(n)]

    def record(i: int) -> dict[str, Any]:
        rec = ds[i]
        for key in ("lr", "hr"):
            if key not in rec:
                raise ValueError(f"{names[i]}: tfds record has no {key!r} feature (keys {sorted(rec)})")
        return rec

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        rec = record(i)
        return decode_image(rec["lr"], f"{names[i]} lr"), decode_image(rec["hr"], f"{names[i]} hr")

    sizes_seen: dict[int, tuple[int, int]] = {}

    def lr_size(i: int) -> tuple[int, int]:
        if i in sizes_seen:  # reading a record is the costly part: do it once per item
            return sizes_seen[i]
        rec = record(i)
        sizes = []
        for key in ("lr", "hr"):
            try:
                with Image.open(io.BytesIO(rec[key])) as im:
                    sizes.append(im.size[::-1])
            except Exception as err:
                raise ImageError(f"{names[i]} {key}: cannot read image header ({err})") from err
        check_sizes(sizes[0], sizes[1], scale, names[i])
        sizes_seen[i] = sizes[0]
        return sizes[0]

    return PairSource(names, load, scale=scale, lr_size=lr_size, cache=cache)


# -------------------------------------------------------------------------------------------------- demo

# Real photographs that ship inside the scikit-image and scikit-learn wheels (no download needed).
# motorcycle_right is left out: it is the stereo twin of motorcycle_left and would leak into validation.
DEMO_TRAIN_PHOTOS = (
    "skimage:astronaut.png",
    "skimage:coffee.png",
    "skimage:rocket.jpg",
    "skimage:motorcycle_left.png",
    "sklearn:china.jpg",
    "sklearn:flower.jpg",
)
DEMO_VALID_PHOTOS = ("skimage:chelsea.png",)


def photo_path(spec: str) -> Path:
    """File of a photo shipped in a wheel, "skimage:camera.png" or "sklearn:china.jpg", located without
    importing the (slow to import) package."""
    package, filename = spec.split(":")
    subdir = {"skimage": ("data",), "sklearn": ("datasets", "images")}[package]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"demo photo {spec!r}: package {package!r} is not installed")
    path = Path(next(iter(found.submodule_search_locations)), *subdir, filename)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: demo photo {spec!r} is missing from the installed {package}")
    return path


@functools.lru_cache(maxsize=16)
def _demo_pairs(scale: int, split: str) -> tuple[ImagePair, ...]:
    specs = DEMO_TRAIN_PHOTOS if split == "train" else DEMO_VALID_PHOTOS
    pairs = []
    for spec in specs:
        lr, hr = make_lr(load_image(photo_path(spec)), scale)
        hr, lr = np.ascontiguousarray(hr), np.ascontiguousarray(lr)
        hr.setflags(write=False)
        lr.setflags(write=False)
        pairs.append(ImagePair(spec.split(":")[1].rsplit(".", 1)[0], lr, hr))
    return tuple(pairs)


def demo_source(*, scale: int, split: str = "train") -> PairSource:
    """Built-in demo set: real photos from scikit-image/scikit-learn, LR by MATLAB-style bicubic.

    "train": astronaut, coffee, rocket, motorcycle_left, china, flower; "valid": chelsea (held out).
    HR is mod-cropped to a multiple of ``scale``. Decoded eagerly once per (scale, split) and process.

    Returns:
      PairSource of ImagePair(name="astronaut", lr uint8 [h, w, 3], hr uint8 [s*h, s*w, 3]).
    """
    scale = _check_scale(scale)
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    pairs = _demo_pairs(scale, split)
    return PairSource(
        [p.name for p in pairs],
        lambda i: (pairs[i].lr, pairs[i].hr),
        scale=scale,
        lr_size=lambda i: tuple(pairs[i].lr.shape[:2]),  # type: ignore[arg-type,return-value]
        cache=False,  # already in memory
    )


# ----------------------------------------------------------------------------------------------- factory

SOURCES: dict[str, Callable[..., PairSource]] = {
    "demo": demo_source,
    "folder": folder_source,
    "tfds": tfds_source,
}


def make_source(kind: str, **kwargs: Any) -> PairSource:
    """Build a source by kind: "demo", "folder" or "tfds" (the keys of SOURCES); kwargs go to the builder.

    Example: ``make_source("folder", root="/data/DIV2K", scale=2, split="train")``.
    """
    try:
        builder = SOURCES[kind]
    except KeyError:
        raise ValueError(f"unknown data source kind {kind!r}; expected one of {sorted(SOURCES)}") from None
    return builder(**kwargs)
