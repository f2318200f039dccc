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
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from r1lab.data.corpus import CorpusMix, documents
from r1lab.stages.common import LOSS_REPORT, TaskStageConfig, block, checkpoint_seconds
from r1lab.settings import Optim, TinyModelConfig

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class CorpusConfig(BaseModel):
    """The synthetic pre-training corpus (see r1lab/data/corpus.py for each kind)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    documents: int = Field(40000, gt=0, description="Documents generated (from train questions only).")
    direct: float = Field(0.45, ge=0, description="Share of direct answers.")
    worked: float = Field(0.35, ge=0, description="Share of correct worked solutions.")
    slip: float = Field(0.10, ge=0, description="Share of worked solutions with one slip.")
    malformed: float = Field(0.10, ge=0, description="Share of answers written outside the tags.")
    direct_correct: float = Field(0.3, ge=0, le=1, description="Chance a direct answer is right.")
    drill: float = Field(0.6, ge=0, le=1, description="Share of documents that are bare worked exercises.")
    mix_languages: float = Field(0.5, ge=0, le=1, description="Share of worked solutions that switch "
                                 "language after their first step.")
    general: float = Field(0.08, ge=0, le=1, description="Share of documents that are non-reasoning "
                           "requests (number words, lists) answered directly.")

    def mix(self) -> CorpusMix:
        return CorpusMix(**self.model_dump(exclude={"documents"}))


class PretrainConfig(TaskStageConfig):
    """Pre-training of the tiny base model."""
    writes = ("model",)
    data_parallel = True
    kind: Literal["pretrain"]
    model: TinyModelConfig = Field(default_factory=TinyModelConfig, description="Model shape.")
    corpus: CorpusConfig = Field(default_factory=CorpusConfig, description="Synthetic corpus.")
    steps: int = Field(1000, gt=0, description="Optimizer steps.")
    batch_size: int = Field(32, gt=0, description="Rows per step.")
    seq_len: int = Field(128, gt=1, description="Tokens per packed row.")
    optim: block(Optim, "Optimizer and schedule.", lr=3e-3, warmup_steps=30, min_lr_ratio=0.1,
                 weight_decay=0.1)
    eval_every: int = Field(100, gt=0, description="Steps between validation losses.")
    val_rows: int = Field(64, gt=0, description="Packed rows held back for validation.")
    checkpoint_every: int = Field(100, gt=0, description="Steps between resumable checkpoints.")
    checkpoint_every_s: float | None = checkpoint_seconds()

    def task_problem(self, task) -> str | None:
        if task.kind != "arithmetic":
            return (f"pretrain builds its corpus from the synthetic 'arithmetic' task, not {task.kind!r}; "
                    f"for a real base model, start the run from its path instead")
        return None


def pack(docs: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenate token lists and cut into full rows: [R, seq_len] (the remainder is dropped)."""
    import torch
    stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].view(rows, seq_len)


def corpus_and_tokenizer(cfg: PretrainConfig, task, seed: int):
    """The corpus documents and the BPE tokenizer trained on their first 3000. The tokenizer is
    a function of exactly :func:`tokenizer_settings`; keep the two in step."""
    from r1lab.models.tokenizer import train_tokenizer
    docs = documents(seed, cfg.corpus.documents, cfg.corpus.mix(), task.template, **task.problem_kw())
    return docs, train_tokenizer([p + c for p, c in docs[:3000]], cfg.model.vocab_size)


def tokenizer_settings(cfg: PretrainConfig, task, seed: int) -> dict:
    """What the stage's tokenizer depends on: two pretrain stages with equal settings train the
    same tokenizer, whatever their model shape or steps (the config check of shared tokenizers
    compares these)."""
    return {"seed": seed, "task.template": task.template,
            **{f"task.{k}": v for k, v in task.problem_kw().items()},
            **{f"corpus.{k}": v for k, v in cfg.corpus.model_dump().items()},
            "model.vocab_size": cfg.model.vocab_size}


