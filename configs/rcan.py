"""Paper preset: plain RCAN 10x20x64 baseline on DIV2K, release training defaults.

Run (x2; use :scale=3 or :scale=4 for the other factors):
    python train.py --config configs/rcan.py:scale=2 --workdir runs/rcan_x2 \
        --config.data.root=/data/DIV2K
tfds instead of folders: --config.data.kind=tfds --config.data.data_dir=~/tensorflow_datasets
"""

from adadsr_jax.training.config import paper_config


def get_config(arg: str | None = None):
    return paper_config("rcan", arg)
