"""training.loop.init_backbone_from: a fresh adaptive model's backbone from a plain checkpoint, through the
same merge (checkpoint.with_backbone) as convert's --backbone-only."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from adadsr_jax.checkpoint import save_inference_checkpoint
from adadsr_jax.models import create_model
from adadsr_jax.training.loop import init_backbone_from


def _params(model) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_init_from_takes_the_backbone_and_keeps_the_fresh_adapter(tmp_path):
    source = create_model("edsr_tiny", scale=2, rngs=nnx.Rngs(1))
    save_inference_checkpoint(tmp_path / "edsr", source, model_name="edsr_tiny", step=7)
    fresh = _params(create_model("adaedsr_tiny", scale=2, rngs=nnx.Rngs(2)))
    params, step, config = init_backbone_from(fresh, tmp_path / "edsr")
    assert step == 7 and config["model"]["name"] == "edsr_tiny"
    want = _params(source)
    assert set(params) == set(fresh)
    for key in fresh:
        expected = fresh[key] if key == "adapter" else want[key]
        jax.tree.map(np.testing.assert_array_equal, params[key], expected)

    wide = create_model("edsr_tiny", scale=2, rngs=nnx.Rngs(1), num_features=16)
    save_inference_checkpoint(tmp_path / "wide", wide, model_name="edsr_tiny", overrides={"num_features": 16})
    with pytest.raises(ValueError, match=r"^init_from .*wide: '\w+' shapes differ: checkpoint"):
        init_backbone_from(fresh, tmp_path / "wide")
