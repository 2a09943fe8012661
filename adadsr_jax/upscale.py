"""Super-resolve your own images with a trained model.

    python -m adadsr_jax.upscale photo.jpg more_photos/ --workdir runs/adaedsr_x2 --out sr/ \
        [--depth 16 | --budget 50% | --budget-ms 40 --sparse] [--save-depth-map] \
        [--tile 256 --tile-overlap 16]

Policy (also in docs/evaluation.md):
  * any size, odd sizes included; images larger than --tile LR pixels on a side (default 256) are run in
    tiles with --tile-overlap pixels of context (0 disables tiling);
  * colour: RGB in -> RGB out; grayscale in -> the grey value replicated to RGB for the network, and the
    output saved grayscale (the rounded mean of the three SR channels); an alpha channel (RGBA, LA) is
    upscaled separately with MATLAB-style bicubic and re-attached; palette images come out RGB;
  * 16-bit input is refused (naming the file) unless --convert-16bit is given, which converts 16-bit
    grayscale PNG/TIFF and 16-bit RGB(A) TIFF to 8 bits as round(x / 257); 16-bit colour PNG stays
    refused (Pillow cannot decode it faithfully): convert it with another tool first;
  * outputs are PNGs named <stem>_x<scale>.png (and <stem>_x<scale>_depth.png) in --out; an input named
    twice is upscaled once; inputs whose names would collide get the extension and then the parent
    folder's name added (a/x.png, b/x.png -> a_x_png_x2.png, b_x_png_x2.png), and ones still colliding
    (x.png and x.PNG) are refused; an output path that is one of the inputs is refused; all of this
    before anything runs, so no output overwrites an input or another output.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from adadsr_jax.cli import UserError, require_checkpoint_dir, require_output_dir, run_cli
from adadsr_jax.data.images import IMAGE_EXTENSIONS, ImageError, list_images, load_image, save_png

_GRAY_MODES = ("1", "L", "LA", "La", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclasses.dataclass
class InputImage:
    """A decoded input: rgb uint8 [h, w, 3]; alpha uint8 [h, w] or None; gray: save the output as grey."""

    path: Path
    rgb: np.ndarray
    alpha: np.ndarray | None
    gray: bool


def collect_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files and folders (folders: their images, not recursive, sorted).

    A file named twice (directly, through a folder, or through another spelling of its path) is kept
    once, at its first position. Raises FileNotFoundError naming a missing path, ValueError when nothing
    is found.
    """
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ValueError(f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise ValueError("no input images given")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _output_name(f: Path, level: int) -> str:
    """Output stem of input f at disambiguation level 0 (stem), 1 (+ extension), 2 (+ parent folder)."""
    ext = f.suffix.lstrip(".").lower()
    if level == 0:
        return f.stem
    if level == 1:
        return f"{f.stem}_{ext}"
    return f"{f.resolve().parent.name}_{f.stem}_{ext}"


def output_paths(files: Sequence[Path], out: Path, scale: int) -> list[Path]:
    """<out>/<name>_x<scale>.png per input, one distinct file per input.

    name is the input's stem; inputs whose names collide (compared case-insensitively, as on macOS and
    Windows file systems) get the extension added (x.png, x.jpg -> x_png, x_jpg), and if they still
    collide the parent folder's name too (a/x.png, b/x.png -> a_x_png, b_x_png). Deterministic: the
    name depends only on the set of inputs. Raises ValueError, before anything runs, when two inputs
    cannot be told apart this way (x.png and x.PNG in one folder) or when an output would overwrite one
    of the inputs, and UserError when an output path is taken by a folder.
    """
    levels = [0] * len(files)
    while True:
        names = [_output_name(f, lv) for f, lv in zip(files, levels, strict=True)]
        groups: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            groups.setdefault(name.casefold(), []).append(i)
        clashes = [idx for idx in groups.values() if len(idx) > 1]
        if not clashes:
            break
        for idx in clashes:
            if any(levels[i] == 2 for i in idx):
                which = ", ".join(str(files[i]) for i in idx)
                raise ValueError(
                    f"inputs {which} would all be written as {names[idx[0]]}_x{scale}.png; "
                    "rename one of them or upscale them into different --out folders"
                )
            for i in idx:
                levels[i] += 1
    paths = [out / f"{name}_x{scale}.png" for name in names]
    inputs = {f.resolve() for f in files}
    for f, p in zip(files, paths, strict=True):
        for q in (p, p.with_name(p.stem + "_depth.png")):
            if q.resolve() in inputs:
                raise ValueError(f"{f}: its output {q} is one of the inputs; refusing to overwrite it")
            if q.exists() and not q.is_file():  # found now, not when saving after the model has run
                raise UserError(
                    q, f"the output for {f} exists and is not a file", "move it or choose another --out"
                )
    return paths


def _read_16bit(path: Path) -> np.ndarray:
    """16-bit grayscale (PNG/TIFF) or RGB(A) TIFF -> uint8 [H, W] / [H, W, C] via round(x / 257)."""
    from PIL import Image

    data = None
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        data = tifffile.imread(path)
    else:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                data = np.asarray(im)
    if data is None or data.dtype not in (np.uint16, np.int32, np.uint8) or data.ndim not in (2, 3):
        raise ImageError(
            f"{path}: 16-bit colour PNG cannot be decoded faithfully here; convert it to 8-bit first "
            "(e.g. with ImageMagick: convert in.png -depth 8 out.png)"
        )
    if data.dtype == np.uint8:
        return data
    return np.rint(np.clip(data.astype(np.float64), 0, 65535) / 257.0).astype(np.uint8)


def read_input(path: Path, *, convert_16bit: bool = False) -> InputImage:
    """Decode one input per the module policy. Raises ImageError / FileNotFoundError naming the file."""
    from PIL import Image

    if path.is_file() and path.stat().st_size == 0:
        raise ImageError(f"{path}: file is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception as err:
        raise ImageError(f"{path}: cannot decode image ({type(err).__name__}: {err})") from err
    try:
        rgb = load_image(path)
        raw = None
    except ImageError as err:
        if "more than 8 bits" not in str(err):  # corrupt or unsupported: load_image's message says which
            raise
        if not convert_16bit:
            raise ImageError(f"{err}; or pass --convert-16bit to convert it here") from err
        raw = _read_16bit(path)
        rgb = np.repeat(raw[..., None], 3, axis=2) if raw.ndim == 2 else raw[..., :3]
        if rgb.shape[-1] != 3:
            rgb = np.repeat(rgb[..., :1], 3, axis=2)
    gray = mode in _GRAY_MODES or (raw is not None and (raw.ndim == 2 or raw.shape[-1] in (1, 2)))
    alpha = None
    if mode in ("RGBA", "RGBa", "LA", "La"):
        with Image.open(path) as im:
            alpha = np.asarray(im.getchannel("A"), dtype=np.uint8)
    elif raw is not None and raw.ndim == 3 and raw.shape[-1] in (2, 4):
        alpha = raw[..., -1]
    return InputImage(path, rgb, alpha, gray)


def compose_output(sr_rgb: np.ndarray, image: InputImage, scale: int) -> np.ndarray:
    """Final uint8 output: RGB [H, W, 3], grey [H, W], or with the bicubic-upscaled alpha appended."""
    from adadsr_jax import metrics
    from adadsr_jax.data.bicubic import upscale as bicubic_upscale

    rgb = metrics.quantize(sr_rgb)
    if image.gray:
        gray = np.rint(rgb.astype(np.float64).mean(axis=-1)).astype(np.uint8)
        out = gray if image.alpha is None else np.stack([gray] * 3, axis=-1)
    else:
        out = rgb
    if image.alpha is not None:
        alpha = bicubic_upscale(image.alpha, scale)
        out = np.concatenate([out, alpha[..., None]], axis=-1)
    return out


def _save(path: Path, array: np.ndarray, gray_alpha: bool) -> None:
    if gray_alpha:  # grey + alpha: store as LA, what came in
        from PIL import Image

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array[..., [0, 3]])).save(path, format="PNG")
    else:
        save_png(path, array)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adadsr_jax.upscale", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir")
    src.add_argument("--checkpoint", help="directory written by save_inference_checkpoint")
    p.add_argument("--which", choices=("best", "latest"), default="best")
    p.add_argument("--out", required=True, help="output folder (created)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--depth", type=float, help="desired depth d (default: D, the full depth)")
    how.add_argument("--budget", help="per-image MACs budget: fraction of dense (0.5, 50%%) or GMACs (12.5G)")
    how.add_argument(
        "--budget-ms",
        help="per-image time budget in ms (40 or 40ms) on a latency model of this machine (calibrated "
        "once, cached); use with --sparse",
    )
    p.add_argument(
        "--cost-model", help="latency model cache file for --budget-ms (default: next to the checkpoint)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed runs per image with --budget-ms (median)")
    p.add_argument("--save-depth-map", action="store_true", help="also write <stem>_x<s>_depth.png")
    p.add_argument("--tile", type=int, default=256, help="LR tile size for large images (0: never tile)")
    p.add_argument("--tile-overlap", type=int, default=16, help="LR pixels of context around each tile")
    p.add_argument("--sparse", action="store_true", help="sparse execution (plain backbones run dense)")
    p.add_argument("--self-ensemble", action="store_true", help="x8 self-ensemble")
    p.add_argument("--convert-16bit", action="store_true", help="convert 16-bit input as round(x / 257)")
    return p


