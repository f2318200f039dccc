"""Stage ``distill``: a small student learns from a large teacher, as DeepSeek-R1 distils R1 into
Qwen and Llama models (Guo et al. 2025, arXiv 2501.12948, sec. 2.4 and 4.1).

``method: sequence`` is the paper's: supervised fine-tuning of the student on the teacher's
rows (R1's ~800k rejection-sampled samples; here a ``rejection_sample`` stage's data.jsonl or
any SFT JSONL), 2 to 3 epochs, cosine decay to a tenth of the initial learning rate, no RL. It
is the ``sft`` stage's loop, step for step (same functions, same row order and validation
split), so it gives the same weights as an ``sft`` stage with the same settings.

``method: logit`` goes beyond the paper: the student matches the teacher's whole next-token
distribution on the same rows, with forward KL (Hinton et al. 2015), reverse KL (MiniLLM) or
the generalized JSD of GKD (Agarwal et al. 2024; r1lab/losses/distill.py). With ``on_policy``
= lambda, that share of the batches (drawn per step from the seed) are completions the student
samples itself from the rows' prompts, which the teacher then scores: GKD's on-policy mix. Both
models are asked only for the completion logits; the divergence is computed a chunk of
positions at a time (``chunked_distill_loss``), so no [N, L, V] float copy is made besides the
two models' logits and the student's gradient. The teacher runs under no_grad in eval mode.

Student and teacher must share a tokenizer ("the student may be smaller"): the config loader
traces both back to their origin and refuses a mismatch (r1lab/lineage.py).

Departures: logit and on-policy modes are GKD's, not R1's; the data is a laptop's, not 800k
rows. In logit mode the loss averages over tokens (``reduction`` is for sequence mode), and
logits past the tokenizer's length (embedding rows padded for speed, as in Qwen) are dropped.

    stages:                                # after a run's RL stage `rl` and its rejection_sample `sft-data`
      - {kind: pretrain, name: student-base, model: {hidden_size: 64, num_layers: 2}}
      - {kind: distill, name: student, init: student-base, teacher: rl, data: sft-data}     # R1's recipe
      - {kind: distill, name: student-gkd, init: student-base, teacher: rl, data: sft-data,
         method: logit, loss: jsd, on_policy: 0.5}
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from r1lab.data.jsonl import read_sft_jsonl
from r1lab.losses.registry import DIVERGENCES
from r1lab.stages.common import LOSS_REPORT, SupervisedStageConfig, block
from r1lab.settings import Optim, Sampling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext


class DistillConfig(SupervisedStageConfig):
    """Distillation of a teacher into a student (R1: 2 to 3 epochs)."""
    reads = {"init": "model", "teacher": "model", "data": "data"}
    same_tokenizer = ("init", "teacher")
    kind: Literal["distill"]
    init: str = Field(description="The student: an earlier stage's name or a model path.")
    teacher: str | None = Field(None, description="The teacher: an earlier stage's name or a model path; "
                                "needed by method 'logit', checked to share the student's tokenizer when given.")
    data: str = Field(description="Rows to learn on: an earlier stage that writes data.jsonl (e.g. "
                      "rejection_sample from the teacher), or a JSONL path of prompt/completion or chat rows.")
    method: Literal["sequence", "logit"] = Field("sequence", description="sequence: SFT on the teacher's "
                                                 "rows (R1); logit: match the teacher's token distributions (GKD).")
    loss: Literal[tuple(DIVERGENCES)] = Field("forward_kl", description="Logit mode's divergence: forward_kl "
                                              "KL(T||S), reverse_kl KL(S||T), jsd (generalized JSD, beta).")
    beta: float = Field(0.5, gt=0, lt=1, description="jsd's weight of the teacher (0.5 = symmetric JSD).")
    temperature: float = Field(1.0, gt=0, description="Softmax temperature of both models in logit mode "
                               "(the loss is scaled by its square).")
    on_policy: float = Field(0.0, ge=0, le=1, description="GKD's lambda: share of batches whose completions "
                             "the student samples itself from the rows' prompts (logit mode).")
    sampling: block(Sampling, "How on-policy completions are sampled.", max_new_tokens=96, temperature=1.0,
                    top_p=1.0)
    reduction: Literal["token", "sequence"] = Field("token", description="Sequence mode: average over all "
                                                    "completion tokens of a batch, or per completion then over completions.")
    optim: block(Optim, "Optimizer and schedule (R1: cosine to a tenth of the initial rate).",
                 lr=1e-4, warmup_steps=10, min_lr_ratio=0.1)

    @model_validator(mode="after")
    def _modes_fit(self):
        if self.method == "logit" and self.teacher is None:
            raise ValueError("method 'logit' needs a teacher")
        if self.on_policy > 0 and self.method != "logit":
            raise ValueError("on_policy > 0 needs method 'logit' (the teacher scores the student's samples)")
        return self


def logit_batch(student, teacher, pairs, pad_id: int, vocab: int, cfg: DistillConfig, ctx: RunContext, *,
                train: bool, micro: int, tokens: int | None = None) -> dict[str, float]:
    """Divergence of the student from the teacher on ``pairs`` (prompt ids, completion ids) as
    one batch, ``micro`` rows at a time; with ``train`` the student's gradients accumulate to
    the whole batch's. Returns the batch's ``loss`` and ``top1_agreement``. Under torchrun
    ``pairs`` is this rank's share of a batch of ``tokens`` completion tokens, and the returned
    values are this rank's parts of the batch's (they add up over ranks)."""
    import torch
    from r1lab.train.supervised import collate
    tokens = tokens or sum(len(c) for _, c in pairs)
    out = {"loss": 0.0, "top1_agreement": 0.0}
    for rows in ctx.dist.micro_batches(student, len(pairs), micro):
        with torch.set_grad_enabled(train):
            part = pairs[rows]
            loss, stats = micro_loss(student, teacher, collate(part, pad_id), vocab, tokens, cfg, ctx,
                                     share=len(part) / len(pairs))
        if train:
            ctx.dist.backward(loss)    # the logits live on only in the graph, freed as it runs
        out["loss"] += stats["loss"]
        out["top1_agreement"] += stats["top1_agreement"] * stats["tokens"] / max(tokens, 1)
    return out


def micro_loss(student, teacher, batch: dict, vocab: int, normalizer: int, cfg: DistillConfig,
               ctx: RunContext, share: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The chunked divergence of one micro-batch (``share`` of the batch's rows) over
    ``normalizer`` tokens; teacher under no_grad."""
    import torch
    from r1lab.forward import CHUNK_SIZE, completion_logits
    from r1lab.losses.distill import chunked_distill_loss
    with ctx.autocast():
        with torch.no_grad():
            t_logits, _ = completion_logits(teacher, batch)                           # [b, L, V_t]
        s_logits, _ = completion_logits(student, batch, aux_weight=share)             # [b, L, V_s]
        return chunked_distill_loss(s_logits[..., :vocab], t_logits[..., :vocab], batch["completion_mask"],
                                    divergence=cfg.loss, beta=cfg.beta, temperature=cfg.temperature,
                                    chunk_size=CHUNK_SIZE, normalizer=normalizer)


