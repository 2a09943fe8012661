"""Test preset: adaedsr_tiny x2 on the built-in demo photos, a few steps on small patches (seconds on CPU).

Run:
    python train.py --config configs/tiny.py --workdir /tmp/adadsr_tiny
"""

from adadsr_jax.training.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = "adaedsr_tiny"
    c.model.scale = 2
    c.data.kind = "demo"
    c.data.patch_size = 12
    c.data.batch_size = 4
    c.data.prefetch = 1
    c.data.valid_images = 1
    c.data.valid_lr_crop = 24
    c.optimizer.lr = 1e-3
    c.train.steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.train.keep_checkpoints = 2
    c.train.progress_bar = False
    return c
