"""Diagnostic scripts of benchmarks/: demo_targets.py (issue 12's per-image targets from evaluate.py's
results.csv) and uniform_depth.py (a model run with one depth map everywhere)."""

import importlib.util
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adadsr_jax.evaluation.reports import write_csv
from adadsr_jax.evaluation.runner import ImageRecord, RunResult
from adadsr_jax.models import create_model


def _script(name):
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


demo_targets = _script("demo_targets")
uniform_depth = _script("uniform_depth")

# Two images, D = 8. "good" meets every target; "bad" falls from d = 4 to 6, gains 0.06 dB from D/2 to
# D, runs 36% of the blocks' MACs at D/4 and its depth map's mean reaches 1.2 d at d = 2.
BICUBIC = {"good": 30.0, "bad": 40.0}
SWEEP = {  # d: (psnr_y, block_fraction, depth_map_mean) per image
    "good": {2: (30.9, 0.30, 1.5), 4: (31.02, 0.5, 3.0), 6: (31.04, 0.7, 4.5), 8: (31.05, 0.8, 6.0)},
    "bad": {2: (40.85, 0.36, 2.4), 4: (41.00, 0.6, 4.0), 6: (40.99, 0.8, 5.0), 8: (41.06, 0.9, 6.0)},
}


def _record(name, d, psnr_y, block_fraction=None, map_mean=None):
    return ImageRecord(
        name, 16, 16, d, psnr_y, 0.9, psnr_y, block_fraction=block_fraction, depth_map_mean=map_mean
    )


@pytest.fixture
def results_csv(tmp_path):
    runs = [
        RunResult(
            "photos", 2, "bicubic", "Bicubic", None, None, [_record(n, None, v) for n, v in BICUBIC.items()]
        )
    ]
    for d in (2, 4, 6, 8):
        images = [_record(n, float(d), *SWEEP[n][d]) for n in SWEEP]
        runs.append(RunResult("photos", 2, "model", f"m (d={d})", float(d), None, images))
    # A MACs budget row is not part of the sweep, even where its searched depth equals one of the sweep's.
    runs.append(
        RunResult("photos", 2, "model", "m (budget 50%)", None, "50%", [_record("good", 4.0, 20.0, 0.5, 3.0)])
    )
    return write_csv(tmp_path / "results.csv", runs)


def test_targets_per_image_from_an_evaluate_csv(results_csv, capsys):
    sweeps = {s.name: s for s in demo_targets.read_sweeps(str(results_csv))}
    assert set(sweeps) == {"good", "bad"}
    good, bad = demo_targets.targets(sweeps["good"]), demo_targets.targets(sweeps["bad"])
    assert [good[n] for n in demo_targets.TARGET_NAMES] == [True] * 5
    assert good["gain_quarter"] == pytest.approx(0.9) and good["gain_full"] == pytest.approx(1.05)
    assert good["gap"] == pytest.approx(0.03) and good["map_ratio"] == pytest.approx(0.75)
    assert [bad[n] for n in demo_targets.TARGET_NAMES] == [True, False, False, False, False]
    assert bad["gap"] == pytest.approx(0.06) and bad["map_ratio"] == pytest.approx(1.2)
    demo_targets.main([str(results_csv)])
    out = capsys.readouterr().out
    assert "passed: gain 2/2, rises 1/2, d/2 gap 1/2, macs 1/2, map 1/2" in out
    assert "fails: rises, d/2 gap, macs, map" in out


def test_a_sweep_without_d_over_2_is_refused(results_csv, tmp_path):
    rows = [line for line in results_csv.read_text().splitlines() if ",d4," not in line]
    (tmp_path / "cut.csv").write_text("\n".join(rows) + "\n")
    sweeps = demo_targets.read_sweeps(str(tmp_path / "cut.csv"))
    with pytest.raises(SystemExit, match=r"no d = 4 .*add it to --depths"):
        demo_targets.targets(sweeps[0])


def test_uniform_depth_forward_is_the_model_with_every_mask_one_or_zero():
    """k = D is the forward without the adapter (every mask one); k = 0 is the forward at d = 0, where the
    release's output-scaled map d * relu(P(z0)) is zero everywhere (every mask zero)."""
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(3))
    lr = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, 12, 10, 3)), jnp.float32)
    forward = uniform_depth.uniform_depth_forward(model)
    full, _ = model(lr, use_adapter=False)
    none, aux = model(lr, desired_depth=0.0)
    assert float(jnp.abs(aux["depth_map"]).max()) == 0.0
    np.testing.assert_allclose(forward(lr, float(model.config.max_depth)), full, rtol=0, atol=1e-3)
    np.testing.assert_allclose(forward(lr, 0.0), none, rtol=0, atol=1e-3)
    assert float(jnp.abs(full - none).max()) > 1.0  # the blocks do change the output
