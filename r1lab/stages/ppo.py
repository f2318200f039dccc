"""Stage ``ppo``: Proximal Policy Optimization (Schulman et al. 2017) with a learned critic, as
RLHF runs it (InstructGPT, Ouyang et al. 2022): the policy is rewarded per token with
-kl_coef * (log pi - log pi_ref), plus the sequence's score on its last token; a value model
trained beside it gives per-token baselines, and GAE (Schulman et al. 2016) turns rewards and
values into advantages. This is what GRPO (r1lab/stages/grpo.py) drops: the critic, its
optimizer and its forward/backward passes, replaced by the mean of a group of samples.

Each step samples ``samples_per_prompt`` completions of ``prompts_per_step`` questions exactly
as GRPO does (same questions, same sampler, same rule rewards), computes the rollout policy's,
the reference's and the critic's numbers once, then runs ``ppo_epochs`` passes over shuffled
mini-batches: one clipped policy step (r1lab/losses/ppo.py) and one clipped value step each.

The critic is a separate model, ``AutoModelForTokenClassification`` with one label: the
``init`` checkpoint's backbone under a fresh linear head, saved in HF format to ``out/critic``.
A separate model rather than a value head on the policy's backbone, as InstructGPT and
OpenRLHF do it: the policy's output stays a plain causal LM, value regression cannot pull on
the policy's features, and the memory it costs is what a GRPO-vs-PPO comparison should show.

Where we depart: the score is a rule reward (accuracy + format, as R1-Zero), not a reward
model, and the critic starts from the policy's checkpoint (``critic_init``), not from a reward
model. Actor and critic have their own AdamW, schedule and gradient clipping (as OpenRLHF and
verl), so there is no ``vf_coef``: on separate weights with separate Adam steps it would only
rescale the critic's gradient, which Adam undoes; ``critic_lr`` is the knob. No PPO-ptx term;
the KL is the plain k1 per token, with a fixed coefficient (no adaptive controller).

    r1lab run ppo-vs-grpo-tiny.yaml     # pretrain a base, then GRPO and PPO from it, each evaluated
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from r1lab.rewards import RewardsSpec, build_rewards, learned_models, with_task
from r1lab.stages.common import (RL_REPORT, TaskStageConfig, block, checkpoint_seconds, reference_in_memory,
                                 reference_offload, reference_offload_problem)
from r1lab.settings import LoraBlock, Optim, Sampling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class PpoConfig(TaskStageConfig):
    """PPO with a learned critic, on the same rollouts and rewards as GRPO."""
    reads = {"init": "model", "critic_init": "model"}
    draws_training = True
    writes = ("model",)
    data_parallel = True
    kind: Literal["ppo"]
    init: str = Field(description="Starting policy (and reference): an earlier stage's name or a model path.")
    critic_init: str | None = Field(None, description="Checkpoint the critic's backbone starts from "
                                    "(a causal LM or a saved critic); default: init.")
    steps: int = Field(50, gt=0, description="Rollout batches (each followed by ppo_epochs passes over it).")
    prompts_per_step: int = Field(16, gt=0, description="Questions per rollout batch.")
    samples_per_prompt: int = Field(8, gt=0, description="Completions per question (GRPO's group_size).")
    ppo_epochs: int = Field(2, ge=1, description="Passes over each rollout batch.")
    mini_batch_size: int = Field(64, gt=0, description="Completions per optimizer step (of actor and of "
                                 "critic); also the rows per no-grad forward.")
    sampling: block(Sampling, "How rollouts are sampled (as grpo).", max_new_tokens=96, temperature=1.0, top_p=1.0)
    lora: LoraBlock = None
    optim: block(Optim, "Actor's optimizer and schedule (in optimizer steps: steps * ppo_epochs * "
                 "mini-batches); the critic's copies it with lr = critic_lr.", lr=2e-4, warmup_steps=5)
    critic_lr: float = Field(1e-3, gt=0, description="Critic's peak learning rate.")
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip epsilon.")
    value_clip: float = Field(0.2, gt=0, description="How far a value may move from the rollout's before "
                              "its error stops counting (ppo2's cliprange_value).")
    kl_coef: float = Field(0.05, ge=0, description="Weight of the per-token k1 KL to the reference in the "
                           "reward (0 = no reference).")
    reference_offload: bool = reference_offload()
    gamma: float = Field(1.0, ge=0, le=1, description="Discount per token.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    whiten_advantages: bool = Field(True, description="Normalize advantages over the batch's tokens.")
    rewards: RewardsSpec = Field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5},
                                 description="Reward name -> weight, or -> {weight, **params}; names from "
                                 "r1lab.rewards.REWARDS (as grpo).")
    checkpoint_every: int = Field(10, gt=0, description="Steps between resumable checkpoints.")
    checkpoint_every_s: float | None = checkpoint_seconds()

    @model_validator(mode="after")
    def _reference_fits(self):
        if problem := reference_offload_problem(self, "kl_coef"):
            raise ValueError(problem)
        return self

    def references(self):
        return super().references() + [(("rewards", *where), ref, "model") for where, ref in learned_models(self.rewards)]


def policy_batch(policy, part: dict, old_logp: torch.Tensor, advantages: torch.Tensor, cfg: PpoConfig,
                 ctx: RunContext, share: float = 1.0) -> dict[str, float]:
    """Clipped policy loss of one mini-batch, backward; returns its stats and entropy. ``share``:
    this rank's part of the mini-batch's tokens under torchrun (the loss is a mean over them)."""
    from r1lab.forward import completion_logprobs
    from r1lab.losses.common import masked_mean
    from r1lab.losses.ppo import ppo_policy_loss
    with ctx.autocast():
        logp, entropy = completion_logprobs(policy, part, temperature=cfg.sampling.temperature,
                                            with_entropy=True)                # [n, L]
    mask = part["completion_mask"].to(logp.device)
    loss, stats = ppo_policy_loss(logp.float(), old_logp.to(logp.device), advantages.to(logp.device), mask,
                                  clip_eps=cfg.clip_eps)
    ctx.dist.backward(loss * share)
    return {**stats, "entropy": masked_mean(entropy.float(), mask).item()}


def value_batch(critic, part: dict, old_values: torch.Tensor, returns: torch.Tensor, cfg: PpoConfig,
                ctx: RunContext, share: float = 1.0) -> dict[str, float]:
    """Clipped value loss of one mini-batch, backward; returns its stats (``share`` as in
    :func:`policy_batch`)."""
    from r1lab.forward import completion_values
    from r1lab.losses.ppo import ppo_value_loss
    with ctx.autocast():
        values = completion_values(critic, part)                              # [n, L]
    mask = part["completion_mask"].to(values.device)
    loss, stats = ppo_value_loss(values, old_values.to(values.device), returns.to(values.device), mask,
                                 clip_range=cfg.value_clip)
    ctx.dist.backward(loss * share)
    return {"value_loss": stats["loss"], "vf_clip_frac": stats["clip_frac"]}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over unmasked tokens: 1 is a perfect critic, 0 one
    no better than a constant, below 0 worse (cleanrl's definition)."""
    mask = mask.bool()
    var = returns[mask].var()
    return (1 - (returns - values)[mask].var() / var).item() if var > 0 else float("nan")


def mini_batch_rows(rows: torch.Tensor, mine: range, mask: torch.Tensor, dist) -> tuple[torch.Tensor, float]:
    """This rank's rows (local indices) of a mini-batch of global ``rows``, and its share of the
    mini-batch's completion tokens. A rank holding none of them still runs a forward and
    backward, on its first row at weight 0, as DistributedDataParallel needs every rank's."""
    import torch
    local = rows[(rows >= mine.start) & (rows < mine.stop)] - mine.start
    tokens = int(mask[local].sum())
    total = dist.sum(tokens)
    if len(local) == 0:
        return torch.zeros(1, dtype=torch.long), 0.0
    return local, tokens / total if total else 0.0


def run(ctx: RunContext, cfg: PpoConfig, out: Path) -> None:
    import torch
    from r1lab.forward import logprobs_no_grad, values_no_grad
    from r1lab.losses.advantages import gae, masked_whiten
    from r1lab.losses.common import masked_mean
    from r1lab.losses.ppo import kl_penalized_rewards
    from r1lab.models.adapters import frozen_reference, with_adapters
    from r1lab.models.io import load_model, load_value_model
    from r1lab.train.loop import TrainLoop
    from r1lab.train.rl_step import monitor_scorers, scored_rollout
    seed, task, dist = ctx.seed, ctx.task(cfg), ctx.dist
    dist.check_share(cfg.prompts_per_step, f"stage {cfg.name!r}: prompts_per_step")
    G = cfg.samples_per_prompt
    mine = dist.shard(cfg.prompts_per_step)                                    # this rank's questions
    my_rows = range(mine.start * G, mine.stop * G)                            # and rows of the batch
    policy, tokenizer = load_model(ctx.model_path(cfg.init), ctx.device)
    policy = with_adapters(policy, cfg.lora, seed)                             # the critic trains every weight
    critic = load_value_model(ctx.model_path(cfg.critic_init or cfg.init), ctx.device)
    ref = frozen_reference(policy, lambda: load_model(ctx.model_path(cfg.init), ctx.device)[0]) if cfg.kl_coef > 0 else None
    n = cfg.prompts_per_step * cfg.samples_per_prompt
    mini_batches = math.ceil(n / cfg.mini_batch_size)
    loop = TrainLoop(policy, cfg, out, cfg.steps, optimizer_steps=cfg.steps * cfg.ppo_epochs * mini_batches,
                     companions={"critic": (critic, cfg.optim.model_copy(update={"lr": cfg.critic_lr}))}, dist=dist)
    ref_in_memory = reference_in_memory(ref, cfg, loop)
    scorers, monitors = build_rewards(with_task(cfg.rewards, task), ctx.model_path, ctx.device), monitor_scorers(task, cfg.rewards)
    frozen = dict(micro_batch_size=cfg.mini_batch_size, autocast=ctx.autocast)
    for step in loop.steps():
        t0 = time.time()
        examples = task.sample_train(seed, step, cfg.prompts_per_step)[mine]
        scored = scored_rollout(policy, tokenizer, task, examples, G, cfg.sampling, seed * 1_000_003 + step,
                                scorers, monitors, rows_in=(my_rows.start, n))
        batch, mask = scored.batch, scored.batch["completion_mask"]           # mask: [N, L]
        # the rollout's numbers, fixed for the whole step: log-probs, reference, values
        old_logp = logprobs_no_grad(policy, batch, temperature=cfg.sampling.temperature, **frozen)  # [N, L]
        with ref_in_memory():
            ref_logp = (logprobs_no_grad(ref, batch, temperature=cfg.sampling.temperature, **frozen)
                        if ref is not None else old_logp)                      # [N, L]
        critic.eval()
        old_values = values_no_grad(critic, batch, **frozen)                   # [N, L]
        token_rewards = kl_penalized_rewards(scored.rewards, old_logp, ref_logp, mask,
                                             kl_coef=cfg.kl_coef)              # [N, L]
        advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)  # [N, L] each
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask, total=dist.sum if dist.active else None)  # [N, L], every rank's tokens

        policy.train()
        critic.train()
        order = torch.Generator().manual_seed(seed * 1_000_003 + step)
        stats = []
        for _ in range(cfg.ppo_epochs):
            for global_rows in torch.randperm(n, generator=order).split(cfg.mini_batch_size):
                rows, share = mini_batch_rows(global_rows, my_rows, mask, dist)
                part = {k: v[rows] for k, v in batch.items()}
                p = policy_batch(loop.wrapped, part, old_logp[rows], advantages[rows], cfg, ctx, share)
                p["grad_norm"] = loop.optimizer_step()
                v = value_batch(loop.companions["critic"].wrapped, part, old_values[rows], returns[rows], cfg, ctx,
                                share)
                v["critic_grad_norm"] = loop.optimizer_step("critic")
                stats.append({**p, **v})
        mean = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
        values = {
            **scored.metrics,
            "kl": masked_mean(old_logp - ref_logp, mask).item(),
            "loss": mean["loss"], "clip_frac": mean["clip_frac"], "ratio": mean["ratio"],
            "approx_kl": mean["approx_kl"], "entropy": mean["entropy"],
            "value_loss": mean["value_loss"], "vf_clip_frac": mean["vf_clip_frac"],
            "explained_variance": explained_variance(old_values, returns, mask),
            "values/mean": masked_mean(old_values, mask).item(),
            "returns/mean": masked_mean(returns, mask).item(),
            "lr": loop.lr, "grad_norm": mean["grad_norm"], "critic_grad_norm": mean["critic_grad_norm"],
            "tokens_per_s": scored.n_tokens / (time.time() - t0),
            "rollout_s": scored.rollout_s,
        }
        loop.end_step(values, show_keys=("reward/mean", "accuracy", "value_loss", "tokens_per_s"), rows=len(my_rows))
    loop.finish(tokenizer)                                                     # out/model and out/critic


