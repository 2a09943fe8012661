"""Find benchmark sets (Set5, Set14, B100, Urban100, Manga109, DIV2K valid, ...) under a data root.

Layouts recognised (docs/evaluation.md), tried in this order for a set named NAME at scale s:
  1. EDSR:    <root>[/benchmark]/NAME/HR/baby.png  +  .../NAME/LR_bicubic/X{s}/babyx{s}.png
              DIV2K: <root>[/DIV2K]/DIV2K_valid_HR/0801.png  +  .../DIV2K_valid_LR_bicubic/X{s}/0801x{s}.png
  2. RCAN:    <root>/HR/NAME/x{s}/baby_HR_x{s}.png  +  <root>/LR/LRBI/NAME/x{s}/baby_LRBI_x{s}.png
  3. BasicSR: <root>/NAME/GTmod12/baby.png (or GT/, HR/)  +  <root>/NAME/LRbicx{s}/baby.png
  4. HR only: any of the HR folders above without its LR folder for this scale, or images directly in
              <root>/NAME/: the HR image is mod-cropped to a multiple of s (top-left kept) and the LR made
              with MATLAB-style bicubic (adadsr_jax.data.bicubic); such sets are labelled "generated".
Set names match folder names case-insensitively, with aliases (B100 = BSD100 = BSDS100, DIV2K = DIV2K
valid 0801-0900). "demo" is the built-in demo set (a held-out photograph shipped with scikit-image /
scikit-learn, LR generated). A set that is not found raises DatasetNotFoundError listing every path tried.

With LR files present, an HR image larger than s x LR (benchmark HRs that are not mod-cropped) is cropped
to s x LR from the top-left, as EDSR's loader does; any other size mismatch is an error naming both files.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from adadsr_jax import metrics
from adadsr_jax.data.bicubic import make_lr
from adadsr_jax.data.images import IMAGE_EXTENSIONS, list_images, load_image
from adadsr_jax.data.sources import ImagePair

# Canonical names and the folder names each may have in the wild.
ALIASES: dict[str, tuple[str, ...]] = {
    "Set5": ("Set5",),
    "Set14": ("Set14",),
    "B100": ("B100", "BSD100", "BSDS100"),
    "Urban100": ("Urban100",),
    "Manga109": ("Manga109",),
    "DIV2K": ("DIV2K",),
}
DEMO = "demo"


class DatasetNotFoundError(FileNotFoundError):
    """A benchmark set was not found; the message lists every path searched."""


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One test image: its name (file stem without layout suffixes) and files (lr None = generate)."""

    name: str
    hr_path: Path | None
    lr_path: Path | None


@dataclasses.dataclass
class BenchmarkSet(Sequence):
    """A discovered test set at one scale; indexing loads (and, for HR-only sets, degrades) an image.

    layout: "edsr", "div2k", "rcan", "basicsr", "hr_only" or "demo"; lr_source: "files" (LR read from
    disk) or "generated" (MATLAB-style bicubic from the mod-cropped HR).
    """

    name: str
    scale: int
    layout: str
    lr_source: str
    root: str | None
    items: list[ImageItem]
    _demo: Sequence | None = None

    def __len__(self) -> int:
        return len(self._demo) if self._demo is not None else len(self.items)

    def __getitem__(self, index: int) -> ImagePair:  # type: ignore[override]
        if self._demo is not None:
            pair = self._demo[index]
            return ImagePair(str(pair.name), np.asarray(pair.lr), np.asarray(pair.hr))
        item = self.items[index]
        hr = load_image(item.hr_path)
        check_metric_size(hr, self.scale, item.hr_path)
        if item.lr_path is None:
            return ImagePair(item.name, *make_lr(hr, self.scale))
        lr = load_image(item.lr_path)
        return ImagePair(item.name, lr, match_hr(hr, lr, self.scale, item))

    def __iter__(self) -> Iterator[ImagePair]:
        for i in range(len(self)):
            yield self[i]

    def describe(self) -> dict:
        """JSON-ready summary: name, scale, layout, lr_source, root, num_images."""
        return {
            "name": self.name,
            "scale": self.scale,
            "layout": self.layout,
            "lr_source": self.lr_source,
            "root": self.root,
            "num_images": len(self),
        }


