"""Random aligned LR/HR training patches, deterministic per step, split per host, prefetched with grain.

Sample numbering: the global batch ``k`` holds global samples ``k * batch_size + j`` for
``j < batch_size``; host ``p`` of ``P`` takes the contiguous block ``j in [p*B, (p+1)*B)`` with
``B = batch_size // P``. Each global sample is a pure function of ``(seed, global sample index)``: it picks an
image uniformly, a patch position uniformly, and h-flip / v-flip / transpose each with p = 0.5, from
``numpy.random.default_rng([seed, index])``. Hence

- batch k of a host is a pure function of (seed, k, process_index) (given batch_size and process_count);
- hosts never share a sample, and concatenating the hosts' batches k (in process order) gives exactly
  the single-process batch k of the same global batch_size;
- the iterator position is one integer (the next step), restored exactly by ``set_state``.

grain serves this directly: ``grain.MapDataset.range(...).map(make_batch)`` is a random-access dataset of
batches, and ``.to_iter_dataset(grain.ReadOptions(...))`` runs ``make_batch`` ahead of the consumer in a
small thread pool (the background prefetch), with ``close()`` to shut it down. Patch extraction is numpy
slicing on cached uint8 images, so threads (not processes) suffice; decoding of lazily loaded sources also
releases the GIL in Pillow.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np

from adadsr_jax.data.sources import ImagePair

__all__ = ["TrainBatches", "augment_pair", "sample_patch"]


def augment_pair(
    lr: np.ndarray, hr: np.ndarray, hflip: bool, vflip: bool, transpose: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the same flips / transpose to an LR patch [p, p, C] and its HR patch [s*p, s*p, C]."""
    if hflip:
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    if vflip:
        lr, hr = lr[::-1], hr[::-1]
    if transpose:
        lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
    return lr, hr


