"""The tiny base model: a Llama-family ``transformers`` model built from a small config."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


class TinyModelConfig(BaseModel):
    """Shape of the Llama model the pretrain stage builds from random init."""
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(128, gt=0, description="Width of the residual stream.")
    num_layers: int = Field(4, gt=0, description="Transformer blocks.")
    num_heads: int = Field(4, gt=0, description="Attention heads (must divide hidden_size).")
    num_kv_heads: int = Field(4, gt=0, description="Key/value heads (grouped-query attention when fewer).")
    intermediate_size: int = Field(384, gt=0, description="SwiGLU hidden width.")
    max_position_embeddings: int = Field(256, gt=0, description="Longest sequence the model may see.")
    tie_embeddings: bool = Field(True, description="Share the input embedding and the output head.")
    vocab_size: int = Field(512, ge=264, description="BPE vocabulary size, special tokens and tags included.")


def build_tiny_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama whose vocabulary matches ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size, max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_embeddings, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
