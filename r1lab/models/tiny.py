"""The tiny base model: a Llama (dense) or Mixtral (mixture of experts) ``transformers`` model
built from a small config."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerBase

from r1lab.settings import TinyModelConfig


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int):
    """A randomly initialised Llama (or, with ``moe``, Mixtral) whose vocabulary matches ``tokenizer``.
    The Mixtral computes its router loss in every forward (r1lab/models/moe.py)."""
    shape = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_embeddings, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    if cfg.moe is None:
        return LlamaForCausalLM(LlamaConfig(**shape))
    return MixtralForCausalLM(MixtralConfig(**shape, num_local_experts=cfg.moe.experts,
                                            num_experts_per_tok=cfg.moe.experts_per_token,
                                            router_aux_loss_coef=cfg.moe.router_aux_loss_coef,
                                            output_router_logits=True))
