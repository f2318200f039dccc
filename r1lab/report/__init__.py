"""Reports of a run: the eval table (and, next, plots and a one-page summary)."""

from r1lab.report.table import EVAL_COLUMNS, eval_table

__all__ = ["EVAL_COLUMNS", "eval_table"]
