"""Evaluation: benchmark-set discovery, the inference wrapper (tiles, ensemble, timing, MACs budget),
the evaluation loop with its records, and the reports (results.json/.csv/.md, plots). See
docs/evaluation.md; the command line is evaluate.py (adadsr_jax.evaluation.cli)."""

from adadsr_jax.evaluation.datasets import BenchmarkSet, DatasetNotFoundError, find_dataset
from adadsr_jax.evaluation.inference import Prediction, Predictor, budget_depth, parse_budget
from adadsr_jax.evaluation.reports import write_all
from adadsr_jax.evaluation.runner import ImageRecord, RunResult, evaluate_set

__all__ = [
    "BenchmarkSet",
    "DatasetNotFoundError",
    "ImageRecord",
    "Prediction",
    "Predictor",
    "RunResult",
    "budget_depth",
    "evaluate_set",
    "find_dataset",
    "parse_budget",
    "write_all",
]
