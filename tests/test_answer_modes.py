"""Where the verifier reads the answer (``answer:``), DAPO's overlong reward, and the task's
verifier settings reaching every scorer."""

import pytest
from pydantic import TypeAdapter, ValidationError

from r1lab.data.tasks import ArithmeticTask, CodeTask
from r1lab.rewards import RewardSpec, RewardsSpec, build_rewards, score, verifier_params, with_task
from r1lab.rewards.accuracy import accuracy_reward, extract, math_verify_reward
from r1lab.rewards.overlong import overlong_reward

EX = {"question": "1 + 5 =", "answer": "6"}

REPLIES = [
    # reply, tag, last_number, boxed, tag_or_last_number
    ("The answer is 6.", None, "6", None, "6"),
    ("1 + 5 = 6<|im_end|>", None, "6", None, "6"),
    ("<think>1 + 5 is 6</think> <answer>7</answer>", "7", "7", None, "7"),
    ("<think>1 + 5 is 6, not 7</think>", None, "7", None, "7"),
    ("so the total is 1,234 apples", None, "1,234", None, "1,234"),
    ("It is -3.5, or rather \\boxed{6}.", None, "6", "6", "6"),
    ("\\boxed{\\frac{1}{2}} hmm", None, "2", "\\frac{1}{2}", "2"),
    ("\\boxed{6 unbalanced", None, "6", None, "6"),
    ("<answer>1</answer><answer>2</answer> then 3", None, "3", None, "3"),   # two blocks: no tag answer
    ("no number at all", None, None, None, None),
]


@pytest.mark.parametrize("reply,tag,last,boxed,either", REPLIES)
def test_each_answer_mode_reads_hand_written_replies(reply, tag, last, boxed, either):
    got = {mode: extract(reply, mode) for mode in ("tag", "last_number", "boxed", "tag_or_last_number")}
    assert got == {"tag": tag, "last_number": last, "boxed": boxed, "tag_or_last_number": either}


def test_accuracy_pays_by_answer_mode():
    assert accuracy_reward("The answer is 6.", EX) == 0.0                         # R1's contract: tags only
    assert accuracy_reward("The answer is 6.", EX, answer="last_number") == 1.0
    assert accuracy_reward("6 is wrong, it is 7", EX, answer="last_number") == 0.0
    assert accuracy_reward("<answer>6</answer> (not 7)", EX, answer="tag_or_last_number") == 1.0
    assert accuracy_reward("\\boxed{6}", EX, answer="boxed") == 1.0
    assert math_verify_reward("\\boxed{\\frac{12}{2}}", EX, answer="boxed") == 1.0
    with pytest.raises(ValueError, match="unknown answer mode"):
        accuracy_reward("6", EX, answer="first_number")


def test_a_spec_with_an_unknown_answer_mode_is_refused():
    with pytest.raises(ValidationError, match="answer must be one of"):
        TypeAdapter(RewardsSpec).validate_python({"accuracy": {"weight": 1, "answer": "first"}})


def test_the_task_answer_mode_reaches_the_trained_verifier_unless_the_spec_sets_its_own():
    task = ArithmeticTask(kind="arithmetic", answer="last_number")
    spec = TypeAdapter(RewardsSpec).validate_python({"accuracy": 1.0, "format": 0.5})
    totals, per_fn = score(build_rewards(with_task(spec, task)), ["q"], ["it is 6"], [EX])
    assert per_fn["accuracy"] == [1.0] and totals == [1.0]
    own = TypeAdapter(RewardsSpec).validate_python({"accuracy": {"weight": 2.0, "answer": "tag"}})
    merged = with_task(own, task)["accuracy"]
    assert isinstance(merged, RewardSpec) and merged.params == {"answer": "tag"} and merged.weight == 2.0
    assert with_task({"format": 1.0}, task) == {"format": 1.0}                    # no verifier entry: unchanged


def test_a_verifier_gets_only_the_settings_it_takes():
    assert verifier_params(ArithmeticTask(kind="arithmetic", answer="boxed")) == {"answer": "boxed"}
    assert verifier_params(CodeTask(kind="code", answer="last_number")) == {"answer": "last_number"}
    assert verifier_params(ArithmeticTask(kind="arithmetic", verifier="format")) == {}   # format reads no answer


@pytest.mark.parametrize("tokens,value", [(None, 0.0), (10, 0.0), (80, 0.0), (85, -0.25), (100, -1.0), (500, -1.0)])
def test_overlong_punishment_falls_linearly_over_the_buffer(tokens, value):
    example = {} if tokens is None else {"completion_tokens": tokens}
    assert overlong_reward("x", example, max_len=100, buffer=20) == pytest.approx(value)


def test_overlong_needs_its_lengths():
    with pytest.raises(ValidationError, match=r"reward 'overlong' needs \{weight: w, buffer: \.\.\., max_len: \.\.\.\}"):
        TypeAdapter(RewardsSpec).validate_python({"overlong": 1.0})
    spec = TypeAdapter(RewardsSpec).validate_python({"overlong": {"weight": 1, "max_len": 10, "buffer": 4}})
    assert score(build_rewards(spec), ["q"] * 2, ["a", "b"], [{"completion_tokens": 8}, {"completion_tokens": 3}])[0] \
        == [pytest.approx(-0.5), 0.0]
