"""Reports of a run: the eval table, PNG plots (matplotlib) and ``report.md``, a one-page summary.

    r1lab report runs/<name>      writes runs/<name>/report.md and runs/<name>/plots/*.png
"""

from r1lab.report.summary import ReportError, read_run, write_report
from r1lab.report.table import EVAL_COLUMNS, eval_table

__all__ = ["EVAL_COLUMNS", "ReportError", "eval_table", "read_run", "write_report"]
