"""The backbone warm-up step: the adapter stays frozen and the backbone trains as the plain model."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from adadsr_jax.models import create_model
from adadsr_jax.training.optim import make_optimizer
from adadsr_jax.training.step import make_train_step


def test_warmup_step_freezes_the_adapter_and_trains_the_backbone_as_the_plain_model():
    ada = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0))
    plain = create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(0), adapter_features=None)
    graphdef, state = nnx.split(ada, nnx.Param)
    plain_graphdef, _ = nnx.split(plain, nnx.Param)
    params = jax.device_get(nnx.to_pure_dict(state))
    backbone = {k: v for k, v in params.items() if k != "adapter"}
    tx, schedule = make_optimizer({"name": "adam", "lr": 1e-3, "schedule": "constant"})
    warm = make_train_step(
        graphdef,
        tx,
        schedule,
        depth_range=(0.0, 3.0),
        depth_loss_weight=0.01,
        backbone_only=True,
        donate=False,
    )
    ref = make_train_step(
        plain_graphdef, tx, schedule, depth_range=(0.0, 3.0), depth_loss_weight=0.0, donate=False
    )
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    key = jax.random.key(0)
    p1, o1 = params, tx.init(params)
    p2, o2 = backbone, tx.init(backbone)
    for k in range(2):
        p1, o1, m1 = warm(p1, o1, lr, hr, jnp.int32(k), key)
        p2, o2, m2 = ref(p2, o2, lr, hr, jnp.int32(k), key)
    np.testing.assert_allclose(float(m1["l1"]), float(m2["l1"]), rtol=1e-6)
    for (path, a), (_, b) in zip(
        jax.tree.leaves_with_path({k: v for k, v in p1.items() if k != "adapter"}),
        jax.tree.leaves_with_path(p2),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7, err_msg=str(path))
    for a, b in zip(jax.tree.leaves(p1["adapter"]), jax.tree.leaves(params["adapter"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(p1["head"]["kernel"]), params["head"]["kernel"])
