"""Train AdaDSR (or a plain EDSR/RCAN baseline).

    python train.py --config configs/<file>.py[:<arg>] --workdir <dir> [--config.<field>=<value> ...]

Examples:
    python train.py --config configs/demo.py --workdir runs/demo
    python train.py --config configs/adaedsr.py:scale=2 --workdir runs/adaedsr_x2 \
        --config.data.root=/data/DIV2K
Rerunning the same command resumes from the latest checkpoint in --workdir. Multi-host: under SLURM
(srun, one task per host) jax.distributed is initialised automatically; elsewhere pass --coordinator,
--num_processes and --process_id. See docs/training.md.
"""

from adadsr_jax.training.cli import main, run

__all__ = ["main"]

if __name__ == "__main__":
    run()