def check_metric_size(hr: np.ndarray, scale: int, path: str | os.PathLike) -> None:
    """Raises ValueError naming `path` when the metric protocol cannot score the HR [H, W, 3] image: PSNR
    and SSIM shave `scale` pixels from each border of the mod-cropped HR (`metrics.smallest_side`)."""
    need = -(-metrics.smallest_side(scale) // scale) * scale  # the least multiple of scale that fits
    h, w = hr.shape[0] // scale * scale, hr.shape[1] // scale * scale
    if h < need or w < need:
        raise ValueError(
            f"{path}: HR image is {hr.shape[1]}x{hr.shape[0]} ({w}x{h} mod-cropped to x{scale}); PSNR and "
            f"SSIM shave {scale} pixels from each border and SSIM needs {metrics.SSIM_WINDOW} x "
            f"{metrics.SSIM_WINDOW} after that, so at x{scale} an image must be at least {need}x{need}"
        )


def match_hr(hr: np.ndarray, lr: np.ndarray, scale: int, item: ImageItem) -> np.ndarray:
    """HR cropped to scale x LR; raises ValueError naming both files when that is impossible."""
    h, w = lr.shape[0] * scale, lr.shape[1] * scale
    if hr.shape[0] < h or hr.shape[1] < w or hr.shape[0] - h >= scale or hr.shape[1] - w >= scale:
        raise ValueError(
            f"HR {item.hr_path} is {hr.shape[1]}x{hr.shape[0]} but LR {item.lr_path} is "
            f"{lr.shape[1]}x{lr.shape[0]} at scale x{scale} (expected HR {w}x{h}, or at most {scale - 1} "
            "pixels more per side before mod-cropping)"
        )
    return hr[:h, :w]


def canonical_name(name: str) -> str:
    """The canonical set name for a user-given one (case-insensitive aliases); unknown names unchanged."""
    low = name.lower()
    if low == DEMO:
        return DEMO
    for canon, names in ALIASES.items():
        if low in (n.lower() for n in names) or low == canon.lower():
            return canon
    return name


def _child(parent: Path, names: Sequence[str]) -> Path | None:
    """The first existing sub-folder of `parent` whose name matches one of `names` (case-insensitive)."""
    if not parent.is_dir():
        return None
    wanted = [n.lower() for n in names]
    found = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for n in wanted:
        if n in found:
            return found[n]
    return None


def _find_lr(folder: Path, stem: str) -> Path | None:
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _paired(hr_dir: Path, lr_dir: Path, lr_stem, strip) -> list[ImageItem]:
    """Pair every HR image with its LR file; a missing LR file is an error naming it."""
    items = []
    for hr in list_images(hr_dir):
        stem = hr.stem
        lr = _find_lr(lr_dir, lr_stem(stem))
        if lr is None:
            raise FileNotFoundError(
                f"LR image for {hr} not found: expected {lr_dir / (lr_stem(stem) + '.png')} (or .jpg, ...)"
            )
        items.append(ImageItem(strip(stem), hr, lr))
    return items


def _hr_only(hr_dir: Path, strip=lambda s: s) -> list[ImageItem]:
    return [ImageItem(strip(p.stem), p, None) for p in list_images(hr_dir)]


def _strip_suffix(stem: str, suffix: str) -> str:
    return stem[: -len(suffix)] if stem.endswith(suffix) else stem


@dataclasses.dataclass
class _Search:
    """One find_dataset call: the set's accepted folder names under `root` at `scale`, the paths tried
    (for the error message), and HR folders found without their LR (the HR-only fallback)."""

    name: str  # as the user gave it
    canon: str
    names: tuple[str, ...]
    root: Path
    scale: int
    searched: list[str] = dataclasses.field(default_factory=list)
    hr_only: list[tuple[Path, Callable[[str], str]]] = dataclasses.field(default_factory=list)

    def result(self, layout: str, items: list[ImageItem], folder: Path) -> BenchmarkSet:
        if not items:
            raise ValueError(f"dataset {self.name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        source = "generated" if items[0].lr_path is None else "files"
        return BenchmarkSet(self.canon, self.scale, layout, source, str(self.root), items)

    def edsr_like(self, layout: str, parent: Path | None, hr_name: str, lr_name: str) -> BenchmarkSet | None:
        """<parent>/<hr_name>/x.png + <parent>/<lr_name>/X{s}/x{s}x.png (EDSR sets and DIV2K alike)."""
        s = self.scale
        self.searched.append(f"{parent}/{hr_name} + {lr_name}/X{s}")
        hr_dir = _child(parent, [hr_name]) if parent else None
        if not hr_dir:
            return None
        lr_dir = _child(parent, [lr_name])
        lr_dir = _child(lr_dir, [f"X{s}"]) if lr_dir else None
        if lr_dir:
            return self.result(layout, _paired(hr_dir, lr_dir, lambda t: f"{t}x{s}", lambda t: t), hr_dir)
        self.hr_only.append((hr_dir, lambda t: t))
        return None

    def edsr(self) -> BenchmarkSet | None:
        """1. The EDSR layout (also under <root>/benchmark), and DIV2K's flat folders."""
        for base in (self.root, self.root / "benchmark"):
            found = self.edsr_like(
                "edsr", _child(base, self.names) or base / self.names[0], "HR", "LR_bicubic"
            )
            if found:
                return found
        if self.canon == "DIV2K":
            for base in (self.root, self.root / "DIV2K"):
                found = self.edsr_like("div2k", base, "DIV2K_valid_HR", "DIV2K_valid_LR_bicubic")
                if found:
                    return found
        return None

    def rcan(self) -> BenchmarkSet | None:
        """2. The RCAN / AdaDSR layout."""
        s, names = self.scale, self.names
        hr_set = _child(self.root / "HR", names)
        hr_dir = _child(hr_set, [f"x{s}"]) if hr_set else None
        self.searched.append(f"{self.root}/HR/{names[0]}/x{s} + LR/LRBI/{names[0]}/x{s}")
        if not hr_dir:
            return None
        lr_set = _child(self.root / "LR" / "LRBI", names)
        lr_dir = _child(lr_set, [f"x{s}"]) if lr_set else None

        def strip(t: str) -> str:
            return _strip_suffix(t, f"_HR_x{s}")

        if lr_dir:
            return self.result(
                "rcan", _paired(hr_dir, lr_dir, lambda t: f"{strip(t)}_LRBI_x{s}", strip), hr_dir
            )
        self.hr_only.append((hr_dir, strip))
        return None

    def basicsr(self) -> BenchmarkSet | None:
        """3. The BasicSR layout."""
        set_dir = _child(self.root, self.names)
        gt_dir = _child(set_dir, ["GTmod12", "GT", "HR"]) if set_dir else None
        self.searched.append(f"{self.root}/{self.names[0]}/GTmod12 + LRbicx{self.scale}")
        if not gt_dir:
            return None
        lr_dir = _child(set_dir, [f"LRbicx{self.scale}"])
        if lr_dir:
            return self.result("basicsr", _paired(gt_dir, lr_dir, lambda t: t, lambda t: t), gt_dir)
        self.hr_only.append((gt_dir, lambda t: t))
        return None

    def hr_only_set(self) -> BenchmarkSet | None:
        """4. HR only: the first HR folder found above, else images directly in <root>/NAME."""
        if self.hr_only:
            folder, strip = self.hr_only[0]
            return self.result("hr_only", _hr_only(folder, strip), folder)
        self.searched.append(f"{self.root}/{self.names[0]}/*.png (HR only)")
        set_dir = _child(self.root, self.names)
        if set_dir and list_images(set_dir):
            return self.result("hr_only", _hr_only(set_dir), set_dir)
        return None


def find_dataset(name: str, data_root: str | os.PathLike | None, *, scale: int) -> BenchmarkSet:
    """Discover set `name` at `scale` under `data_root` (see the module docstring for the layouts).

    Raises DatasetNotFoundError (a FileNotFoundError) listing the paths searched, FileNotFoundError for
    an LR file missing from an otherwise complete set, ValueError for an empty set.
    """
    canon = canonical_name(name)
    if canon == DEMO:
        from adadsr_jax.data.sources import demo_source

        return BenchmarkSet(
            DEMO, scale, "demo", "generated", None, [], _demo=demo_source(scale=scale, split="valid")
        )
    if data_root is None:
        raise DatasetNotFoundError(f"dataset {name!r}: no --data-root given (only 'demo' needs none)")
    root = Path(data_root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: data root {root} does not exist or is not a folder")
    search = _Search(name, canon, ALIASES.get(canon, (name,)), root, scale)
    for layout in (search.edsr, search.rcan, search.basicsr, search.hr_only_set):
        found = layout()
        if found:
            return found
    raise DatasetNotFoundError(
        f"dataset {name!r} (scale x{scale}) not found under {root}; searched:\n  "
        + "\n  ".join(search.searched)
        + f"\nfolder names accepted for it: {', '.join(search.names)} (case-insensitive); or use 'demo'"
    )
