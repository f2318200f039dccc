"""Stage ``preference_pairs``: preference pairs on general requests, labelled by the hidden judge,
for a reward model (``reward_model``) or DPO (``dpo``) to learn from.

DeepSeek-R1's helpfulness reward model learns from preference pairs that DeepSeek-V3 labels
(Guo et al. 2025, sec. 2.3.4); here the rule judge of r1lab/rewards/judge.py stands in for
that labeller. The stage draws ``prompts`` of the task's general training requests, samples
``samples`` replies to each from ``model``, scores them with the judge and keeps, per prompt,
the best reply as ``chosen`` and the worst as ``rejected`` when their scores differ by at least
``min_gap`` (the first in sample order wins a tie), or with ``pairing: all`` every two distinct
replies whose scores differ that much (InstructGPT's K-choose-2 comparisons). Rows go to ``data.jsonl``
(``{"prompt", "chosen", "rejected", "chosen_score", "rejected_score", ...}``), counts to
``stats.json``; chunks of ``batch_size`` prompts are committed as they are made, so a crash
loses at most one (r1lab/data/chunked.py).

Departures from the paper: a rule judge, not a model, labels the pairs.

    - {kind: preference_pairs, name: pairs, model: r1, prompts: 512, samples: 8}
    - {kind: reward_model, name: rm, init: r1, data: pairs}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from r1lab.data.chunked import ChunkedJsonl
from r1lab.data.general import REQUESTS
from r1lab.rewards.judge import judge
from r1lab.stages.common import ReportEntries, TaskStageConfig, block
from r1lab.settings import Sampling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class PreferencePairsConfig(TaskStageConfig):
    """Judge-labelled preference pairs on general requests."""
    reads = {"model": "model"}
    writes = ("data",)
    kind: Literal["preference_pairs"]
    model: str = Field(description="Model whose replies are paired: an earlier stage's name or a model path.")
    prompts: int = Field(256, gt=0, description="General training requests drawn.")
    samples: int = Field(8, ge=2, description="Replies sampled per request.")
    min_gap: float = Field(0.25, gt=0, description="Least judge-score gap between chosen and rejected.")
    pairing: Literal["best_worst", "all"] = Field("best_worst", description="One pair per request (its best "
                                                  "and worst reply), or every two replies min_gap apart.")
    requests: list[Literal[REQUESTS]] = Field(list(REQUESTS), min_length=1, description="Kinds of general request drawn.")
    batch_size: int = Field(64, gt=0, description="Requests per generation call and per resumable chunk.")
    sampling: block(Sampling, "How replies are sampled.", temperature=1.0, top_p=1.0, max_new_tokens=48)

    def task_problem(self, task) -> str | None:
        if not task.general_examples(0, 1, split="train", requests=tuple(self.requests)):
            return f"preference pairs need general requests, which a {task.kind} task does not have"
        return None


def best_and_worst(scores: list[float]) -> tuple[int, int]:
    """Indices of the highest and the lowest score, the first of each in a tie.

    >>> best_and_worst([0.5, 1.0, 0.0, 1.0, 0.0])
    (1, 2)
    """
    return max(range(len(scores)), key=lambda i: (scores[i], -i)), min(range(len(scores)), key=lambda i: (scores[i], i))


def pair_indices(scores: list[float], texts: list[str], pairing: str, min_gap: float) -> list[tuple[int, int]]:
    """(chosen, rejected) sample indices of one request's replies.

    >>> pair_indices([0.5, 1.0, 0.0, 1.0], ["a", "b", "c", "b"], "all", 0.5)   # the repeated "b" once
    [(0, 2), (1, 0), (1, 2)]
    >>> pair_indices([0.5, 1.0, 0.0], ["a", "b", "c"], "best_worst", 0.5)
    [(1, 2)]
    """
    if pairing == "best_worst":
        hi, lo = best_and_worst(scores)
        return [(hi, lo)] if scores[hi] - scores[lo] >= min_gap else []
    distinct = list({t: i for i, t in reversed(list(enumerate(texts)))}.values())[::-1]   # first of each text
    return [(i, j) for i in sorted(distinct) for j in sorted(distinct) if scores[i] - scores[j] >= min_gap]


def chunk_pairs(model, tokenizer, task, b: int, seed: int, cfg: PreferencePairsConfig, stats: dict) -> list[dict]:
    """Draw, sample, judge and pair chunk ``b``; the pairs (``stats`` is updated)."""
    from r1lab.rollout import sample
    first = b * cfg.batch_size
    examples = task.general_examples(f"{seed}-pairs-{b}", min(cfg.batch_size, cfg.prompts - first), split="train",
                                     requests=tuple(cfg.requests))
    prompts = [task.prompt(e, tokenizer) for e in examples]
    _, rollout = sample(model, tokenizer, prompts, n=cfg.samples, sampling=cfg.sampling, seed=seed * 1_000_003 + b)
    texts, k, rows = rollout.texts(tokenizer), cfg.samples, []
    for i, (example, prompt) in enumerate(zip(examples, prompts)):
        replies = texts[i * k:(i + 1) * k]
        scores = [judge(t, example) for t in replies]
        stats["judge_sum"] += sum(scores)
        pairs = pair_indices(scores, replies, cfg.pairing, cfg.min_gap)
        stats["no_gap"] += not pairs
        rows += [{"prompt": prompt, "chosen": replies[hi], "rejected": replies[lo],
                  "chosen_score": scores[hi], "rejected_score": scores[lo], "question": example["question"],
                  "lang": example["lang"], "category": example["category"], "request": example["request"],
                  "source_model": cfg.model, "prompt_id": first + i} for hi, lo in pairs]
    stats["prompts"] += len(examples)
    stats["pairs"] += len(rows)
    return rows


def run(ctx: RunContext, cfg: PreferencePairsConfig, out: Path) -> None:
    import torch
    from r1lab.models.io import load_model
    with torch.no_grad():
        task = ctx.task(cfg)
        writer = ChunkedJsonl(out, {"prompts": 0, "pairs": 0, "no_gap": 0, "judge_sum": 0.0})
        model = tokenizer = None
        for b in range(writer.chunks, math.ceil(cfg.prompts / cfg.batch_size)):
            if model is None:
                model, tokenizer = load_model(ctx.model_path(cfg.model), ctx.device)
                model.eval()
            writer.commit(chunk_pairs(model, tokenizer, task, b, ctx.seed, cfg, writer.stats))
        writer.stats["judge_mean"] = writer.stats.pop("judge_sum") / max(1, writer.stats["prompts"] * cfg.samples)
        writer.finish()


def memory(cfg: PreferencePairsConfig, plan) -> dict:
    """Bytes while one batch of requests is sampled (r1lab/plan.py)."""
    return plan.sampling(cfg.model, cfg.sampling, prompts=min(cfg.batch_size, cfg.prompts), n=cfg.samples,
                         prompt_len=plan.prompt_len(cfg, cfg.model, general=True))


Config = PreferencePairsConfig
REPORT = ReportEntries()
