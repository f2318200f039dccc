"""Stage ``eval``: a model on the task's held-out split.

Samples k = ``samples`` completions per question at the R1 paper's settings (T = 0.6, top-p
0.95) plus one greedy completion, scores each, and keeps every sample as a record in
``samples.jsonl``. The metrics in ``eval.json`` are named functions of those records
(``EVAL_METRICS``): pass@1 averaged over the k samples (the paper's pass@1), cons@k (majority
vote over the k parsed answers), the unbiased pass@k, greedy accuracy, format rate, accuracy
among well-formatted completions (so a gain that only comes from learning the tags shows as
such), mean completion length, and language consistency: the mean of the language reward and
the share of fully consistent CoTs, over completions whose think block holds words (an empty
CoT is not a language), and readability: the share of completions in R1's readable pattern (a
summary between the think and answer blocks; the format rate accepts that pattern too). The
task's non-reasoning prompts (``general_examples``), when it has some, are scored apart by the
hidden judge (r1lab/rewards/judge.py): its mean score, the share it scores 1 (accuracy) and the
share answered directly (empty think block). With ``baseline`` (an earlier eval stage), the
judge's win rate of this model over that one on the same general prompts is logged too.

    r1lab eval runs/r1-zero-tiny/stages/2-r1-zero/model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from r1lab.metrics import EVAL_METRICS, GENERAL_METRICS, mean, paired_bootstrap_gain, win_rate
from r1lab.rewards import REWARDS, verifier_params
from r1lab.rewards.accuracy import extract, extract_answer
from r1lab.rewards.format import format_reward
from r1lab.rewards.judge import judge
from r1lab.rewards.language import extract_think, word_scripts
from r1lab.rewards.readable import has_summary
from r1lab.stages.common import ReportEntries, TaskStageConfig, block
from r1lab.io import write_atomic
from r1lab.settings import Sampling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class EvalConfig(TaskStageConfig):
    """Held-out evaluation."""
    reads = {"model": "model", "baseline": "eval"}
    writes = ("eval",)
    kind: Literal["eval"]
    model: str = Field(description="Model to evaluate: an earlier stage's name or a model path.")
    samples: int = Field(8, gt=0, description="Completions per question for pass@1 and cons@k (k).")
    sampling: block(Sampling, "How the k samples are drawn (R1 paper: T = 0.6, top-p 0.95).",
                    temperature=0.6, top_p=0.95, max_new_tokens=96)
    batch_size: int = Field(256, gt=0, description="Questions per generation batch.")
    general: bool = Field(True, description="Also score the task's non-reasoning test prompts, if it has any.")
    baseline: str | None = Field(None, description="An earlier eval stage on the same questions: log this "
                                 "model's pass@1 gain over that stage's with a paired bootstrap 95% interval "
                                 "(pass@1_gain, pass@1_gain_low/high), and the judge's win rate on the general "
                                 "prompts (general/win_rate).")

    def task_problem(self, task) -> str | None:
        return task.test_problem()


def score_samples(texts: list[str], lengths: list[int], examples: list[dict], verifier: str,
                  params: dict | None = None) -> list[dict]:
    """One record per completion: parsed answer, correctness, format, length, language
    consistency of its CoT (None when the CoT holds no word), and whether it has no CoT.
    ``params``: the verifier's (the task's ``answer`` mode, ...), which also reads the answer
    that cons@k votes over."""
    params = params or {}
    records = []
    for t, n, e in zip(texts, lengths, examples):
        think = extract_think(t)
        has_words = bool(think and word_scripts(think))
        value = REWARDS[verifier](t, e, **params)       # a partial-credit score counts as correct only when full
        records.append({"answer": extract(t, params.get("answer", "tag")), "correct": float(value >= 1.0),
                        "formatted": format_reward(t, e, allow_summary=True), "readable": has_summary(t), "length": n,
                        "language": REWARDS["language"](t, e) if has_words else None,
                        "direct": think is not None and not think.strip(), "completion": t})
    return records


def score_general(texts: list[str], lengths: list[int], examples: list[dict]) -> list[dict]:
    """One record per completion of a general prompt: the judge's score, its answer, and
    whether it was answered directly (no CoT)."""
    return [{"answer": extract_answer(t), "judge": judge(t, e), "request": e.get("request"), "length": n,
             "direct": (think := extract_think(t)) is not None and not think.strip(), "completion": t}
            for t, n, e in zip(texts, lengths, examples)]


def evaluate(model, tokenizer, task, seed: int, cfg: EvalConfig) -> tuple[dict[str, float], list[dict]]:
    """The metrics of ``model`` on ``task``'s test split, and the per-sample records (the k
    samples of each question, then its greedy completion, marked ``greedy``; then the
    non-reasoning prompts' samples)."""
    examples = task.test_examples(seed)
    model.eval()
    groups, greedy = sample_groups(model, tokenizer, task, examples, seed, cfg, with_greedy=True)
    metrics = {name: fn(groups) for name, fn in EVAL_METRICS.items()}
    metrics["greedy_accuracy"] = mean(r["correct"] for r in greedy)
    metrics |= {"n_questions": len(examples), "samples": cfg.samples, "temperature": cfg.sampling.temperature}
    records = []
    for q, (example, group, g) in enumerate(zip(examples, groups, greedy)):
        records += [{"question_id": q, "question": example["question"], "sample": j, "greedy": False,
                     "category": "reasoning", **r}
                    for j, r in enumerate(group)]
        records.append({"question_id": q, "question": example["question"], "sample": 0, "greedy": True,
                        "category": "reasoning", **g})
    general = task.general_examples(seed, None, split="test") if cfg.general else []
    if general:
        general_groups, _ = sample_groups(model, tokenizer, task, general, seed, cfg, with_greedy=False,
                                          scorer=lambda texts, lengths, rows: score_general(texts, lengths, rows))
        metrics |= {f"general/{name}": fn(general_groups) for name, fn in GENERAL_METRICS.items()}
        metrics["general/n_questions"] = len(general)
        records += [{"question_id": q, "question": e["question"], "sample": j, "greedy": False,
                     "category": "general", **r}
                    for q, (e, group) in enumerate(zip(general, general_groups)) for j, r in enumerate(group)]
    return metrics, records


