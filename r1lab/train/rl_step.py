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
from r1lab.rewards import RewardsSpec, Scorer, build_rewards, mean_where_scored, score
from r1lab.rewards.format import format_reward
from r1lab.rollout import Sampling, sample


def monitor_scorers(task, rewards: RewardsSpec) -> list[Scorer]:
    """The task's verifier, format, language consistency and the judge of general replies where
    ``rewards`` does not train on them: always logged (where they apply), trained on or not."""
    monitored = {task.verifier: 0.0, "format": 0.0, "language": 0.0, "judge": 0.0}
    return [s for s in build_rewards(monitored) if s.name not in rewards]


@dataclass
class ScoredRollout:
    """A step's sampled completions, scored: where GRPO and PPO (r1lab/stages/ppo.py) start."""
    batch: dict[str, torch.Tensor]  # prompts + completions as one model input (prompt_completion_batch)
    rewards: torch.Tensor           # [N] weighted total of the trained rewards
    metrics: dict[str, float]       # reward/mean, reward/<fn>, accuracy, format_rate, completion_len/mean, truncated_rate
    n_tokens: int                   # completion tokens sampled
    rollout_s: float                # seconds spent sampling


def scored_rollout(policy, tokenizer, task, examples: list[dict], n: int, sampling: Sampling, seed: int,
                   scorers: list[Scorer], monitors: list[Scorer], rows_in: tuple[int, int] | None = None) -> ScoredRollout:
    """Sample ``n`` completions of each example's prompt (rows prompt-major) and score them;
    ``rows_in``: their place in a batch split among ranks (r1lab/rollout/hf.py)."""
    t0 = time.time()
    policy.eval()
    prompt_texts = [task.prompt(e) for e in examples]
    prompts, rollout = sample(policy, tokenizer, prompt_texts, n=n, sampling=sampling, seed=seed, rows_in=rows_in)
    rollout_s = time.time() - t0
    texts = rollout.texts(tokenizer)
    rows = [e for e in examples for _ in range(n)]
    row_prompts = [p for p in prompt_texts for _ in range(n)]
    totals, per_fn = score(scorers, row_prompts, texts, rows)
    per_fn.update(score(monitors, row_prompts, texts, rows)[1])
    means = {k: m for k, v in per_fn.items() if (m := mean_where_scored(v)) is not None}
    rewards = torch.tensor(totals)                                           # [N]
    records = [{"formatted": format_reward(t, e, allow_summary=True), "length": length, "truncated": finish == "length"}
               for t, e, length, finish in zip(texts, rows, rollout.lengths.tolist(), rollout.finish_reasons)]
    metrics = {"reward/mean": rewards.mean().item(), **{f"reward/{k}": m for k, m in means.items()},
               "accuracy": means.get(task.verifier, 0.0), **{k: fn(records) for k, fn in ROLLOUT_METRICS.items()}}
    batch = prompt_completion_batch([p for p in prompts for _ in range(n)], rollout.completion_ids,
                                    rollout.mask, tokenizer.pad_token_id)
    return ScoredRollout(batch, rewards, metrics, int(rollout.mask.sum()), rollout_s)
