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
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from r1lab.data.jsonl import read_sft_jsonl
from r1lab.stages.common import LOSS_REPORT, SupervisedStageConfig, block
from r1lab.settings import Optim

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class SftConfig(SupervisedStageConfig):
    """Supervised fine-tuning (R1: 2 to 3 epochs)."""
    kind: Literal["sft"]
    reduction: Literal["token", "sequence"] = Field("token", description="Average over all completion "
                                                    "tokens of a batch, or per completion then over completions.")
    optim: block(Optim, "Optimizer and schedule (cosine to a tenth, as for R1's distilled models).",
                 lr=1e-4, warmup_steps=10, min_lr_ratio=0.1)


def run(ctx: RunContext, cfg: SftConfig, out: Path) -> None:
    from r1lab.models.adapters import with_adapters
    from r1lab.models.io import load_model
    from r1lab.train.loop import TrainLoop
    from r1lab.train.supervised import batch_rows, check_shares, encode, nll_batch, shard_batch, should_validate, split_rows
    model, tokenizer = load_model(ctx.model_path(cfg.init), ctx.device)
    model = with_adapters(model, cfg.lora, ctx.seed)
    path = ctx.data_path(cfg.data)
    pairs = encode(read_sft_jsonl(path), tokenizer, cfg.max_length)
    train, val = split_rows(pairs, cfg.val_fraction, f"sft-val-{ctx.seed}", path)
    total = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    check_shares(len(train), cfg.batch_size, ctx.dist, cfg.name)
    loop = TrainLoop(model, cfg, out, total, dist=ctx.dist)
    pad = tokenizer.pad_token_id
    model.train()
    for step in loop.steps():
        chosen = [train[i] for i in batch_rows(step, len(train), cfg.batch_size, ctx.seed)]
        mine, normalizer = shard_batch(chosen, cfg.reduction, ctx.dist)
        loss = ctx.dist.sum(nll_batch(loop.wrapped, mine, pad, cfg.reduction, ctx, train=True,
                                      micro=cfg.micro_batch_size, normalizer=normalizer))
        grad_norm = loop.optimizer_step()
        values = {"loss": loss, "grad_norm": grad_norm, "lr": loop.lr,
                  "epoch": (step + 1) / math.ceil(len(train) / cfg.batch_size),
                  "tokens": float(sum(len(c) for _, c in mine))}
        if val and should_validate(step, total, cfg.eval_every):
            model.eval()
            values["val_loss"] = nll_batch(model, val, pad, cfg.reduction, ctx, train=False,
                                           micro=cfg.micro_batch_size or cfg.batch_size)
            model.train()
        loop.end_step(values, show_keys=("loss", "lr"), rows=len(mine))
    loop.finish(tokenizer)


def memory(cfg: SftConfig, plan) -> dict:
    """Bytes of a micro-batch's forward and backward at its longest row (r1lab/plan.py)."""
    rows = plan.target.share(cfg.batch_size)                 # micro_batch_size is this rank's
    return plan.supervised(cfg.init, plan.trained(cfg.init, cfg.lora), rows=min(cfg.micro_batch_size or rows, rows),
                           length=plan.row_len(cfg))


Config = SftConfig
REPORT = LOSS_REPORT
