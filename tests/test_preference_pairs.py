"""The preference_pairs stage with a stub sampler: best against worst by the judge, the gap filter, stats."""

import json

import torch

from r1lab.data.tasks import ArithmeticTask
from r1lab import rollout
from r1lab.models import io as models_io
from r1lab.stages import preference_pairs as pp
from r1lab.stages.context import RunContext
from r1lab.stages.preference_pairs import PreferencePairsConfig

from conftest import StubRollout


def test_pairs_are_the_judges_best_and_worst(monkeypatch, tmp_path):
    task = ArithmeticTask(kind="arithmetic")
    cfg = PreferencePairsConfig(kind="preference_pairs", name="p", model="m", prompts=6, samples=3,
                                batch_size=4, requests=["list"], min_gap=0.5)
    replies = lambda e: [f"<think></think> <answer>{e['answer']}</answer>",          # judge 1
                         f"<think></think> <answer>{e['answer'].split(',')[0]}</answer>",  # 1 / count
                         "<think></think> no answer"]                                 # 0

    def stub_sample(model, tokenizer, prompts, *, n, sampling, seed):
        chunk = examples.pop(0)
        return None, StubRollout([t for e in chunk for t in replies(e)])
    examples = [task.general_examples(f"0-pairs-{b}", n, split="train", requests=("list",)) for b, n in ((0, 4), (1, 2))]
    drawn = [e for chunk in examples for e in chunk]
    monkeypatch.setattr(rollout, "sample", stub_sample)
    monkeypatch.setattr(models_io, "load_model", lambda path, device: (torch.nn.Linear(1, 1), None))
    ctx = RunContext(config=type("C", (), {"seed": 0, "task": task})(), run_dir=tmp_path, device=torch.device("cpu"))
    pp.run(ctx, cfg, tmp_path)

    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").open()]
    assert len(rows) == 6 and [r["question"] for r in rows] == [e["question"] for e in drawn]
    assert all(r["chosen"] == replies(e)[0] and r["rejected"] == replies(e)[2] for r, e in zip(rows, drawn))
    assert all(r["chosen_score"] == 1.0 and r["rejected_score"] == 0.0 and r["category"] == "general" for r in rows)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["prompts"] == 6 and stats["pairs"] == 6 and stats["no_gap"] == 0
    assert not (tmp_path / "progress.json").exists()


def test_a_prompt_without_a_clear_gap_gives_no_pair(monkeypatch, tmp_path):
    task = ArithmeticTask(kind="arithmetic")
    cfg = PreferencePairsConfig(kind="preference_pairs", name="p", model="m", prompts=2, samples=2, requests=["words"])
    monkeypatch.setattr(rollout, "sample", lambda *a, **k: (None, StubRollout(["<answer>x</answer>"] * 4)))
    monkeypatch.setattr(models_io, "load_model", lambda path, device: (torch.nn.Linear(1, 1), None))
    ctx = RunContext(config=type("C", (), {"seed": 0, "task": task})(), run_dir=tmp_path, device=torch.device("cpu"))
    pp.run(ctx, cfg, tmp_path)
    assert (tmp_path / "data.jsonl").read_text() == ""
    assert json.loads((tmp_path / "stats.json").read_text())["no_gap"] == 2
