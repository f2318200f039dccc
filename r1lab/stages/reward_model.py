"""Stage ``reward_model``: a scalar reward model trained on preference pairs with the
Bradley-Terry loss (Stiennon et al. 2020; InstructGPT, Ouyang et al. 2022, Eq. 1), as DeepSeek-R1
trains its helpfulness reward model for all-scenario RL (Guo et al. 2025, sec. 2.3.4): the policy's
architecture with a scalar head, one epoch over the pairs.

The causal LM named by ``init`` gets a new ``score`` head (HF's ``*ForSequenceClassification``
with one label); each pair's chosen and rejected response are read after its prompt, and the
loss is -log sigmoid(r(chosen) - r(rejected)) (r1lab/losses/reward_model.py). With
``part: summary`` (R1's helpfulness) the model sees only the text after the last ``</think>``; with
``part: full`` (R1's harmlessness) the whole response. The reward is the head's output at the last
token (``pooling: last``, HF's) or its sum over the tokens (``pooling: sum``); the saved config
says which (r1lab/rewards/learned.py). Inputs are built and rewards read by the
functions the scorer uses (r1lab/rewards/learned.py), so a trained model scores pairs in RL
exactly as it did here. Pairs are shuffled per epoch from the seed (step ``s`` always trains the
same pairs, so a resumed run equals an unbroken one); a held-out share of the prompts (all their pairs) gives validation accuracy,
and ``val.json`` holds it for the untrained head and for the trained model.

Departures from the paper: R1 gives no batch size, learning rate or length; InstructGPT's
K-choose-2 comparisons of one prompt are rows of the pairs file here. The data is pairs from a
file or an earlier stage (``{"prompt", "chosen", "rejected"}``, see r1lab.data.jsonl.read_pairs).

    - kind: reward_model
      name: rm
      init: sft                  # or a model path
      data: data/prefs.jsonl     # or an earlier stage that writes data.jsonl
      part: summary
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from r1lab.data.jsonl import read_pairs
from r1lab.io import write_atomic
from r1lab.stages.common import LOSS_REPORT, SupervisedStageConfig, block
from r1lab.settings import Optim, Pooling

if TYPE_CHECKING:
    from r1lab.stages.context import RunContext

Pair = tuple[list[int], list[int]]          # (chosen ids, rejected ids), prompt included in each


class RewardModelConfig(SupervisedStageConfig):
    """A Bradley-Terry reward model on preference pairs (R1: one epoch)."""
    kind: Literal["reward_model"]
    init: str = Field(description="Causal LM to put a scalar head on: an earlier stage's name or a model path.")
    data: str = Field(description="Preference pairs {prompt, chosen, rejected}: an earlier stage that "
                      "writes data.jsonl, or a JSONL (or JSON array) path.")
    epochs: int = Field(1, gt=0, description="Passes over the training pairs (R1: 1).")
    max_length: int = Field(1024, gt=1, description="Prompt + response tokens at most; longer rows keep their end.")
    part: Literal["summary", "full"] = Field("summary", description="What of a response is judged: the text after "
                                           "the last </think> (R1's helpfulness), or all of it (harmlessness).")
    pooling: Pooling = Field("last", description="The reward: the head's output at the last token "
                             "(HF's sequence classification), or summed over every token (token rewards; "
                             "the prompt's terms are the same for all its responses).")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out for validation accuracy, whole prompts at a time.")
    optim: block(Optim, "Optimizer and schedule.", lr=1e-5, warmup_steps=10, min_lr_ratio=0.1)


def encode_pairs(rows: list[dict], tokenizer, cfg: RewardModelConfig) -> list[Pair]:
    """(chosen ids, rejected ids) of each row, as the scorer would build them."""
    from r1lab.rewards.learned import encode_reward_input
    from r1lab.train.supervised import prompt_text
    enc = lambda prompt, reply: encode_reward_input(tokenizer, prompt, reply, part=cfg.part, max_length=cfg.max_length)
    prompts = [prompt_text(r, tokenizer) for r in rows]
    return [(enc(p, r["chosen"]), enc(p, r["rejected"])) for p, r in zip(prompts, rows)]


def pair_rewards(rewards_of, pairs: list[Pair], pad_id: int, ctx: RunContext, *, train: bool,
                 micro: int, n_global: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached [B] rewards of the chosen and the rejected responses, ``micro`` pairs per forward
    (both sides in one batch) through ``rewards_of`` (a :class:`Rewards`, or its DDP wrapper).
    With ``train``, each micro-batch's Bradley-Terry loss is scaled by its share of the pairs (of
    ``n_global`` under torchrun, where ``pairs`` is this rank's share) and backpropagated, so the
    gradients add up to the whole batch's."""
    import torch
    from r1lab.losses.reward_model import bradley_terry_loss
    from r1lab.rewards.learned import collate_reward_inputs
    n_global = n_global or len(pairs)
    chosen, rejected = [], []
    for rows in ctx.dist.micro_batches(rewards_of, len(pairs), micro):
        part = pairs[rows]
        batch = collate_reward_inputs([c for c, _ in part] + [r for _, r in part], pad_id)   # [2b, L]
        with ctx.autocast(), torch.set_grad_enabled(train):
            rewards = rewards_of(batch)                                                 # [2b]
            r_c, r_r = rewards[:len(part)], rewards[len(part):]                         # [b], [b]
            if train:
                loss, _ = bradley_terry_loss(r_c, r_r)
                ctx.dist.backward(loss * len(part) / n_global)
        chosen.append(r_c.detach())
        rejected.append(r_r.detach())
    return torch.cat(chosen), torch.cat(rejected)