def run(ctx: RunContext, cfg: PretrainConfig, out: Path) -> None:
    import torch
    from r1lab.models.moe import record
    from r1lab.models.tiny import build_tiny_model
    from r1lab.train.loop import TrainLoop
    from r1lab.train.supervised import should_validate
    seed, task = ctx.seed, ctx.task(cfg)
    docs, tokenizer = corpus_and_tokenizer(cfg, task, seed)
    eos = tokenizer.eos_token_id
    prompt_ids = tokenizer([p for p, _ in docs])["input_ids"]
    completion_ids = tokenizer([c for _, c in docs])["input_ids"]
    encoded = [p + c + [eos] for p, c in zip(prompt_ids, completion_ids)]   # prompt and completion
    # are tokenized apart, exactly as the RL stages will see them
    random.Random(seed).shuffle(encoded)
    rows = pack(encoded, cfg.seq_len)                                        # [R, S]
    val, train = rows[: cfg.val_rows], rows[cfg.val_rows:]

    model = build_tiny_model(cfg.model, tokenizer, seed).to(ctx.device)
    dist = ctx.dist
    dist.check_share(cfg.batch_size, f"stage {cfg.name!r}: batch_size")
    loop = TrainLoop(model, cfg, out, cfg.steps, dist=dist)
    tokens_seen = 0
    model.train()
    for step in loop.steps():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen)[dist.shard(cfg.batch_size)]
        batch = train[idx].to(ctx.device)                                    # [B, S], this rank's rows
        with ctx.autocast():
            output = loop.wrapped(input_ids=batch, labels=batch)  # an MoE model's loss includes its router loss
        loss = output.loss           # rows are equally long: the batch's loss is the mean of the ranks' shares
        dist.backward(loss * (len(batch) / cfg.batch_size))
        record(model, output)
        grad_norm = loop.optimizer_step()
        tokens_seen += batch.numel()
        values = {"loss": loss.item(), "grad_norm": grad_norm, "lr": loop.lr,
                  "tokens_per_s": tokens_seen / max(1e-9, loop.log.elapsed() - loop.resumed_elapsed)}
        if should_validate(step, cfg.steps, cfg.eval_every):
            values["val_loss"] = validation_loss(model, val, ctx)
            model.train()
        loop.end_step(values, show_keys=("loss", "lr", "tokens_per_s"), rows=len(batch))
    loop.finish(tokenizer)


def validation_loss(model, rows: torch.Tensor, ctx: RunContext, batch_size: int = 32) -> float:
    """Mean next-token loss over the held-back rows (an MoE model's without its router loss)."""
    import torch
    from r1lab.models.moe import router_loss_off
    with torch.no_grad():
        model.eval()
        total = 0.0
        no_router = router_loss_off(model)
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size].to(ctx.device)
            with ctx.autocast():
                total += model(input_ids=chunk, labels=chunk, **no_router).loss.item() * len(chunk)
        value = total / len(rows)
        return value if math.isfinite(value) else float("inf")


# Bytes a corpus token costs while the stage runs: its id in the prompt's or the completion's
# Python list and in the two joined (Python ints), then in the packed int64 rows; 109 bytes
# measured for the default corpus's 2.2M tokens (RSS before and after encoding), plus the 8.
CORPUS_TOKEN_BYTES = 117


def memory(cfg: PretrainConfig, plan) -> dict:
    """Bytes of a step's forward and backward through HF's own modules, beside the encoded
    corpus, its length taken from 500 of its documents (r1lab/plan.py)."""
    docs, tokenizer = plan.corpus(cfg)
    sample = docs[::max(1, len(docs) // 500)]
    ids = tokenizer([p for p, _ in sample] + [c for _, c in sample])["input_ids"]
    per_doc = (sum(map(len, ids)) + len(sample)) / len(sample)          # and an EOS each
    shape = plan.pretrain_shape(cfg)
    return plan.supervised(None, shape.params, shape=shape, rows=plan.target.share(cfg.batch_size),
                           length=cfg.seq_len, packed=False,
                           extra={"corpus": int(per_doc * len(docs) * CORPUS_TOKEN_BYTES)})


Config = PretrainConfig
REPORT = LOSS_REPORT
