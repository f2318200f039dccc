"""LoRA and DoRA adapters through PEFT, for every stage that trains a model from ``init``.

A stage with a ``lora:`` block wraps the model it loads in PEFT adapters; only the adapters
(and, for a reward model, its new scalar head) train::

    lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: all-linear, use_dora: false}

- The KL reference of GRPO and PPO is the same weights with the adapters switched off
  (:class:`AdaptersOff`): no second copy of the model is loaded.
- Rollouts see the adapted weights: :func:`r1lab.rollout.generate` decodes a PEFT model with its
  adapters merged into the base weights (:func:`merged_for_decoding`) and unmerges them after,
  as TRL does before it pushes weights to vLLM. An adapter is never silently ignored.
- The stage's ``model/`` is a plain HF checkpoint with the adapters merged, which any later
  stage or tool loads without PEFT; ``adapter/`` beside it holds the adapter alone (PEFT format).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from r1lab.settings import Lora

if TYPE_CHECKING:
    from peft import PeftModel


def with_adapters(model, lora: Lora | None, seed: int, task_type: str = "CAUSAL_LM"):
    """``model`` wrapped in fresh adapters (B = 0, so it computes what it did), the rest frozen;
    ``model`` itself when ``lora`` is None. A's random init comes from ``seed`` without touching
    the global RNG. ``task_type="SEQ_CLS"`` also trains a reward model's new scalar head."""
    if lora is None:
        return model
    from peft import LoraConfig, get_peft_model     # here: importing peft takes seconds, configs need none of it
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, use_dora=lora.use_dora, task_type=task_type)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config)


def is_adapted(model) -> bool:
    peft = sys.modules.get("peft")              # a model can only be a PeftModel once peft is imported
    return peft is not None and isinstance(model, peft.PeftModel)


def plain_model(model):
    """The transformers model under a PEFT wrapper or :class:`AdaptersOff` (its linear layers may
    hold adapters); any other model as it is."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def merged_for_decoding(model) -> Iterator[object]:
    """The plain transformers model to decode with: for a PEFT model, its adapters merged into
    the base weights for the duration (every layer then reads W + scale * B @ A), unmerged after
    (restoring W to float rounding, ~1 ulp); any other model as it is."""
    if not is_adapted(model):
        yield model
        return
    with torch.no_grad():
        model.merge_adapter()
    try:
        yield model.get_base_model()
    finally:
        with torch.no_grad():
            model.unmerge_adapter()


class AdaptersOff:
    """A frozen reference that is the adapted model with its adapters switched off: the base
    weights, with no second copy. Calls run under PEFT's ``disable_adapter()``."""

    def __init__(self, model: PeftModel):
        self.model = model

    def __call__(self, **inputs):
        with self.model.disable_adapter():
            return self.model(**inputs)

    def parameters(self):
        return self.model.parameters()

    def get_base_model(self):
        return self.model.get_base_model()

    def eval(self):
        return self


def frozen_reference(policy, load):
    """The KL reference of ``policy``: its own base weights when it carries adapters, else a
    frozen copy from ``load()`` (the init checkpoint, loaded a second time)."""
    return AdaptersOff(policy) if is_adapted(policy) else load().eval().requires_grad_(False)


def save_adapted(model, tokenizer, out: Path, save) -> None:
    """Save a trained model with ``save(model, tokenizer, dir)``: a PEFT model's adapter alone to
    ``out.parent/adapter``, then its merged weights (merged in place: call last) to ``out``."""
    if is_adapted(model):
        save(model, tokenizer, out.parent / "adapter")
        model = model.merge_and_unload()
    save(model, tokenizer, out)
