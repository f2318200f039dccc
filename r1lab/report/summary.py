"""``run_dir/report.md``: a one-page summary of a run, with its plots in ``run_dir/plots/``.

The stages come from the run's ``config.yaml`` (kind and name, in order); each stage folder
may hold ``metrics.jsonl``, ``eval.json``, ``stats.json`` and ``DONE`` (``seconds``, and
``peak_rss_mb`` where recorded). Any of them may be missing or partial -- a stage not yet
run, one interrupted mid-way, a kind this module does not know -- and the report says what
is there and leaves the rest out. Launch: ``r1lab report runs/<name>``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from r1lab.report.plots import eval_plot, matching_keys, stage_plot
from r1lab.report.table import eval_results, eval_table, is_number, markdown_table
from r1lab.errors import R1labError
from r1lab.io import write_atomic
from r1lab.stages import STAGES
from r1lab.stages.common import ReportEntries



class ReportError(R1labError, ValueError):
    """The path given is not a run directory."""


@dataclass
class StageRecord:
    """What one stage left in the run directory."""
    index: int
    name: str
    kind: str
    path: Path                                # the stage folder
    done: dict | None = None                  # DONE's JSON ({} if unreadable); None if not finished
    metrics: list[dict] = field(default_factory=list)
    eval: dict | None = None
    stats: dict | None = None
    unreadable: list[str] = field(default_factory=list)   # its files there that do not parse

    @property
    def report(self) -> ReportEntries:
        """What its kind's module says to show (nothing for a kind r1lab does not know)."""
        module = STAGES.get(self.kind)
        return module.REPORT if module else ReportEntries()

    @property
    def status(self) -> str:
        return "done" if self.done is not None else "unfinished" if self.path.exists() else "not started"

    def final(self) -> dict:
        """The last value of each metric it logged, with eval.json and stats.json on top."""
        last = {}
        for row in self.metrics:
            last.update(row)
        return {**last, **(self.eval or {}), **(self.stats or {})}


def _json(path: Path):
    """A JSON file's value; None if absent or unreadable (a stage killed mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl that parse (a line cut short by a crash is skipped)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_run(run_dir: Path) -> tuple[dict, list[StageRecord]]:
    """The run's config and a record per stage it lists."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run directory")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ReportError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        config = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise ReportError(f"{cfg_path}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(config, dict):
        raise ReportError(f"{cfg_path}: not a run config (a mapping with name and stages)")
    stages = []
    for i, s in enumerate(config.get("stages") or []):
        s = s if isinstance(s, dict) else {}
        name, kind = str(s.get("name", i)), str(s.get("kind", "?"))
        d = run_dir / "stages" / f"{i}-{name}"
        done = (_dict(_json(d / "DONE")) or {}) if (d / "DONE").exists() else None
        found = {f: _dict(_json(d / f)) for f in ("eval.json", "stats.json")}
        unreadable = [f for f, value in found.items() if value is None and (d / f).exists()]
        stages.append(StageRecord(i, name, kind, d, done, metrics=_jsonl(d / "metrics.jsonl"),
                                  eval=found["eval.json"], stats=found["stats.json"], unreadable=unreadable))
    return config, stages


def _dict(value) -> dict | None:
    return value if isinstance(value, dict) else None


def _num(v) -> str:
    return (str(v) if isinstance(v, int) else f"{v:.4g}") if is_number(v) else str(v)


def _final_cell(stage: StageRecord) -> str:
    final = stage.final()
    keys = matching_keys([final], list(stage.report.final))
    shown = [f"{k} {_num(final[k])}" for k in keys if is_number(final[k])]
    return ", ".join(shown + [f"**{f} unreadable** (delete the stage folder to run it again)" for f in stage.unreadable])


def stage_table(stages: list[StageRecord]) -> str:
    rss = any(is_number((s.done or {}).get("peak_rss_mb")) for s in stages)
    header = ["#", "stage", "kind", "status", "seconds"] + ["peak RSS (MB)"] * rss + ["final metrics"]
    rows = [[str(s.index), s.name, s.kind, s.status, _num((s.done or {}).get("seconds", ""))]
            + [_num((s.done or {}).get("peak_rss_mb", ""))] * rss + [_final_cell(s)] for s in stages]
    return markdown_table(header, rows, right={0, 4, 5} if rss else {0, 4})


def stats_table(stats: dict) -> str:
    """A data stage's stats.json, a row per top-level key; a nested mapping on one line."""
    show = lambda v: (", ".join(f"{k} {show(x)}" for k, x in v.items()) if isinstance(v, dict)
                      else json.dumps(v) if isinstance(v, list) else _num(v))
    return markdown_table(["stat", "value"], [[k, show(v)] for k, v in stats.items()])


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.md`` and its plots ``run_dir/plots/*.png``; returns the report's path."""
    run_dir = Path(run_dir)
    config, stages = read_run(run_dir)
    plots = run_dir / "plots"
    for old in plots.glob("*.png"):        # a plot of a stage no longer in the run must not linger
        old.unlink()
    task = config.get("task") if isinstance(config.get("task"), dict) else {}
    done = sum(s.status == "done" for s in stages)
    md = [f"# Run report: {config.get('name', run_dir.name)}", "",
          f"Seed {config.get('seed', '?')}, task `{task.get('kind', '?')}`; {done} of {len(stages)} stages done.",
          "", "## Stages", "", stage_table(stages), ""]

    results = eval_results(run_dir)
    if results:
        md += ["## Evaluation", "", eval_table(run_dir, markdown=True), ""]
        if eval_plot(results, plots / "eval.png"):
            md += ["![evaluation: every model compared](plots/eval.png)", ""]

    data = [s for s in stages if s.stats]
    if data:
        md += ["## Data", ""]
        for s in data:
            md += [f"### {s.name} ({s.kind})", "", stats_table(s.stats), ""]

    curves = []
    for s in stages:
        png = stage_plot(s.metrics, s.report.panels, f"{s.name} ({s.kind})", plots / f"{s.index}-{s.name}.png")
        if png:
            curves += [f"### {s.name} ({s.kind})", "", f"![{s.name}](plots/{png.name})", ""]
    if curves:
        md += ["## Training curves", ""] + curves
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(md).rstrip() + "\n")
    return path
