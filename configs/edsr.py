"""Paper preset: plain EDSR 32x256 baseline (res_scale 0.1) on DIV2K, release training defaults.

Run (x2; use :scale=3 or :scale=4 for the other factors):
    python train.py --config configs/edsr.py:scale=2 --workdir runs/edsr_x2 \
        --config.data.root=/data/DIV2K
tfds instead of folders: --config.data.kind=tfds --config.data.data_dir=~/tensorflow_datasets
"""

from adadsr_jax.training.config import paper_config


def get_config(arg: str | None = None):
    return paper_config("edsr", arg)
