"""The one error and exit-code convention of every command (train, evaluate, upscale, convert, export).

Exit status: 0 on success; 2 (EXIT_USER_ERROR, what argparse uses for a bad flag) for any error the user
caused (a bad flag value, path, file or config), reported as ONE line on stderr,

    error: <path>: <problem>[; <fix>]

and 1 with a traceback only for our own bugs. Entry points call the `require_*` validators on every path
they were given before loading a model or data, so a typo fails in a second, not after minutes of work,
and nothing is created or changed when it fails. `run_cli` turns the exceptions a user can cause into that
line and exit status.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_USER_ERROR = 2

PathLike = str | os.PathLike


class UserError(Exception):
    """An error the user caused and can fix: `path` (or a flag name), the problem, and the fix if any."""

    def __init__(self, path: PathLike | None, problem: str, fix: str | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.problem if self.path is None else f"{self.path}: {self.problem}"
        return text if not self.fix else f"{text}; {self.fix}"


# What a user can cause. The library raises ValueError subclasses (ImageError, ConversionError,
# CheckpointFormatError, ...) and FileNotFoundError subclasses (DatasetNotFoundError) for bad input and
# names the file in the message; a raw OSError from the file system names it in `filename`.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def error_line(err: BaseException) -> str:
    """`error: <path>: <problem>` for a user-caused exception."""
    if (
        isinstance(err, OSError)
        and err.filename is not None
        and err.strerror
        and str(err).startswith("[Errno")
    ):
        # Raw OS error ("[Errno 17] File exists: 'x'"): say it the way our own messages do.
        where = os.fspath(err.filename)
        if err.filename2 is not None:
            where = f"{where} -> {os.fspath(err.filename2)}"
        return f"error: {where}: {err.strerror[:1].lower()}{err.strerror[1:]}"
    message = str(err).strip() or type(err).__name__
    if message.startswith("error: "):  # already formatted by a lower layer
        message = message[len("error: ") :]
    return f"error: {message}"


def report(err: BaseException) -> int:
    """Print `err` as the one error line on stderr; returns EXIT_USER_ERROR."""
    print(error_line(err), file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def run_cli(body: Callable[[], Any], *, user_errors: tuple[type[BaseException], ...] = USER_ERRORS) -> int:
    """Run a command's body: an int it returns is the exit status, anything else (None, the command's
    results) means success; EXIT_USER_ERROR after one error line for the exceptions in `user_errors`.
    Anything else propagates (a bug: the traceback is what we need)."""
    try:
        code = body()
    except user_errors as err:
        return report(err)
    return code if isinstance(code, int) else EXIT_OK


def _what(flag: str | None) -> str:
    return f" ({flag})" if flag else ""


def require_file(path: PathLike, flag: str | None = None, *, what: str = "file") -> Path:
    """`path` as a Path if it is an existing non-empty file; UserError naming it otherwise."""
    p = Path(path)
    if p.is_dir():
        raise UserError(p, f"is a directory, expected a {what}{_what(flag)}")
    if not p.exists():
        raise UserError(p, f"no such {what}{_what(flag)}")
    if not p.is_file():
        raise UserError(p, f"is not a regular file{_what(flag)}")
    if p.stat().st_size == 0:
        raise UserError(p, f"file is empty{_what(flag)}")
    return p


def require_dir(
    path: PathLike, flag: str | None = None, *, what: str = "directory", fix: str | None = None
) -> Path:
    """`path` as a Path if it is an existing directory; UserError naming it otherwise."""
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise UserError(p, f"is a file, expected a {what}{_what(flag)}", fix)
    raise UserError(p, f"no such {what}{_what(flag)}", fix)


def require_output_dir(path: PathLike, flag: str | None = None) -> Path:
    """`path` if it can be used as an output directory: an existing directory, or one that can be created
    (its first existing ancestor is a writable directory). Creates nothing; UserError otherwise."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(
            p, f"exists and is not a directory{_what(flag)}", "give a folder path, or remove the file"
        )
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(probe, f"is a file, so {p} cannot be created{_what(flag)}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(probe, f"not writable, so {p} cannot be written{_what(flag)}")
    return p


TORCH_SUFFIXES = (".pt", ".pth", ".pkl", ".tar")


def require_checkpoint_dir(path: PathLike, flag: str | None = None) -> Path:
    """require_dir for a training workdir / converted checkpoint, with the fix for a PyTorch file given
    where our checkpoint folder is expected."""
    fix = None
    if Path(path).suffix.lower() in TORCH_SUFFIXES:
        fix = (
            "convert a PyTorch file first: python -m adadsr_jax.convert FILE --model NAME --scale S --out DIR"
        )
    return require_dir(path, flag, what="checkpoint directory", fix=fix)
