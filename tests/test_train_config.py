"""Config files, resolution of defaults from the model preset, the optimizer schedule, desired depths."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from adadsr_jax.training.config import base_config, parse_config_arg, resolve_config
from adadsr_jax.training.optim import make_optimizer, make_schedule
from adadsr_jax.training.step import draw_desired_depth

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "python train.py --config configs/" in module.__doc__  # each file names its command
    return module.get_config(arg)


@pytest.mark.parametrize(
    "name, arg, model, scale, depth_range, weight, eval_depths",
    [
        ("adaedsr", "scale=4", "adaedsr", 4, [0.0, 32.0], 0.01, [8.0, 16.0, 24.0, 32.0]),
        ("adaedsr", None, "adaedsr", 2, [0.0, 32.0], 0.01, [8.0, 16.0, 24.0, 32.0]),
        ("adarcan", "3", "adarcan", 3, [0.1, 20.0], 0.03, [5.0, 10.0, 15.0, 20.0]),
        ("edsr", "scale=2", "edsr", 2, [0.0, 0.0], 0.0, [32.0]),
        ("rcan", "scale=2", "rcan", 2, [0.0, 0.0], 0.0, [20.0]),
        ("demo", None, "adaedsr_small", 2, [0.0, 8.0], 0.06, [2.0, 4.0, 6.0, 8.0]),
        ("tiny", None, "adaedsr_tiny", 2, [0.0, 3.0], 0.01, [0.75, 1.5, 2.25, 3.0]),
    ],
)
def test_config_files_resolve_to_the_model_defaults(
    name, arg, model, scale, depth_range, weight, eval_depths
):
    cfg = resolve_config(load(name, arg))
    assert cfg.model.name == model and cfg.model.scale == scale
    assert cfg.train.depth_range == tuple(depth_range)
    assert cfg.train.depth_loss_weight == weight
    assert cfg.train.eval_depths == tuple(eval_depths)
    assert resolve_config(cfg.to_dict()) == cfg  # config.json reads back as the same RunConfig


def test_paper_presets_use_the_release_optimizer():
    cfg = resolve_config(load("adaedsr", "scale=2"))
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.b1, opt.b2) == ("adam", 1e-4, 0.9, 0.999)
    assert (opt.schedule, opt.decay_steps, opt.decay_factor) == ("step", 200_000, 0.5)
    assert (cfg.data.batch_size, cfg.data.patch_size, cfg.data.kind) == (16, 48, "folder")
    assert cfg.train.steps == 800_000


def test_demo_uses_the_short_run_optimizer_its_config_documents():
    opt = resolve_config(load("demo", None)).optimizer  # configs/demo.py: lr 2e-3, b2 0.99, cosine
    assert (opt.name, opt.lr, opt.b1, opt.b2) == ("adam", 2e-3, 0.9, 0.99)
    assert (opt.schedule, opt.decay_steps) == ("cosine", 1600)


def test_overrides_and_explicit_values_win():
    c = base_config()
    c.model.name = "adaedsr"
    c.model.overrides.num_blocks = 16
    c.train.depth_range = (2, 10)
    c.train.depth_loss_weight = 0.5
    cfg = resolve_config(c)
    assert cfg.model.overrides == (("num_blocks", 16),) and cfg.model.model_config().num_blocks == 16
    assert cfg.train.depth_range == (2.0, 10.0) and cfg.train.depth_loss_weight == 0.5
    assert cfg.train.eval_depths == (4.0, 8.0, 12.0, 16.0)  # from the overridden D = 16


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train.stepz", 3, r"unknown config fields \['train.stepz'\]"),
        ("model.name", "edsr9", "unknown model 'edsr9'"),
        ("model.overrides.num_blockz", 3, "unknown model config fields"),
        ("model.scale", 5, "model.scale must be 2, 3 or 4"),
        ("data.kind", "div2k", "data.kind must be one of"),
        ("train.steps", "many", "train.steps must be int"),
        ("train.depth_range", (5.0, 1.0), "lo <= hi"),
        ("train.checkpoint_every", 0, "train.checkpoint_every must be >= 1"),
    ],
)
def test_bad_configs_are_rejected_with_the_field_named(field, value, message):
    c = base_config().to_dict()
    section, _, key = field.rpartition(".")
    node = c
    for part in section.split("."):
        node = node[part]
    node[key] = value
    with pytest.raises(ValueError, match=message):
        resolve_config(c)


def test_parse_config_arg():
    assert parse_config_arg("scale=4", scale=2) == {"scale": 4}
    assert parse_config_arg("3", scale=2) == {"scale": 3}
    assert parse_config_arg(None, scale=2) == {"scale": 2}
    with pytest.raises(ValueError, match="'scal' is not one of"):
        parse_config_arg("scal=4", scale=2)


def test_step_schedule_halves_every_200k_iterations():
    schedule = make_schedule({"lr": 1e-4, "schedule": "step", "decay_steps": 200_000, "decay_factor": 0.5})
    got = [float(schedule(s)) for s in (0, 199_999, 200_000, 399_999, 400_000, 799_999)]
    np.testing.assert_allclose(got, [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 1.25e-5], rtol=1e-6)
    warm = make_schedule({"lr": 1e-3, "schedule": "constant", "warmup_steps": 10})
    np.testing.assert_allclose([float(warm(s)) for s in (0, 5, 10, 50)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_gradient_clipping_bounds_the_update_direction():
    params = {"w": jax.numpy.zeros(4)}
    grads = {"w": jax.numpy.array([30.0, 40.0, 0.0, 0.0])}  # global norm 50
    opt = {"name": "sgd", "lr": 1.0, "b1": 0.0, "schedule": "constant", "grad_clip_norm": 5.0}
    tx, _ = make_optimizer(opt)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-3.0, -4.0, 0.0, 0.0], rtol=1e-6)
    assert float(optax.tree.norm(updates)) == pytest.approx(5.0)
    with pytest.raises(ValueError, match=r"optimizer\.name"):
        make_optimizer({"name": "lion", "lr": 1.0, "schedule": "constant"})


def test_desired_depth_is_per_sample_uniform_and_a_function_of_the_step():
    key = jax.random.key(0)
    d = np.asarray(draw_desired_depth(key, 7, 4096, (0.1, 20.0)))
    assert d.shape == (4096,) and d.min() >= 0.1 and d.max() <= 20.0
    assert len(np.unique(d)) > 4000  # one value per sample (float32 may repeat a value or two)
    assert abs(d.mean() - 10.05) < 0.4 and abs(d.var() - 19.9**2 / 12) < 3.0  # U(0.1, 20) moments
    np.testing.assert_array_equal(d, np.asarray(draw_desired_depth(key, 7, 4096, (0.1, 20.0))))
    assert not np.array_equal(d, np.asarray(draw_desired_depth(key, 8, 4096, (0.1, 20.0))))
