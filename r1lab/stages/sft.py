"""Stage ``sft``: supervised fine-tuning on prompt/completion rows, the loss of DeepSeek-R1's
cold start and of its SFT on rejection-sampled data (Guo et al. 2025; InstructGPT's SFT).

Rows come from a JSONL file or from an earlier stage's ``data.jsonl`` (e.g. ``rejection_sample``):
``{"prompt", "completion"}`` or chat ``{"messages": [...]}``, rendered with the tokenizer's chat
template (the last, assistant message is the completion). The loss is next-token cross-entropy
on completion tokens only (prompt and padding masked), EOS appended so the model learns to stop.
Epochs over a shuffled order (one permutation per epoch, from the seed), linear warmup then
cosine decay, gradient clipping, gradient accumulation (``micro_batch_size``), a held-out slice
for validation loss. Step ``s`` always trains the same rows, so a run resumed mid-epoch neither
repeats nor skips a batch.

Departures from the paper: none in the objective; the paper does not say how tokens are
averaged (``reduction``: "token" as in TRL, or "sequence").

    r1lab run r1-tiny          # cold start and SFT-from-base stages
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from r1lab.errors import DataError
from r1lab.data.jsonl import read_sft_jsonl
from r1lab.losses.sft import sft_nll
from r1lab.models.io import load_model
from r1lab.models.adapters import LoraBlock, with_adapters
from r1lab.stages.common import StageConfig, block
from r1lab.stages.context import RunContext
from r1lab.forward import completion_logprobs, prompt_completion_batch
from r1lab.train.loop import TrainLoop
from r1lab.train.optim import Optim


class SftConfig(StageConfig):
    """Supervised fine-tuning."""
    reads = {"init": "model", "data": "data"}
    writes = ("model",)
    data_parallel = True
    kind: Literal["sft"]
    init: str = Field(description="Model to fine-tune: an earlier stage's name or a model path.")
    data: str = Field(description="Rows: an earlier stage that writes data.jsonl, or a JSONL path.")
    epochs: int = Field(2, gt=0, description="Passes over the training rows (R1: 2 to 3).")
    batch_size: int = Field(16, gt=0, description="Rows per optimizer step.")
    micro_batch_size: int = Field(0, ge=0, description="Rows per forward/backward (0 = the whole batch); "
                                  "gradients accumulate to the full batch's.")
    max_length: int = Field(512, gt=1, description="Prompt + completion tokens at most; longer completions are cut.")
    reduction: Literal["token", "sequence"] = Field("token", description="Average over all completion "
                                                    "tokens of a batch, or per completion then over completions.")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of rows held out for validation loss.")
    eval_every: int = Field(50, gt=0, description="Steps between validation losses (and at the end).")
    lora: LoraBlock = None
    optim: block(Optim, "Optimizer and schedule (cosine to a tenth, as for R1's distilled models).",
                 lr=1e-4, warmup_steps=10, min_lr_ratio=0.1)
    checkpoint_every: int = Field(50, gt=0, description="Steps between resumable checkpoints.")


def prompt_and_completion(row: dict, tokenizer) -> tuple[str, str]:
    """A row's prompt text (chat rows rendered with the tokenizer's template, up to the
    assistant's turn) and its completion text."""
    if "messages" in row:
        prompt = tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
        return prompt, row["messages"][-1]["content"]
    return row["prompt"], row["completion"]


def encode(rows: list[dict], tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per row, the completion cut to fit ``max_length``.
    Prompt and completion are tokenized apart, exactly as the RL stages see them."""
    out = []
    for row in rows:
        prompt, completion = prompt_and_completion(row, tokenizer)
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p, c[:max(1, max_length - len(p))]))
    return out


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts then right-padded completions: the batch of ``prompt_completion_batch``."""
    width = max(len(c) for _, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)                  # [B, L]
    mask = torch.zeros((len(pairs), width), dtype=torch.bool)                        # [B, L]
    for i, (_, c) in enumerate(pairs):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = True
    return prompt_completion_batch([p for p, _ in pairs], ids, mask, pad_id)


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int) -> list[int]:
    """Row indices of step ``step``: epoch ``step // steps_per_epoch`` in its own shuffled order
    (the last batch of an epoch may be short)."""
    per_epoch = math.ceil(n_rows / batch_size)
    epoch, i = divmod(step, per_epoch)
    order = list(range(n_rows))
    random.Random(f"sft-{seed}-{epoch}").shuffle(order)
    return order[i * batch_size:(i + 1) * batch_size]


