"""Stage ``eval``: a model on the task's held-out split.

Reports pass@1 averaged over ``samples`` completions per question at ``temperature`` (the
R1 paper's pass@1 with k samples), greedy accuracy, format rate, accuracy among
well-formatted completions (so a gain that only comes from learning the tags shows as such)
and mean completion length, into ``eval.json``.

    r1lab eval runs/r1-zero-tiny/stages/2-r1-zero/model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from r1lab.models.io import load_model
from r1lab.rewards import REWARDS
from r1lab.rollout import Sampling, sample
from r1lab.stages.common import TaskStageConfig, block
from r1lab.stages.context import RunContext
from r1lab.train.checkpoint import write_atomic


class EvalConfig(TaskStageConfig):
    """Held-out evaluation."""
    reads = {"model": "model"}
    writes = ("eval",)
    kind: Literal["eval"]
    model: str = Field(description="Model to evaluate: an earlier stage's name or a model path.")
    samples: int = Field(8, gt=0, description="Completions per question for pass@1 (k).")
    sampling: block(Sampling, "How the k samples are drawn (R1 paper: T = 0.6, top-p 0.95).",
                    temperature=0.6, top_p=0.95, max_new_tokens=96)
    batch_size: int = Field(256, gt=0, description="Questions per generation batch.")


def evaluate(model, tokenizer, task, seed: int, cfg: EvalConfig) -> dict[str, float]:
    """The metrics of ``model`` on ``task``'s test split."""
    examples = task.test_examples(seed)
    acc_fn, fmt_fn = REWARDS[task.verifier], REWARDS["format"]
    model.eval()
    correct, formatted, correct_formatted, lengths, greedy = [], [], [], [], []
    for i in range(0, len(examples), cfg.batch_size):
        chunk = examples[i:i + cfg.batch_size]
        prompts = [task.prompt(e) for e in chunk]
        _, sampled = sample(model, tokenizer, prompts, n=cfg.samples, sampling=cfg.sampling, seed=seed + i)
        texts = sampled.texts(tokenizer)
        rows = [e for e in chunk for _ in range(cfg.samples)]
        for text, ex, n in zip(texts, rows, sampled.lengths.tolist()):
            ok, fmt = acc_fn(text, ex), fmt_fn(text, ex)
            correct.append(ok)
            formatted.append(fmt)
            if fmt:
                correct_formatted.append(ok)
            lengths.append(n)
        _, best = sample(model, tokenizer, prompts, n=1, sampling=cfg.sampling, seed=0, greedy=True)
        greedy += [acc_fn(t, e) for t, e in zip(best.texts(tokenizer), chunk)]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    return {
        "pass@1": mean(correct), "greedy_accuracy": mean(greedy), "format_rate": mean(formatted),
        "accuracy_if_formatted": mean(correct_formatted), "completion_len/mean": mean(lengths),
        "n_questions": len(examples), "samples": cfg.samples, "temperature": cfg.sampling.temperature,
    }


@torch.no_grad()
def run(ctx: RunContext, cfg: EvalConfig, out: Path) -> None:
    model, tokenizer = load_model(ctx.model_path(cfg.model), ctx.device)
    metrics = evaluate(model, tokenizer, ctx.task(cfg), ctx.seed, cfg)
    metrics["model"] = cfg.model
    write_atomic(out / "eval.json", json.dumps(metrics, indent=2) + "\n")


Config = EvalConfig