def memory(cfg: PpoConfig, plan) -> dict:
    """Bytes per phase of a step on one rank (r1lab/plan.py): the rollout, then a mini-batch's
    forward and backward, the actor's (packed where it can be) or the critic's (HF's padded
    forward), whichever keeps more."""
    from r1lab.memory import activations, gradients, moments
    from r1lab.rewards import learned_models
    t = plan.target
    critic = plan.shape(cfg.critic_init or cfg.init, scalar_head=True)
    judges = sum(plan.shape(ref, scalar_head=True).weights for _, ref in learned_models(cfg.rewards))
    prompts, length = t.share(cfg.prompts_per_step), plan.prompt_len(cfg, cfg.init)
    mini = min(t.share(cfg.mini_batch_size), prompts * cfg.samples_per_prompt)  # mini_batch_size is global
    phases = plan.rl(cfg.init, plan.trained(cfg.init, cfg.lora), cfg.sampling, prompts=prompts,
                     group=cfg.samples_per_prompt, prompt_len=length, micro_batch=mini,
                     reference=cfg.kl_coef > 0 and cfg.lora is None, extra={"reward models": judges} if judges else None)
    phases["rollout"]["critic and its moments"] = critic.weights + sum(moments(critic.params, t).values())
    phases["training"]["critic, its gradients and moments"] = critic.weights + sum(gradients(critic.params, t).values())
    padded = mini * (length + plan.used(cfg.sampling.max_new_tokens))
    phases["training"]["activations"] = max(phases["training"]["activations"], activations(critic, t, padded))
    return phases


Config = PpoConfig
REPORT = RL_REPORT
