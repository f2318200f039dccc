"""Stage ``rejection_sample``: SFT data from a checkpoint's own correct, readable completions,
as in DeepSeek-R1 (Guo et al. 2025, arXiv 2501.12948, sec. 2.3.1 and 2.3.3).

Draws ``prompts`` training questions, samples ``samples`` completions of each, and keeps at
most ``keep`` per question that pass every filter (:func:`apply_filters`): correct by the
task's verifier, in the R1 format, in one language, of a sane length, not looping, with no code
block, not a duplicate. ``rewrite`` puts each kept completion into the readable pattern
(reasoning, summary, answer; r1lab/rewards/readable.py), as for the cold-start data made from
R1-Zero output; ``non_reasoning`` adds rows answered directly, with an empty CoT. Rows go to
``data.jsonl`` for an ``sft`` stage, counts to ``stats.json``. Questions are drawn and sampled
``batch_size`` at a time, each chunk committed as it is made (r1lab/data/chunked.py), so a
crash loses at most one chunk and the resumed file equals an unbroken run's.

Departures from the paper: the filters are rules (the paper names what it drops, not how),
and no DeepSeek-V3 judge scores answers a rule cannot check; the cold-start summary is a fixed
sentence, not written by annotators; non-reasoning rows are the task's reference answers, not
DeepSeek-V3's SFT data; the format filter accepts a summary, since the checkpoint R1 samples
from was itself trained on the readable pattern. Sizes are a laptop's (R1: ~600k rows).

    stages:
      - {kind: rejection_sample, name: rs, model: rl, prompts: 256, samples: 8, non_reasoning: 32}
      - {kind: sft, name: sft-2, init: base, data: rs}
    # cold start from R1-Zero output: {kind: rejection_sample, name: cold, model: r1-zero, rewrite: true}
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, model_validator

from r1lab.data.chunked import ChunkedJsonl
from r1lab.data.general import corpus_reply
from r1lab.rewards.readable import readable, repeat_ratio
from r1lab.rewards import REWARDS, verifier_params
from r1lab.rewards.format import format_reward
from r1lab.rewards.language import detect_language
from r1lab.stages.common import ReportEntries, TaskStageConfig, block
from r1lab.settings import Sampling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext

class Filters(BaseModel, extra="forbid"):
    """What a sampled completion must pass to be kept (the ``filters:`` block)."""
    correct: bool = Field(True, description="Keep only completions the task's verifier calls correct.")
    format: bool = Field(True, description="Keep only the R1 format, "
                         "<think>..</think> [summary] <answer>..</answer>.")
    min_language: float = Field(0.0, ge=0, le=1, description="Least language consistency of the CoT (0 = off).")
    min_tokens: int = Field(0, ge=0, description="Fewest completion tokens.")
    max_tokens: int | None = Field(None, gt=0, description="Most completion tokens (unset = no bound).")
    max_repeat: float = Field(1.0, ge=0, le=1, description="Most repeat_ratio (share of repeated word n-grams).")
    ngram: int = Field(4, gt=0, description="n of the word n-grams max_repeat counts.")
    no_code: bool = Field(True, description="Drop completions holding a ``` code fence.")
    dedup: bool = Field(True, description="Drop an exact duplicate of a completion already kept for the question.")


class RejectionSampleConfig(TaskStageConfig):
    """Rejection sampling into SFT rows."""
    reads = {"model": "model"}
    draws_training = True
    writes = ("data",)
    kind: Literal["rejection_sample"]
    model: str = Field(description="Model to sample from: an earlier stage's name or a model path.")
    prompts: int = Field(256, gt=0, description="Training questions drawn.")
    samples: int = Field(8, gt=0, description="Completions sampled per question.")
    keep: int = Field(1, gt=0, description="Completions kept per question, at most (the first that pass).")
    batch_size: int = Field(32, gt=0, description="Questions per generation call and per resumable chunk.")
    sampling: block(Sampling, "How completions are sampled.", temperature=1.0, top_p=1.0, max_new_tokens=96)
    filters: block(Filters, "What a completion must pass to be kept (checked in the order of CHECKS).")
    rewrite: bool = Field(False, description="Rewrite kept completions into the readable pattern "
                          "<think>..</think> summary <answer>..</answer> (cold-start data).")
    non_reasoning: int = Field(0, ge=0, description="Rows of the task's general questions answered directly, no CoT.")
    general_requests: list[Literal["words", "list"]] = Field(
        ["words"], min_length=1, description="Kinds of general question in the non_reasoning rows: words are "
        "answered with the reference; lists (no single answer) with a reply of the pre-training corpus's mixed "
        "quality, standing in for the DeepSeek-V3 answers R1 reuses.")

    @model_validator(mode="after")
    def _rewrite_needs_format(self):
        if self.rewrite and not self.filters.format:
            raise ValueError("rewrite needs filters.format: only a well-formed completion can be rewritten")
        return self

    def task_problem(self, task) -> str | None:
        if self.non_reasoning and not task.has_general:
            return f"non_reasoning rows need general questions, which a {task.kind} task does not have"
        return None


# name -> does it remove completion c, given the filters and the completions kept so far; checked
# in this order, and a removed completion is counted under the first that does
CHECKS = {
    "correct": lambda c, f, kept: f.correct and c["correct"] < 1,
    "format": lambda c, f, kept: f.format and c["format"] < 1,
    "language": lambda c, f, kept: c["language"] < f.min_language,
    "length": lambda c, f, kept: not f.min_tokens <= c["n_tokens"] <= (f.max_tokens or c["n_tokens"]),
    "repetition": lambda c, f, kept: f.max_repeat < 1 and repeat_ratio(c["text"], f.ngram) > f.max_repeat,
    "code": lambda c, f, kept: f.no_code and "```" in c["text"],
    "duplicate": lambda c, f, kept: f.dedup and any(c["text"] == k["text"] for k in kept),
}
FILTERS = tuple(CHECKS)


def apply_filters(completions: list[dict], filters: Filters, keep: int) -> tuple[list[dict], Counter]:
    """The completions of one question that are kept (in sample order, at most ``keep``), and
    the removed ones counted under the first filter (``FILTERS`` order) that removes them, or
    under "over_keep" when they pass every filter after ``keep`` are kept. A completion is a
    dict with ``text``, ``n_tokens`` and the rewards ``correct``, ``format``, ``language``."""
    kept, removed = [], Counter()
    for c in completions:
        reason = next((name for name, fails in CHECKS.items() if fails(c, filters, kept)), None)
        if reason is None and len(kept) >= keep:
            reason = "over_keep"
        if reason is None:
            kept.append(c)
        else:
            removed[reason] += 1
    return kept, removed


def _lang(example: dict) -> str:
    return example.get("lang") or detect_language(example["question"])


def score_completions(texts: list[str], lengths: list[int], example: dict, verifier: str,
                      params: dict | None = None) -> list[dict]:
    """One question's samples as the records :func:`apply_filters` judges (``params``: the
    verifier's, from the task)."""
    return [{"sample": j, "text": t, "n_tokens": n, "correct": REWARDS[verifier](t, example, **(params or {})),
             "format": format_reward(t, example, allow_summary=True), "language": REWARDS["language"](t, example)}
            for j, (t, n) in enumerate(zip(texts, lengths))]


