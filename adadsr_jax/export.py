"""Export a trained model: a jax.export StableHLO artifact, an ONNX graph, or safetensors weights.

    python -m adadsr_jax.export --workdir runs/demo --format stablehlo --out export/demo.stablehlo
    python -m adadsr_jax.export --workdir runs/demo --format onnx --out export/demo.onnx
    python -m adadsr_jax.export --workdir runs/demo --format safetensors --out export/demo_model

Both graphs map (lr [N, h, w, 3] float32 on 0..255, d [N] float32) -> (sr [N, s*h, s*w, 3] float32,
unclipped; depth_map [N, h, w, G] float32), with N, h, w left free, through the dense masked network
(each block's residual times its eq. 4 mask). Every artifact gets a JSON sidecar `<out>.json`
(inputs, outputs, ranges, scale, the command that made it) and is checked against the in-process model
before it is written. docs/export.md has the details.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from flax import nnx

from adadsr_jax.checkpoint import DESCRIPTOR_FILE, WEIGHTS_FILE, config_to_dict, load_model, save_model
from adadsr_jax.cli import UserError, require_checkpoint_dir, require_output_dir, run_cli
from adadsr_jax.models import AdaDSR, ModelConfig
from adadsr_jax.models.layers import DIV2K_RGB_MEAN, upsampler_stages

FORMATS = ("stablehlo", "onnx", "safetensors")
DEFAULT_PLATFORMS = ("cpu", "cuda")
DEFAULT_OPSET = 17
# Export-time check: the artifact against the in-process model on one small input.
VERIFY_SHAPE = (1, 20, 24, 3)
VERIFY_TOLERANCE = {"stablehlo": 1e-4, "onnx": 0.05}  # relative / max abs on the 0..255 scale


class ExportError(ValueError):
    """The requested export cannot be made (an unsupported combination of options or model)."""


def inference_fn(
    model: AdaDSR, *, sparse: bool = False, sparse_backend: str = "auto"
) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """(lr [N, h, w, 3], d [N]) -> (sr [N, s*h, s*w, 3], depth_map [N, h, w, G]), parameters closed over
    (so an export embeds them as constants). Plain backbones ignore d and return D everywhere."""
    graphdef, state = nnx.split(model)

    def fn(lr: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
        m = nnx.merge(graphdef, state)
        sr, aux = m(lr, desired_depth=d, sparse=sparse, sparse_backend=sparse_backend)
        return sr, aux["depth_map"]

    return fn


def export_stablehlo(
    model: AdaDSR,
    *,
    platforms: Sequence[str] = DEFAULT_PLATFORMS,
    sparse: bool = False,
    shape: tuple[int, int, int] | None = None,
) -> jax.export.Exported:
    """jax.export of `inference_fn(model)` for `platforms`.

    shape=None leaves N, h, w symbolic (one artifact for every batch and image size); the sparse path
    needs fixed sizes: it picks its tile size and index-list lengths from the pixel count in Python,
    which a symbolic N*h*w cannot answer, so shape=(N, h, w) is required with sparse=True.
    """
    if sparse and shape is None:
        raise ExportError(
            "--sparse: the sparse path exports only with fixed sizes (its tile sizes and index lists "
            "come from the pixel count); add --shape N,h,w, or export the dense path"
        )
    if shape is None:
        n, h, w = jax.export.symbolic_shape("N, h, w")
    else:
        n, h, w = shape
    args = (jax.ShapeDtypeStruct((n, h, w, 3), jnp.float32), jax.ShapeDtypeStruct((n,), jnp.float32))
    fn = jax.jit(inference_fn(model, sparse=sparse))
    try:
        return jax.export.export(fn, platforms=tuple(platforms))(*args)
    except ValueError as e:
        # e.g. the Pallas/Triton kernel: its custom call has no compatibility guarantee, so jax.export
        # refuses to serialise it.
        raise ExportError(f"jax.export failed for platforms {list(platforms)}: {e}") from e


# ----------------------------------------------------------------------------------------------- ONNX
class _OnnxGraph:
    """Collects nodes and initializers; every helper returns the name of its (single) output."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def const(self, value: np.ndarray | float | Sequence[int], name: str = "c", dtype=np.float32) -> str:
        from onnx import numpy_helper

        out = self._name(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), out))
        return out

    def ints(self, values: Sequence[int], name: str) -> str:
        """An int64 1-D constant (shapes, Slice starts/ends/axes)."""
        return self.const(values, name, np.int64)

    def op(self, op_type: str, *inputs: str, name: str | None = None, out: str | None = None, **attrs) -> str:
        from onnx import helper

        out = out or self._name(name or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def conv(self, x: str, kernel: np.ndarray, bias: np.ndarray, name: str) -> str:
        """SAME stride-1 conv; kernel HWIO [k, k, Cin, Cout] -> ONNX OIHW."""
        k = kernel.shape[0]
        w = self.const(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), name + "_w")
        b = self.const(bias, name + "_b")
        return self.op("Conv", x, w, b, name=name, kernel_shape=[k, k], pads=[k // 2] * 4)

    def dense1x1(self, x: str, kernel: np.ndarray, bias: np.ndarray, name: str) -> str:
        """[N, Cin, 1, 1] @ kernel [Cin, Cout] + bias as a 1x1 conv."""
        w = self.const(np.ascontiguousarray(kernel.T[:, :, None, None]), name + "_w")
        return self.op("Conv", x, w, self.const(bias, name + "_b"), name=name, kernel_shape=[1, 1])


@dataclass(frozen=True)
class _Residuals:
    """What every residual block shares: the Clip bounds of its eq. 4 mask (None for a plain backbone,
    whose masks are all one) and the res_scale constant (None when it is 1, so no Mul is emitted)."""

    g: _OnnxGraph
    bounds: tuple[str, str] | None
    res_scale: str | None

    @classmethod
    def make(cls, g: _OnnxGraph, cfg: ModelConfig) -> _Residuals:
        bounds = (g.const(0.0, "zero"), g.const(1.0, "one")) if cfg.adaptive else None
        res_scale = None if cfg.res_scale == 1.0 else g.const(float(cfg.res_scale), "res_scale")
        return cls(g, bounds, res_scale)

    def mask(self, r: str, depth: str | None, index: int) -> str:
        """r [N, C, h, w] * clip(depth - index, 0, 1) (paper eq. 4), depth [N, 1, h, w]; r without one."""
        if depth is None or self.bounds is None:
            return r
        g = self.g
        m = g.op("Clip", g.op("Sub", depth, g.const(float(index), "l")), *self.bounds, name="mask")
        return g.op("Mul", r, m)

    def add(self, x: str, r: str, name: str) -> str:
        """x + res_scale * r, the block's output (named `name`)."""
        if self.res_scale is not None:
            r = self.g.op("Mul", r, self.res_scale)
        return self.g.op("Add", x, r, name=name)


def _head(g: _OnnxGraph, p: dict) -> tuple[str, str]:
    """lr [N, h, w, 3] -> (the MeanShift constant [1, 3, 1, 1], head features z0 [N, C, h, w] NCHW)."""
    mean = g.const(np.asarray(DIV2K_RGB_MEAN, np.float32).reshape(1, 3, 1, 1), "rgb_mean")
    x = g.op("Transpose", "lr", perm=[0, 3, 1, 2], name="lr_nchw")
    return mean, g.conv(g.op("Sub", x, mean), p["head"]["kernel"], p["head"]["bias"], "head")


def _adapter(g: _OnnxGraph, a: dict, z0: str, depth_input: str) -> str:
    """The depth adapter: (z0 [N, C, h, w], d [N]) -> depth map [N, G, h, w]. d scales the adapter's
    input ("weight") or its output ("output"), as ModelConfig.depth_input says."""
    dcol = g.op("Reshape", "d", g.ints([-1, 1, 1, 1], "shape"), name="d_col")
    h = g.op("Mul", z0, dcol) if depth_input == "weight" else z0
    h = g.conv(h, a["layer0"]["kernel"], a["layer0"]["bias"], "adapter0")
    for i in sorted(a["layers"]):
        layer = a["layers"][i]
        h = g.op("PRelu", h, g.const(layer["slope"], "slope"))
        h = g.conv(h, layer["conv"]["kernel"], layer["conv"]["bias"], f"adapter{i + 1}")
    h = g.op("Relu", h)
    return g.op("Mul", h, dcol, name="depth") if depth_input == "output" else h


def _edsr_body(g: _OnnxGraph, b: dict, z0: str, num_blocks: int, depth: str | None, res: _Residuals) -> str:
    """EDSR's stack of masked residual blocks (conv, ReLU, conv): [N, C, h, w] -> [N, C, h, w]."""
    hb = z0
    for i in range(num_blocks):
        r = g.op("Relu", g.conv(hb, b["layer0"]["kernel"][i], b["layer0"]["bias"][i], f"b{i}_conv0"))
        r = g.conv(r, b["layer2"]["kernel"][i], b["layer2"]["bias"][i], f"b{i}_conv1")
        hb = res.add(hb, res.mask(r, depth, i), f"b{i}_out")
    return hb


def _rcan_block(
    g: _OnnxGraph, x: str, k: dict, pre: str, depth: str | None, index: int, res: _Residuals
) -> str:
    """One RCAB: conv, ReLU, conv, the eq. 4 mask, channel attention; k maps a layer to (kernel, bias)."""
    r = g.conv(g.op("Relu", g.conv(x, *k["layer0"], pre + "c0")), *k["layer2"], pre + "c1")
    r = res.mask(r, depth, index)
    # channel attention: r * sigmoid(up(relu(down(mean over h, w of r))))
    att = g.op("Relu", g.dense1x1(g.op("GlobalAveragePool", r), *k["ca_down"], pre + "ca0"))
    r = g.op("Mul", r, g.op("Sigmoid", g.dense1x1(att, *k["ca_up"], pre + "ca1")))
    return res.add(x, r, pre + "_out")


def _group_depth(g: _OnnxGraph, depth: str, gi: int) -> str:
    """Channel gi of the depth map [N, G, h, w] -> [N, 1, h, w]: group gi's own map."""
    start, end, axis = g.ints([gi], "start"), g.ints([gi + 1], "end"), g.ints([1], "axis")
    return g.op("Slice", depth, start, end, axis, name=f"g{gi}_depth")


def _rcan_body(g: _OnnxGraph, b: dict, z0: str, cfg: ModelConfig, depth: str | None, res: _Residuals) -> str:
    """RCAN's residual groups (masked RCABs, a closing conv, a group skip): [N, C, h, w] -> same."""
    hb = z0
    for gi in range(cfg.num_groups):
        gd = None if depth is None else _group_depth(g, depth, gi)
        hg = hb
        for i in range(cfg.num_blocks):
            k = {name: (v["kernel"][gi, i], v["bias"][gi, i]) for name, v in b.items() if name != "group_end"}
            hg = _rcan_block(g, hg, k, f"g{gi}b{i}", gd, i, res)
        end = g.conv(hg, b["group_end"]["kernel"][gi], b["group_end"]["bias"][gi], f"g{gi}_end")
        hb = g.op("Add", hb, end, name=f"g{gi}_out")
    return hb


def _upsample_tail(g: _OnnxGraph, p: dict, hb: str, z0: str, mean: str, scale: int) -> str:
    """Body's last conv plus the global skip, pixel shuffle stages, tail conv, MeanShift back:
    [N, C, h, w] -> sr [N, 3, s*h, s*w]."""
    z = g.op("Add", z0, g.conv(hb, p["body_lastconv"]["kernel"], p["body_lastconv"]["bias"], "body_lastconv"))
    for i, r in enumerate(upsampler_stages(scale)):
        c = p["up"]["convs"][i]
        z = g.op("DepthToSpace", g.conv(z, c["kernel"], c["bias"], f"up{i}"), blocksize=r, mode="CRD")
    return g.op("Add", g.conv(z, p["tail"]["kernel"], p["tail"]["bias"], "tail"), mean)


def _outputs(g: _OnnxGraph, sr: str, depth: str | None, cfg: ModelConfig) -> None:
    """The graph outputs "sr" [N, s*h, s*w, 3] and "depth_map" [N, h, w, G], NHWC again."""
    from onnx import TensorProto, helper

    g.op("Transpose", sr, perm=[0, 2, 3, 1], out="sr")
    if depth is not None:
        g.op("Transpose", depth, perm=[0, 2, 3, 1], out="depth_map")
        return
    # plain backbone: D everywhere, shaped [N, h, w, G] like the input
    nhw = g.op("Slice", g.op("Shape", "lr"), g.ints([0], "s"), g.ints([3], "e"))
    shape = g.op("Concat", nhw, g.ints([cfg.num_maps], "g"), axis=0)
    full = helper.make_tensor("D", TensorProto.FLOAT, [1], [float(cfg.max_depth)])
    g.op("ConstantOfShape", shape, value=full, out="depth_map")


def _model_proto(g: _OnnxGraph, cfg: ModelConfig, scale: int, opset: int):
    """The checked onnx.ModelProto of g's nodes, with the inputs and outputs typed and sized."""
    import onnx
    from onnx import TensorProto, helper

    import adadsr_jax

    def vi(name, dims):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    graph = helper.make_graph(
        g.nodes,
        f"adadsr_{cfg.backbone}_x{scale}",
        [vi("lr", ["N", "h", "w", 3]), vi("d", ["N"])],
        [vi("sr", ["N", f"{scale}*h", f"{scale}*w", 3]), vi("depth_map", ["N", "h", "w", cfg.num_maps])],
        g.initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="adadsr-jax",
        producer_version=adadsr_jax.__version__,
    )
    # The oldest IR version that carries this opset, not the newest the onnx package writes, so that
    # older runtimes (which refuse newer IR versions) load the file.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    helper.set_model_props(proto, {"scale": str(scale), "max_depth": str(cfg.max_depth)})
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model: AdaDSR, *, opset: int = DEFAULT_OPSET):
    """The dense masked network as an onnx.ModelProto (NHWC inputs/outputs like the JAX model, NCHW
    inside), built node by node from the parameters: Conv, Relu, PRelu, Mul, Add, Sub, Clip,
    GlobalAveragePool/Sigmoid (RCAN), DepthToSpace mode CRD (PyTorch's pixel shuffle order)."""
    cfg, scale = model.config, int(model.scale)
    p = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    g = _OnnxGraph()
    mean, z0 = _head(g, p)
    depth = _adapter(g, p["adapter"], z0, cfg.depth_input) if cfg.adaptive else None
    res = _Residuals.make(g, cfg)
    if cfg.backbone == "edsr":
        hb = _edsr_body(g, p["body"], z0, cfg.num_blocks, depth, res)
    else:
        hb = _rcan_body(g, p["body"], z0, cfg, depth, res)
    _outputs(g, _upsample_tail(g, p, hb, z0, mean, scale), depth, cfg)
    return _model_proto(g, cfg, scale, opset)


# ------------------------------------------------------------------------------------------ sidecars
def sidecar(model: AdaDSR, fmt: str, artifact: Path, *, command: str | None, **extra: Any) -> dict[str, Any]:
    """The JSON description of an artifact: inputs, outputs, ranges, scale, model, the command."""
    import adadsr_jax

    cfg, s = model.config, int(model.scale)
    d_range = [0.0, float(cfg.max_depth)] if cfg.adaptive else None
    info: dict[str, Any] = {
        "format": fmt,
        "artifact": artifact.name,
        "sha256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "inputs": [
            {
                "name": "lr",
                "shape": ["N", "h", "w", 3],
                "dtype": "float32",
                "layout": "NHWC, RGB",
                "range": [0.0, 255.0],
            },
            {
                "name": "d",
                "shape": ["N"],
                "dtype": "float32",
                "range": d_range,
                "meaning": "desired depth per image" if cfg.adaptive else "ignored (plain backbone)",
            },
        ],
        "outputs": [
            {
                "name": "sr",
                "shape": ["N", f"{s}*h", f"{s}*w", 3],
                "dtype": "float32",
                "range": [0.0, 255.0],
                "note": "unclipped: clip to 0..255 and round for uint8",
            },
            {
                "name": "depth_map",
                "shape": ["N", "h", "w", cfg.num_maps],
                "dtype": "float32",
                "range": [0.0, None],
                "note": "blocks run where ceil(clip(depth_map, 0, max_depth)) >= l",
            },
        ],
        "scale": s,
        "max_depth": cfg.max_depth,
        "model_config": config_to_dict(cfg),
        "adadsr_jax_version": adadsr_jax.__version__,
        "command": command,
    }
    info.update(extra)
    return info


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _verify_input(model: AdaDSR) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic smooth-plus-noise image (real SR inputs are not i.i.d. noise) and a mid depth."""
    n, h, w, _ = VERIFY_SHAPE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 127.5 + 90 * np.sin(yy / 3.0)[..., None] * np.cos(xx[..., None] / 4.0 + np.arange(3))
    noise = np.random.default_rng(0).normal(0, 12, (n, h, w, 3))
    lr = np.clip(base[None] + noise, 0, 255).astype(np.float32)
    d = np.full((n,), 0.5 * model.config.max_depth, np.float32)
    return lr, d


def _reference(model: AdaDSR, lr: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sr, depth = jax.jit(inference_fn(model))(jnp.asarray(lr), jnp.asarray(d))
    return np.asarray(sr), np.asarray(depth)


def verify_stablehlo(exported: jax.export.Exported, model: AdaDSR) -> dict[str, Any]:
    """Run the serialised artifact (deserialised again) against the model; ExportError past 1e-4."""
    lr, d = _verify_input(model)
    if "cpu" not in exported.platforms:
        return {"skipped": "the artifact has no cpu lowering"}
    shape = exported.in_avals[0].shape
    if all(isinstance(s, int) for s in shape):  # fixed-size export: verify at its own size
        lr = np.resize(lr, shape).astype(np.float32)
        d = np.resize(d, shape[:1]).astype(np.float32)
    again = jax.export.deserialize(exported.serialize())
    with jax.default_device(jax.devices("cpu")[0]):
        sr, depth = (np.asarray(v) for v in again.call(jnp.asarray(lr), jnp.asarray(d)))
    ref_sr, ref_depth = _reference(model, lr, d)
    rel = float(np.abs(sr - ref_sr).max() / max(np.abs(ref_sr).max(), 1e-12))
    rel_d = float(np.abs(depth - ref_depth).max() / max(np.abs(ref_depth).max(), 1e-12))
    if max(rel, rel_d) > VERIFY_TOLERANCE["stablehlo"]:
        raise ExportError(f"the exported graph differs from the model (max relative {max(rel, rel_d):.3g})")
    return {"input_shape": list(lr.shape), "max_rel_diff_sr": rel, "max_rel_diff_depth_map": rel_d}


def verify_onnx(proto, model: AdaDSR) -> dict[str, Any]:
    """Run the graph in onnxruntime (CPU) against the model; ExportError past 0.05 max abs on 0..255."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime is not installed"}
    lr, d = _verify_input(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    sr, depth = session.run(["sr", "depth_map"], {"lr": lr, "d": d})
    ref_sr, ref_depth = _reference(model, lr, d)
    diff = float(np.abs(sr - ref_sr).max())
    diff_d = float(np.abs(depth - ref_depth).max())
    if diff > VERIFY_TOLERANCE["onnx"]:
        raise ExportError(f"onnxruntime's output differs from the model by up to {diff:.3g} (0..255 scale)")
    return {
        "input_shape": list(lr.shape),
        "runtime": f"onnxruntime {ort.__version__} CPU",
        "max_abs_diff_sr": diff,
        "max_abs_diff_depth_map": diff_d,
    }


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adadsr_jax.export", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="training workdir (config.json + checkpoints)")
    src.add_argument("--checkpoint", help="a save_model directory (model.json) or an inference checkpoint")
    p.add_argument("--which", choices=("best", "latest"), default="best", help="Orbax step to load")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (stablehlo, onnx) or directory (safetensors)")
    p.add_argument(
        "--platforms",
        default=",".join(DEFAULT_PLATFORMS),
        help="stablehlo: comma-separated lowering platforms (cpu, cuda, rocm, tpu)",
    )
    p.add_argument("--sparse", action="store_true", help="stablehlo: the sparse path (needs --shape)")
    p.add_argument("--shape", help="stablehlo: fixed N,h,w instead of symbolic sizes")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="onnx: opset version (>= 13)")
    return p


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError("--shape", f"{text!r} is not N,h,w (positive integers)", "e.g. --shape 1,64,64")
    return shape  # type: ignore[return-value]


