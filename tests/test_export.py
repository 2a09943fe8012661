"""adadsr_jax.export: StableHLO (symbolic N, h, w; run in a process without adadsr_jax), ONNX in
onnxruntime, sidecars, the CLI and the README's snippets."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.data
from flax import nnx
from PIL import Image

from adadsr_jax.checkpoint import save_inference_checkpoint, save_model
from adadsr_jax.export import ExportError, export_onnx, export_stablehlo, main
from adadsr_jax.models import create_model

README = Path(__file__).resolve().parents[1] / "README.md"
# Real photo crops (two sizes, odd ones included) and per-image desired depths.
SIZES = [(17, 23), (32, 28)]


def photo_batch(n: int, h: int, w: int) -> np.ndarray:
    """n different h x w crops of skimage's astronaut / coffee / chelsea photos, float32 0..255."""
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    crops = [photos[i % 3][60 + 7 * i : 60 + 7 * i + h, 100 + 5 * i : 100 + 5 * i + w] for i in range(n)]
    return np.stack(crops).astype(np.float32)


def depths(model, n: int) -> np.ndarray:
    return np.linspace(0.3, 0.8, n, dtype=np.float32) * model.config.max_depth


@nnx.jit
def _forward(model, lr, d):
    sr, aux = model(lr, desired_depth=d)
    return sr, aux["depth_map"]


def reference(model, lr: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The in-process model's (sr, depth_map), float64 copies (one compile per model and shape)."""
    sr, depth = _forward(model, lr, d)
    return np.asarray(sr, np.float64), np.asarray(depth, np.float64)


MODELS = [("adaedsr_tiny", 2), ("adarcan_tiny", 3), ("edsr_tiny", 4)]


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: p[0])
def model(request):
    name, scale = request.param
    return create_model(name, scale=scale, rngs=nnx.Rngs(7))


