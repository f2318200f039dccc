"""The eval stage's metrics on completions whose correctness is known (a stub sampler)."""

import pytest
import torch

from r1lab.data.tasks import ArithmeticTask
from r1lab.stages import eval as eval_stage
from r1lab.stages.eval import EvalConfig, evaluate


class StubRollout:
    def __init__(self, texts):
        self._texts = texts
        self.lengths = torch.tensor([len(t.split()) for t in texts])

    def texts(self, tokenizer):
        return self._texts


def test_metrics_of_known_completions(monkeypatch):
    task = ArithmeticTask(kind="arithmetic", n_test=2)
    a, b = [e["answer"] for e in task.test_examples(0)]
    wrong = lambda x: str((int(x) + 1) % 10)
    ok = lambda x: f"<think>w</think> <answer>{x}</answer>"
    sampled = [ok(a), ok(wrong(a)), ok(wrong(a)), f"<think>w</think> {a}",       # question 1: 1 of 4 right
               ok(b), ok(b), f"<answer>{b}</answer>", ok(wrong(b))]              # question 2: 3 of 4 right
    greedy_texts = [ok(a), ok(wrong(b))]

    def stub_sample(model, tokenizer, prompts, *, n, sampling, seed, greedy=False):
        return None, StubRollout(greedy_texts if greedy else sampled)
    monkeypatch.setattr(eval_stage, "sample", stub_sample)
    cfg = EvalConfig(kind="eval", name="e", model="m", samples=4)
    metrics, records = evaluate(torch.nn.Linear(1, 1), None, task, 0, cfg)

    assert metrics["pass@1"] == pytest.approx((1 / 4 + 3 / 4) / 2)             # 0.5
    # votes: q1 {a: 1, wrong(a): 2} -> wrong (the answer outside the tags casts none); q2 {b: 3, wrong: 1}
    assert metrics["cons@k"] == pytest.approx(0.5)
    assert metrics["pass@k"] == pytest.approx(1.0)                               # each has a right sample
    assert metrics["format_rate"] == pytest.approx(6 / 8)
    assert metrics["accuracy_if_formatted"] == pytest.approx(3 / 6)            # a, b, b among the 6
    assert metrics["greedy_accuracy"] == pytest.approx(0.5)
    assert metrics["completion_len/mean"] == pytest.approx(sum(len(t.split()) for t in sampled) / 8)
    assert len(records) == 10 and [r["greedy"] for r in records].count(True) == 2
    assert records[0] == {"question_id": 0, "question": task.test_examples(0)[0]["question"], "sample": 0,
                          "greedy": False, "answer": a, "correct": 1.0, "formatted": 1.0,
                          "length": 2, "completion": ok(a)}   # two space-split words
