"""The end-of-run eval table: one row per eval stage of a run, one column per metric."""

from __future__ import annotations

import json
from pathlib import Path

# (header, eval.json key, format) of the end-of-run table
EVAL_COLUMNS = [("pass@1", "pass@1", ".3f"), ("cons@k", "cons@k", ".3f"), ("greedy", "greedy_accuracy", ".3f"),
                ("format", "format_rate", ".3f"), ("lang", "language_consistency", ".3f"),
                ("lang=1", "language_consistent_rate", ".3f"), ("readable", "readability", ".3f"),
                ("general", "general/accuracy", ".3f"), ("direct", "general/direct_rate", ".3f"),
                ("length", "completion_len/mean", ".1f")]


def eval_table(run_dir: Path) -> str:
    """A text table comparing every eval stage of a run ("-" where a metric is missing)."""
    rows = []
    for path in sorted((Path(run_dir) / "stages").glob("*/eval.json"),
                       key=lambda p: int(p.parent.name.split("-")[0])):
        metrics = json.loads(path.read_text())
        rows.append([metrics.get("model", path.parent.name)] +
                    [format(metrics[k], f) if k in metrics else "-" for _, k, f in EVAL_COLUMNS])
    if not rows:
        return ""
    header = ["model"] + [c for c, _, _ in EVAL_COLUMNS]
    widths = [max(len(r[j]) for r in rows + [header]) for j in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) if j == 0 else v.rjust(w) for j, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
