"""The tiny base model: a Llama (dense) or Mixtral (mixture of experts) ``transformers`` model
built from a small config."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerBase

from r1lab.settings import TinyModelConfig


def tiny_config(cfg: TinyModelConfig, vocab_size: int, eos_token_id: int | None = None,
                pad_token_id: int | None = None) -> LlamaConfig | MixtralConfig:
    """The transformers config of the model ``cfg`` describes, with this vocabulary."""
    shape = dict(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_embeddings, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        bos_token_id=None,
    )
    if cfg.moe is None:
        return LlamaConfig(**shape)
    return MixtralConfig(**shape, num_local_experts=cfg.moe.experts, num_experts_per_tok=cfg.moe.experts_per_token,
                         router_aux_loss_coef=cfg.moe.router_aux_loss_coef, output_router_logits=True)


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int):
    """A randomly initialised Llama (or, with ``moe``, Mixtral) whose vocabulary matches ``tokenizer``.
    The Mixtral computes its router loss in every forward (r1lab/models/moe.py)."""
    config = tiny_config(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return (LlamaForCausalLM if cfg.moe is None else MixtralForCausalLM)(config)
