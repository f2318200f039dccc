"""Mixture-of-experts models: the router's load-balancing loss in every policy loss, and its log.

A tiny MoE base is a ``transformers`` Mixtral (r1lab/models/tiny.py: ``moe: {experts: 4}`` in
a pretrain stage's ``model:`` block), top-k routing per token. Its config asks the forward for
the router logits, so HF computes the load-balancing loss (Switch Transformer, eq. 4) with every
forward and, given labels (pre-training), adds ``router_aux_loss_coef`` times it to the loss.

r1lab's own losses (SFT, DPO, GRPO, PPO, distillation) are computed from the logits, so
:func:`with_router_loss` attaches the coefficient times that loss to the logits: the logits pass
through unchanged and the backward pass also differentiates ``weight * coef * aux``, as if it were
added to whatever loss the caller builds (Megatron-LM's ``MoEAuxLossAutoScaler`` does the same).
``weight`` is the forward's share of the optimizer batch, so micro-batches add up to one term.
Each value is recorded on the model and :class:`r1lab.train.loop.TrainLoop` logs their mean
per step as ``router_aux_loss``.
"""

from __future__ import annotations

import torch

LOG_ATTR = "r1lab_router_losses"


class _PassRouterLoss(torch.autograd.Function):
    """Identity on ``logits``; the backward sends gradient ``weight`` into ``aux``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, aux: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = weight
        ctx.aux_shape, ctx.aux_dtype = aux.shape, aux.dtype
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, grad_logits: torch.Tensor):
        return grad_logits, torch.full(ctx.aux_shape, ctx.weight, dtype=ctx.aux_dtype, device=grad_logits.device), None


def with_router_loss(logits: torch.Tensor, output, model, weight: float = 1.0) -> torch.Tensor:
    """``logits`` carrying ``weight * router_aux_loss_coef * output.aux_loss`` into the backward
    pass, the loss recorded for the log (module docstring); ``logits`` as they are when the
    forward computed no router loss or builds no graph."""
    aux = getattr(output, "aux_loss", None)
    if aux is None or not torch.is_grad_enabled() or not aux.requires_grad:
        return logits
    record(model, output)
    return _PassRouterLoss.apply(logits, aux, weight * model.config.router_aux_loss_coef)


def record(model, output) -> None:
    """Keep the forward's router loss, if it has one, for the step's log."""
    aux = getattr(output, "aux_loss", None)
    if aux is not None:
        model.__dict__.setdefault(LOG_ATTR, []).append(aux.detach().float().item())


def pop_logged(model) -> dict[str, float]:
    """``{"router_aux_loss": mean}`` of the losses recorded since the last call ({} if none)."""
    values = model.__dict__.pop(LOG_ATTR, None)
    return {"router_aux_loss": sum(values) / len(values)} if values else {}


def is_moe(model) -> bool:
    """Whether ``model``'s forward computes a router loss (its config asks for router logits)."""
    return getattr(getattr(model, "config", None), "output_router_logits", False) is True


def router_loss_off(model) -> dict:
    """Forward keywords that skip an MoE model's router loss (evaluation, generation: HF's fails on
    a one-token step with a cache); none for any other model."""
    return {"output_router_logits": False} if is_moe(model) else {}
