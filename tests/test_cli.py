"""The r1lab command: eval on a model directory; user errors exit 2 with one clear line."""

import json

import pytest

from r1lab.cli import main


def test_eval_prints_metrics_of_a_model_dir(qwen_dir, capsys):
    rc = main(["eval", str(qwen_dir), "--config", "r1-zero-tiny", "--set", "task.n_test=3", "--set", "stages.eval-r1-zero.samples=2",
               "--set", "stages.eval-r1-zero.sampling.max_new_tokens=4"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_questions"] == 3 and metrics["samples"] == 2
    assert 0 <= metrics["pass@1"] <= 1 and metrics["completion_len/mean"] <= 4


def test_bad_config_value_exits_2_naming_the_field(capsys, tmp_path):
    rc = main(["run", "--run-dir", str(tmp_path / "r"), "--set", "stages.base.optim.lr=fast"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("r1lab: error: --set stages.base.optim.lr=fast: stages[0].optim.lr:")
    assert "Traceback" not in err and not (tmp_path / "r").exists()   # failed before any work


def test_missing_model_dir_exits_2(capsys, tmp_path):
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "not a model directory (no config.json)" in capsys.readouterr().err


def test_the_console_script_restarts_once_with_the_malloc_limits(monkeypatch):
    """glibc reads the limits only at start: without them the script starts Python again with
    them (and ``python -m r1lab`` then runs main); with either set by the user it runs as is."""
    import r1lab.cli as cli
    calls = []
    monkeypatch.setattr(cli.os, "execve", lambda exe, args, env: calls.append((args, env)))
    monkeypatch.setattr(cli, "main", lambda: 0)
    monkeypatch.setattr(cli.sys, "argv", ["r1lab", "run", "x.yaml"])
    for key in cli.MALLOC_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit):
        cli.entry()
    (args, env), = calls
    assert args[1:] == ["-m", "r1lab", "run", "x.yaml"] and cli.MALLOC_ENV.items() <= env.items()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    with pytest.raises(SystemExit):
        cli.entry()
    assert len(calls) == 1
