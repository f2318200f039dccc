"""The tiny base model: a Llama (dense) or Mixtral (mixture of experts) ``transformers`` model
built from a small config."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM, PreTrainedTokenizerBase


class Moe(BaseModel):
    """The ``moe:`` block of a tiny model: experts per layer and top-k routing."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    experts: int = Field(4, gt=1, description="Experts per layer.")
    experts_per_token: int = Field(2, gt=0, description="Experts each token is routed to (top-k).")
    router_aux_loss_coef: float = Field(0.01, ge=0, description="Weight of the router's load-balancing loss "
                                        "in every training loss.")

    @model_validator(mode="after")
    def _top_k_within_experts(self):
        if self.experts_per_token > self.experts:
            raise ValueError(f"experts_per_token ({self.experts_per_token}) exceeds experts ({self.experts})")
        return self


class TinyModelConfig(BaseModel):
    """Shape of the Llama model the pretrain stage builds from random init."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    hidden_size: int = Field(128, gt=0, le=1 << 16, description="Width of the residual stream.")
    num_layers: int = Field(4, gt=0, le=1024, description="Transformer blocks.")
    num_heads: int = Field(4, gt=0, description="Attention heads (must divide hidden_size).")
    num_kv_heads: int = Field(4, gt=0, description="Key/value heads (grouped-query attention when fewer).")
    intermediate_size: int = Field(384, gt=0, le=1 << 18, description="SwiGLU hidden width.")
    max_position_embeddings: int = Field(256, gt=0, le=1 << 20, description="Longest sequence the model may see.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the output head.")
    vocab_size: int = Field(512, ge=264, le=1 << 18, description="BPE vocabulary size, special tokens and tags included.")
    moe: Moe | None = Field(None, description="Mixture of experts: a Mixtral whose MLPs are experts "
                            "(intermediate_size is then each expert's width); unset: a dense Llama.")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads})")
        return self


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
