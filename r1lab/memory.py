"""What a stage holds in memory, in bytes, worked out from a model's shape before it runs
(``r1lab run --plan``, r1lab/plan.py). Each stage module's ``memory(cfg, plan)`` adds up these
parts for its phases; the plan prints them and their peak.

The parts follow what r1lab keeps (docs/gpu-memory.md has the reasoning for a GPU):
- weights in float32 (4 bytes a parameter) on every device, LoRA's adapters beside them; AdamW's
  gradient and two moments, 12 bytes a trained parameter; under DDP one more float32 copy of the
  gradients (its buckets);
- the rollout's KV cache in float32: the native engine's two preallocated caches (the prompts
  once, every row's completion up to ``max_new_tokens``: the worst case, where no row stops
  early), or HF's, which copies the prompt into every row; its logits, and on the CPU the native
  engine's oneDNN-packed copy of the matmul weights (r1lab/rollout/native.py);
- what autograd keeps for backward in one micro-batch. On the CPU (float32) about ``44 h + 14 I``
  bytes a token a layer, plus ``33 kv`` bytes a prompt position a completion row (its prompt's
  keys and values, selected per row): fitted to ``torch.autograd.graph.saved_tensors_hooks``
  counts (benchmarks/saved_activations.py's method) of the packed forward over 13 shapes from
  h = 256 to SmolLM2's 576, within 16% of each; HF's own modules keep about as much on unpadded
  rows (40 h + 16 I measured at three shapes). On CUDA (bf16 autocast) ``28 h + 10 I`` bytes a
  token a layer, the figure docs/gpu-memory.md works out for HF's layers and its H100 run checked.
- the LM head: the packed forward's float32 chunks (no [tokens, V] logits kept), or the other
  forwards' logits of every completion position, their gradient, and float32 chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lab.forward import CHUNK_SIZE
from r1lab.forward.packed import head_tile
from r1lab.rollout.native import PACK_MIN_BYTES

FLOAT = 4                         # bytes: weights, moments, KV cache and CPU activations are float32
PAGE = 4096                       # bytes the kernel makes resident at a time


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a causal LM."""
    params: int
    layers: int
    hidden: int
    intermediate: int             # MLP width (a MoE's: each token's experts together)
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    untied_head: int = 0          # parameters of an LM head that is not the input embedding
    window: int | None = None     # every layer's sliding window, if they all have one

    @property
    def weights(self) -> int:
        return FLOAT * self.params

    @property
    def kv_token(self) -> int:
        """KV-cache bytes of one position, every layer."""
        return self.layers * 2 * self.kv_heads * self.head_dim * FLOAT

    def scalar_head(self) -> Shape:
        """The same backbone under a one-output head (a reward or value model): no LM head."""
        return Shape(**{**self.__dict__, "params": self.params - self.untied_head + self.hidden, "untied_head": 0})


