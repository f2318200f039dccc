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


def test_a_backend_refusal_is_one_line_not_a_traceback(qwen_dir, capsys, monkeypatch):
    """A backend that cannot decode the model raises an R1labError, which the command prints as
    one line (it was a plain ValueError, and a traceback after the earlier stages had run)."""
    import r1lab.rollout as rollout
    monkeypatch.setattr(rollout.native, "supports", lambda model: False)
    rc = main(["eval", str(qwen_dir), "--config", "r1-zero-tiny", "--set", "task.n_test=3",
               "--set", "stages.eval-r1-zero.sampling.backend=native"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err == "r1lab: error: backend native does not decode qwen2 models exactly; use backend hf or auto\n"


def test_every_error_class_of_r1lab_derives_from_the_one_the_command_catches():
    import importlib
    import inspect
    import pkgutil

    import r1lab
    from r1lab.errors import R1labError
    found = []
    for info in pkgutil.walk_packages(r1lab.__path__, "r1lab."):
        if info.name in ("r1lab.__main__",):
            continue
        module = importlib.import_module(info.name)
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, Exception) and cls.__module__ == info.name]
    assert len(found) >= 10
    assert [cls.__name__ for cls in found if not issubclass(cls, R1labError)] == []
