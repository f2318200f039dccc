"""Rejection sampling: the readable pattern, the filters one by one, and the stage's data,
statistics and crash-safe resume (with a stub sampler)."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from r1lab.data.jsonl import read_sft_jsonl
from r1lab.rewards.readable import direct_completion, has_summary, readable, repeat_ratio
from r1lab.data.tasks import ArithmeticTask
from r1lab.rewards import RewardsSpec, build_rewards, score
from r1lab.rewards.format import format_reward
from r1lab.rewards.language import language_consistency
from r1lab import rollout
from r1lab.models import io as models_io
from r1lab.stages import rejection_sample as rs
from r1lab.stages.context import RunContext
from r1lab.stages.rejection_sample import FILTERS, Filters, RejectionSampleConfig, apply_filters

from conftest import StubRollout, tiny_llama

READABLE = " <think>7+8=15, 15-3=12</think> The answer is 12. <answer>12</answer>"


@pytest.mark.parametrize("completion,plain,with_summary", [
    (" <think>x</think> <answer>12</answer>", 1.0, 1.0),             # no summary: both accept it
    (READABLE, 0.0, 1.0),                                            # the readable pattern
    ("<think>x</think>So 12.\n<answer>12</answer>\n", 0.0, 1.0),     # summary without spaces, newline
    ("<think>x</think> so <think>y</think> <answer>12</answer>", 0.0, 0.0),  # a tag in the summary
    ("<think>x</think> 12 <answer>12</answer> more", 0.0, 0.0),      # text after the answer
    ("Sure. <think>x</think> <answer>12</answer>", 0.0, 0.0),        # text before the think block
    ("<think>x</think> The answer is 12.", 0.0, 0.0),                # no answer block
])
def test_format_reward_allow_summary(completion, plain, with_summary):
    assert format_reward(completion) == plain
    assert format_reward(completion, {"answer": "12"}, allow_summary=True) == with_summary


def test_a_rewards_spec_may_allow_the_summary():
    """An RL stage after a readable cold start: ``format: {weight, allow_summary: true}``."""
    spec = TypeAdapter(RewardsSpec).validate_python({"format": {"weight": 0.5, "allow_summary": True}})
    totals, _ = score(build_rewards(spec), ["q"], [READABLE], [{"answer": "12"}])
    assert totals == [0.5]
    totals, _ = score(build_rewards({"format": 0.5}), ["q"], [READABLE], [{"answer": "12"}])
    assert totals == [0.0]


def test_rewrite_into_the_readable_pattern_en_and_zh():
    raw = "<think>\n7+8=15, 15-3=12\n</think>\n<answer> 12 </answer>"
    assert readable(raw, {"question": "7+8-3", "lang": "en"}) == READABLE
    zh = readable("<think>七加八得十五，减三得十二</think><answer>12</answer>", {"question": "七加八减三是多少？"})
    assert zh == " <think>七加八得十五，减三得十二</think> 答案是12。 <answer>12</answer>"
    assert format_reward(zh, allow_summary=True) == 1.0 and has_summary(zh)
    assert language_consistency(zh, {"lang": "zh"}) == 1.0          # the summary is outside the CoT
    assert readable("<think>x</think> 12", {"question": "q"}) is None
    assert readable("<answer>12</answer>", {"question": "q"}) is None


def test_direct_completion_and_has_summary():
    direct = direct_completion({"question": "Capital of France?", "answer": "Paris"})
    assert direct == " <think></think> <answer>Paris</answer>"
    assert format_reward(direct) == 1.0 and not has_summary(direct)
    assert has_summary(READABLE)
    assert not has_summary("<think>x</think> <answer>12</answer>")
    assert not has_summary("<think>x</think> <think>y</think><answer>12</answer>")   # tags, not a summary


@pytest.mark.parametrize("text,n,expected", [
    ("a b c d a b c d a b c d", 4, 1 - 4 / 9),     # 9 4-grams: abcd bcda cdab dabc, 4 distinct
    ("a b c d e f", 4, 0.0),                        # 3 4-grams, all distinct
    ("a a a a a", 2, 1 - 1 / 4),                    # 4 2-grams, 1 distinct
    ("a b", 4, 0.0),                                # fewer words than n
    ("", 1, 0.0),
    ("one two one two", 1, 0.5),                    # 4 words, 2 distinct
    ("答案答案答案", 2, 1 - 2 / 5),                   # 6 ideographs, 5 2-grams: 答案 案答, 2 distinct
    ("x=1 答案 x=1 答案", 2, 1 - 3 / 5),              # words x=1 答 案 x=1 答 案: 5 2-grams, 3 distinct
])
def test_repeat_ratio(text, n, expected):
    assert repeat_ratio(text, n) == pytest.approx(expected)


# ---- the filters, on hand-made records -------------------------------------------------------

GOOD = {"sample": 0, "text": "<think>7+8=15</think> <answer>15</answer>", "n_tokens": 10,
        "correct": 1.0, "format": 1.0, "language": 1.0}


def rec(sample=0, **changes):
    return {**GOOD, "sample": sample, **changes}


@pytest.mark.parametrize("name,record,on,off", [
    ("correct", rec(correct=0.0), {}, {"correct": False}),
    ("format", rec(format=0.0), {}, {"format": False}),
    ("language", rec(language=0.5), {"min_language": 0.9}, {}),                # 0 = off
    ("length", rec(n_tokens=3), {"min_tokens": 5}, {"min_tokens": 3}),
    ("length", rec(n_tokens=50), {"max_tokens": 40}, {"max_tokens": 50}),
    ("repetition", rec(text="x y x y x y x y"), {"max_repeat": 0.7, "ngram": 2},   # 1 - 2/7 = 0.714
     {"max_repeat": 0.75, "ngram": 2}),
    ("code", rec(text="<think>```python\nprint(15)\n```</think> <answer>15</answer>"), {}, {"no_code": False}),
])
def test_each_filter_alone(name, record, on, off):
    kept, removed = apply_filters([record], Filters(**on), keep=1)
    assert kept == [] and removed == {name: 1}
    kept, removed = apply_filters([record], Filters(**off), keep=1)
    assert kept == [record] and removed == {}


def test_the_bounds_are_inclusive():
    edge = rec(language=0.9, n_tokens=5, text="x y x y x")                    # 4 2-grams, 2 distinct: 0.5
    kept, _ = apply_filters([edge], Filters(min_language=0.9, min_tokens=5, max_tokens=5,
                                            max_repeat=0.5, ngram=2), keep=1)
    assert kept == [edge]


def test_dedup_drops_a_copy_of_a_kept_completion_only():
    a, copy, b = rec(0), rec(1), rec(2, text="<think>8+7=15</think> <answer>15</answer>")
    wrong_first = [rec(0, correct=0.0), rec(1)]                 # the first copy is removed, so the second is kept
    assert apply_filters([a, copy, b], Filters(), keep=3) == ([a, b], {"duplicate": 1})
    assert apply_filters([a, copy, b], Filters(dedup=False), keep=3) == ([a, copy, b], {})
    assert apply_filters(wrong_first, Filters(), keep=3) == ([wrong_first[1]], {"correct": 1})


def test_a_completion_is_counted_under_the_first_filter_that_removes_it():
    code = "<think>```x```</think> <answer>15</answer>"
    records = [rec(0, correct=0.0, format=0.0, n_tokens=99, text=code),   # every filter fails: correct
               rec(1, format=0.0, language=0.0, text=code),                 # format
               rec(2, language=0.2, n_tokens=99),                           # language, before length
               rec(3, n_tokens=99, text="a " * 12 + code),                  # length, before repetition, code
               rec(4, text="a " * 12 + code),    # repetition (11 4-grams, 3 distinct: 0.73), before code
               rec(5, text=code),                                           # code
               rec(6), rec(7)]                                              # kept; duplicate
    kept, removed = apply_filters(records, Filters(min_language=0.5, max_tokens=50, max_repeat=0.5), keep=5)
    assert [r["sample"] for r in kept] == [6]
    assert removed == {name: 1 for name in FILTERS}
    assert FILTERS == ("correct", "format", "language", "length", "repetition", "code", "duplicate")


def test_keep_caps_the_good_completions_in_sample_order():
    records = [rec(j, text=f"<think>{j}</think> <answer>15</answer>") for j in range(4)] + [rec(4)]
    records[4]["text"] = records[0]["text"]                   # a copy of a kept one stays a duplicate
    kept, removed = apply_filters(records, Filters(), keep=2)
    assert [r["sample"] for r in kept] == [0, 1]
    assert removed == {"over_keep": 2, "duplicate": 1}


def test_config_defaults_and_checks():
    cfg = RejectionSampleConfig(kind="rejection_sample", name="rs", model="m", filters={"min_language": 0.9},
                                sampling={"temperature": 0.7})
    assert (cfg.filters.min_language, cfg.filters.correct, cfg.filters.ngram) == (0.9, True, 4)
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_new_tokens) == (0.7, 1.0, 96)
    with pytest.raises(ValidationError, match="extra"):
        RejectionSampleConfig(kind="rejection_sample", name="rs", model="m", filters={"no_tags": True})
    with pytest.raises(ValidationError, match="rewrite needs filters.format"):
        RejectionSampleConfig(kind="rejection_sample", name="rs", model="m", rewrite=True, filters={"format": False})
    cfg = RejectionSampleConfig(kind="rejection_sample", name="rs", model="m", non_reasoning=4)
    assert "general questions" in cfg.task_problem(SimpleNamespace(kind="arithmetic", has_general=False))
    assert cfg.task_problem(FakeTask()) is None


# ---- the stage, with a stub sampler ----------------------------------------------------------

SEED = 7


class FakeTask:
    """Question ``what is N?`` with answer N, N = 10 * chunk + index + 1; general questions too."""
    kind, verifier, has_general, template = "fake", "accuracy", True, "fake"

    def __init__(self, zh=()):
        self.zh = set(zh)

    def sample_train(self, seed, step, n):
        b = int(step.removeprefix("rejection-"))
        out = [{"question": f"what is {10 * b + i + 1}?", "answer": str(10 * b + i + 1)} for i in range(n)]
        return [{**e, "lang": "zh"} if e["answer"] in self.zh else e for e in out]

    def prompt(self, example, tokenizer=None):
        return f"User: {example['question']}\nAssistant:"

    def verifier_params(self):
        return {"answer": "tag"}

    def general_examples(self, seed, n, split, requests):
        assert (seed, split, requests) == (SEED, "train", ("words",))
        return [{"question": f"Capital {i}?", "answer": f"City {i}", "lang": "en", "category": "general"}
                for i in range(n)]


def ok(answer, words):
    return f" <think>{words} so it is {answer}</think> <answer>{answer}</answer>"


def samples_of(answer: str) -> list[str]:
    """Five samples: kept, wrong, a copy of the first, kept, one too many; all wrong for 12."""
    if answer == "12":
        return [ok("13", f"try {j}") for j in range(5)]
    return [ok(answer, "first"), ok(str(int(answer) + 1), "wrong"), ok(answer, "first"),
            ok(answer, "second"), ok(answer, "third")]


@pytest.fixture
def stage(monkeypatch, tokenizer):
    """run(out, die_on_chunk=None, task=FakeTask(), **cfg) -> the chunks sampled."""
    monkeypatch.setattr(models_io, "load_model", lambda path, device: (torch.nn.Linear(1, 1), tokenizer))

    def run(out, die_on_chunk=None, task=None, **kw):
        calls = []

        def stub_sample(model, tok, prompts, *, n, sampling, seed, greedy=False):
            assert tok is tokenizer and n == 5 and sampling.temperature == 1.0 and not greedy
            calls.append(seed - SEED * 1_000_003)
            if calls[-1] == die_on_chunk:
                raise KeyboardInterrupt
            answers = [re.search(r"what is (\d+)\?", p)[1] for p in prompts]
            return None, StubRollout([t for a in answers for t in samples_of(a)])
        monkeypatch.setattr(rollout, "sample", stub_sample)
        ctx = RunContext(config=SimpleNamespace(seed=SEED, task=task or FakeTask()), run_dir=out,
                         device=torch.device("cpu"))
        cfg = RejectionSampleConfig(**{"kind": "rejection_sample", "name": "rs", "model": "rl", "prompts": 5,
                                       "samples": 5, "keep": 2, "batch_size": 2, **kw})
        rs.run(ctx, cfg, out)
        return calls
    return run


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


EXPECTED_STATS = {"prompts": 5, "drawn": 25, "kept": 8,
                  "removed": {"correct": 4 + 5, "format": 0, "language": 0, "length": 0, "repetition": 0,
                              "code": 0, "duplicate": 4, "over_keep": 4},
                  "kept_per_prompt": {"0": 1, "1": 0, "2": 4}, "non_reasoning": 0}


def test_stage_writes_the_kept_rows_and_their_counts(stage, tmp_path):
    calls = stage(tmp_path)
    assert calls == [0, 1, 2]                                      # 5 questions: chunks of 2, 2, 1
    rows = read_rows(tmp_path / "data.jsonl")
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(0, 0), (0, 3), (1, 0), (1, 3), (2, 0), (2, 3),
                                                             (4, 0), (4, 3)]   # question 3 (12) all wrong
    assert rows[0] == {"prompt": "User: what is 1?\nAssistant:", "completion": ok("1", "first"),
                       "question": "what is 1?", "answer": "1", "lang": "en", "category": "reasoning",
                       "source_model": "rl", "prompt_id": 0, "sample": 0,
                       "rewards": {"accuracy": 1.0, "format": 1.0, "language": 1.0}, "n_tokens": 6}
    assert rows[7]["completion"] == ok("21", "second") and rows[7]["question"] == "what is 21?"
    assert json.loads((tmp_path / "stats.json").read_text()) == EXPECTED_STATS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "stats.json"]
    assert read_sft_jsonl(tmp_path / "data.jsonl") == rows          # what the sft stage reads


def test_stage_rewrites_kept_completions_and_adds_non_reasoning_rows(stage, tmp_path):
    stage(tmp_path, task=FakeTask(zh={"2"}), rewrite=True, non_reasoning=3)
    rows = read_rows(tmp_path / "data.jsonl")
    assert len(rows) == 8 + 3
    assert rows[0]["completion"] == " <think>first so it is 1</think> The answer is 1. <answer>1</answer>"
    assert rows[2]["completion"] == " <think>first so it is 2</think> 答案是2。 <answer>2</answer>"
    assert rows[2]["lang"] == "zh" and rows[2]["rewards"]["language"] == 0.0   # Latin CoT, zh question
    assert rows[8:] == [{"prompt": f"User: Capital {i}?\nAssistant:",
                         "completion": f" <think></think> <answer>City {i}</answer>", "question": f"Capital {i}?",
                         "answer": f"City {i}", "lang": "en", "category": "general", "source_model": "reference",
                         "prompt_id": 5 + i, "sample": 0, "rewards": {}, "n_tokens": None} for i in range(3)]
    assert json.loads((tmp_path / "stats.json").read_text()) == {**EXPECTED_STATS, "non_reasoning": 3}


@pytest.mark.parametrize("torn", [b"", b'{"junk": 1}\n{"prompt": "half a ro'])
def test_a_killed_run_resumes_to_the_unbroken_runs_bytes(stage, tmp_path, torn):
    """Killed in chunk 2: chunks 0-1 stay committed, data.jsonl is not written. Rows a crash
    appended after the last commit (``torn``) are cut off on resume."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    stage(whole, non_reasoning=2)
    with pytest.raises(KeyboardInterrupt):
        stage(broken, die_on_chunk=2, non_reasoning=2)
    assert not (broken / "data.jsonl").exists() and not (broken / "stats.json").exists()
    partial = (broken / "data.partial.jsonl").read_bytes()
    assert [(r["prompt_id"], r["sample"]) for r in map(json.loads, partial.splitlines())] == \
        [(0, 0), (0, 3), (1, 0), (1, 3), (2, 0), (2, 3)]
    assert (whole / "data.jsonl").read_bytes().startswith(partial)
    assert json.loads((broken / "progress.json").read_text())["chunks"] == 2
    with open(broken / "data.partial.jsonl", "ab") as f:
        f.write(torn)
    assert stage(broken, non_reasoning=2) == [2]                  # only the missing chunk is sampled
    assert (broken / "data.jsonl").read_bytes() == (whole / "data.jsonl").read_bytes()
    assert (broken / "stats.json").read_bytes() == (whole / "stats.json").read_bytes()
    assert sorted(p.name for p in broken.iterdir()) == ["data.jsonl", "stats.json"]


