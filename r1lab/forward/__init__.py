"""The training forward: per-token log-probs of completions after prompts (every stage that
scores completions: GRPO, PPO, SFT, DPO, distillation, and RL's reference and old-policy
forwards), and a value model's per-token values at the same positions.

:func:`completion_logprobs` takes the fastest exact path the model allows: packed.py (Llama and
Qwen2 families), shared_prefix.py (under DDP, and any other HF causal LM), or the plain padded
forward defined here, the slow reference both are tested against. lean_ops.py holds the
packed walk's memory-lean elementwise ops."""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch.distributed.fsdp import FSDPModule
from transformers import PreTrainedModel

from r1lab.forward.packed import packed_logprobs, supports as packs
from r1lab.forward.shared_prefix import cache_keyword, shared_prefix_logprobs
from r1lab.losses.logprobs import chunked_logprobs
from r1lab.models.adapters import AdaptersOff, is_adapted, plain_model
from r1lab.models.moe import is_moe, with_router_loss
from r1lab.models.recompute import recomputes
from r1lab.rollout.types import left_pad
from r1lab.train.distributed import in_row_order, local_module, micro_batch_slices
from r1lab.train.watchdog import progress

# Sequence positions whose logits are upcast to float32 at once: [N, 64, V] is 0.6 GB for
# Qwen's 151,936-token vocabulary at N = 16, against 5.0 GB for all 512 positions.
CHUNK_SIZE = 64