def sample_groups(model, tokenizer, task, examples: list[dict], seed: int, cfg: EvalConfig,
                  with_greedy: bool, scorer=None) -> tuple[list[list[dict]], list[dict]]:
    """The k sampled records of each example (one list per example), and with ``with_greedy``
    one greedy record per example; ``scorer(texts, lengths, examples)`` makes the records
    (default: :func:`score_samples` with the task's verifier)."""
    from r1lab.rollout import sample
    scorer = scorer or (lambda texts, lengths, rows: score_samples(texts, lengths, rows, task.verifier,
                                                                   verifier_params(task)))
    groups, greedy = [], []
    for i in range(0, len(examples), cfg.batch_size):
        chunk = examples[i:i + cfg.batch_size]
        prompts = [task.prompt(e, tokenizer) for e in chunk]
        _, sampled = sample(model, tokenizer, prompts, n=cfg.samples, sampling=cfg.sampling, seed=seed + i)
        rows = [e for e in chunk for _ in range(cfg.samples)]
        records = scorer(sampled.texts(tokenizer), sampled.lengths.tolist(), rows)
        groups += [records[j:j + cfg.samples] for j in range(0, len(records), cfg.samples)]
        if with_greedy:
            _, best = sample(model, tokenizer, prompts, n=1, sampling=cfg.sampling, seed=0, greedy=True)
            greedy += scorer(best.texts(tokenizer), best.lengths.tolist(), chunk)
    return groups, greedy


def compare(ours: list[dict], theirs: list[dict]) -> dict[str, float]:
    """This model's records against a baseline's on the same test split: the pass@1 gain over
    its sampled completions with a paired bootstrap 95% interval, and the judge's win rate on
    the general prompts where there are some."""
    sampled = lambda rs, category: [r for r in rs if r["category"] == category and not r["greedy"]]
    out = {}
    if sampled(ours, "reasoning") and sampled(theirs, "reasoning"):
        gain, low, high = paired_bootstrap_gain(sampled(ours, "reasoning"), sampled(theirs, "reasoning"))
        out |= {"pass@1_gain": gain, "pass@1_gain_low": low, "pass@1_gain_high": high}
    general = lambda rs: [r for r in rs if r["category"] == "general"]
    if general(ours) and general(theirs):
        out["general/win_rate"] = win_rate(general(ours), general(theirs))
    return out


def run(ctx: RunContext, cfg: EvalConfig, out: Path) -> None:
    import torch
    from r1lab.models.io import load_model
    with torch.no_grad():
        model, tokenizer = load_model(ctx.model_path(cfg.model), ctx.device)
        metrics, records = evaluate(model, tokenizer, ctx.task(cfg), ctx.seed, cfg)
        if cfg.baseline:
            folder = ctx.stage_dirs.get(cfg.baseline) or Path(cfg.baseline).expanduser()   # a stage, or its folder
            theirs = [json.loads(line) for line in (folder / "samples.jsonl").open(encoding="utf-8")]
            metrics |= compare(records, theirs)
        write_atomic(out / "samples.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_atomic(out / "eval.json", json.dumps({**metrics, "model": cfg.model}, indent=2) + "\n")


def memory(cfg: EvalConfig, plan) -> dict:
    """Bytes while one batch of questions is sampled (r1lab/plan.py)."""
    task = cfg.task or plan.config.task
    prompts = min(cfg.batch_size, len(task.test_examples(plan.config.seed)))
    return plan.sampling(cfg.model, cfg.sampling, prompts=prompts, n=cfg.samples,
                         prompt_len=plan.prompt_len(cfg, cfg.model))


Config = EvalConfig
REPORT = ReportEntries(final=("pass@1", "cons@k", "general/judge"))
