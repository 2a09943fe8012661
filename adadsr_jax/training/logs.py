"""Run logs: workdir/metrics.jsonl (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path


class MetricWriter:
    """Appends {"step", "split", "time", ...metrics} lines to metrics.jsonl and scalars to TensorBoard
    (tag "<split>/<name>"). Only the writing host (process 0) should hold an enabled writer."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: it pulls in protobuf

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def drop_records(self, *, after_step: int, at_step_splits: tuple[str, ...] = ()) -> None:
        """Remove the records of steps after `after_step` (and of `at_step_splits` at that step) from
        metrics.jsonl: a resumed run writes those steps again, and each must be in the file once.
        TensorBoard's event files are append-only; its viewer shows the newest value of a repeated step."""
        if not self.enabled or not self.path.exists():
            return
        lines = self.path.read_text().splitlines(keepends=True)

        def kept(line: str) -> bool:
            if not line.strip():
                return False
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: the step is redone
                return False
            step = int(record.get("step", 0))
            return step < after_step or (step == after_step and record.get("split") not in at_step_splits)

        keep = [line for line in lines if kept(line)]
        if len(keep) == len(lines):
            return
        self._file.close()
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line if line.endswith("\n") else line + "\n" for line in keep))
        os.replace(tmp, self.path)
        self._file = self.path.open("a")

    def write(self, step: int, split: str, metrics: Mapping[str, float | int | str]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            record[k] = v if isinstance(v, str) else _number(v)
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "split", "time") and isinstance(v, int | float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _number(v) -> float | int:
    """Python int/float of a numpy/JAX scalar; NaN/Inf stay (json writes NaN/Infinity)."""
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, bool | int) else float(v)


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """All records of workdir/metrics.jsonl, in order."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
