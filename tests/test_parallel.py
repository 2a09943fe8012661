"""Data parallelism: a train step on 4 (fake CPU) devices equals the single-device step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from adadsr_jax.data import TrainBatches, demo_source
from adadsr_jax.models import create_model
from adadsr_jax.training import parallel
from adadsr_jax.training.optim import make_optimizer
from adadsr_jax.training.step import make_train_step

OPT = {"name": "adam", "lr": 1e-3, "b1": 0.9, "b2": 0.999, "schedule": "constant", "grad_clip_norm": 0.0}


def _run(devices, params0, graphdef, batches, steps):
    tx, schedule = make_optimizer(OPT)
    mesh = parallel.data_mesh(devices)
    with jax.set_mesh(mesh):
        rep, bsh = parallel.replicated_sharding(mesh), parallel.batch_sharding(mesh)
        step_fn = make_train_step(
            graphdef, tx, schedule, depth_range=(0.0, 3.0), depth_loss_weight=0.01, replicated=rep
        )
        params = parallel.replicate(params0, rep)
        opt_state = jax.jit(tx.init, out_shardings=rep)(params)
        key = jax.random.key(3)
        for k in range(steps):
            gb = parallel.global_batch(batches[k], bsh)
            assert len(gb["lr"].addressable_shards) == len(devices)
            assert gb["lr"].addressable_shards[0].data.shape[0] == batches[k]["lr"].shape[0] // len(devices)
            params, opt_state, metrics = step_fn(params, opt_state, gb["lr"], gb["hr"], jnp.int32(k), key)
        assert params["head"]["kernel"].sharding.is_fully_replicated
        assert len(params["head"]["kernel"].sharding.device_set) == len(devices)
        return parallel.host_tree(params), jax.device_get(metrics)


def test_four_device_step_equals_single_device_step():
    assert jax.device_count() >= 4, "tests/conftest.py fakes 4 CPU devices"
    model = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model, nnx.Param)
    params0 = jax.device_get(nnx.to_pure_dict(state))
    tb = TrainBatches(demo_source(scale=2), batch_size=8, patch_size=12, scale=2, seed=1, prefetch=0)
    batches = [tb.make_batch(k) for k in range(2)]
    one, m1 = _run(jax.devices()[:1], params0, graphdef, batches, steps=2)
    four, m4 = _run(jax.devices()[:4], params0, graphdef, batches, steps=2)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    moved = 0
    for (path, a), (_, b), (_, p0) in zip(
        jax.tree.leaves_with_path(four),
        jax.tree.leaves_with_path(one),
        jax.tree.leaves_with_path(params0),
        strict=True,
    ):
        # Relative to the size of the update: the two runs must agree on what training did.
        scale = np.abs(b).max()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
        moved += int(not np.array_equal(b, p0))
    assert moved == len(jax.tree.leaves(params0))  # every parameter was trained


@pytest.mark.parametrize("batch", [6, 3])
def test_batch_not_divisible_by_devices_is_a_clear_error(batch):
    mesh = parallel.data_mesh(jax.devices()[:4])
    with pytest.raises(ValueError, match=f"data.batch_size {batch} is not divisible by the 4 devices"):
        parallel.check_batch_size(batch, mesh)


def test_initialize_distributed_is_a_no_op_for_a_single_process(monkeypatch):
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert parallel.initialize_distributed() is False
    with pytest.raises(ValueError, match="needs --coordinator"):
        parallel.initialize_distributed(num_processes=2)


@pytest.mark.parametrize(
    ("batch", "cores", "devices"),
    [(16, 2, 2), (16, 3, 2), (12, 8, 6), (16, 64, 16), (7, 2, 1), (1, 64, 1), (16, 1, 1)],
)
def test_default_cpu_devices_is_the_largest_batch_divisor_within_the_cores(batch, cores, devices):
    assert parallel.default_cpu_devices(batch, cores) == devices


def test_default_cpu_devices_refuses_a_zero_batch_or_core_count():
    with pytest.raises(ValueError, match=">= 1"):
        parallel.default_cpu_devices(0, 2)
    with pytest.raises(ValueError, match=">= 1"):
        parallel.default_cpu_devices(16, 0)
