"""Stage ``grpo``: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath), used
as in DeepSeek-R1-Zero (Guo et al. 2025): RL straight from a base model with rule-based rewards.

Each step draws ``prompts_per_step`` training questions, samples ``group_size`` completions of
each at ``temperature``, scores them with the configured rewards (accuracy + format in R1-Zero),
turns rewards into group-relative advantages, and takes ``mu`` optimizer steps on the GRPO loss
(r1lab/losses/grpo.py) against the log-probs the batch was sampled under. The reference for
the k3 KL penalty is the frozen initial model (with ``beta = 0`` none is loaded).

All-scenario RL (R1 sec. 2.3.4) is this stage with ``general_prompts`` of each step's prompts
drawn from the task's general requests: rewards are routed by an example's category (rules for
reasoning prompts, a learned ``reward_model`` for general ones; r1lab/rewards/__init__.py), and
the learned reward may be switched on for the last steps only (``last_steps``).

Departures from the paper: none in the objective; the batch sizes are a laptop's, and the
tiny default shortens the prompt template (r1lab/data/templates.py). Later variants of the loss
(DAPO, Dr. GRPO, GSPO, dual clip) and other advantage estimators (batch-std, mean-only, RLOO,
REINFORCE++) are picked by name with ``loss:`` and ``advantages:`` (docs/algorithms.md).

    r1lab run                                   # pretrain, then this stage, on the default task
    r1lab run r1-zero-qwen2.5-0.5b-gsm8k.yaml   # the same stage on a real model
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from r1lab.data.general import REQUESTS
from r1lab.losses.registry import ADVANTAGE_ESTIMATORS, GRPO_LOSSES
from r1lab.rewards import RewardsSpec, build_rewards, learned_models, with_task
from r1lab.stages.common import (RL_REPORT, TaskStageConfig, block, checkpoint_seconds, reference_in_memory,
                                 reference_offload, reference_offload_problem)
from r1lab.settings import DynamicSampling, LoraBlock, Optim, Sampling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class GrpoConfig(TaskStageConfig):
    """R1-Zero style GRPO."""
    reads = {"init": "model"}
    draws_training = True
    writes = ("model",)
    data_parallel = True
    kind: Literal["grpo"]
    init: str = Field(description="Starting policy (and reference): an earlier stage's name or a model path.")
    steps: int = Field(50, gt=0, description="Rollout batches (each followed by mu optimizer steps).")
    prompts_per_step: int = Field(16, gt=0, description="Questions per rollout batch.")
    general_prompts: int = Field(0, ge=0, description="Of those, how many are the task's general "
                                 "(non-reasoning) requests: all-scenario RL when > 0.")
    general_requests: list[Literal[REQUESTS]] = Field(list(REQUESTS), min_length=1,
                                                      description="Kinds of general request drawn.")
    group_size: int = Field(8, ge=2, description="Completions per question (G).")
    mu: int = Field(1, ge=1, description="Optimizer steps per rollout batch (GRPO iterations).")
    micro_batch_size: int = Field(0, ge=0, description="Completions per forward/backward; 0 = all at once.")
    activation_checkpointing: bool = Field(False, description="Keep only each block's input for the backward "
                                           "and recompute the rest (one more forward of the blocks, a "
                                           "fraction of the activation memory), as TRL's option of that name.")
    reference_offload: bool = reference_offload()
    sampling: block(Sampling, "How rollouts are sampled (T = 1 as in R1-Zero).", max_new_tokens=96,
                    temperature=1.0, top_p=1.0)
    lora: LoraBlock = None
    optim: block(Optim, "Optimizer and schedule (in optimizer steps: steps * mu).", lr=2e-4, warmup_steps=5)
    loss: Literal[tuple(GRPO_LOSSES)] = Field("grpo", description="Policy loss: grpo (R1), dapo, dr_grpo, gspo, dual_clip.")
    advantages: Literal[tuple(ADVANTAGE_ESTIMATORS)] = Field(
        "group", description="Advantage estimator: group (R1), batch, none (Dr. GRPO), rloo, reinforce_pp.")
    clip_eps: float = Field(0.2, gt=0, description="PPO-style ratio clip epsilon (the lower one for dapo/gspo).")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper clip for dapo/gspo (default: clip_eps).")
    dual_clip_c: float = Field(3.0, gt=1, description="Lower bound c*A for A < 0 in dual_clip.")
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL to the reference (0 = no reference).")
    rewards: RewardsSpec = Field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5},
                                 description="Reward name -> weight, or -> {weight, **params}; names from "
                                 "r1lab.rewards.REWARDS.")
    checkpoint_every: int = Field(10, gt=0, description="Steps between resumable checkpoints.")
    checkpoint_every_s: float | None = checkpoint_seconds()
    dynamic_sampling: DynamicSampling | None = Field(None, description="DAPO dynamic sampling: drop groups "
                                                     "whose correctness is all equal and draw more prompts.")
    mask_truncated: bool = Field(False, description="Completions cut at max_new_tokens add no loss (DAPO's "
                                 "overlong filtering).")

    @model_validator(mode="after")
    def _reference_fits(self):
        if problem := reference_offload_problem(self, "beta"):
            raise ValueError(problem)
        return self

    def references(self):
        return super().references() + [(("rewards", *where), ref, "model") for where, ref in learned_models(self.rewards)]

    def task_problem(self, task) -> str | None:
        if self.general_prompts > self.prompts_per_step:
            return f"general_prompts ({self.general_prompts}) is more than prompts_per_step ({self.prompts_per_step})"
        if self.general_prompts and not task.has_general:
            return f"general_prompts needs general requests, which a {task.kind} task does not have"
        if self.general_prompts and self.dynamic_sampling:
            return "dynamic_sampling filters on the verifier, which general prompts do not have: set one of them"
        return None


def grpo_batch(policy, batch: dict, advantages: torch.Tensor, old_logp: torch.Tensor | None,
               ref_logp: torch.Tensor | None, cfg: GrpoConfig, ctx: RunContext,
               n_global: int | None = None, loss_rows: torch.Tensor | None = None) -> dict[str, float]:
    """One optimizer step's forward/backward over ``batch`` in micro-batches (gradients
    accumulate to exactly the full-batch gradient); returns the full batch's loss stats.

    ``old_logp`` None means the batch was sampled by the current weights (mu = 1). The stats
    are computed once, on the whole batch's detached log-probs, so they do not depend on
    ``micro_batch_size`` (variants average over tokens or over completions). Under torchrun
    ``batch`` is this rank's share of the ``n_global`` rows (default: all there are) and its
    loss is weighted so that the ranks' gradients add up to the whole batch's
    (r1lab/train/distributed.py); the stats are this rank's. ``loss_rows`` ([N] bool): only
    these rows add loss (``mask_truncated``); all when None."""
    import torch
    from r1lab.forward import completion_logprobs
    from r1lab.losses.common import masked_mean
    from r1lab.train.distributed import in_row_order
    n, dist = batch["input_ids"].shape[0], ctx.dist
    n_global = n_global or n
    loss_fn = GRPO_LOSSES[cfg.loss]
    loss_mask = batch["completion_mask"] if loss_rows is None else batch["completion_mask"] & loss_rows[:, None]
    n_tokens = max(1, int(loss_mask.sum()))        # 1 when every row is masked: a zero loss, not 0/0
    extra, batch_normalized = loss_fn.keywords(cfg, n_tokens), loss_fn.batch_normalized
    token_share = n_tokens / dist.sum(n_tokens) if batch_normalized else None  # this rank's part of dapo's normaliser
    logps, entropies = {}, {}                                                # slice start -> [b, L]
    for rows in dist.micro_batches(policy, n, cfg.micro_batch_size, batch["attention_mask"].sum(1)):
        part = {k: v[rows] for k, v in batch.items()}
        with ctx.autocast():
            logp, entropy = completion_logprobs(policy, part, temperature=cfg.sampling.temperature,
                                                with_entropy=True, aux_weight=len(part["input_ids"]) / n)
        dev = lambda x: None if x is None else x[rows].to(logp.device)
        mask = dev(loss_mask)
        old = logp.detach() if old_logp is None else dev(old_logp)
        loss, _ = loss_fn(logp, old, dev(ref_logp), dev(advantages), mask,
                          clip_eps=cfg.clip_eps, beta=cfg.beta, **extra)
        dist.backward(loss * token_share if batch_normalized else loss * (len(mask) / n_global))
        logps[rows.start] = logp.detach().float().cpu()
        entropies[rows.start] = entropy.float().cpu()
    logp, mask = in_row_order(logps), loss_mask                              # [N, L]
    with torch.no_grad():
        _, stats = loss_fn(logp, logp if old_logp is None else old_logp, ref_logp, advantages, mask,
                           clip_eps=cfg.clip_eps, beta=cfg.beta, **extra)
    stats["entropy"] = masked_mean(in_row_order(entropies), mask).item()
    return stats


def run(ctx: RunContext, cfg: GrpoConfig, out: Path) -> None:
    from r1lab.errors import BackendError
    from r1lab.forward import logprobs_no_grad
    from r1lab.models.adapters import frozen_reference, with_adapters
    from r1lab.models.io import load_model
    from r1lab.models.recompute import enable_recompute
    from r1lab.train.loop import TrainLoop
    from r1lab.train.rl_step import monitor_scorers, scored_rollout
    seed, task, dist, G = ctx.seed, ctx.task(cfg), ctx.dist, cfg.group_size
    dist.check_share(cfg.prompts_per_step, f"stage {cfg.name!r}: prompts_per_step")
    mine = dist.shard(cfg.prompts_per_step)           # this rank's questions of every step
    policy, tokenizer = load_model(ctx.model_path(cfg.init), ctx.device)
    if cfg.activation_checkpointing:
        enable_recompute(policy)
    policy = with_adapters(policy, cfg.lora, seed)
    ref = frozen_reference(policy, lambda: load_model(ctx.model_path(cfg.init), ctx.device)[0]) if cfg.beta > 0 else None
    loop = TrainLoop(policy, cfg, out, cfg.steps, optimizer_steps=cfg.steps * cfg.mu, dist=dist)
    ref_in_memory = reference_in_memory(ref, cfg, loop)
    scorers, monitors = build_rewards(with_task(cfg.rewards, task), ctx.model_path, ctx.device), monitor_scorers(task, cfg.rewards)
    n_general = cfg.general_prompts
    if cfg.dynamic_sampling and dist.active:
        raise BackendError(f"stage {cfg.name!r}: dynamic_sampling runs in one process for now (not under torchrun)")

    def rollout(step: int, draw: int):
        """Draw ``draw`` of the step's prompts (0: the step's own), sampled and scored."""
        key = step if draw == 0 else f"{step}-redraw{draw}"
        examples = task.sample_train(seed, key, cfg.prompts_per_step - n_general) + (
            task.general_examples(f"{seed}-{step}", n_general, split="train",
                                  requests=tuple(cfg.general_requests)) if n_general else [])
        active = [s if s.on_at(step, cfg.steps) else dataclasses.replace(s, weight=0.0) for s in scorers]
        return scored_rollout(policy, tokenizer, task, examples[mine], G, cfg.sampling,
                              seed * 1_000_003 + step + 1_000_000_007 * draw,
                              active, monitors, rows_in=(mine.start * G, cfg.prompts_per_step * G))

    for step in loop.steps():
        t0 = time.time()
        scored, dynamic = rollout(step, 0), {}
        if cfg.dynamic_sampling:
            scored, dynamic = refill(scored, lambda draw: rollout(step, draw), cfg, tokenizer.pad_token_id)
        batch = scored.batch
        # advantages from the whole batch's rewards (estimators such as batch-std see every rank's)
        groups = len(scored.rewards) // G if cfg.dynamic_sampling else cfg.prompts_per_step
        rewards = dist.gather(scored.rewards.view(-1, G), groups).flatten()   # [P * G]
        advantages = ADVANTAGE_ESTIMATORS[cfg.advantages](rewards, G)[mine.start * G:mine.stop * G]  # [N]
        frozen = dict(temperature=cfg.sampling.temperature, micro_batch_size=cfg.micro_batch_size,
                      autocast=ctx.autocast)
        with ref_in_memory():
            ref_logp = logprobs_no_grad(ref, batch, **frozen) if ref is not None else None
        policy.train()
        # The policy that sampled the batch. With mu = 1 it equals the policy being trained,
        # so grpo_batch uses its own detached log-probs (ratio exactly 1) and we skip a forward.
        old_logp = logprobs_no_grad(policy, batch, **frozen) if cfg.mu > 1 else None
        for _ in range(cfg.mu):
            stats = grpo_batch(loop.wrapped, batch, advantages, old_logp, ref_logp, cfg, ctx, len(rewards),
                               loss_rows=~scored.truncated if cfg.mask_truncated else None)
            grad_norm = loop.optimizer_step()
        values = {
            **scored.metrics, **dynamic, **stats, "lr": loop.lr, "grad_norm": grad_norm,
            "tokens_per_s": scored.n_tokens / (time.time() - t0),
            "rollout_s": scored.rollout_s,
        }
        loop.end_step(values, show_keys=("reward/mean", "accuracy", "completion_len/mean", "tokens_per_s"),
                      rows=len(advantages))
    loop.finish(tokenizer)


def memory(cfg: GrpoConfig, plan) -> dict:
    """Bytes per phase of a step on one rank (r1lab/plan.py): the rollout of this rank's rows,
    then one micro-batch's forward and backward."""
    from r1lab.rewards import learned_models
    length = max([plan.prompt_len(cfg, cfg.init)] + ([plan.prompt_len(cfg, cfg.init, general=True)]
                                                     if cfg.general_prompts else []))
    judges = sum(plan.shape(ref, scalar_head=True).weights for _, ref in learned_models(cfg.rewards))
    return plan.rl(cfg.init, plan.trained(cfg.init, cfg.lora), cfg.sampling, prompts=plan.target.share(cfg.prompts_per_step),
                   group=cfg.group_size, prompt_len=length, micro_batch=cfg.micro_batch_size,
                   reference=cfg.beta > 0 and cfg.lora is None, recompute=cfg.activation_checkpointing,
                   extra={"reward models": judges} if judges else None)


def refill(first, draw, cfg: GrpoConfig, pad_id: int):
    """DAPO dynamic sampling: the groups of ``first`` (a ScoredRollout) and of further draws
    (``draw(i)`` for i = 1, 2, ...) whose correctness is not all equal, up to prompts_per_step of
    them, drawing until there are enough or ``max_draws`` rollouts are spent; and what it logs.
    A step that finds none trains on the first draw as it came (the shaped rewards may still teach)."""
    from r1lab.train.rl_step import informative_groups, select_groups
    G, P = cfg.group_size, cfg.prompts_per_step
    drawn = [first]
    chosen = [(0, g) for g in informative_groups(first, G)]
    while len(chosen) < P and len(drawn) < cfg.dynamic_sampling.max_draws:
        drawn.append(draw(len(drawn)))
        chosen += [(len(drawn) - 1, g) for g in informative_groups(drawn[-1], G)]
    logged = {"dynamic/kept_share": len(chosen) / (P * len(drawn)), "dynamic/draws": len(drawn),
              "dynamic/groups": min(len(chosen), P) or P}
    return select_groups(drawn, chosen[:P] or [(0, g) for g in range(P)], G, pad_id), logged


Config = GrpoConfig
REPORT = RL_REPORT