def run(args) -> list[Path]:
    """Upscale every input as `args` says; returns the written SR paths.

    An input that cannot be read (corrupt, 16-bit without --convert-16bit) is reported and skipped; the
    others are still written, then ValueError lists the skipped files.
    """
    from adadsr_jax.evaluation.budgets import check_cache_path, parse_budget, parse_budget_ms

    # Every flag and path is checked before jax and the model are loaded: a typo fails at once (in well
    # under a second), with nothing written. --depth: the same check and message as evaluate.py's --depths.
    if args.depth is not None and not (math.isfinite(args.depth) and args.depth >= 0):
        raise ValueError(f"bad --depth {str(args.depth)!r}: expected non-negative numbers")
    if args.tile < 0 or args.tile_overlap < 0:
        raise UserError("--tile/--tile-overlap", f"must be >= 0, got {args.tile} / {args.tile_overlap}")
    budget = parse_budget(args.budget) if args.budget else None
    budget_ms = parse_budget_ms(args.budget_ms) if args.budget_ms is not None else None
    if args.repeats < 1:
        raise UserError("--repeats", f"must be >= 1, got {args.repeats}")
    check_cache_path(args.cost_model)
    files = collect_inputs(args.inputs)
    source_flag = "--workdir" if args.workdir else "--checkpoint"
    require_checkpoint_dir(args.workdir or args.checkpoint, source_flag)
    out_dir = require_output_dir(args.out, "--out")

    from adadsr_jax.checkpoint import load_model
    from adadsr_jax.evaluation.cost_model import budget_ms_depth, open_for_cli, retry_budget_ms_depth
    from adadsr_jax.evaluation.inference import Predictor, budget_depth, gmacs
    from adadsr_jax.evaluation.runner import colorize_depth

    model = load_model(args.workdir or args.checkpoint, which=args.which)
    scale = int(model.scale)
    outs = output_paths(files, out_dir, scale)
    predictor = Predictor(
        model,
        sparse=args.sparse,
        tile=args.tile if args.tile and args.tile > 0 else None,
        overlap=args.tile_overlap,
        self_ensemble=args.self_ensemble,
    )
    if args.depth is not None and not model.config.adaptive:
        print("note: this model has no adapter; --depth is ignored")
    cost_model = None
    if budget_ms is not None:
        if not model.config.adaptive:
            raise ValueError("--budget-ms needs an adaptive model; this one has no adapter (one fixed cost)")
        checkpoint_dir = args.workdir or args.checkpoint
        cost_model, _ = open_for_cli(predictor, checkpoint_dir=checkpoint_dir, cache_path=args.cost_model)
    written, failed = [], []
    for path, out in zip(files, outs, strict=True):
        try:
            image = read_input(path, convert_16bit=args.convert_16bit)
        except ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(str(path))
            continue
        depth = args.depth
        if budget is not None:
            depth = budget_depth(predictor, image.rgb, budget).desired_depth
        chosen = None
        if cost_model is not None:
            chosen = budget_ms_depth(predictor, image.rgb, budget_ms, cost_model)
            depth = chosen.desired_depth
        pred = predictor.predict(image.rgb, depth)
        timing = ""
        if chosen is not None:
            # Timed after the prediction (its compile), the inputs already on the device, as evaluate.py.
            lr = image.rgb.astype(np.float32)
            measured = predictor.time_forward(lr, np.float32(depth), args.repeats)
            retry = retry_budget_ms_depth(predictor, chosen, measured, cost_model)
            if retry is not None:
                timing = f", ran {measured:.1f} ms at d = {depth:.3g}, so again at a lower d"
                chosen, depth = retry, retry.desired_depth
                pred = predictor.predict(image.rgb, depth)
                measured = predictor.time_forward(lr, np.float32(depth), args.repeats)
            late = "" if chosen.met else " (predicted over the aim even at d = 0)"
            timing += (
                f", time budget: asked {budget_ms:g} ms, aimed {chosen.aimed_ms:.1f} ms, "
                f"predicted {chosen.predicted_ms:.1f} ms{late}, "
                f"measured {measured:.1f} ms"
            )
        final = compose_output(pred.sr, image, scale)
        _save(out, final, image.gray and image.alpha is not None)
        written.append(out)
        if args.save_depth_map:
            colour = colorize_depth(pred.depth_map, predictor.max_depth, upscale=scale)
            save_png(out.with_name(out.stem + "_depth.png"), colour)
        d_txt = "-" if pred.desired_depth is None else f"{pred.desired_depth:.3g}"
        print(
            f"{path} -> {out} ({final.shape[1]}x{final.shape[0]}), desired depth {d_txt}, "
            f"mean depth {pred.mean_depth:.2f}, {gmacs(pred.macs):.2f} executed GMACs "
            f"({pred.release_gmacs:.2f} as the release counts){timing}",
            flush=True,
        )
    if failed:
        raise ValueError(f"{len(failed)} of {len(files)} inputs could not be read: {', '.join(failed)}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one `error: <path>: <problem>` line (adadsr_jax.cli's convention)."""
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
