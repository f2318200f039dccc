"""Stage ``pretrain``: a tiny base model from random init, trained with next-token loss.

It stands in for DeepSeek-V3-Base. The corpus (r1lab/data/corpus.py) teaches the task
imperfectly: direct answers that are often wrong, worked solutions, slips and malformed
answers, so the R1-Zero stage has a better strategy to find. Documents are packed into
fixed-length rows (EOS between documents), as in GPT pre-training. AdamW, linear warmup then
cosine decay to ``min_lr_ratio``, gradient clipping by global norm, validation loss on
held-back documents every ``eval_every`` steps.

    r1lab run --set stages.base.steps=200   # the default run with a shorter pre-training
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from r1lab.data.corpus import CorpusMix, documents
from r1lab.models.tiny import TinyModelConfig, build_tiny_model
from r1lab.models.tokenizer import train_tokenizer
from r1lab.stages.common import TaskStageConfig
from r1lab.stages.context import RunContext
from r1lab.train.checkpoint import resume_training, save_pretrained_atomic, save_training
from r1lab.train.metrics import MetricsLogger
from r1lab.train.progress import progress_bar, show
from r1lab.train.optim import build_optimizer, build_scheduler, optimizer_step


class CorpusConfig(BaseModel):
    """The synthetic pre-training corpus (see r1lab/data/corpus.py for each kind)."""
    model_config = ConfigDict(extra="forbid")
    documents: int = Field(40000, gt=0, description="Documents generated (from train questions only).")
    direct: float = Field(0.45, ge=0, description="Share of direct answers.")
    worked: float = Field(0.35, ge=0, description="Share of correct worked solutions.")
    slip: float = Field(0.10, ge=0, description="Share of worked solutions with one slip.")
    malformed: float = Field(0.10, ge=0, description="Share of answers written outside the tags.")
    direct_correct: float = Field(0.3, ge=0, le=1, description="Chance a direct answer is right.")
    drill: float = Field(0.6, ge=0, le=1, description="Share of documents that are bare worked exercises.")

    def mix(self) -> CorpusMix:
        return CorpusMix(**self.model_dump(exclude={"documents"}))


class PretrainConfig(TaskStageConfig):
    """Pre-training of the tiny base model."""
    writes = ("model",)
    kind: Literal["pretrain"]
    model: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Model shape.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig, description="Synthetic corpus.")
    steps: int = Field(1000, gt=0, description="Optimizer steps.")
    batch_size: int = Field(32, gt=0, description="Rows per step.")
    seq_len: int = Field(128, gt=1, description="Tokens per packed row.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(30, ge=0, description="Linear warmup steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final LR as a fraction of the peak.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW decay on matrices.")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    eval_every: int = Field(100, gt=0, description="Steps between validation losses.")
    val_rows: int = Field(64, gt=0, description="Packed rows held back for validation.")
    checkpoint_every: int = Field(100, gt=0, description="Steps between resumable checkpoints.")

    def task_problem(self, task) -> str | None:
        if task.kind != "arithmetic":
            return (f"pretrain builds its corpus from the synthetic 'arithmetic' task, not {task.kind!r}; "
                    f"for a real base model, start the run from its path instead")
        return None


def pack(docs: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate token lists and cut into full rows: [R, seq_len] (the remainder is dropped)."""
    stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].view(rows, seq_len)


def run(ctx: RunContext, cfg: PretrainConfig, out: Path) -> None:
    seed, task = ctx.seed, ctx.task(cfg)
    docs = documents(seed, cfg.corpus.documents, cfg.corpus.mix(), task.template, **task.problem_kw())
    tokenizer = train_tokenizer([p + c for p, c in docs[:3000]], cfg.model.vocab_size)
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer([p for p, _ in docs])["input_ids"]
    completion_ids = tokenizer([c for _, c in docs])["input_ids"]
    encoded = [p + c + [eos] for p, c in zip(prompt_ids, completion_ids)]   # prompt and completion
    # are tokenized apart, exactly as the RL stages will see them
    random.Random(seed).shuffle(encoded)
    rows = pack(encoded, cfg.seq_len)                                        # [R, S]
    val, train = rows[: cfg.val_rows], rows[cfg.val_rows:]

    model = build_tiny_model(cfg.model, tokenizer, seed).to(ctx.device)
    opt = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = build_scheduler(opt, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                            min_ratio=cfg.min_lr_ratio)
    step, elapsed = resume_training(out / "checkpoint", model, opt, sched)
    log = MetricsLogger(out / "metrics.jsonl", cfg.name, resume_step=step, elapsed_s=elapsed)
    bar = progress_bar(f"{cfg.name} (pretrain)", cfg.steps, step)
    tokens_seen = 0
    model.train()
    while step < cfg.steps:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen)
        batch = train[idx].to(ctx.device)                                    # [B, S]
        with ctx.autocast():
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norm = optimizer_step(model, opt, sched, cfg.grad_clip)
        step += 1
        tokens_seen += batch.numel()
        values = {"loss": loss.item(), "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                  "tokens_per_s": tokens_seen / max(1e-9, log.elapsed() - elapsed)}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            values["val_loss"] = validation_loss(model, val, ctx)
            model.train()
        log.log(step, values)
        show(bar, {k: values[k] for k in ("loss", "lr", "tokens_per_s")})
        bar.update(1)
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            save_training(out / "checkpoint", model, opt, sched, step, log.elapsed())
    bar.close()
    save_pretrained_atomic(model, tokenizer, out / "model")


@torch.no_grad()
def validation_loss(model, rows: torch.Tensor, ctx: RunContext, batch_size: int = 32) -> float:
    """Mean next-token loss over the held-back rows."""
    model.eval()
    total = 0.0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size].to(ctx.device)
        with ctx.autocast():
            total += model(input_ids=chunk, labels=chunk).loss.item() * len(chunk)
    value = total / len(rows)
    return value if math.isfinite(value) else float("inf")


Config = PretrainConfig