def test_stage_on_a_tiny_model_keeps_what_the_filters_let_through(tmp_path, tokenizer):
    """The real sampler and scorers, filters off: every question keeps ``keep`` of its samples."""
    tiny_llama(tokenizer, seed=1).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    task = ArithmeticTask(kind="arithmetic")
    ctx = RunContext(config=SimpleNamespace(seed=SEED, task=task), run_dir=tmp_path, device=torch.device("cpu"))
    off = {"correct": False, "format": False, "no_code": False, "dedup": False}
    cfg = RejectionSampleConfig(kind="rejection_sample", name="rs", model=str(tmp_path / "m"), prompts=3,
                                samples=3, keep=2, batch_size=2, sampling={"max_new_tokens": 6}, filters=off)
    rs.run(ctx, cfg, tmp_path / "out")
    rows = read_rows(tmp_path / "out" / "data.jsonl")
    questions = task.sample_train(SEED, "rejection-0", 2) + task.sample_train(SEED, "rejection-1", 1)
    assert [(r["prompt_id"], r["sample"]) for r in rows] == [(i, j) for i in range(3) for j in range(2)]
    assert [r["prompt"] for r in rows] == [task.prompt(q) for q in questions for _ in range(2)]
    assert all(1 <= r["n_tokens"] <= 6 and set(r["rewards"]) == {"accuracy", "format", "language"} for r in rows)
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["prompts"], stats["drawn"], stats["kept"], stats["removed"]["over_keep"]) == (3, 9, 6, 3)
    assert stats["kept_per_prompt"] == {"0": 0, "1": 0, "2": 3}


