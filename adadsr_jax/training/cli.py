"""Command line of train.py (and the adadsr-train script): absl flags + an ml_collections config file.

    python train.py --config configs/<file>.py[:<arg>] --workdir <dir> [--config.<field>=<value> ...]

Errors a user can cause (a missing or unreadable --config, a --workdir that is a file, an unknown config
field, a missing data folder) end in one `error: <path>: <problem>` line and exit status 2 before any
model is built (adadsr_jax.cli's convention); a NaN/Inf loss stops the run with one line and status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from adadsr_jax.cli import EXIT_USER_ERROR, UserError, report, require_output_dir, run_cli

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
    "cpu_devices",
    None,
    "CPU only: split the host into this many XLA devices (data parallel on CPU). Default for a "
    "single-process run: the largest divisor of data.batch_size that is at most the number of cores.",
    lower_bound=1,
)
flags.mark_flags_as_required(["config", "workdir"])

_HELP_FLAGS = {"--help", "-?", "--helpshort", "--helpfull", "--helpxml"}
EXIT_RUN_FAILED = 1  # the run itself failed (NaN loss): not the user's input, not a traceback either


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    """The last value of --name in argv (`--name=v` or `--name v`), as absl would take it."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _check_paths(argv: Sequence[str]) -> None:
    """--config and --workdir, checked before ml_collections loads the config (its errors for a missing
    file or a directory are a chained OSError only raised when the config is first used)."""
    from adadsr_jax.training.config import config_file_path

    spec = _flag_value(argv, "config")
    if spec is not None:
        config_file_path(spec)
    workdir = _flag_value(argv, "workdir")
    if workdir is not None:
        require_output_dir(workdir, "--workdir")


def _flags_error(err: flags.Error, argv: Sequence[str]) -> UserError:
    """absl's flag error as one line; an error raised inside the config file's get_config carries its
    whole traceback as text (ml_collections puts it there): keep its last line, the exception itself."""
    text = str(err)
    if "Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return UserError(_flag_value(argv, "config"), f"{last} (in get_config)")
    spec = _flag_value(argv, "config")
    if spec is not None and "--config must have a value other than None" in text:
        return UserError(spec, "get_config() returned None", "it must return the ConfigDict")
    first = text.splitlines()[0] if text else type(err).__name__
    return UserError(None, first, "see python train.py --helpshort")


def parse_flags(argv: list[str]) -> list[str]:
    """app.run's flags_parser: our path checks first, then absl's parse; any flag error is one line and
    exit status 2 (absl would print its usage and exit 1)."""
    code = run_cli(lambda: _check_paths(argv[1:]))
    if code:
        sys.exit(code)
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        report(_flags_error(err, argv[1:]))
        sys.exit(EXIT_USER_ERROR)
    except SystemExit as stop:
        # absl prints the usage asked for by --help / --helpshort / --helpfull, then exits with 1.
        if stop.code == 1 and _HELP_FLAGS.intersection(arg.split("=", 1)[0] for arg in argv[1:]):
            sys.exit(0)
        raise


def main(argv: list[str]) -> int:
    """Train as the parsed flags say; returns the exit status (0, 2 for user errors, 1 for a NaN stop)."""
    if len(argv) > 1:
        return report(UserError(None, f"unexpected arguments {argv[1:]}", "every setting is a --flag"))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO

    def body() -> int:
        from adadsr_jax.training.config import check_config_paths, resolve_config

        # Checked before JAX starts or a model is built: unknown fields, bad values, missing folders.
        cfg = resolve_config(_CONFIG.value)
        check_config_paths(cfg)
        import jax

        from adadsr_jax.training import parallel

        # Before any backend starts; it only shapes the CPU client, so GPU hosts are unaffected.
        cpu_devices = _CPU_DEVICES.value
        if cpu_devices is None and not parallel.multi_process(_COORDINATOR.value):
            cpu_devices = parallel.default_cpu_devices(cfg.data.batch_size, parallel.usable_cores())
        if cpu_devices is not None:
            jax.config.update("jax_num_cpu_devices", cpu_devices)
        from adadsr_jax.training.loop import NonFiniteLossError, train

        try:
            parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
            train(cfg, _WORKDIR.value)
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_RUN_FAILED
        return 0

    return run_cli(body)


def run(argv: Sequence[str] | None = None) -> None:
    """Entry point of train.py and adadsr-train: parse the flags and exit with main's status."""
    app.run(main, argv=None if argv is None else list(argv), flags_parser=parse_flags)
