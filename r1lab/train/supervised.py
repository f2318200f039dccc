"""What the supervised stages share (sft, distill, dpo, reward_model): rows to token ids, batches
of them, a seeded held-out split, the step's rows, and the next-token loss of a batch.

A row is tokenized as the RL stages see it: prompt and completion apart, EOS after the
completion. Step ``s`` always trains the same rows (:func:`batch_rows`), so a run resumed
mid-epoch neither repeats nor skips a batch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from pathlib import Path

import torch

from r1lab.errors import DataError
from r1lab.forward import completion_logprobs, prompt_completion_batch
from r1lab.losses.sft import sft_nll

Encoded = tuple[list[int], list[int]]        # prompt ids, completion ids + EOS


def prompt_text(row: dict, tokenizer) -> str:
    """A row's prompt as the model reads it: chat messages (``messages`` up to the last, or a
    pair's ``prompt_messages``) rendered with the tokenizer's template up to the assistant's
    turn, else ``prompt`` as written."""
    if "messages" in row:
        return tokenizer.apply_chat_template(row["messages"][:-1], tokenize=False, add_generation_prompt=True)
    if "prompt_messages" in row:
        return tokenizer.apply_chat_template(row["prompt_messages"], tokenize=False, add_generation_prompt=True)
    return row["prompt"]


def prompt_and_completion(row: dict, tokenizer) -> tuple[str, str]:
    """A row's prompt text (:func:`prompt_text`) and its completion text."""
    completion = row["messages"][-1]["content"] if "messages" in row else row["completion"]
    return prompt_text(row, tokenizer), completion


def encode(rows: list[dict], tokenizer, max_length: int) -> list[Encoded]:
    """(prompt ids, completion ids + EOS) per row, the completion cut to fit ``max_length``.
    Prompt and completion are tokenized apart, exactly as the RL stages see them."""
    out = []
    for row in rows:
        prompt, completion = prompt_and_completion(row, tokenizer)
        p = tokenizer(prompt)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((p, c[:max(1, max_length - len(p))]))
    return out


def collate(pairs: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts then right-padded completions: the batch of ``prompt_completion_batch``."""
    width = max(len(c) for _, c in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)                  # [B, L]
    mask = torch.zeros((len(pairs), width), dtype=torch.bool)                        # [B, L]
    for i, (_, c) in enumerate(pairs):
        ids[i, :len(c)] = torch.tensor(c)
        mask[i, :len(c)] = True
    return prompt_completion_batch([p for p, _ in pairs], ids, mask, pad_id)


def split_rows(rows: list, fraction: float, key: str, source: Path,
               group: Callable[[object], Hashable] | None = None) -> tuple[list, list]:
    """(train, val), both in file order: a share ``fraction`` of ``rows`` held out, drawn from
    the stream named ``key`` (e.g. ``f"sft-val-{seed}"``). With ``group`` (a row -> its group,
    e.g. its prompt) whole groups are held out, so no held-out prompt is seen in training.
    At least one group is left to train on; none at all is a :class:`DataError` naming ``source``.

    >>> split_rows(list("abcdefghij"), 0.2, "doc", Path("rows.jsonl"))
    (['a', 'b', 'd', 'e', 'f', 'h', 'i', 'j'], ['c', 'g'])
    """
    keys = [group(row) for row in rows] if group else list(range(len(rows)))
    groups = list(dict.fromkeys(keys))
    random.Random(key).shuffle(groups)
    size: dict = {}
    for k in keys:
        size[k] = size.get(k, 0) + 1
    held, n_val, want = set(), 0, math.ceil(fraction * len(rows)) if fraction > 0 else 0
    for k in groups[:-1]:
        if n_val >= want:
            break
        held.add(k)
        n_val += size[k]
    train = [row for row, k in zip(rows, keys) if k not in held]
    if not train:
        raise DataError(f"{source}: no rows to train on")
    return train, [row for row, k in zip(rows, keys) if k in held]


def should_validate(step: int, total: int, every: int) -> bool:
    """Whether 0-based ``step`` of ``total`` ends with a validation pass: every ``every`` steps and at the end."""
    return (step + 1) % every == 0 or step + 1 == total


def batch_rows(step: int, n_rows: int, batch_size: int, seed: int) -> list[int]:
    """Row indices of step ``step``: epoch ``step // steps_per_epoch`` in its own shuffled order
    (the last batch of an epoch may be short)."""
    per_epoch = math.ceil(n_rows / batch_size)
    epoch, i = divmod(step, per_epoch)
    order = list(range(n_rows))
    random.Random(f"sft-{seed}-{epoch}").shuffle(order)
    return order[i * batch_size:(i + 1) * batch_size]


def check_shares(n_rows: int, batch_size: int, dist, stage: str) -> None:
    """Every batch, the short last one of an epoch included, must give each rank a row."""
    smallest = n_rows - (math.ceil(n_rows / batch_size) - 1) * batch_size
    dist.check_share(min(batch_size, n_rows), f"stage {stage!r}: batch_size")
    dist.check_share(smallest, f"stage {stage!r}: the last batch of an epoch (batch_size {batch_size}, "
                               f"{n_rows} training rows)")


def shard_batch(chosen: list[Encoded], reduction: str, dist) -> tuple[list[Encoded], float]:
    """This rank's share of a batch of (prompt, completion) pairs, and the whole batch's normaliser."""
    normalizer = sum(len(c) for _, c in chosen) if reduction == "token" else len(chosen)
    return chosen[dist.shard(len(chosen))], normalizer


def nll_batch(model, pairs: list[Encoded], pad_id: int, reduction: str, ctx, *, train: bool, micro: int,
              normalizer: float | None = None) -> float:
    """Next-token loss of ``pairs`` (completion tokens only) as one batch, computed ``micro`` rows
    at a time; with ``train`` the gradients accumulate to the whole batch's. ``reduction``:
    "token" (mean over the batch's completion tokens) or "sequence" (per completion, then over
    completions). Under torchrun ``pairs`` is this rank's share of a batch whose ``normalizer``
    (tokens or rows) is given: the loss returned is then this rank's part of the batch's, and the
    ranks' gradients add up to the batch's."""
    tokens = sum(len(c) for _, c in pairs)
    normalizer = normalizer or (tokens if reduction == "token" else len(pairs))
    total = 0.0
    for rows in ctx.dist.micro_batches(model, len(pairs), micro):
        batch = collate(pairs[rows], pad_id)
        with ctx.autocast(), torch.set_grad_enabled(train):
            logp, _ = completion_logprobs(model, batch, aux_weight=len(batch["input_ids"]) / len(pairs))  # [b, L]
            loss, _ = sft_nll(logp, batch["completion_mask"].to(logp.device), reduction=reduction,
                              normalizer=normalizer)
        if train:
            ctx.dist.backward(loss)
        total += loss.item()
    return total