def test_non_reasoning_list_rows_carry_corpus_replies_of_mixed_quality():
    """List requests have no reference to copy: their rows answer as the pre-training corpus
    does, some replies fitting the request and some not; words rows keep the reference."""
    from r1lab.data.tasks import ArithmeticTask
    from r1lab.rewards.judge import judge
    from r1lab.stages.rejection_sample import general_rows
    task = ArithmeticTask(kind="arithmetic", languages=["en", "zh"])
    cfg = RejectionSampleConfig(kind="rejection_sample", name="rs", model="m", prompts=10, non_reasoning=200,
                                general_requests=["words", "list"])
    rows = general_rows(task, 0, cfg)
    assert rows == general_rows(task, 0, cfg)                                  # seeded
    lists = [r for r in rows if r["source_model"] == "corpus"]
    words = [r for r in rows if r["source_model"] == "reference"]
    assert len(lists) > 50 and len(words) > 50 and [r["prompt_id"] for r in rows] == list(range(10, 210))
    assert all(r["completion"] == f" <think></think> <answer>{r['answer']}</answer>" for r in words)
    examples = task.general_examples(0, 200, split="train", requests=("words", "list"))
    scores = [judge(r["completion"], e) for r, e in zip(rows, examples) if r["source_model"] == "corpus"]
    assert 0.2 < sum(scores) / len(scores) < 0.9 and min(scores) < 0.5 and max(scores) == 1.0
