"""What the RL stages share (grpo, ppo): a step's completions sampled and scored, and the
rewards logged beside the trained ones.

:func:`scored_rollout` samples ``n`` completions of each prompt, scores them with the trained
rewards (weighted into one total per completion) and with the monitors (logged only), and
returns them as one training batch with the step's rollout metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from r1lab.forward import prompt_completion_batch
from r1lab.metrics import ROLLOUT_METRICS
from r1lab.rewards import RewardsSpec, Scorer, build_rewards, mean_where_scored, score, with_task
from r1lab.rewards.format import format_reward
from r1lab.rollout import Sampling, sample


def monitor_scorers(task, rewards: RewardsSpec) -> list[Scorer]:
    """The task's verifier, format, language consistency and the judge of general replies where
    ``rewards`` does not train on them: always logged (where they apply), trained on or not."""
    monitored = with_task({task.verifier: 0.0, "format": 0.0, "language": 0.0, "judge": 0.0}, task)
    return [s for s in build_rewards(monitored) if s.name not in rewards]


@dataclass
class ScoredRollout:
    """A step's sampled completions, scored: where GRPO and PPO (r1lab/stages/ppo.py) start."""
    batch: dict[str, torch.Tensor]  # prompts + completions as one model input (prompt_completion_batch)
    rewards: torch.Tensor           # [N] weighted total of the trained rewards
    metrics: dict[str, float]       # reward/mean, reward/<fn>, accuracy, format_rate, completion_len/mean, truncated_rate
    n_tokens: int                   # completion tokens sampled
    rollout_s: float                # seconds spent sampling
    truncated: torch.Tensor         # [N] bool: the completion hit max_new_tokens
    correct: list[bool | None]      # per row: the verifier paid in full (None: it does not apply)


def scored_rollout(policy, tokenizer, task, examples: list[dict], n: int, sampling: Sampling, seed: int,
                   scorers: list[Scorer], monitors: list[Scorer], rows_in: tuple[int, int] | None = None) -> ScoredRollout:
    """Sample ``n`` completions of each example's prompt (rows prompt-major) and score them;
    ``rows_in``: their place in a batch split among ranks (r1lab/rollout/hf.py)."""
    t0 = time.time()
    policy.eval()
    prompt_texts = [task.prompt(e, tokenizer) for e in examples]
    prompts, rollout = sample(policy, tokenizer, prompt_texts, n=n, sampling=sampling, seed=seed, rows_in=rows_in)
    rollout_s = time.time() - t0
    texts = rollout.texts(tokenizer)
    rows = [dict(e, completion_tokens=k) for e, k in zip((e for e in examples for _ in range(n)),
                                                          rollout.lengths.tolist())]
    row_prompts = [p for p in prompt_texts for _ in range(n)]
    totals, per_fn = score(scorers, row_prompts, texts, rows)
    per_fn.update(score(monitors, row_prompts, texts, rows)[1])
    means = {k: m for k, v in per_fn.items() if (m := mean_where_scored(v)) is not None}
    rewards = torch.tensor(totals, dtype=torch.float32)                      # [N]
    records = [{"formatted": format_reward(t, e, allow_summary=True), "length": length, "truncated": finish == "length"}
               for t, e, length, finish in zip(texts, rows, rollout.lengths.tolist(), rollout.finish_reasons)]
    metrics = {"reward/mean": rewards.mean().item(), **{f"reward/{k}": m for k, m in means.items()},
               "accuracy": means.get(task.verifier, 0.0), **{k: fn(records) for k, fn in ROLLOUT_METRICS.items()}}
    batch = prompt_completion_batch([p for p in prompts for _ in range(n)], rollout.completion_ids,
                                    rollout.mask, tokenizer.pad_token_id)
    truncated = torch.tensor([finish == "length" for finish in rollout.finish_reasons])
    correct = [None if v is None else v >= 1.0 for v in per_fn[task.verifier]]
    return ScoredRollout(batch, rewards, metrics, int(rollout.mask.sum()), rollout_s, truncated, correct)


def informative_groups(scored: ScoredRollout, n: int) -> list[int]:
    """Indices of the groups (``n`` rows each) whose binary correctness is not all equal: the
    ones that give the verifier's reward a non-zero group-relative advantage. A group the
    verifier does not score (a general prompt) is kept. Filtered on the 0/1 correctness, never
    on the shaped total: format or length shaping would let all-wrong groups through."""
    groups = [scored.correct[i:i + n] for i in range(0, len(scored.correct), n)]
    return [g for g, c in enumerate(groups) if None in c or len(set(c)) > 1]


def select_groups(drawn: list[ScoredRollout], chosen: list[tuple[int, int]], n: int, pad_id: int) -> ScoredRollout:
    """One ScoredRollout of the ``chosen`` groups (``(index in drawn, group index)``, ``n`` rows a
    group), in that order. Its metrics are the first draw's (the policy's own, unfiltered), its
    token count and time those of every rollout drawn."""
    rows = [(drawn[d], g * n + j) for d, g in chosen for j in range(n)]
    prompts, completions, masks = [], [], []
    for s, r in rows:
        width = s.batch["completion_mask"].shape[1]
        ids, attention = s.batch["input_ids"][r], s.batch["attention_mask"][r].bool()
        prompts.append(ids[:-width][attention[:-width]].tolist())
        completions.append(ids[-width:])
        masks.append(s.batch["completion_mask"][r])
    width = max(len(m) for m in masks)
    pad = lambda t, v: torch.cat([t, t.new_full((width - len(t),), v)])
    batch = prompt_completion_batch(prompts, torch.stack([pad(c, pad_id) for c in completions]),
                                    torch.stack([pad(m, False) for m in masks]), pad_id)
    return ScoredRollout(batch, torch.stack([s.rewards[r] for s, r in rows]), drawn[0].metrics,
                         sum(s.n_tokens for s in drawn), sum(s.rollout_s for s in drawn),
                         torch.stack([s.truncated[r] for s, r in rows]), [s.correct[r] for s, r in rows])
