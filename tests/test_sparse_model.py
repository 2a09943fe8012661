"""Sparse AdaDSR forward: equal to the dense forward on a real photo, batch 1 and N, no recompilation when
the desired depth changes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from skimage import data

from adadsr_jax.models import create_model
from adadsr_jax.models.sparse_stacks import run_sparse_stack, sparse_edsr_stack


def photo_batch() -> jnp.ndarray:
    """Two real 24x20 crops of scikit-image's astronaut (0..255 float32): [2, 24, 20, 3]."""
    img = data.astronaut().astype(np.float32)
    return jnp.asarray(np.stack([img[90:114, 200:220], img[300:324, 100:120]]))


@pytest.fixture(scope="module", params=["adaedsr_tiny", "adarcan_tiny"])
def compiled(request):
    """(model name, dense fn, sparse fn, trace counter) with both forwards jitted once."""
    model = create_model(request.param, scale=2, rngs=nnx.Rngs(3))
    graph, state = nnx.split(model)
    traces = {"sparse": 0}

    @jax.jit
    def dense(state, lr, d):
        return nnx.merge(graph, state)(lr, desired_depth=d)

    @jax.jit
    def sparse(state, lr, d):
        traces["sparse"] += 1
        return nnx.merge(graph, state)(lr, desired_depth=d, sparse=True, sparse_backend="jax")

    @jax.jit
    def auto(state, lr, d):
        return nnx.merge(graph, state)(lr, desired_depth=d, sparse=True)

    return request.param, state, dense, sparse, auto, traces


# Depths per image: fractional (soft masks), integer, past the maximum, zero.
DEPTHS = [[0.7, 1.5], [2.0, 0.0], [1.3, 9.0]]


@pytest.mark.parametrize("depths", DEPTHS)
def test_sparse_equals_dense_batch(compiled, depths):
    name, state, dense, sparse, auto, _ = compiled
    lr = photo_batch()
    d = jnp.asarray(depths, jnp.float32)
    sr_dense, aux_dense = dense(state, lr, d)
    for fn in (sparse, auto):
        sr_sparse, aux_sparse = fn(state, lr, d)
        assert float(jnp.abs(sr_sparse - sr_dense).max()) <= 1e-3, name
        np.testing.assert_array_equal(np.asarray(aux_sparse["depth_map"]), np.asarray(aux_dense["depth_map"]))


def test_sparse_equals_dense_batch_one(compiled):
    _, state, dense, sparse, _, _ = compiled
    lr = photo_batch()[1:]
    d = jnp.asarray([1.2], jnp.float32)
    assert float(jnp.abs(sparse(state, lr, d)[0] - dense(state, lr, d)[0]).max()) <= 1e-3


def test_no_recompile_when_depth_changes(compiled):
    _, state, _, sparse, _, traces = compiled
    lr = photo_batch()
    sparse(state, lr, jnp.asarray([0.3, 0.3], jnp.float32))
    before, cached = traces["sparse"], sparse._cache_size()
    for depths in ([0.0, 0.0], [1.7, 0.2], [3.0, 3.0], [50.0, 2.5]):
        sparse(state, lr, jnp.asarray(depths, jnp.float32))
    assert traces["sparse"] == before
    assert sparse._cache_size() == cached


def test_per_block_lists_equal_nested():
    """The two index modes of the sparse EDSR stack give the same result."""
    rng = np.random.RandomState(0)
    c, blocks = 8, 3
    x = jnp.asarray(rng.randn(2, 9, 7, c), jnp.float32)
    depth = jnp.asarray(rng.rand(2, 9, 7, 1) * 3.5, jnp.float32)
    params = tuple(
        jnp.asarray(rng.randn(*s) * 0.1, jnp.float32) for s in [(blocks, 3, 3, c, c), (blocks, c)] * 2
    )
    a = sparse_edsr_stack(x, depth, params, res_scale=1.0, backend="jax", index_mode="nested")
    b = sparse_edsr_stack(x, depth, params, res_scale=1.0, backend="jax", index_mode="per_block")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_run_sparse_stack_switch():
    """The bodies' shared "auto" switch: dense when the whole stack executes, sparse when none of it does
    (one compiled function for both), and always sparse for a forced backend."""
    x = jnp.zeros((1, 4, 4, 8))
    branches = {"dense": lambda x: x + 1.0, "sparse": lambda x: x + 2.0}
    pick = jax.jit(lambda depth: run_sparse_stack(x, depth, 3, **branches, backend="auto"))
    full, empty = jnp.full((1, 4, 4, 1), 3.0, jnp.float32), jnp.zeros((1, 4, 4, 1), jnp.float32)
    assert float(pick(full)[0, 0, 0, 0]) == 1.0
    assert float(pick(empty)[0, 0, 0, 0]) == 2.0
    assert pick._cache_size() == 1
    assert float(run_sparse_stack(x, full, 3, **branches, backend="jax")[0, 0, 0, 0]) == 2.0