def chunk_rows(model, tokenizer, task, b: int, seed: int, cfg: RejectionSampleConfig, stats: dict) -> list[dict]:
    """Draw, sample, score and filter chunk ``b``; the kept rows (``stats`` is updated)."""
    from r1lab.rollout import sample
    first = b * cfg.batch_size
    examples = task.sample_train(seed, f"rejection-{b}", min(cfg.batch_size, cfg.prompts - first))
    prompts = [task.prompt(e, tokenizer) for e in examples]
    _, rollout = sample(model, tokenizer, prompts, n=cfg.samples, sampling=cfg.sampling, seed=seed * 1_000_003 + b)
    texts, lengths, k = rollout.texts(tokenizer), rollout.lengths.tolist(), cfg.samples
    rows = []
    for i, (example, prompt) in enumerate(zip(examples, prompts)):
        records = score_completions(texts[i * k:(i + 1) * k], lengths[i * k:(i + 1) * k], example, task.verifier,
                                    verifier_params(task))
        kept, removed = apply_filters(records, cfg.filters, cfg.keep)
        for name, count in removed.items():
            stats["removed"][name] += count
        stats["kept_per_prompt"][str(len(kept))] += 1
        rows += [{"prompt": prompt, "completion": readable(r["text"], example) if cfg.rewrite else r["text"],
                  "question": example["question"], "answer": example["answer"], "lang": _lang(example),
                  "category": "reasoning", "source_model": cfg.model, "prompt_id": first + i, "sample": r["sample"],
                  "rewards": {task.verifier: r["correct"], "format": r["format"], "language": r["language"]},
                  "n_tokens": r["n_tokens"]} for r in kept]
    stats["prompts"] += len(examples)
    stats["drawn"] += len(texts)
    stats["kept"] += len(rows)
    return rows


