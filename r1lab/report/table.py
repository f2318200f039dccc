"""The end-of-run eval table: one row per eval stage of a run, one column per metric."""

from __future__ import annotations

import json
from pathlib import Path

# (header, eval.json key, format) of the end-of-run table
EVAL_COLUMNS = [("pass@1", "pass@1", ".3f"), ("cons@k", "cons@k", ".3f"), ("greedy", "greedy_accuracy", ".3f"),
                ("format", "format_rate", ".3f"), ("lang", "language_consistency", ".3f"),
                ("lang=1", "language_consistent_rate", ".3f"), ("readable", "readability", ".3f"),
                ("general", "general/accuracy", ".3f"), ("judge", "general/judge", ".3f"),
                ("win", "general/win_rate", ".3f"), ("direct", "general/direct_rate", ".3f"),
                ("length", "completion_len/mean", ".1f")]


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stage_index(stage_dir: Path) -> int:
    head = stage_dir.name.split("-")[0]
    return int(head) if head.isdigit() else 1 << 30


def eval_results(run_dir: Path) -> list[tuple[str, dict]]:
    """(model label, eval.json) of every eval stage of a run that wrote one, in stage order;
    the label is the eval's ``model`` field (its stage folder if absent)."""
    out = []
    for path in sorted((Path(run_dir) / "stages").glob("*/eval.json"), key=lambda p: _stage_index(p.parent)):
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict):
            out.append((str(metrics.get("model", path.parent.name)), metrics))
    return out


def markdown_table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """A GitHub-flavoured markdown table; columns in ``right`` are right-aligned."""
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    line = lambda r: "| " + " | ".join(cell(v) for v in r) + " |"
    rule = ["---:" if j in right else "---" for j in range(len(header))]
    return "\n".join([line(header), "|" + "|".join(rule) + "|"] + [line(r) for r in rows])


def eval_table(run_dir: Path, markdown: bool = False) -> str:
    """A table comparing every eval stage of a run ("-" where a metric is missing): aligned
    text, or markdown; "" when the run has no eval results."""
    rows = [[label] + [format(m[k], f) if is_number(m.get(k)) else "-" for _, k, f in EVAL_COLUMNS]
            for label, m in eval_results(run_dir)]
    if not rows:
        return ""
    header = ["model"] + [c for c, _, _ in EVAL_COLUMNS]
    if markdown:
        return markdown_table(header, rows, right=set(range(1, len(header))))
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