def run_fresh(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `code` in a new interpreter that must never import adadsr_jax."""
    guard = "\nimport sys\nassert 'adadsr_jax' not in sys.modules, 'the artifact needed adadsr_jax'\n"
    return subprocess.run(
        [sys.executable, "-c", code + guard],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )


# ------------------------------------------------------------------------------------------ StableHLO
def test_stablehlo_matches_the_model_in_a_fresh_process(model, tmp_path):
    exported = export_stablehlo(model)  # cpu and cuda, symbolic sizes
    assert exported.platforms == ("cpu", "cuda")
    (tmp_path / "model.stablehlo").write_bytes(exported.serialize())
    # One artifact, three (batch, size) pairs: batch and both sizes change, each call compiles anew (so
    # no more pairs), plus a 2 x 5 image: the folded upsampler and tail's border correction takes any size.
    cases = [(2, *SIZES[0]), (1, *SIZES[1]), (1, 2, 5)]
    for i, (n, h, w) in enumerate(cases):
        np.save(tmp_path / f"lr{i}.npy", photo_batch(n, h, w))
        np.save(tmp_path / f"d{i}.npy", depths(model, n))
    code = textwrap.dedent(
        f"""
        import jax
        import numpy as np
        exported = jax.export.deserialize(open("model.stablehlo", "rb").read())
        for i in range({len(cases)}):
            sr, depth_map = exported.call(np.load(f"lr{{i}}.npy"), np.load(f"d{{i}}.npy"))
            np.save(f"sr{{i}}.npy", np.asarray(sr))
            np.save(f"depth{{i}}.npy", np.asarray(depth_map))
        """
    )
    proc = run_fresh(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = model.scale
    for i, (n, h, w) in enumerate(cases):
        want_sr, want_depth = reference(
            model, np.load(tmp_path / f"lr{i}.npy"), np.load(tmp_path / f"d{i}.npy")
        )
        sr, depth = np.load(tmp_path / f"sr{i}.npy"), np.load(tmp_path / f"depth{i}.npy")
        assert sr.shape == (n, s * h, s * w, 3)
        assert depth.shape == (n, h, w, model.config.num_maps)
        # <= 1e-4 relative to the output's magnitude (0..255 images).
        assert np.abs(sr - want_sr).max() <= 1e-4 * np.abs(want_sr).max(), (n, h, w)
        assert np.abs(depth - want_depth).max() <= 1e-4 * max(np.abs(want_depth).max(), 1.0), (n, h, w)


def test_stablehlo_refuses_wrong_rank_and_channels(tmp_path):
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(7))
    (tmp_path / "model.stablehlo").write_bytes(export_stablehlo(model, platforms=("cpu",)).serialize())
    code = textwrap.dedent(
        """
        import jax
        import numpy as np
        exported = jax.export.deserialize(open("model.stablehlo", "rb").read())
        d = np.ones((1,), np.float32)
        for lr in (np.zeros((8, 8, 3), np.float32), np.zeros((1, 8, 8, 4), np.float32)):
            try:
                exported.call(lr, d)
            except ValueError as e:
                print("refused:", str(e).splitlines()[0])
            else:
                raise SystemExit(f"accepted {lr.shape}")
        """
    )
    proc = run_fresh(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert "Rank mismatch" in lines[0] and "(N, h, w, 3)" in lines[0]
    assert "shape[3]" in lines[1] and "(1, 8, 8, 4)" in lines[1]


def test_sparse_path_exports_only_with_fixed_sizes():
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(7))
    with pytest.raises(ExportError, match="fixed sizes"):
        export_stablehlo(model, sparse=True)
    n, h, w = 2, 17, 23
    exported = export_stablehlo(model, sparse=True, shape=(n, h, w), platforms=("cpu", "cuda"))
    lr, d = photo_batch(n, h, w), depths(model, n)
    sr, depth = (np.asarray(v) for v in jax.export.deserialize(exported.serialize()).call(lr, d))
    want_sr, want_depth = reference(model, lr, d)  # the dense model: sparse equals it up to rounding
    assert np.abs(sr - want_sr).max() <= 1e-4 * np.abs(want_sr).max()
    np.testing.assert_allclose(depth, want_depth, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- ONNX
def test_onnx_matches_the_model_in_onnxruntime(model, tmp_path):
    import onnxruntime as ort

    path = tmp_path / "model.onnx"
    path.write_bytes(export_onnx(model).SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # one file, two sizes
    for h, w in SIZES:
        lr, d = photo_batch(2, h, w), depths(model, 2)
        sr, depth = session.run(["sr", "depth_map"], {"lr": lr, "d": d})
        want_sr, want_depth = reference(model, lr, d)
        assert sr.shape == want_sr.shape and depth.shape == want_depth.shape
        assert np.abs(sr - want_sr).max() <= 0.05
        assert np.abs(depth - want_depth).max() <= 1e-3
        as_uint8 = lambda x: np.clip(x, 0, 255).round().astype(np.uint8)
        assert (as_uint8(sr) == as_uint8(want_sr)).mean() >= 0.999


def test_onnx_graph_is_plain_ops_with_dynamic_sizes(model):
    proto = export_onnx(model)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Loop", "Scan", "If"}  # unrolled: what every ONNX consumer runs
    shuffles = [n for n in proto.graph.node if n.op_type == "DepthToSpace"]
    assert len(shuffles) == (2 if model.scale == 4 else 1)
    for node in shuffles:  # PyTorch's pixel shuffle order
        assert {a.name: a.s for a in node.attribute}["mode"] == b"CRD"
    lr = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in lr] == ["N", "h", "w", 3]
    assert [i.name for i in proto.graph.input] == ["lr", "d"]
    assert [o.name for o in proto.graph.output] == ["sr", "depth_map"]


def test_onnx_refuses_wrong_rank_and_channels():
    import onnxruntime as ort

    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(7))
    session = ort.InferenceSession(export_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    d = np.ones((1,), np.float32)
    with pytest.raises(Exception, match="Invalid rank for input: lr"):
        session.run(None, {"lr": np.zeros((8, 8, 3), np.float32), "d": d})
    with pytest.raises(
        Exception, match=r"invalid dimensions for input: lr[\s\S]*index: 3 Got: 4 Expected: 3"
    ):
        session.run(None, {"lr": np.zeros((1, 8, 8, 4), np.float32), "d": d})


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(11))
    save_inference_checkpoint(root / "orbax", model, model_name="adaedsr_tiny")
    save_model(model, root / "st")
    return root, model


@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_cli_writes_artifact_and_sidecar(sources, fmt, capsys):
    root, model = sources
    out = root / "out" / f"model.{fmt}"
    argv = ["--workdir", str(root / "orbax"), "--format", fmt, "--out", str(out)]
    assert main(argv) == 0
    assert out.is_file()
    info = json.loads((out.parent / f"model.{fmt}.json").read_text())
    assert info["format"] == fmt and info["scale"] == 2 and info["max_depth"] == 3
    assert [i["name"] for i in info["inputs"]] == ["lr", "d"]
    assert info["inputs"][0]["shape"] == ["N", "h", "w", 3] and info["inputs"][0]["range"] == [0.0, 255.0]
    assert [o["name"] for o in info["outputs"]] == ["sr", "depth_map"]
    assert info["outputs"][0]["shape"] == ["N", "2*h", "2*w", 3]
    assert info["command"] == "python -m adadsr_jax.export " + " ".join(argv)
    assert info["model_config"]["num_features"] == model.config.num_features
    if fmt == "stablehlo":
        assert info["platforms"] == ["cpu", "cuda"] and info["symbolic_shapes"] is True
        assert info["check"]["max_rel_diff_sr"] <= 1e-4
    else:
        assert info["check"]["max_abs_diff_sr"] <= 0.05
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_safetensors_from_a_model_dir_and_a_workdir(sources):
    from adadsr_jax.checkpoint import load_model, model_tensors

    root, model = sources
    assert (
        main(["--workdir", str(root / "orbax"), "--format", "safetensors", "--out", str(root / "o2s")]) == 0
    )
    assert (
        main(["--checkpoint", str(root / "o2s"), "--format", "stablehlo", "--out", str(root / "x.shlo")]) == 0
    )
    got = model_tensors(load_model(root / "o2s"))
    assert all(np.array_equal(v, got[k]) for k, v in model_tensors(model).items())


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--checkpoint", "{root}/missing", "--format", "onnx"],
            r"^error: \S+/missing: no such checkpoint directory \(--checkpoint\)$",
        ),
        (
            ["--workdir", "{root}/orbax/config.json", "--format", "onnx"],
            r"^error: \S+/config.json: is a file",
        ),
        (
            ["--checkpoint", "{root}/st", "--format", "stablehlo", "--sparse"],
            r"^error: --sparse: the sparse path exports only with fixed sizes .*; add --shape N,h,w",
        ),
        (
            ["--checkpoint", "{root}/st", "--format", "stablehlo", "--shape", "1,x"],
            r"^error: --shape: '1,x' is",
        ),
        (
            ["--checkpoint", "{root}/st", "--format", "onnx", "--shape", "1,8,8"],
            "apply to --format stablehlo",
        ),
        (["--checkpoint", "{root}/st", "--format", "onnx", "--opset", "9"], r"^error: --opset: 9 is too old"),
    ],
)
def test_cli_errors_are_one_line_exit_2(sources, argv, message, capsys):
    root, _ = sources
    argv = [a.format(root=root) for a in argv] + ["--out", str(root / "err" / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err.strip()), err
    assert not (root / "err" / "x").exists()


def test_cli_refuses_an_unusable_out(sources, tmp_path, capsys):
    root, _ = sources
    (tmp_path / "file").write_text("x")
    argv = ["--checkpoint", str(root / "st"), "--format", "onnx", "--out", str(tmp_path / "file" / "m.onnx")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'file'}: exists and is not a directory")
    assert main(["--checkpoint", str(root / "st"), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: is a directory (--out); give a file path")


def test_cli_tampered_model_dir_exit_2(sources, tmp_path, capsys):
    root, _ = sources
    d = tmp_path / "bad"
    d.mkdir()
    for f in (root / "st").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    data = bytearray((d / "model.safetensors").read_bytes())
    data[-1] ^= 0x40
    (d / "model.safetensors").write_bytes(bytes(data))
    assert main(["--checkpoint", str(d), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {d / 'model.safetensors'}: sha256 ")


# --------------------------------------------------------------------------------------------- README
def readme_snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## Exporting models", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_snippets_run_as_written(tmp_path):
    snippets = readme_snippets()
    assert len(snippets) >= 3
    model = create_model("adaedsr_small", scale=2, rngs=nnx.Rngs(0))  # the demo's architecture
    export = tmp_path / "export"
    export.mkdir()
    (export / "demo.stablehlo").write_bytes(export_stablehlo(model).serialize())
    (export / "demo.onnx").write_bytes(export_onnx(model).SerializeToString())
    save_model(model, export / "demo_model")
    Image.fromarray(skimage.data.chelsea()[100:148, 150:212]).save(tmp_path / "photo.png")
    for code in snippets:
        if "adadsr_jax" in code:
            proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
        else:  # the artifacts' snippets: a process with jax / onnxruntime but without this package
            proc = run_fresh(code, tmp_path)
        assert proc.returncode == 0, code + proc.stderr[-3000:]
    for name in ("photo_x2.png", "photo_x2_onnx.png"):
        assert Image.open(tmp_path / name).size == (124, 96)