def general_rows(task, seed: int, cfg: RejectionSampleConfig, tokenizer=None) -> list[dict]:
    """``non_reasoning`` rows answered directly, with an empty CoT; nothing sampled. A request
    with one right answer (``words``) gets the reference; an open-ended one (``list``) a reply
    as the pre-training corpus gives it, of mixed quality (r1lab/data/general.py), so SFT keeps
    the skill the base had and leaves its refinement to the judge, the reward model and
    all-scenario RL."""
    rng = random.Random(f"non-reasoning-{seed}")
    examples = task.general_examples(seed, cfg.non_reasoning, split="train", requests=tuple(cfg.general_requests))
    # (reply, where it comes from) of each example
    replies = [(corpus_reply(e, rng), "corpus") if e.get("request") == "list" else (e["answer"], "reference")
               for e in examples]
    return [{"prompt": task.prompt(e, tokenizer), "completion": f" <think></think> <answer>{reply}</answer>",
             "question": e["question"], "answer": e["answer"], "lang": _lang(e), "category": "general",
             "source_model": source, "prompt_id": cfg.prompts + i, "sample": 0, "rewards": {}, "n_tokens": None}
            for i, (e, (reply, source)) in enumerate(zip(examples, replies))]


def fresh_stats(cfg: RejectionSampleConfig) -> dict:
    return {"prompts": 0, "drawn": 0, "kept": 0, "removed": dict.fromkeys((*FILTERS, "over_keep"), 0),
            "kept_per_prompt": {str(k): 0 for k in range(min(cfg.keep, cfg.samples) + 1)}, "non_reasoning": 0}


def run(ctx: RunContext, cfg: RejectionSampleConfig, out: Path) -> None:
    import torch
    from r1lab.models.io import load_model, load_tokenizer
    with torch.no_grad():
        task, writer = ctx.task(cfg), ChunkedJsonl(out, fresh_stats(cfg))
        n_chunks = math.ceil(cfg.prompts / cfg.batch_size)
        model = tokenizer = None
        for b in range(writer.chunks, n_chunks + (cfg.non_reasoning > 0)):   # the general rows last
            if b == n_chunks:
                if tokenizer is None and task.template == "chat":       # prompts rendered as the model's chat
                    tokenizer = load_tokenizer(ctx.model_path(cfg.model))
                rows = general_rows(task, ctx.seed, cfg, tokenizer)
                writer.stats["non_reasoning"] = len(rows)
            else:
                if model is None:
                    model, tokenizer = load_model(ctx.model_path(cfg.model), ctx.device)
                    model.eval()
                rows = chunk_rows(model, tokenizer, task, b, ctx.seed, cfg, writer.stats)
            writer.commit(rows)
        writer.finish()


def memory(cfg: RejectionSampleConfig, plan) -> dict:
    """Bytes while one batch of questions is sampled (r1lab/plan.py)."""
    return plan.sampling(cfg.model, cfg.sampling, prompts=min(cfg.batch_size, cfg.prompts), n=cfg.samples,
                         prompt_len=plan.prompt_len(cfg, cfg.model))


Config = RejectionSampleConfig
REPORT = ReportEntries(final=("kept", "drawn"))
