"""Rewards from the user's own code by import path: checked at config load, batched, None = not scored."""

import pytest
from pydantic import TypeAdapter, ValidationError

from r1lab.rewards import RewardsSpec, build_rewards, score

MODULE = '''
def brevity(prompts, completions, rows, per_char=0.1):
    return [None if r.get("skip") else -per_char * len(c) for c, r in zip(completions, rows)]

def unbatched(completion, example):
    return 1.0

def short(prompts, completions, rows):
    return [1.0]

not_a_function = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def spec(value):
    return TypeAdapter(RewardsSpec).validate_python(value)


def test_an_imported_reward_scores_a_batch_and_none_adds_nothing(user_module):
    s = spec({"format": 1.0, f"{user_module}:brevity": {"weight": 2.0, "per_char": 0.5}})
    totals, per_fn = score(build_rewards(s), ["q", "q"], ["ab", "abcd"], [{}, {"skip": True}])
    assert per_fn[f"{user_module}:brevity"] == [-1.0, None]
    assert totals == [pytest.approx(-2.0), 0.0]


@pytest.mark.parametrize("key,message", [
    ("no_such_module_here:fn", "cannot import 'no_such_module_here'"),
    ("my_rewards:missing", "module 'my_rewards' has no 'missing'"),
    ("my_rewards:not_a_function", "is not a function"),
    ("my_rewards:unbatched", r"must take \(prompts, completions, rows\)"),
])
def test_a_bad_import_path_is_one_line_naming_the_key(user_module, key, message):
    with pytest.raises(ValidationError, match=f"reward '{key}'.*{message}"):
        spec({key: 1.0})


def test_parameters_the_function_does_not_take_are_refused(user_module):
    with pytest.raises(ValidationError, match=r"must take \(prompts, completions, rows, per_word=\)"):
        spec({f"{user_module}:brevity": {"weight": 1, "per_word": 1}})


def test_a_wrong_number_of_values_is_an_error_naming_the_reward(user_module):
    scorers = build_rewards(spec({f"{user_module}:short": 1.0}))
    with pytest.raises(ValueError, match="'my_rewards:short' returned 1 values for 2 completions"):
        score(scorers, ["q", "q"], ["a", "b"], [{}, {}])
