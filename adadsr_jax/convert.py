"""`python -m adadsr_jax.convert`: PyTorch checkpoints (AdaDSR release, EDSR-PyTorch, RCAN) into ours.

Usage:
    python -m adadsr_jax.convert FILE.pth --model adaedsr --scale 2 --out DIR

The conversion itself (key layouts, checks, errors) is `adadsr_jax.conversion`; its public names are
importable from here too. This module checks the command line and its paths before it imports that
library (jax, flax), so a wrong path is refused in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from adadsr_jax.lazy_imports import lazy_exports

# conversion.LAYOUTS, written out so that --help and a wrong --layout need no jax (a test keeps them equal).
LAYOUT_CHOICES = ("auto", "adadsr", "edsr", "rcan")

_LIBRARY = (
    "LAYOUTS",
    "CheckpointMismatchError",
    "Conversion",
    "ConversionError",
    "ScaleMismatchError",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_layout",
    "extract_state_dict",
    "infer_scale",
    "infer_sizes",
    "key_table",
    "meanshift_tensors",
)
_READER = ("CheckpointFormatError",)  # what convert_checkpoint raises for an unreadable or hostile file
__all__ = ["main", *_READER, *_LIBRARY]
__getattr__, __dir__ = lazy_exports(
    globals(), {"adadsr_jax.conversion": _LIBRARY, "adadsr_jax.torch_checkpoint": _READER}
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adadsr_jax.convert",
        description="Convert an AdaDSR / EDSR-PyTorch / RCAN checkpoint (.pt/.pth) into a checkpoint "
        "directory that evaluate.py and upscale load. PyTorch is not needed; the file's pickle may only "
        "rebuild tensors (anything else is refused).",
    )
    p.add_argument("checkpoint", help="the torch.save file (zip or legacy format)")
    p.add_argument("--model", required=True, help="model preset: adaedsr, adarcan, edsr, rcan (or *_small)")
    p.add_argument("--scale", type=int, required=True, choices=(2, 3, 4))
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--format",
        default="orbax",
        choices=("orbax", "safetensors"),
        help="orbax: config.json + Orbax parameters (default); safetensors: model.safetensors + model.json "
        "(adadsr_jax.save_model; readable without this package)",
    )
    p.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help="key layout (default: detect)")
    p.add_argument("--infer-size", action="store_true", help="take block/feature counts from the file")
    p.add_argument("--res-scale", type=float, default=None, help="override the layout's res_scale")
    p.add_argument(
        "--backbone-only",
        action="store_true",
        help="adaptive model from a plain EDSR/RCAN file: load the backbone, keep a fresh adapter",
    )
    p.add_argument("--seed", type=int, default=0, help="init seed for parameters not in the file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0, or 2 with one `error: <path>: <problem>` line (adadsr_jax.cli's convention)."""
    from adadsr_jax.cli import UserError, require_file, require_output_dir, run_cli

    args = _parser().parse_args(argv)

    def body() -> None:
        # Both paths are checked before the file is read: --out must be new (or an empty folder) so that
        # nothing an earlier run wrote is replaced, half of it, by this one.
        require_file(args.checkpoint, "checkpoint", what="checkpoint file")
        out = require_output_dir(args.out, "--out")
        if out.is_dir() and any(out.iterdir()):
            raise UserError(out, "already exists and is not empty (--out)", "choose a new --out or remove it")
        from adadsr_jax.conversion import convert_checkpoint

        result = convert_checkpoint(
            args.checkpoint,
            model_name=args.model,
            scale=args.scale,
            layout=args.layout,
            infer_size=args.infer_size,
            res_scale=args.res_scale,
            backbone_only=args.backbone_only,
            seed=args.seed,
        )
        from adadsr_jax.checkpoint import save_inference_checkpoint, save_model

        if args.format == "safetensors":
            save_model(result.model, args.out)
        else:
            save_inference_checkpoint(
                args.out, result.model, model_name=result.model_name, overrides=result.overrides
            )
        print(
            f"converted {args.checkpoint} ({result.layout} layout, {result.converted_keys} tensors) -> "
            f"{args.out}: model {result.model_name} x{result.scale}, overrides {result.overrides}"
        )
        for note in result.notes:
            print(f"  {note}")

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
