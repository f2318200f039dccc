"""The code task (r1lab/data/code.py): synthetic problems whose reference solutions pass, JSONL
rows checked with file:line:field, and a GRPO stage on it that keeps training when some of
its samples are hostile programs."""

from __future__ import annotations

import json

import pytest

from r1lab.data.code import read_code_jsonl, sample_code_problems
from r1lab.errors import DataError
from r1lab.rewards import RewardSpec, build_rewards, score

from conftest import tiny_llama


def test_synthetic_splits_are_disjoint_and_every_reference_passes_its_tests():
    train, test = sample_code_problems(0, 60, split="train"), sample_code_problems(0, 12, split="test")
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert sample_code_problems(0, 12, split="test") == test                     # same seed, same draw
    problems = test + train[:12]
    answers = [f"<think>.</think> <answer>```python\n{p['answer']}\n```</answer>" for p in problems]
    values = score(build_rewards({"code": RewardSpec(weight=1.0, binary=True)}), [""] * len(problems),
                   answers, problems)[0]
    assert values == [1.0] * len(problems)
    assert {type(p["tests"][0]) for p in problems} == {str, dict}               # both kinds of tests


@pytest.mark.parametrize("line, message", [
    ('{"tests": [{"input": "1", "output": "1"}]}', ":1: field 'prompt': missing"),
    ('{"prompt": " ", "tests": ["assert 1"]}', ":1: field 'prompt': empty"),
    ('{"prompt": "p", "tests": []}', ":1: field 'tests': empty"),
    ('{"prompt": "p", "tests": "assert 1"}', ":1: field 'tests': expected a list"),
    ('{"prompt": "p", "tests": [{"input": "1"}]}', ":1: field 'output': missing"),
    ('{"prompt": "p", "tests": [3]}', ":1: field 'tests': item 0 must be"),
    ('{"prompt": "p", "tests": ["assert 1"], "solution": 5}', ":1: field 'solution': expected text"),
])
def test_bad_code_rows_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "code.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        read_code_jsonl(path)


def test_code_rows_keep_their_tests_and_solution(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"prompt": "add", "tests": ["assert add(1, 2) == 3", {"input": "1", "output": "1"}],
                                "solution": "def add(a, b): return a + b", "source": "x"}) + "\n")
    assert read_code_jsonl(path) == [{"question": "add", "answer": "def add(a, b): return a + b", "source": "x",
                                      "tests": ["assert add(1, 2) == 3", {"input": "1", "output": "1"}]}]


def test_grpo_on_the_code_task_keeps_training_when_samples_are_hostile(tmp_path, tokenizer, monkeypatch):
    from r1lab.config import load_config
    from r1lab.pipeline import run
    from r1lab.train import rl_step
    from r1lab.train.metrics import read_metrics
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    hostile = ["import os\nwhile True:\n    os.fork()", "while True:\n    pass", "x = bytearray(10 ** 10)",
               "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"]
    inner, seen = rl_step.sample, []

    def sample_with_hostile_rows(*args, **kw):
        prompts, rollout = inner(*args, **kw)
        plain = rollout.texts

        def texts(tok):         # half the rows: a hostile program; one row: a right answer
            rows = [f"<think>.</think> <answer>```python\n{hostile[i % 4]}\n```</answer>" if i % 2 else t
                    for i, t in enumerate(plain(tok))]
            rows[0] = f"<think>.</think> <answer>```python\n{seen_examples[0]['answer']}\n```</answer>"
            seen.append(rows)
            return rows
        rollout.texts = texts
        return prompts, rollout

    seen_examples, real_scored = [], rl_step.scored_rollout

    def scored_rollout(policy, tok, task, examples, *args, **kw):
        seen_examples[:] = examples
        return real_scored(policy, tok, task, examples, *args, **kw)
    monkeypatch.setattr(rl_step, "sample", sample_with_hostile_rows)
    monkeypatch.setattr(rl_step, "scored_rollout", scored_rollout)
    (tmp_path / "c.yaml").write_text(f"""\
name: t
task: {{kind: code}}
stages:
  - kind: grpo
    name: rl
    init: {tmp_path / 'lm'}
    steps: 2
    prompts_per_step: 2
    group_size: 4
    sampling: {{max_new_tokens: 8}}
    rewards: {{code: {{weight: 1.0, cpu_s: 1, wall_s: 2.0}}, format: 0.5}}
""")
    out = run(load_config(str(tmp_path / "c.yaml")), tmp_path / "run", log=lambda *_: None)
    metrics = read_metrics(out / "stages/0-rl/metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and len(seen) == 2
    # the right answer earns 1 of the 8 rows' code reward; every hostile row earns 0
    assert [m["reward/code"] for m in metrics] == [1 / 8, 1 / 8]
    assert all(m["grad_norm"] > 0 for m in metrics)


def test_a_code_task_takes_both_jsonl_paths_or_neither(tmp_path):
    from r1lab.config import ConfigError, load_config
    path = tmp_path / "c.yaml"
    path.write_text("name: t\ntask: {kind: code, train_path: a.jsonl}\nstages:\n"
                    "  - {kind: eval, name: e, model: m}\n")
    with pytest.raises(ConfigError, match="both train_path and test_path"):
        load_config(str(path))
