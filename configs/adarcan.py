"""Paper preset: AdaRCAN (RCAN 10x20x64 + adapter, lambda 0.03, d ~ U(0.1, 20))
on DIV2K with the release's training defaults.

Run (x2; use :scale=3 or :scale=4 for the other factors):
    python train.py --config configs/adarcan.py:scale=2 --workdir runs/adarcan_x2 \
        --config.data.root=/data/DIV2K
tfds instead of folders: --config.data.kind=tfds --config.data.data_dir=~/tensorflow_datasets
"""

from adadsr_jax.training.config import paper_config


def get_config(arg: str | None = None):
    return paper_config("adarcan", arg)