def on_policy_step(step: int, seed: int, share: float) -> bool:
    """Whether step ``step`` trains on the student's own samples: a draw of its own per step,
    so a resumed run makes the same choices."""
    return share > 0 and random.Random(f"distill-on-policy-{seed}-{step}").random() < share


def student_samples(student, tokenizer, rows: list[dict], cfg: DistillConfig, seed: int,
                    step: int, rows_in: tuple[int, int] | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, sampled completion ids) for each row's prompt, one sample each; ``rows_in``:
    their place in a batch split among ranks (r1lab/rollout/hf.py)."""
    from r1lab.rollout import sample
    from r1lab.train.supervised import prompt_and_completion
    prompts = [prompt_and_completion(row, tokenizer)[0] for row in rows]
    student.eval()
    prompt_ids, rollout = sample(student, tokenizer, prompts, n=1, sampling=cfg.sampling,
                                 seed=seed * 1_000_003 + step, rows_in=rows_in)
    student.train()
    return [(p, ids[m].tolist()) for p, ids, m in zip(prompt_ids, rollout.completion_ids, rollout.mask)]


def shared_vocab(student, teacher, tokenizer, cfg: DistillConfig) -> int:
    """The tokenizer's length: logits past it (padding rows of the embedding) are dropped."""
    from r1lab.models.io import CheckpointError
    vocab = len(tokenizer)
    for field, model in (("init", student), ("teacher", teacher)):
        if model.config.vocab_size < vocab:
            raise CheckpointError(f"{getattr(cfg, field)}: the model has {model.config.vocab_size} "
                                  f"output logits, fewer than its tokenizer's {vocab} tokens")
    return vocab