def split_rows(rows: list, val_fraction: float, seed: int, path: Path) -> tuple[list, list]:
    """(train, val): a seeded random ``val_fraction`` of ``rows`` held out (at least one row
    is left to train on); train keeps the file's order."""
    order = list(range(len(rows)))
    random.Random(f"sft-val-{seed}").shuffle(order)
    n_val = min(len(rows) - 1, math.ceil(val_fraction * len(rows))) if val_fraction > 0 else 0
    train = [rows[i] for i in sorted(order[n_val:])]
    if not train:
        raise DataError(f"{path}: no rows left to train on after holding out {n_val} for validation")
    return train, [rows[i] for i in order[:n_val]]


def nll_batch(model, pairs, pad_id: int, cfg: SftConfig, ctx: RunContext, *, train: bool, micro: int,
              normalizer: float | None = None) -> float:
    """Loss of ``pairs`` as one batch, computed ``micro`` rows at a time; with ``train`` the
    gradients accumulate to the whole batch's. Returns the loss. Under torchrun ``pairs`` is this
    rank's share of a batch whose ``normalizer`` (tokens or rows) is given: the loss returned is
    then this rank's part of the batch's, and the ranks' gradients add up to the batch's."""
    tokens = sum(len(c) for _, c in pairs)
    normalizer = normalizer or (tokens if cfg.reduction == "token" else len(pairs))
    total = 0.0
    for rows in ctx.dist.micro_batches(model, len(pairs), micro):
        batch = collate(pairs[rows], pad_id)
        with ctx.autocast(), torch.set_grad_enabled(train):
            logp, _ = completion_logprobs(model, batch, aux_weight=len(batch["input_ids"]) / len(pairs))  # [b, L]
            loss, _ = sft_nll(logp, batch["completion_mask"].to(logp.device), reduction=cfg.reduction,
                              normalizer=normalizer)
        if train:
            ctx.dist.backward(loss)
        total += loss.item()
    return total


def shard_batch(chosen: list, cfg, dist) -> tuple[list, float]:
    """This rank's share of a batch of (prompt, completion) pairs, and the whole batch's normaliser."""
    normalizer = sum(len(c) for _, c in chosen) if cfg.reduction == "token" else len(chosen)
    return chosen[dist.shard(len(chosen))], normalizer


def check_shares(n_rows: int, batch_size: int, dist, stage: str) -> None:
    """Every batch, the short last one of an epoch included, must give each rank a row."""
    smallest = n_rows - (math.ceil(n_rows / batch_size) - 1) * batch_size
    dist.check_share(min(batch_size, n_rows), f"stage {stage!r}: batch_size")
    dist.check_share(smallest, f"stage {stage!r}: the last batch of an epoch (batch_size {batch_size}, "
                               f"{n_rows} training rows)")


def run(ctx: RunContext, cfg: SftConfig, out: Path) -> None:
    model, tokenizer = load_model(ctx.model_path(cfg.init), ctx.device)
    model = with_adapters(model, cfg.lora, ctx.seed)
    path = ctx.data_path(cfg.data)
    pairs = encode(read_sft_jsonl(path), tokenizer, cfg.max_length)
    train, val = split_rows(pairs, cfg.val_fraction, ctx.seed, path)
    total = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    check_shares(len(train), cfg.batch_size, ctx.dist, cfg.name)
    loop = TrainLoop(model, cfg.optim, out, cfg.name, "sft", total, cfg.checkpoint_every, dist=ctx.dist)
    pad = tokenizer.pad_token_id
    model.train()
    for step in loop.steps():
        chosen = [train[i] for i in batch_rows(step, len(train), cfg.batch_size, ctx.seed)]
        mine, normalizer = shard_batch(chosen, cfg, ctx.dist)
        loss = ctx.dist.sum(nll_batch(loop.wrapped, mine, pad, cfg, ctx, train=True, micro=cfg.micro_batch_size,
                                      normalizer=normalizer))
        grad_norm = loop.optimizer_step()
        values = {"loss": loss, "grad_norm": grad_norm, "lr": loop.lr,
                  "epoch": (step + 1) / math.ceil(len(train) / cfg.batch_size),
                  "tokens": float(sum(len(c) for _, c in mine))}
        if val and ((step + 1) % cfg.eval_every == 0 or step + 1 == total):
            model.eval()
            values["val_loss"] = nll_batch(model, val, pad, cfg, ctx, train=False,
                                           micro=cfg.micro_batch_size or cfg.batch_size)
            model.train()
        loop.end_step(values, show_keys=("loss", "lr"), rows=len(mine))
    loop.finish(tokenizer)


Config = SftConfig
