"""PNG plots of a run: training curves per stage, and the eval results of every model.

Which metrics a stage kind plots its module declares (``REPORT.panels``, r1lab/stages/common.py):
a panel is a title, the metric names (``fnmatch`` patterns) it draws over steps, and its y
scale. A metric a stage did not log is left out, and a panel with nothing to draw is dropped.
Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend is set.
"""

from __future__ import annotations

import math
import os
import statistics
from fnmatch import fnmatch
from pathlib import Path

from matplotlib.figure import Figure

from r1lab.report.table import is_number
from r1lab.stages.common import Panel

# learned reward against the hidden judge: drawn together when a stage logged both
HACKING = ("reward/reward_model", "reward/judge")
# (bar chart title, eval.json key) of the model comparison
BARS = [("pass@1", "pass@1"), ("cons@k", "cons@k"), ("language consistency", "language_consistency"),
        ("general/judge", "general/judge")]

PANEL_W, PANEL_H, BAR_H, DPI, MAX_COLS = 4.5, 3.2, 4.0, 100, 3


def series(rows: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the rows that logged a finite number under ``key``."""
    pts = [(r.get("step", i + 1), r[key]) for i, r in enumerate(rows)
           if is_number(r.get(key)) and math.isfinite(r[key])]
    return [s for s, _ in pts], [v for _, v in pts]


def matching_keys(rows: list[dict], patterns: list[str]) -> list[str]:
    """Logged keys matching ``patterns``, in pattern order, then in order of first appearance."""
    seen = list(dict.fromkeys(k for r in rows for k in r))
    return list(dict.fromkeys(k for p in patterns for k in seen if fnmatch(k, p)))


def trend(values: list[float]) -> str:
    """'up', 'down' or 'flat': the second half's mean against the first's, flat unless the
    change exceeds twice its standard error (so a noisy but level curve reads flat)."""
    a, b = values[:len(values) // 2], values[len(values) // 2:]
    if not a:
        return "flat"
    change = statistics.fmean(b) - statistics.fmean(a)
    se = math.sqrt(sum(statistics.variance(h) / len(h) for h in (a, b) if len(h) > 1))
    return "flat" if abs(change) <= 2 * se else "up" if change > 0 else "down"


def hacking_verdict(rm: list[float], judge: list[float]) -> str:
    """Reward hacking shows as the learned reward rising while the judge does not."""
    rm_t, judge_t = trend(rm), trend(judge)
    head = "reward hacking" if rm_t == "up" and judge_t != "up" else "no sign of reward hacking"
    return f"{head}: RM score {rm_t}, judge {judge_t}"


def _grid(n: int, height: float, max_cols: int = MAX_COLS) -> tuple[Figure, list]:
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL_W * cols, height * rows), dpi=DPI)
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> Path:
    """Write the PNG to a temporary sibling, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _draw_hacking(ax, rows: list[dict]) -> None:
    (x1, rm), (x2, judge) = series(rows, HACKING[0]), series(rows, HACKING[1])
    ax.plot(x1, rm, color="C0", marker="." if len(rm) <= 50 else None)
    ax.set_ylabel(HACKING[0], color="C0")
    twin = ax.twinx()
    twin.plot(x2, judge, color="C3", marker="." if len(judge) <= 50 else None)
    twin.set_ylabel(HACKING[1], color="C3")
    ax.set_xlabel("step")
    ax.set_title(hacking_verdict(rm, judge), fontsize="medium")


def stage_plot(rows: list[dict], kind_panels: tuple[Panel, ...], title: str, path: Path) -> Path | None:
    """One PNG of a stage's curves, a panel per entry of ``kind_panels`` that has data (and the
    reward-hacking panel when the stage logged both ``HACKING`` keys); None if nothing to draw."""
    panels = []
    for panel in kind_panels:
        lines = [(k, *series(rows, k)) for k in matching_keys(rows, list(panel.metrics))]
        lines = [line for line in lines if line[1]]
        if lines:
            panels.append((panel.title, lines, panel.scale))
    hacking = bool(kind_panels) and all(series(rows, k)[0] for k in HACKING)
    if not panels and not hacking:
        return None
    fig, axes = _grid(len(panels) + hacking, PANEL_H)
    for ax, (name, lines, scale) in zip(axes, panels):
        for key, xs, ys in lines:
            ax.plot(xs, ys, label=key, marker="." if len(xs) <= 50 else None)
        if scale == "log" and all(v > 0 for _, _, ys in lines for v in ys):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        if len(lines) > 1:
            ax.legend(fontsize="small")
        else:
            ax.set_ylabel(lines[0][0])
    if hacking:
        _draw_hacking(axes[-1], rows)
    fig.suptitle(title)
    return _save(fig, path)


def eval_plot(results: list[tuple[str, dict]], path: Path) -> Path | None:
    """Bars comparing every evaluated model, a panel per metric of ``BARS`` that any eval
    logged (a model without it leaves a gap); None if there is nothing to compare."""
    bars = [(t, k) for t, k in BARS if any(is_number(m.get(k)) for _, m in results)]
    if not bars:
        return None
    fig, axes = _grid(len(bars), BAR_H, max_cols=len(BARS))
    labels = [label for label, _ in results]
    for ax, (name, key) in zip(axes, bars):
        have = [(i, m[key]) for i, (_, m) in enumerate(results) if is_number(m.get(key))]
        drawn = ax.bar([i for i, _ in have], [v for _, v in have], color=[f"C{i % 10}" for i, _ in have])
        ax.bar_label(drawn, fmt="%.2f", fontsize="x-small")
        for i in sorted(set(range(len(labels))) - {i for i, _ in have}):
            ax.text(i, 0, "n/a", ha="center", va="bottom", color="grey", fontsize="small")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(name)
    fig.suptitle("evaluation")
    return _save(fig, path)
