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

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Path to a configs/*.py file, optionally with ':<arg>' (e.g. configs/adaedsr.py:scale=4).",
    lock_config=False,
    accept_new_attributes=True,  # only model.overrides.* may be new; resolve_config rejects other new keys
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.json.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "Multi-host: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "CPU only: split the host into this many XLA devices (data parallel on CPU)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    import jax

    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    from adadsr_jax.training import parallel
    from adadsr_jax.training.loop import NonFiniteLossError, train

    try:
        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        train(_CONFIG.value, _WORKDIR.value)
    except (NonFiniteLossError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
