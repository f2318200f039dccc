"""The eval stage's metrics on completions whose correctness is known (a stub sampler)."""

import pytest
import torch

from r1lab.data.tasks import ArithmeticTask
from r1lab import rollout
from r1lab.models import io as models_io
from r1lab.stages import eval as eval_stage
from r1lab.stages.eval import EvalConfig, evaluate

from conftest import StubRollout


def test_metrics_of_known_completions(monkeypatch):
    task = ArithmeticTask(kind="arithmetic", n_test=2)
    a, b = [e["answer"] for e in task.test_examples(0)]
    wrong = lambda x: str((int(x) + 1) % 10)
    ok = lambda x: f"<think>w</think> <answer>{x}</answer>"
    sampled = [ok(a), ok(wrong(a)), ok(wrong(a)), f"<think>w</think> {a}",       # question 1: 1 of 4 right
               # question 2: 3 of 4 right, one of them readable (a summary before the answer)
               ok(b), f"<think>w</think> The answer is {b}. <answer>{b}</answer>", f"<answer>{b}</answer>",
               ok(wrong(b))]
    greedy_texts = [ok(a), ok(wrong(b))]

    def stub_sample(model, tokenizer, prompts, *, n, sampling, seed, greedy=False):
        return None, StubRollout(greedy_texts if greedy else sampled)
    monkeypatch.setattr(rollout, "sample", stub_sample)
    cfg = EvalConfig(kind="eval", name="e", model="m", samples=4, general=False)
    metrics, records = evaluate(torch.nn.Linear(1, 1), None, task, 0, cfg)

    assert metrics["pass@1"] == pytest.approx((1 / 4 + 3 / 4) / 2)             # 0.5
    # votes: q1 {a: 1, wrong(a): 2} -> wrong (the answer outside the tags casts none); q2 {b: 3, wrong: 1}
    assert metrics["cons@k"] == pytest.approx(0.5)
    assert metrics["pass@k"] == pytest.approx(1.0)                               # each has a right sample
    assert metrics["format_rate"] == pytest.approx(6 / 8)                       # the readable one counts
    assert metrics["readability"] == pytest.approx(1 / 8)
    assert metrics["accuracy_if_formatted"] == pytest.approx(3 / 6)            # a, b, b among the 6
    assert metrics["greedy_accuracy"] == pytest.approx(0.5)
    assert metrics["completion_len/mean"] == pytest.approx(sum(len(t.split()) for t in sampled) / 8)
    assert len(records) == 10 and [r["greedy"] for r in records].count(True) == 2
    assert records[0] == {"question_id": 0, "question": task.test_examples(0)[0]["question"], "sample": 0,
                          "greedy": False, "category": "reasoning", "answer": a, "correct": 1.0,
                          "formatted": 1.0, "readable": False, "length": 2, "language": 1.0, "direct": False,
                          "completion": ok(a)}   # two space-split words; "w" is one English word


def test_language_and_non_reasoning_metrics(monkeypatch):
    task = ArithmeticTask(kind="arithmetic", n_test=1, languages=["zh"])
    general = task.general_examples(0, None, split="test")
    answer = task.test_examples(0)[0]["answer"]
    sampled = [f"<think>1+1=2 还剩0</think> <answer>{answer}</answer>",          # zh CoT: 1.0
               f"<think>1+1=2 还剩1, 2+1=3 0 left</think> <answer>{answer}</answer>",  # 2 zh + 1 en word: 2/3
               f"<think>1+1=2</think> <answer>{answer}</answer>",               # no word: not counted
               f"<think></think> <answer>{answer}</answer>"]                    # no CoT: not counted

    def stub_sample(model, tokenizer, prompts, *, n, sampling, seed, greedy=False):
        if greedy:
            return None, StubRollout(sampled[:1])
        if len(prompts) == 1:                                                   # the one reasoning question
            return None, StubRollout(sampled)
        # each non-reasoning prompt: 2 of 4 samples answered directly and right, 1 with a CoT and
        # wrong, 1 answered directly and half right (lists: one fitting item, one more that fits
        # the count; number words: wrong)
        half = lambda e: e["answer"].split(",")[0] + ", 1" if e["request"] == "list" else "x"
        return None, StubRollout([f"<think></think> <answer>{e['answer']}</answer>" if j < 2 else
                                  "<think>x</think> no" if j == 2 else f"<think></think> <answer>{half(e)}</answer>"
                                  for e in general for j in range(n)])
    monkeypatch.setattr(rollout, "sample", stub_sample)
    cfg = EvalConfig(kind="eval", name="e", model="m", samples=4)
    metrics, records = evaluate(torch.nn.Linear(1, 1), None, task, 0, cfg)
    assert metrics["language_consistency"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["language_consistent_rate"] == pytest.approx(1 / 2)
    n_list = sum(e["request"] == "list" for e in general)
    assert 0 < n_list < len(general)
    assert metrics["general/accuracy"] == pytest.approx(2 / 4)
    assert metrics["general/direct_rate"] == pytest.approx(3 / 4)
    # a list reply "a, 1" to a request for k items scores 1/k; a wrong number word 0
    list_half = sum(1 / e["count"] for e in general if e["request"] == "list") / n_list
    assert metrics["general/judge_list"] == pytest.approx((2 + list_half) / 4)
    assert metrics["general/judge"] == pytest.approx((2 * len(general) + list_half * n_list) / (4 * len(general)))
    assert metrics["general/n_questions"] == len(general) > 2
    assert sum(r["category"] == "general" for r in records) == 4 * len(general)


def test_win_rate_over_a_baseline_eval(monkeypatch, tmp_path):
    """The judge compares every sample of ours with every sample of the baseline's, per prompt."""
    import json
    from r1lab.stages.context import RunContext
    task = ArithmeticTask(kind="arithmetic", n_test=1)
    general = task.general_examples(0, None, split="test")
    reply = lambda e, good: f"<think></think> <answer>{e['answer'] if good else 'x'}</answer>"
    # the baseline answers each prompt right once in two samples; we answer right every time
    base = tmp_path / "base"
    base.mkdir()
    base_records = [{"category": "general", "question": e["question"], "judge": float(j == 0)}
                    for e in general for j in range(2)]
    (base / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in base_records))

    def stub_sample(model, tokenizer, prompts, *, n, sampling, seed, greedy=False):
        if len(prompts) == 1:                                                    # the reasoning question
            return None, StubRollout(["<answer>0</answer>"] * n)
        return None, StubRollout([reply(e, True) for e in general for _ in range(n)])
    monkeypatch.setattr(rollout, "sample", stub_sample)
    monkeypatch.setattr(models_io, "load_model", lambda path, device: (torch.nn.Linear(1, 1), None))
    ctx = RunContext(config=type("C", (), {"seed": 0, "task": task})(), run_dir=tmp_path,
                     device=torch.device("cpu"), stage_dirs={"eval-base": base})
    cfg = EvalConfig(kind="eval", name="e", model="m", samples=2, baseline="eval-base")
    eval_stage.run(ctx, cfg, tmp_path / "out")
    metrics = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert metrics["general/judge"] == 1.0
    assert metrics["general/win_rate"] == pytest.approx(0.75)                    # a tie and a win per prompt
