"""Evaluation: benchmark-set discovery, the inference wrapper (tiles, ensemble, timing, MACs budget),
the evaluation loop with its records, and the reports (results.json/.csv/.md, plots). See
docs/evaluation.md; the command line is evaluate.py (adadsr_jax.evaluation.cli)."""

from adadsr_jax.lazy_imports import lazy_exports

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

__getattr__, __dir__ = lazy_exports(
    globals(),
    {
        "adadsr_jax.evaluation.datasets": ("BenchmarkSet", "DatasetNotFoundError", "find_dataset"),
        "adadsr_jax.evaluation.budgets": ("parse_budget",),
        "adadsr_jax.evaluation.inference": ("Prediction", "Predictor", "budget_depth"),
        "adadsr_jax.evaluation.reports": ("write_all",),
        "adadsr_jax.evaluation.runner": ("ImageRecord", "RunResult", "evaluate_set"),
    },
)