def _check_args(args: argparse.Namespace) -> tuple[tuple[int, int, int] | None, tuple[str, ...]]:
    """Every flag and path checked before a model is loaded (UserError naming the flag or path)."""
    shape = _parse_shape(args.shape) if args.shape else None
    platforms = tuple(s.strip() for s in args.platforms.split(",") if s.strip())
    if args.format != "stablehlo" and (args.sparse or args.shape):
        raise UserError("--sparse/--shape", "apply to --format stablehlo only")
    if args.sparse and shape is None:
        raise UserError(
            "--sparse",
            "the sparse path exports only with fixed sizes (its tile sizes and index lists come from "
            "the pixel count)",
            "add --shape N,h,w, or leave out --sparse for the dense path with free sizes",
        )
    if not platforms:
        raise UserError("--platforms", "empty", "e.g. --platforms cpu,cuda")
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise UserError(
                "--format onnx", "needs the onnx package", "pip install 'adadsr-jax[onnx]'"
            ) from None
        if args.opset < 13:
            raise UserError("--opset", f"{args.opset} is too old", "use 13 or later")
    source = Path(args.workdir or args.checkpoint)
    flag = "--workdir" if args.workdir else "--checkpoint"
    if not (source.is_file() and source.name in (DESCRIPTOR_FILE, WEIGHTS_FILE)):
        require_checkpoint_dir(source, flag)
    out = Path(args.out)
    if args.format == "safetensors":
        require_output_dir(out, "--out")
    else:
        if out.is_dir():
            raise UserError(
                out, "is a directory (--out)", f"give a file path, e.g. {out / ('model.' + args.format)}"
            )
        require_output_dir(out.parent, "--out")
    return shape, platforms


