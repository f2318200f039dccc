"""r1lab report: report.md and PNG plots of a run dir, built here on disk with keys missing,
an unfinished stage, a stage not started, an empty metrics file and a kind it does not know."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from r1lab.cli import main
from r1lab.report import write_report
from r1lab.report.plots import hacking_verdict, trend

STAGES = [("pretrain", "base"), ("eval", "eval-base"), ("grpo", "r1-zero"), ("rejection_sample", "sft-data"),
          ("grpo", "all-rl"), ("eval", "eval-all-rl"), ("bench", "speed"), ("sft", "later"),
          ("reward_model", "rm"), ("dpo", "pref")]


def _write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "fake"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": "fake", "seed": 3, "task": {"kind": "arithmetic"},
        "stages": [{"kind": k, "name": n} for k, n in STAGES]}, sort_keys=False))
    st = run / "stages"
    # pretrain: loss every step, val_loss every 5th; DONE with peak RSS
    _write(st / "0-base/metrics.jsonl", [{"stage": "base", "step": s, "time_s": s, "loss": 6 / s, "lr": 1e-3,
                                          **({"val_loss": 6.5 / s} if s % 5 == 0 else {})} for s in range(1, 21)])
    (st / "0-base/DONE").write_text(json.dumps({"seconds": 12.5, "peak_rss_mb": 812.0}))
    # eval without general/judge
    (st / "1-eval-base").mkdir()
    (st / "1-eval-base/eval.json").write_text(json.dumps({"model": "base", "pass@1": 0.25, "cons@k": 0.4,
                                                          "language_consistency": 0.7}))
    (st / "1-eval-base/DONE").write_text(json.dumps({"seconds": 1.0}))
    # GRPO that never logged reward/language; a NaN kl is dropped
    _write(st / "2-r1-zero/metrics.jsonl", [
        {"stage": "r1-zero", "step": s, "time_s": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.05 * s,
         "reward/format": 0.5, "accuracy": 0.05 * s, "completion_len/mean": 30 + s,
         "kl": float("nan") if s == 3 else 0.01 * s} for s in range(1, 9)])
    (st / "2-r1-zero/DONE").write_text(json.dumps({"seconds": 40.0}))
    # a data stage
    (st / "3-sft-data").mkdir()
    (st / "3-sft-data/stats.json").write_text(json.dumps({"prompts": 8, "drawn": 32, "kept": 7,
                                                          "removed": {"correct": 20, "duplicate": 5},
                                                          "kept_per_prompt": {"0": 1, "1": 7}}))
    (st / "3-sft-data/DONE").write_text(json.dumps({"seconds": 2.0}))
    # all-scenario RL, unfinished (no DONE, last line cut by a crash): RM score up, judge down
    _write(st / "4-all-rl/metrics.jsonl", [{"stage": "all-rl", "step": s, "time_s": s, "reward/mean": 0.1 * s,
                                            "reward/reward_model": 0.2 * s, "reward/judge": 5 - 0.1 * s}
                                           for s in range(1, 9)])
    with (st / "4-all-rl/metrics.jsonl").open("a") as f:
        f.write('{"stage": "all-rl", "step": 9, "rew')
    # eval with only pass@1 and general/judge
    (st / "5-eval-all-rl").mkdir()
    (st / "5-eval-all-rl/eval.json").write_text(json.dumps({"model": "all-rl", "pass@1": 0.5,
                                                            "general/judge": 0.3}))
    (st / "5-eval-all-rl/DONE").write_text(json.dumps({"seconds": 1.0}))
    # a kind the report does not know, with metrics
    _write(st / "6-speed/metrics.jsonl", [{"stage": "speed", "step": 1, "time_s": 1, "loss": 1.0}])
    (st / "6-speed/DONE").write_text("{}")
    # 7-later: not started.  8-rm: started, empty metrics.  9-pref: a val/ metric, no val_loss
    (st / "8-rm").mkdir()
    (st / "8-rm/metrics.jsonl").write_text("")
    _write(st / "9-pref/metrics.jsonl", [{"stage": "pref", "step": s, "time_s": s, "loss": 0.7 - 0.05 * s,
                                          **({"val/accuracy": 0.5 + 0.1 * s} if s % 2 == 0 else {})}
                                         for s in range(1, 7)])
    (st / "9-pref/DONE").write_text(json.dumps({"seconds": 3.0}))
    return run


# (file, width, height): panels of 450 x 320 px, at most 3 a row; the bar chart's 450 x 400 in one row
EXPECTED_PNGS = [("0-base.png", 450, 320),        # loss (loss, val_loss)
                 ("2-r1-zero.png", 1350, 640),    # reward, accuracy, length, kl: no language panel
                 ("4-all-rl.png", 900, 320),      # reward, and RM score against the judge
                 ("9-pref.png", 450, 320),        # loss (loss, val/accuracy)
                 ("eval.png", 1800, 400)]         # pass@1, cons@k, language consistency, general/judge


def test_report_writes_markdown_and_plots(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.md"
    md = path.read_text()
    for kind, name in STAGES:
        assert f"| {name} | {kind} |" in md
    for status in ("| done |", "| unfinished |", "| not started |"):
        assert status in md
    assert "peak RSS (MB)" in md and "| 812 |" in md and "| 12.5 |" in md
    for metric in ("step 20, loss 0.3, val_loss 0.325", "reward/mean 0.8", "accuracy 0.4", "completion_len/mean 38",
                   "reward/reward_model 1.6", "reward/judge 4.2", "val/accuracy 1.1", "general/judge 0.3",
                   "kept 7", "drawn 32"):
        assert metric in md, metric
    assert "| base | 0.250 | 0.400 | - |" in md and "| all-rl | 0.500 | - |" in md     # the eval table
    assert "| removed | correct 20, duplicate 5 |" in md and "| kept_per_prompt | 0 1, 1 7 |" in md
    for png, _, _ in EXPECTED_PNGS:
        assert f"](plots/{png})" in md
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(p for p, _, _ in EXPECTED_PNGS)
    for png, width, height in EXPECTED_PNGS:
        pixels = imread(run_dir / "plots" / png)                        # [H, W, 4] floats in [0, 1]
        assert pixels.shape[:2] == (height, width), png
        assert pixels.std() > 0.05 and len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10, png


@pytest.fixture
def new_run(tmp_path):
    """A run with nothing logged yet: one stage started, one not (its report draws no plot)."""
    run = tmp_path / "new"
    (run / "stages/0-rl").mkdir(parents=True)
    (run / "config.yaml").write_text("name: new\nstages: [{kind: grpo, name: rl}, {kind: eval, name: ev}]\n")
    return run


def test_run_with_nothing_logged_yet(new_run):
    md = write_report(new_run).read_text()
    assert "| rl | grpo | unfinished |" in md and "| ev | eval | not started |" in md
    assert "## Evaluation" not in md and "## Training curves" not in md and not list(new_run.glob("plots/*.png"))


def test_report_again_drops_plots_of_stages_gone(new_run):
    (new_run / "plots").mkdir()
    (new_run / "plots" / "3-removed.png").write_bytes(b"old")
    write_report(new_run)
    assert not (new_run / "plots" / "3-removed.png").exists()


def test_trend_and_hacking_verdict():
    # halves [1..4] and [5..8]: change 4, each variance 5/3, s.e. sqrt(2 * 5/3 / 4) = 0.91 -> up
    assert trend([1, 2, 3, 4, 5, 6, 7, 8]) == "up" and trend([8, 7, 6, 5, 4, 3, 2, 1]) == "down"
    # halves [5, 6, 5, 6] twice: change 0 -> flat; then [5, 6, 5, 6] and [6, 5, 6, 7]: change 0.5,
    # variances 1/3 and 2/3, s.e. sqrt((1/3 + 2/3) / 4) = 0.5, and 0.5 < 2 s.e. -> flat
    assert trend([5, 6, 5, 6, 5, 6, 5, 6]) == "flat" and trend([5, 6, 5, 6, 6, 5, 6, 7]) == "flat"
    assert trend([]) == trend([1.0]) == "flat"
    assert hacking_verdict([1, 2, 3, 4], [5, 6, 5, 6]) == "reward hacking: RM score up, judge flat"
    assert hacking_verdict([1, 2, 3, 4], [4, 3, 2, 1]) == "reward hacking: RM score up, judge down"
    assert hacking_verdict([1, 2, 3, 4], [1, 2, 3, 4]) == "no sign of reward hacking: RM score up, judge up"


def test_cli_report_prints_the_path(new_run, capsys):
    assert main(["report", str(new_run)]) == 0
    assert capsys.readouterr().out.strip() == str(new_run / "report.md")
    assert (new_run / "report.md").is_file()


def test_cli_run_writes_the_report_at_the_end(new_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("r1lab.pipeline.run", lambda config, out: new_run)     # the run itself is tested elsewhere
    assert main(["run", "--run-dir", str(tmp_path / "ignored")]) == 0
    assert capsys.readouterr().out.strip().endswith(f"report: {new_run / 'report.md'}")
    assert (new_run / "report.md").is_file()


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such run directory"),
    (lambda p: p.mkdir(), "not a run directory (no config.yaml)"),
    (lambda p: (p.mkdir(), (p / "config.yaml").write_text("name: [unclosed\n")), "config.yaml: not valid YAML")])
def test_cli_report_of_a_bad_run_dir_exits_2(tmp_path, capsys, make, message):
    make(tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"r1lab: error: {tmp_path / 'run'}") and message in err and "Traceback" not in err