def prompt_completion_batch(prompts: list[list[int]], completion_ids: torch.Tensor,
                            completion_mask: torch.Tensor, pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts followed by right-padded completions, as one model input.

    prompts: one id list per row (already repeated per sample); completion_ids/mask: [N, L].
    Returns input_ids, attention_mask, position_ids [N, P+L] and completion_mask [N, L].
    """
    p_ids, p_mask = left_pad(prompts, pad_id)                               # [N, P]
    c_mask = completion_mask.long()
    ids = torch.cat([p_ids, completion_ids.masked_fill(~completion_mask.bool(), pad_id)], 1)  # [N, P+L]
    attn = torch.cat([p_mask, c_mask], 1)                                   # [N, P+L]
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attn, "position_ids": pos,
            "completion_mask": completion_mask.bool()}


def completion_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                        with_entropy: bool = False, aux_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(completion token) for each completion position: [N, L], and optionally entropy [N, L];
    masked positions hold no log-prob to use (0 on the fast path).

    Fast paths, where they take the model: the packed walk (r1lab/forward/packed.py: each distinct
    prompt once, no padding through any weight), else HF's forward with a shared prompt KV cache
    (r1lab/forward/shared_prefix.py); else ``plain_completion_logprobs``, the reference of both.
    """
    if isinstance(model, AdaptersOff):        # a LoRA policy's reference: the same paths, adapters off
        with model.model.disable_adapter():
            return completion_logprobs(model.model, batch, temperature=temperature, with_entropy=with_entropy,
                                       aux_weight=aux_weight)
    fast = dict(temperature=temperature, with_entropy=with_entropy, chunk_size=CHUNK_SIZE)
    if _fast_paths_may_take(model):
        if _packs(model):
            return packed_logprobs(model, batch, **fast)
        if _shares_prefix(model):
            return shared_prefix_logprobs(model, batch, **fast)
    return plain_completion_logprobs(model, batch, temperature=temperature, with_entropy=with_entropy,
                                     aux_weight=aux_weight)


def _fast_paths_may_take(model) -> bool:
    """Neither fast path takes an FSDP2-sharded model (its hooks gather weights in its own
    forward) or a mixture of experts (the router loss comes from the plain forward)."""
    return not isinstance(model, FSDPModule) and not is_moe(plain_model(local_module(model)))


def _packs(model) -> bool:
    """Whether the packed walk (r1lab/forward/packed.py) takes ``model``, given
    :func:`_fast_paths_may_take`: a transformers or PEFT model itself, as the walk bypasses any
    wrapper's forward (DDP's hooks live in its)."""
    return (isinstance(model, PreTrainedModel) or is_adapted(model)) and packs(model)


def _shares_prefix(model) -> bool:
    """Whether the shared-prefix forward takes ``model``, given :func:`_fast_paths_may_take` (its
    module docstring says which others it does not). Not with HF's activation checkpointing on
    while training: HF's forward then returns no KV cache for the prompts to share."""
    inner = plain_model(local_module(model))
    return (_takes_logits_to_keep(type(inner)) and cache_keyword(type(inner)) is not None
            and not recomputes(inner))


def plain_completion_logprobs(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                              with_entropy: bool = False, aux_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``completion_logprobs`` by one plain forward over the whole padded batch.

    Log-probs and entropy are of softmax(logits / temperature), so the numbers match the
    sampler's. The model is asked only for the L + 1 logits after the prompt (HF's
    ``logits_to_keep``) where its forward takes that argument; temperature and entropy are
    applied chunk by chunk, so besides the model's own logits and their gradient no [N, L, V]
    float copy is made. ``aux_weight``: see :func:`completion_logits`.
    """
    logits, ids = completion_logits(model, batch, aux_weight)                  # [N, L, V], [N, L]
    return chunked_logprobs(logits, ids, CHUNK_SIZE, temperature=temperature, with_entropy=with_entropy)


def completion_logits(model, batch: dict[str, torch.Tensor], aux_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict each completion token, a [N, L, V] view of the model's output,
    and the completion ids [N, L] on the model's device. Only the L + 1 logits after the prompt
    are asked for where the model's forward takes HF's ``logits_to_keep`` (a PEFT model passes
    it on to the model it wraps). An MoE model's router loss rides along into the backward pass,
    at ``aux_weight`` (this forward's share of the batch) times its coefficient (r1lab/models/moe.py)."""
    device = next(model.parameters()).device
    n_completion = batch["completion_mask"].shape[1]
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    if _takes_logits_to_keep(type(plain_model(local_module(model)))):
        inputs["logits_to_keep"] = n_completion + 1
    output = model(**inputs)                                           # through DDP's wrapper under torchrun
    logits = with_router_loss(output.logits, output, local_module(model), aux_weight)  # [N, L+1, V], or [N, P+L, V] without
    return logits[:, -n_completion - 1:-1], inputs["input_ids"][:, -n_completion:]


def completion_values(critic, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The value model's V(state before completion token t) for each completion position: [N, L].

    ``critic`` emits one number per position (HF's ``...ForTokenClassification`` with one label).
    The value of the state that emits token t is read where the logits predicting t are read:
    at the position before t (the last prompt token for t = 0), as TRL's PPO trainer does.
    """
    device = next(critic.parameters()).device
    n_completion = batch["completion_mask"].shape[1]
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")}
    values = critic(**inputs, use_cache=False).logits                        # [N, P+L, 1]
    return values[:, -n_completion - 1:-1, 0].float()                         # [N, L]


@torch.no_grad()
def logprobs_no_grad(model, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
                     micro_batch_size: int = 0, autocast=contextlib.nullcontext) -> torch.Tensor:
    """Completion log-probs [N, L] of a frozen model (a reference, or the policy that sampled
    the batch), ``micro_batch_size`` rows at a time (0 = all), on the CPU in float32.
    ``autocast`` makes the context each forward runs under (the stage's ``ctx.autocast``)."""
    forward = lambda part: completion_logprobs(model, part, temperature=temperature)[0]
    return _in_parts(forward, batch, micro_batch_size, autocast)


@torch.no_grad()
def values_no_grad(critic, batch: dict[str, torch.Tensor], *, micro_batch_size: int = 0,
                   autocast=contextlib.nullcontext) -> torch.Tensor:
    """``completion_values`` [N, L] without a graph, in parts as ``logprobs_no_grad``."""
    return _in_parts(lambda part: completion_values(critic, part), batch, micro_batch_size, autocast)


def _in_parts(forward, batch: dict[str, torch.Tensor], micro_batch_size: int, autocast) -> torch.Tensor:
    """``forward`` over the batch's micro-batches, largest first (as training takes them:
    :func:`micro_batch_slices`), its results put back in row order."""
    parts = {}
    for rows in micro_batch_slices(batch["input_ids"].shape[0], micro_batch_size, batch["attention_mask"].sum(1)):
        progress()                                                           # the stall watchdog's heartbeat
        with autocast():
            parts[rows.start] = forward({k: v[rows] for k, v in batch.items()}).float().cpu()
    return in_row_order(parts)                                               # [N, L]


@functools.cache
def _takes_logits_to_keep(model_class: type) -> bool:
    """Whether ``model_class.forward`` accepts HF's ``logits_to_keep`` (Llama, Qwen2, ... do)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters
