"""Stage ``dpo``: Direct Preference Optimization (Rafailov et al. 2023, "Direct Preference
Optimization: Your Language Model is Secretly a Reward Model") on preference pairs.

Each row is a prompt with a chosen (y_w) and a rejected (y_l) response: TRL's
``{"prompt", "chosen", "rejected"}`` or the Alpaca instruction/input shape, JSONL or a JSON array
(r1lab.data.jsonl.read_pairs), from a path or an earlier stage's ``data.jsonl``. The policy
starts from ``init``; the reference is that same initial model, frozen. Its log-probs of every
pair (train and held-out) are computed once, under no_grad, by the freshly loaded model before
its first step (TRL's ``precompute_ref_log_probs``), so one model is in memory, never two. Each
step takes ``batch_size`` pairs (step s always the same pairs, as in sft, so a resumed run equals
an unbroken one), runs the chosen and the rejected responses through one forward (TRL's
concatenated forward) in ``micro_batch_size`` pieces, and minimises the loss ``loss:`` names in
r1lab.losses.registry.DPO_LOSSES: dpo (Eq. 7), ipo, hinge, cdpo, rdpo (docs/algorithms.md).
Held-out pairs give the validation loss, reward margin and accuracy, and ``logp_accuracy``, a
reference-free preference; ``val.json`` holds them for the start model and the final one.

Departures from the paper: none in the objective (a response's log-prob is the sum over its
tokens; ``average: true`` takes the per-token mean, TRL's choice for IPO). Prompt and response
are tokenized apart and EOS appended to the response, as in sft; responses are cut to fit
``max_length``. The paper used RMSprop with a constant LR after warmup; we use AdamW with
warmup (cosine decay optional via ``optim.min_lr_ratio``).

    stages:
      - {kind: sft, name: sft, init: base-model/, data: sft.jsonl}
      - kind: dpo
        name: dpo
        init: sft                  # policy start and reference
        data: pairs.jsonl          # {"prompt": ..., "chosen": ..., "rejected": ...} per line
        beta: 0.1
        loss: dpo                  # or ipo, hinge, cdpo, rdpo (these two take eps)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from r1lab.data.jsonl import read_pairs
from r1lab.losses.registry import DPO_LOSSES
from r1lab.io import write_atomic
from r1lab.stages.common import LOSS_REPORT, SupervisedStageConfig, block
from r1lab.settings import Optim

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext

Pair = tuple[list[int], list[int], list[int]]         # prompt ids, chosen ids + EOS, rejected ids + EOS
TokenLogps = list[tuple["torch.Tensor", "torch.Tensor"]]  # per pair: chosen [Lw], rejected [Ll] token log-probs


class DpoConfig(SupervisedStageConfig):
    """Direct preference optimization on chosen/rejected pairs."""
    kind: Literal["dpo"]
    init: str = Field(description="Policy start and frozen reference: an earlier stage's name or a model path.")
    data: str = Field(description="Preference pairs: an earlier stage that writes data.jsonl, or a JSONL/JSON path.")
    loss: Literal[tuple(DPO_LOSSES)] = Field("dpo", description="Preference loss: dpo (the paper), ipo, "
                                             "hinge, cdpo (label smoothing), rdpo (robust).")
    beta: float = Field(0.1, gt=0, description="Strength of the implicit KL to the reference (IPO's tau).")
    eps: float = Field(0.1, ge=0, lt=0.5, description="cdpo/rdpo: assumed probability that a pair's "
                       "preference label is flipped (ignored by the other losses).")
    average: bool = Field(False, description="A response's log-prob as the per-token mean (TRL's IPO) "
                          "instead of the sum over its tokens (the papers).")
    epochs: int = Field(1, gt=0, description="Passes over the training pairs.")
    batch_size: int = Field(64, gt=0, description="Pairs per optimizer step (the paper: 64).")
    optim: block(Optim, "Optimizer and schedule (the paper: LR 1e-6, warmup, then constant).",
                 lr=1e-6, warmup_steps=10, min_lr_ratio=1.0)


def encode_pairs(rows: list[dict], tokenizer, max_length: int) -> list[Pair]:
    """(prompt ids, chosen ids + EOS, rejected ids + EOS) per row, tokenized as sft's ``encode``."""
    from r1lab.train.supervised import encode, prompt_text
    prompts = [prompt_text(r, tokenizer) for r in rows]
    chosen = encode([{"prompt": p, "completion": r["chosen"]} for p, r in zip(prompts, rows)], tokenizer, max_length)
    rejected = encode([{"prompt": p, "completion": r["rejected"]} for p, r in zip(prompts, rows)], tokenizer, max_length)
    return [(p, c, r) for (p, c), (_, r) in zip(chosen, rejected)]


def pair_logprobs(model, pairs: list[Pair], pad_id: int, ctx: RunContext, share: float = 1.0):
    """Token log-probs of the chosen and the rejected responses of ``pairs``, all in one forward
    (TRL's concatenated forward): chosen [b, L], rejected [b, L], and their masks [b, L]. ``share``:
    the pairs' part of the optimizer batch (it weighs an MoE model's router loss)."""
    from r1lab.forward import completion_logprobs
    from r1lab.train.supervised import collate
    b = len(pairs)
    batch = collate([(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs], pad_id)  # [2b, P+L]
    with ctx.autocast():
        logp, _ = completion_logprobs(model, batch, aux_weight=share)               # [2b, L]
    mask = batch["completion_mask"].to(logp.device)                                  # [2b, L]
    return logp[:b], logp[b:], mask[:b], mask[b:]


def unpad(logp: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[b, L] right-padded rows -> b float32 CPU tensors of each row's own length."""
    return [row[m].detach().float().cpu() for row, m in zip(logp, mask)]


def pad(rows: list[torch.Tensor], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of per-token values -> (values [b, width] right-padded with 0, mask [b, width])."""
    import torch
    width = width or max(len(r) for r in rows)
    values = torch.zeros(len(rows), width)                                           # [b, W]
    mask = torch.zeros(len(rows), width, dtype=torch.bool)                           # [b, W]
    for i, r in enumerate(rows):
        values[i, :len(r)], mask[i, :len(r)] = r, True
    return values, mask


def reference_logprobs(model, pairs: list[Pair], pad_id: int, ctx: RunContext, micro: int) -> TokenLogps:
    """Each pair's chosen and rejected token log-probs under ``model`` (float32, CPU), ``micro``
    pairs per forward: the frozen reference's, computed once before training."""
    import torch
    with torch.no_grad():
        out = []
        for i in range(0, len(pairs), micro):
            chosen, rejected, mask_c, mask_r = pair_logprobs(model, pairs[i:i + micro], pad_id, ctx)
            out += list(zip(unpad(chosen, mask_c), unpad(rejected, mask_r)))
        return out


def loss_keywords(cfg: DpoConfig) -> dict:
    """``beta``, ``average`` and whatever else the chosen loss takes, read from the config."""
    return {"beta": cfg.beta, "average": cfg.average, **DPO_LOSSES[cfg.loss].keywords(cfg)}


def preference_stats(policy: TokenLogps, ref: TokenLogps, cfg: DpoConfig) -> dict[str, float]:
    """Loss, implicit rewards, mean sequence log-probs and ``logp_accuracy`` (share of pairs whose
    chosen response the policy itself finds likelier) of a set of pairs, under TRL's names."""
    from r1lab.losses.dpo import sequence_logp
    pc, mask_c = pad([c for c, _ in policy])                                        # [B, Lw]
    pr, mask_r = pad([r for _, r in policy])                                        # [B, Ll]
    rc, rr = pad([c for c, _ in ref])[0], pad([r for _, r in ref])[0]               # [B, Lw], [B, Ll]
    loss, s = DPO_LOSSES[cfg.loss](pc, pr, rc, rr, mask_c, mask_r, **loss_keywords(cfg))
    seq_c = sequence_logp(pc, mask_c, average=cfg.average)                          # [B]
    seq_r = sequence_logp(pr, mask_r, average=cfg.average)                          # [B]
    return {"loss": s["loss"], "rewards/chosen": s["chosen_reward"], "rewards/rejected": s["rejected_reward"],
            "rewards/margins": s["reward_margin"], "rewards/accuracies": s["reward_accuracy"],
            "logps/chosen": seq_c.mean().item(), "logps/rejected": seq_r.mean().item(),
            "logp_accuracy": (seq_c > seq_r).float().mean().item()}


def dpo_batch(model, pairs: list[Pair], ref: TokenLogps, pad_id: int, cfg: DpoConfig, ctx: RunContext,
              *, train: bool, micro: int, n_global: int | None = None) -> dict[str, float]:
    """Stats of ``pairs`` (with their reference log-probs ``ref``) as one batch, ``micro`` pairs per
    forward; with ``train`` the gradients accumulate to exactly the whole batch's (every loss is a
    mean over pairs). The stats come from the whole batch's detached log-probs, so they do not
    depend on ``micro``. Under torchrun ``pairs`` is this rank's share of ``n_global`` pairs; the
    ranks' gradients add up to the whole batch's, and the stats are this rank's."""
    import torch
    n, dist = len(pairs), ctx.dist
    n_global = n_global or n
    loss_fn, keywords = DPO_LOSSES[cfg.loss], loss_keywords(cfg)
    policy = []
    for rows in dist.micro_batches(model, n, micro):
        with torch.set_grad_enabled(train):
            part = pairs[rows]
            chosen, rejected, mask_c, mask_r = pair_logprobs(model, part, pad_id, ctx, len(part) / n)  # [b, L]
            ref_c = pad([c for c, _ in ref[rows]], chosen.shape[1])[0].to(chosen.device)          # [b, L]
            ref_r = pad([r for _, r in ref[rows]], rejected.shape[1])[0].to(chosen.device)        # [b, L]
            loss, _ = loss_fn(chosen, rejected, ref_c, ref_r, mask_c, mask_r, **keywords)
        if train:
            dist.backward(loss * (len(mask_c) / n_global))
        policy += list(zip(unpad(chosen, mask_c), unpad(rejected, mask_r)))
    return preference_stats(policy, ref, cfg)


def run(ctx: RunContext, cfg: DpoConfig, out: Path) -> None:
    from r1lab.models.adapters import with_adapters
    from r1lab.models.io import load_model
    from r1lab.train.loop import TrainLoop
    from r1lab.train.supervised import batch_rows, check_shares, should_validate, split_rows
    model, tokenizer = load_model(ctx.model_path(cfg.init), ctx.device)
    path = ctx.data_path(cfg.data)
    pairs = encode_pairs(read_pairs(path), tokenizer, cfg.max_length)
    pad_id, eval_micro = tokenizer.pad_token_id, cfg.micro_batch_size or cfg.batch_size
    model.eval()     # still the initial model (TrainLoop restores a checkpoint after this): the reference
    ref = reference_logprobs(model, pairs, pad_id, ctx, eval_micro)
    model = with_adapters(model, cfg.lora, ctx.seed)                         # B = 0: ref unchanged
    train, val = split_rows(list(range(len(pairs))), cfg.val_fraction, f"dpo-val-{ctx.seed}", path)
    val_pairs, val_ref = [pairs[i] for i in val], [ref[i] for i in val]
    start = preference_stats(val_ref, val_ref, cfg) if val else None      # policy = reference

    def validate() -> dict[str, float]:
        model.eval()
        stats = dpo_batch(model, val_pairs, val_ref, pad_id, cfg, ctx, train=False, micro=eval_micro)
        model.train()
        return stats

    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    check_shares(len(train), cfg.batch_size, ctx.dist, cfg.name)
    loop = TrainLoop(model, cfg, out, total, dist=ctx.dist)
    model.train()
    final = None
    for step in loop.steps():
        batch = [train[i] for i in batch_rows(step, len(train), cfg.batch_size, ctx.seed)]
        rows = batch[ctx.dist.shard(len(batch))]                             # this rank's pairs
        stats = dpo_batch(loop.wrapped, [pairs[i] for i in rows], [ref[i] for i in rows], pad_id, cfg, ctx,
                          train=True, micro=cfg.micro_batch_size, n_global=len(batch))
        grad_norm = loop.optimizer_step()
        values = {k: v for k, v in stats.items() if k != "logp_accuracy"}
        values.update({"lr": loop.lr, "grad_norm": grad_norm, "epoch": (step + 1) / per_epoch})
        if val and should_validate(step, total, cfg.eval_every):
            final = validate()
            values.update({f"val/{k}": v for k, v in final.items()})
        loop.end_step(values, show_keys=("loss", "rewards/accuracies"), rows=len(rows))
    if val and ctx.dist.is_main:
        write_atomic(out / "val.json", json.dumps({"pairs": len(val), "start": start,
                                                   "final": final or validate()}, indent=1) + "\n")
    loop.finish(tokenizer)


def memory(cfg: DpoConfig, plan) -> dict:
    """Bytes of a micro-batch's forward and backward, chosen and rejected, at their longest row;
    the reference's log-probs are computed beforehand by the same model (r1lab/plan.py)."""
    pairs = plan.target.share(cfg.batch_size)                # micro_batch_size is this rank's
    return plan.supervised(cfg.init, plan.trained(cfg.init, cfg.lora), length=plan.row_len(cfg),
                           rows=2 * min(cfg.micro_batch_size or pairs, pairs))


Config = DpoConfig
REPORT = LOSS_REPORT