def run(ctx: RunContext, cfg: DistillConfig, out: Path) -> None:
    from r1lab.models.adapters import with_adapters
    from r1lab.models.io import load_model
    from r1lab.train.loop import TrainLoop
    from r1lab.train.supervised import batch_rows, check_shares, encode, nll_batch, should_validate, split_rows
    student, tokenizer = load_model(ctx.model_path(cfg.init), ctx.device)
    student = with_adapters(student, cfg.lora, ctx.seed)
    teacher, vocab = None, 0
    if cfg.method == "logit":
        teacher = load_model(ctx.model_path(cfg.teacher), ctx.device)[0].eval().requires_grad_(False)
        vocab = shared_vocab(student, teacher, tokenizer, cfg)
    path = ctx.data_path(cfg.data)
    rows = read_sft_jsonl(path)
    train, val = split_rows(list(zip(rows, encode(rows, tokenizer, cfg.max_length))), cfg.val_fraction,
                            f"sft-val-{ctx.seed}", path)           # (row, (prompt ids, completion ids))
    val = [pair for _, pair in val]
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    dist = ctx.dist
    check_shares(len(train), cfg.batch_size, dist, cfg.name)
    loop = TrainLoop(student, cfg, out, total, dist=dist)
    pad = tokenizer.pad_token_id

    def batch_loss(model, pairs, *, train: bool, micro: int, normalizer: int | None = None) -> dict[str, float]:
        if cfg.method == "sequence":
            return {"loss": nll_batch(model, pairs, pad, cfg.reduction, ctx, train=train, micro=micro,
                                      normalizer=normalizer)}
        stats = logit_batch(model, teacher, pairs, pad, vocab, cfg, ctx, train=train, micro=micro, tokens=normalizer)
        return {**stats, cfg.loss: stats["loss"] / cfg.temperature ** 2}

    student.train()
    for step in loop.steps():
        chosen = [train[i] for i in batch_rows(step, len(train), cfg.batch_size, ctx.seed)]
        mine = dist.shard(len(chosen))                                      # this rank's rows
        sampled = on_policy_step(step, ctx.seed, cfg.on_policy)
        pairs = (student_samples(student, tokenizer, [row for row, _ in chosen[mine]], cfg, ctx.seed, step,
                                 rows_in=(mine.start, len(chosen)))
                 if sampled else [pair for _, pair in chosen[mine]])
        tokens = dist.sum(sum(len(c) for _, c in pairs))                    # the whole batch's
        normalizer = len(chosen) if cfg.method == "sequence" and cfg.reduction == "sequence" else tokens
        values = {k: dist.sum(v) for k, v in batch_loss(loop.wrapped, pairs, train=True, micro=cfg.micro_batch_size,
                                                        normalizer=normalizer).items()}
        grad_norm = loop.optimizer_step()
        values.update(grad_norm=grad_norm, lr=loop.lr, epoch=(step + 1) / per_epoch,
                      tokens=float(sum(len(c) for _, c in pairs)))
        if cfg.method == "logit":
            values["on_policy"] = float(sampled)
        if val and should_validate(step, total, cfg.eval_every):
            student.eval()
            values["val_loss"] = batch_loss(student, val, train=False, micro=cfg.micro_batch_size or cfg.batch_size)["loss"]
            student.train()
        loop.end_step(values, show_keys=("loss", "lr"), rows=len(pairs))
    loop.finish(tokenizer)


def memory(cfg: DistillConfig, plan) -> dict:
    """Bytes of a micro-batch's forward and backward at its longest row (r1lab/plan.py). In logit
    mode the teacher sits beside the student, and both models' logits of every position are
    held; with ``on_policy`` the student samples its own completions first."""
    from r1lab.memory import FLOAT, moments
    rows, length = plan.target.share(cfg.batch_size), plan.row_len(cfg)
    rows = min(cfg.micro_batch_size or rows, rows)           # micro_batch_size is this rank's
    trained = plan.trained(cfg.init, cfg.lora)
    extra = None
    if cfg.method == "logit":
        teacher = plan.shape(cfg.teacher)
        extra = {"teacher": teacher.weights, "teacher logits": rows * length * teacher.vocab * FLOAT}
    phases = plan.supervised(cfg.init, trained, rows=rows, length=length, extra=extra,
                             packed=False if cfg.method == "logit" else None)
    if cfg.on_policy > 0:
        sampled = plan.sampling(cfg.init, cfg.sampling, prompts=plan.target.share(cfg.batch_size), n=1,
                                prompt_len=length)["rollout"]
        phases["rollout"] = {**sampled, **moments(trained, plan.target), **(extra or {})}
    return phases


Config = DistillConfig
REPORT = LOSS_REPORT