@dataclass(frozen=True)
class Target:
    """The device planned for: ``cpu`` or ``cuda``, its memory in bytes, the ranks of a run."""
    device: str
    memory: int
    ranks: int = 1
    fsdp: bool = False

    def share(self, n: int) -> int:
        """This rank's part of ``n`` rows."""
        return -(-n // self.ranks)


def moments(trained: int, target: Target) -> dict[str, int]:
    """AdamW's two float32 moments of the trained parameters (an FSDP2 shard of them), and DDP's
    gradient buckets: alive from the first optimizer step on, through rollouts too."""
    sharded = target.fsdp and target.ranks > 1
    parts = {"AdamW moments": 2 * FLOAT * trained // (target.ranks if sharded else 1)}
    if target.ranks > 1 and not sharded:
        parts["DDP buckets"] = FLOAT * trained
    return parts


def gradients(trained: int, target: Target) -> dict[str, int]:
    """The float32 gradients between backward and optimizer step (an FSDP2 shard), and the moments."""
    sharded = target.fsdp and target.ranks > 1
    return {"gradients": FLOAT * trained // (target.ranks if sharded else 1), **moments(trained, target)}


def activations(shape: Shape, target: Target, tokens: int, rows: int = 0, prompt_len: int = 0, *,
                recompute: bool = False) -> int:
    """What one micro-batch's forward keeps for its backward: ``tokens`` tokens through the
    layers, ``rows`` completions after ``prompt_len`` prompt positions; ``recompute``: activation
    checkpointing, each block's input kept and one block's activations alive at a time."""
    if target.device == "cuda":
        layer = tokens * (28 * shape.hidden + 10 * shape.intermediate)
    else:
        kv = shape.kv_heads * shape.head_dim
        layer = tokens * (44 * shape.hidden + 14 * shape.intermediate) + 33 * rows * prompt_len * kv
    if recompute:
        return shape.layers * tokens * shape.hidden * FLOAT + layer
    return shape.layers * layer


def head(shape: Shape, target: Target, rows: int, positions: int, *, packed: bool = True, kept: bool = False) -> int:
    """The LM head's logits a micro-batch holds at once: the packed forward's float32 tiles
    (a tile's forward and backward hold three) and, ``kept`` for the backward (training without
    activation checkpointing), every position's float32 logits; or every position's logits
    (bf16 on CUDA), their gradient and float32 chunks of ``CHUNK_SIZE`` positions."""
    if packed:
        tile_rows, tile_cols = head_tile(CHUNK_SIZE, shape.vocab, target.device)
        return (3 * min(tile_rows, rows * positions) * tile_cols + kept * rows * positions * shape.vocab) * FLOAT
    width = 2 if target.device == "cuda" else FLOAT
    return rows * positions * shape.vocab * 2 * width + 3 * rows * min(positions, CHUNK_SIZE) * shape.vocab * FLOAT


def rollout(shape: Shape, target: Target, prompts: int, rows: int, prompt_len: int, new_tokens: int,
            used: int | None = None, *, engine: str = "native") -> dict[str, int]:
    """The parts of sampling ``rows`` completions of ``prompts`` prompts, up to ``new_tokens``
    each. The native engine preallocates its completion cache, a ring of ``window`` slots where
    the model has one; on the CPU only the pages rows write are resident, so it counts ``used``
    tokens a row in whole pages of each layer's and head's run of slots, while CUDA's allocator
    holds all of it. HF's engine grows a cache a row, its prompt copied into each."""
    hf = engine == "hf"
    slots = new_tokens if shape.window is None else min(shape.window, new_tokens)
    slab = slots * shape.head_dim * FLOAT                            # one layer, K or V, head, row
    if target.device == "cpu" and used is not None:
        slab = min(slab, -(-used * shape.head_dim * FLOAT // PAGE) * PAGE)
    completion = rows * shape.layers * 2 * shape.kv_heads * slab
    filled = rows if hf else prompts                                 # prompts prefilled (and cached)
    parts = {"KV cache": shape.kv_token * filled * prompt_len + completion,
             "decode logits": 3 * rows * shape.vocab * FLOAT,
             "prefill": filled * prompt_len * (2 * shape.hidden + 2 * shape.intermediate) * FLOAT
             + filled * shape.heads * prompt_len * prompt_len * FLOAT}
    packed_copy = shape.weights - FLOAT * shape.untied_head         # the matmuls' weights, the embedding's not
    if not hf and target.device == "cpu" and shape.weights >= PACK_MIN_BYTES:
        parts["packed weights"] = packed_copy
    return parts


def packed_tokens(rows: int, group: int, prompt_len: int, new_tokens: int) -> int:
    """Tokens of the packed forward over ``rows`` completions in groups of ``group`` sharing a
    prompt, at worst (a micro-batch that straddles groups holds one prompt more)."""
    prompts = min(rows, -(-rows // group) + (1 if rows % group else 0))
    return prompts * prompt_len + rows * new_tokens