def _stablehlo_artifact(
    model: AdaDSR, args: argparse.Namespace, shape: tuple[int, int, int] | None, platforms: tuple[str, ...]
) -> tuple[bytes, dict[str, Any]]:
    """The verified, serialised StableHLO artifact and its sidecar's format-specific fields."""
    exported = export_stablehlo(model, platforms=platforms, sparse=args.sparse, shape=shape)
    extra = {
        "platforms": list(exported.platforms),
        "path": "sparse" if args.sparse else "dense masked",
        "symbolic_shapes": shape is None,
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "check": verify_stablehlo(exported, model),
    }
    return exported.serialize(), extra


def _onnx_artifact(model: AdaDSR, opset: int) -> tuple[bytes, dict[str, Any]]:
    """The verified, serialised ONNX graph and its sidecar's format-specific fields."""
    import onnx

    proto = export_onnx(model, opset=opset)
    extra = {
        "opset": opset,
        "onnx_version": onnx.__version__,
        "path": "dense masked",
        "check": verify_onnx(proto, model),
    }
    return proto.SerializeToString(), extra


def run(args: argparse.Namespace, argv: Sequence[str]) -> Path:
    """Do what `args` say; returns the written artifact (or directory, for safetensors)."""
    shape, platforms = _check_args(args)
    source = args.workdir or args.checkpoint
    model = load_model(source, which=args.which)
    out = Path(args.out)
    command = shlex.join(["python", "-m", "adadsr_jax.export", *argv])
    if args.format == "safetensors":
        save_model(model, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        if args.format == "stablehlo":
            data, extra = _stablehlo_artifact(model, args, shape, platforms)
        else:
            data, extra = _onnx_artifact(model, args.opset)
    except ExportError as e:  # name the model whose export failed
        raise ExportError(f"{source}: {e}") from e
    out.write_bytes(data)
    _write_json(out.with_name(out.name + ".json"), sidecar(model, args.format, out, command=command, **extra))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    def body() -> None:
        out = run(args, argv)
        print(f"wrote {out}" + ("" if args.format == "safetensors" else f" and {out.name}.json"))

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