def validate(model, val: list[Pair], pad_id: int, cfg: RewardModelConfig, ctx: RunContext) -> dict[str, float]:
    """``val/loss``, ``val/accuracy``, ``val/margin`` over the held-out pairs (eval mode)."""
    from r1lab.rewards.learned import Rewards
    from r1lab.losses.reward_model import bradley_terry_loss
    was_training = model.training
    model.eval()
    r_c, r_r = pair_rewards(Rewards(model), val, pad_id, ctx, train=False,
                            micro=cfg.micro_batch_size or cfg.batch_size)
    model.train(was_training)
    _, stats = bradley_terry_loss(r_c, r_r)
    return {f"val/{k}": v for k, v in stats.items()}


def run(ctx: RunContext, cfg: RewardModelConfig, out: Path) -> None:
    from r1lab.losses.reward_model import bradley_terry_loss
    from r1lab.models.adapters import with_adapters
    from r1lab.models.io import reward_model_from_lm
    from r1lab.rewards.learned import Rewards
    from r1lab.train.loop import TrainLoop
    from r1lab.train.supervised import batch_rows, check_shares, should_validate, split_rows
    model, tokenizer = reward_model_from_lm(ctx.model_path(cfg.init), ctx.device, ctx.seed)
    model.config.reward_pooling = cfg.pooling                       # read by sequence_rewards, saved with the model
    model = with_adapters(model, cfg.lora, ctx.seed, task_type="SEQ_CLS")   # the new head trains too
    path = ctx.data_path(cfg.data)
    split = split_rows(read_pairs(path), cfg.val_fraction, f"rm-val-{ctx.seed}", path, group=lambda row: row["prompt"])
    train, val = (encode_pairs(rows, tokenizer, cfg) for rows in split)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    dist = ctx.dist
    check_shares(len(train), cfg.batch_size, dist, cfg.name)
    loop = TrainLoop(model, cfg, out, total, dist=dist, forward=Rewards(model))
    pad = tokenizer.pad_token_id
    summary = json.loads((out / "val.json").read_text()) if (out / "val.json").exists() else {}
    if val and "start" not in summary:                     # the untrained head, before any step
        summary["start"] = validate(model, val, pad, cfg, ctx)
        if dist.is_main:
            write_atomic(out / "val.json", json.dumps(summary, indent=1) + "\n")
    model.train()
    for step in loop.steps():
        batch = [train[i] for i in batch_rows(step, len(train), cfg.batch_size, ctx.seed)]
        mine = batch[dist.shard(len(batch))]                                # this rank's pairs
        r_c, r_r = pair_rewards(loop.wrapped, mine, pad, ctx, train=True, micro=cfg.micro_batch_size,
                                n_global=len(batch))
        _, stats = bradley_terry_loss(r_c, r_r)
        grad_norm = loop.optimizer_step()
        values = {**stats, "reward/chosen": r_c.mean().item(), "reward/rejected": r_r.mean().item(),
                  "grad_norm": grad_norm, "lr": loop.lr, "epoch": (step + 1) / per_epoch}
        if val and should_validate(step, total, cfg.eval_every):
            values.update(validate(model, val, pad, cfg, ctx))
            if step + 1 == total:
                summary["end"] = {k: values[k] for k in ("val/loss", "val/accuracy", "val/margin")}
        loop.end_step(values, show_keys=("loss", "accuracy"), rows=len(mine))
    loop.finish(tokenizer)
    if val and dist.is_main:                                                # "end" is set at the last step, which always runs
        write_atomic(out / "val.json", json.dumps(summary, indent=1) + "\n")


def memory(cfg: RewardModelConfig, plan) -> dict:
    """Bytes of a micro-batch's forward and backward, chosen and rejected, at their longest row,
    through HF's own modules under a scalar head (r1lab/plan.py)."""
    pairs = plan.target.share(cfg.batch_size)                # micro_batch_size is this rank's
    shape = plan.shape(cfg.init, scalar_head=True)
    trained = shape.params if cfg.lora is None else plan.trained(cfg.init, cfg.lora)
    return plan.supervised(None, trained, shape=shape, length=plan.row_len(cfg),
                           rows=2 * min(cfg.micro_batch_size or pairs, pairs), head=False)


Config = RewardModelConfig
REPORT = LOSS_REPORT
