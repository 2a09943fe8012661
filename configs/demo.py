"""Demo preset: adaedsr_small x2 on the built-in demo photos (no data to download); about 10 minutes on
2 CPU cores, ending with the held-out photo's PSNR-Y against bicubic.

Run:
    python train.py --config configs/demo.py --workdir runs/demo
"""

from adadsr_jax.training.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.name = "adaedsr_small"
    c.model.scale = 2
    c.data.kind = "demo"
    c.data.patch_size = 32
    c.data.batch_size = 16
    c.optimizer.lr = 5e-4
    c.optimizer.schedule = "cosine"
    c.optimizer.decay_steps = 3000
    c.train.steps = 3000
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    return c