def sample_patch(
    source: Any, index: int, *, seed: int, patch_size: int, scale: int, augment: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Global sample ``index``: an LR patch uint8 [p, p, 3] and the aligned HR patch [s*p, s*p, 3].

    A pure function of (seed, index) for a given source: all random choices come from
    ``default_rng([seed, index])``.
    """
    rng = np.random.default_rng([seed, index])
    i = int(rng.integers(len(source)))
    pair: ImagePair = source[i]
    h, w = pair.lr.shape[:2]
    if h < patch_size or w < patch_size:  # sources without lr_size are only checked here
        raise ValueError(
            f"{pair.name}: LR image {w}x{h} (WxH) is smaller than the {patch_size}x{patch_size} patch"
        )
    y = int(rng.integers(h - patch_size + 1))
    x = int(rng.integers(w - patch_size + 1))
    flips = rng.random(3) < 0.5  # drawn even without augmentation so the crop stream does not change
    lr = pair.lr[y : y + patch_size, x : x + patch_size]
    s = scale
    hr = pair.hr[s * y : s * (y + patch_size), s * x : s * (x + patch_size)]
    if augment:
        lr, hr = augment_pair(lr, hr, bool(flips[0]), bool(flips[1]), bool(flips[2]))
    return lr, hr


def _copy_pixels(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[...] = src for [H, W, C] uint8, fast for flipped / transposed views of src.

    numpy copies a view whose pixels are not adjacent (h-flip, transpose) one 3-byte pixel per inner loop,
    about 5x slower than copying each channel as a 2-D strided plane; row-contiguous views copy directly.
    """
    if src.strides[1] == src.shape[2] * src.itemsize and src.strides[2] == src.itemsize:
        np.copyto(dst, src)
    else:
        for c in range(src.shape[2]):
            dst[..., c] = src[..., c]


class TrainBatches(Iterator[dict[str, np.ndarray]]):
    """Endless iterator of this host's training batches.

    Args:
      source: Sequence of ImagePair (a source from :mod:`adadsr_jax.data.sources`); every LR image must be
        at least patch_size x patch_size.
      batch_size: the GLOBAL batch size (over all hosts); must be divisible by process_count.
      patch_size: LR patch side p (HR patches are scale * p).
      scale: SR factor; must equal ``source.scale`` when the source has one.
      seed: non-negative integer.
      process_index, process_count: this host and the number of hosts (``jax.process_index()`` and
        ``jax.process_count()``).
      augment: random h-flip, v-flip and transpose, each with p = 0.5.
      prefetch: batches prepared ahead in background threads (0: compute synchronously in ``next``).
      num_threads: prefetch threads (default ``min(prefetch, 4)``).

    Yields:
      {"lr": uint8 [B, p, p, 3], "hr": uint8 [B, s*p, s*p, 3]} with B = batch_size // process_count.
    """

    def __init__(
        self,
        source: Any,
        *,
        batch_size: int,
        patch_size: int,
        scale: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
        augment: bool = True,
        prefetch: int = 2,
        num_threads: int | None = None,
    ) -> None:
        if len(source) == 0:
            raise ValueError("TrainBatches: the source has no images")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(
                f"TrainBatches: bad process_index={process_index} / process_count={process_count}"
            )
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"TrainBatches: global batch_size {batch_size} must be a positive multiple of "
                f"process_count {process_count}"
            )
        if patch_size < 1 or scale < 1 or seed < 0 or prefetch < 0:
            raise ValueError(
                f"TrainBatches: need patch_size >= 1, scale >= 1, seed >= 0, prefetch >= 0; got "
                f"{patch_size}, {scale}, {seed}, {prefetch}"
            )
        source_scale = getattr(source, "scale", scale)
        if source_scale != scale:
            raise ValueError(f"TrainBatches: scale {scale} differs from the source's scale {source_scale}")
        self._check_sizes(source, patch_size)

        self.source = source
        self.batch_size = int(batch_size)
        self.per_host_batch_size = self.batch_size // process_count
        self.patch_size = int(patch_size)
        self.scale = int(scale)
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.augment = bool(augment)
        self.prefetch = int(prefetch)
        self.num_threads = int(num_threads) if num_threads is not None else max(1, min(self.prefetch, 4))
        # An effectively endless random-access dataset of batches; the bound keeps k * batch_size in int64.
        self._batches = grain.MapDataset.range(0, sys.maxsize // (2 * self.batch_size)).map(self.make_batch)
        self._step = 0
        self._iter: Any = None

    @staticmethod
    def _check_sizes(source: Any, patch_size: int) -> None:
        for i in range(len(source)):
            h, w = source.lr_size(i) if hasattr(source, "lr_size") else source[i].lr.shape[:2]
            if h < patch_size or w < patch_size:
                what = source.describe(i) if hasattr(source, "describe") else source[i].name
                raise ValueError(
                    f"{what}: LR image {w}x{h} (WxH) is smaller than the {patch_size}x{patch_size} patch"
                )

    def make_batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's batch number ``step`` (pure function; does not move the iterator)."""
        first = step * self.batch_size + self.process_index * self.per_host_batch_size
        b, p, s = self.per_host_batch_size, self.patch_size, self.scale
        lrs = np.empty((b, p, p, 3), np.uint8)
        hrs = np.empty((b, s * p, s * p, 3), np.uint8)
        for j in range(b):
            lr, hr = sample_patch(
                self.source, first + j, seed=self.seed, patch_size=p, scale=s, augment=self.augment
            )
            _copy_pixels(lrs[j], lr)
            _copy_pixels(hrs[j], hr)
        return {"lr": lrs, "hr": hrs}

    def _ensure_iter(self) -> Any:
        if self._iter is None:
            options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
            self._iter = iter(self._batches[self._step :].to_iter_dataset(options))
        return self._iter

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._ensure_iter())
        self._step += 1
        return batch

    @property
    def step(self) -> int:
        """Index of the next batch ``next`` returns."""
        return self._step

    def get_state(self) -> dict[str, int]:
        """JSON-serialisable position: the next step, plus the settings that give steps their meaning.

        The state is the same on every host (it holds no process index), so one copy can be saved.
        """
        return {
            "step": self._step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "patch_size": self.patch_size,
            "scale": self.scale,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from a ``get_state()`` position: the next batch is the one that would have followed."""
        for key in ("seed", "batch_size", "patch_size", "scale"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"TrainBatches.set_state: saved {key}={state[key]} differs from this iterator's "
                    f"{key}={getattr(self, key)}; the saved position would not mean the same batches"
                )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"TrainBatches.set_state: negative step {step}")
        self.close()
        self._step = step

    def close(self) -> None:
        """Stop the prefetch threads (pending batches are dropped). Iterating again restarts them."""
        if self._iter is not None:
            close = getattr(self._iter, "close", None)
            if close is not None:
                close()
            self._iter = None

    def __enter__(self) -> TrainBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to clean
            self.close()
