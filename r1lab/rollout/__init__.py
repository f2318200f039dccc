"""Generation: one entry point, :func:`generate`, over interchangeable backends.

- ``native`` (r1lab/rollout/native.py): our decoding loop with a preallocated KV cache, for
  Llama- and Qwen2-family models; the default wherever it applies.
- ``hf`` (r1lab/rollout/hf.py): the HF model's forward and cache, for any causal LM, and the
  slow reference ``native`` is tested against token for token.
- ``vllm`` (r1lab/rollout/vllm.py, an optional extra): a vLLM engine in this process, the
  trainer's weights pushed into it before each rollout.

Both take token ids and return a :class:`Rollout` (completion ids, mask, sampled-token
log-probs, finish reasons); the same seed gives the same tokens on either. Stages describe how
they sample with a :class:`Sampling` block and call :func:`sample` with prompt texts.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from torch.distributed.fsdp import FSDPModule

from r1lab.errors import BackendError
from r1lab.models.adapters import merged_for_decoding, plain_model
from r1lab.rollout import hf, native, vllm
from r1lab.rollout.heap import release_free_heap
from r1lab.rollout.types import Rollout
from r1lab.settings import Backend, Sampling
from r1lab.train.watchdog import progress
_TOLD: set[str] = set()          # model types already told to fall back to hf


def generate(model, prompts: list[list[int]], *, backend: Backend = "auto", **kw) -> Rollout:
    """Sample completions of ``prompts`` (see :func:`r1lab.rollout.hf.generate` for the
    arguments). ``auto`` takes ``native`` when it supports the model, else ``hf`` (saying so
    once per model type); ``native`` refuses a model it does not decode exactly. A PEFT
    model decodes with its adapters merged (r1lab/models/adapters.py), an FSDP2-sharded one with
    its weights gathered whole for the duration (every rank generates at once)."""
    sharded = isinstance(model, FSDPModule)
    if sharded and backend == "vllm":
        raise BackendError("the vllm backend does not take an FSDP2-sharded model yet; use data_parallel ddp")
    if sharded and not native.supports(plain_model(model)):  # hf's loop runs a forward per token: ranks would fall out of step
        raise BackendError(f"an FSDP2-sharded {_kind(model)} model cannot be decoded: the native backend does not "
                           f"cover it; use data_parallel ddp")
    progress()                                                      # the stall watchdog's heartbeat
    with unsharded(model), merged_for_decoding(model) as plain:     # gathered first: adapters merge into whole weights
        release_free_heap(next(plain.parameters()).device)          # training's freed pages before the KV cache
        if backend == "vllm":
            return vllm.generate(plain, prompts, **kw)
        if native.supports(plain) and backend in ("auto", "native"):
            return native.generate(plain, prompts, **kw)
        kind = _kind(plain)
        if backend == "native":
            raise BackendError(f"backend native does not decode {kind} models exactly; use backend hf or auto")
        if backend == "auto" and kind not in _TOLD:
            _TOLD.add(kind)
            print(f"r1lab: the native decoder does not cover {kind} models (e.g. mixtures of experts); "
                  f"generating with hf", file=sys.stderr)
        return hf.generate(plain, prompts, **kw)


def _kind(model) -> str:
    """The model's type for messages: ``'llama'``, ``'mixtral'``, ..."""
    return getattr(model.config, "model_type", type(model).__name__)


@contextlib.contextmanager
def unsharded(model) -> Iterator[None]:
    """An FSDP2-sharded model's weights gathered whole on every rank for the duration (its
    parameters are then plain tensors, which the native backend reads), sharded again after;
    any other model untouched."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def engine_options(sampling: Sampling) -> dict:
    """The vllm backend's engine settings from a ``sampling:`` block (none for the others)."""
    if sampling.backend != "vllm":
        return {}
    return {"gpu_memory_utilization": sampling.vllm_gpu_memory_utilization, "sleep": bool(sampling.vllm_sleep)}


def sample(model, tokenizer, prompts: list[str], *, n: int, sampling: Sampling, seed: int,
           greedy: bool = False, rows_in: tuple[int, int] | None = None) -> tuple[list[list[int]], Rollout]:
    """Tokenize ``prompts`` and sample ``n`` completions of each (rows prompt-major: row
    ``i * n + j`` is sample ``j`` of prompt ``i``); ``greedy`` takes the argmax instead;
    ``rows_in`` places the rows in a batch split among ranks (:func:`r1lab.rollout.hf.generate`).
    Returns the prompts' token ids and the :class:`Rollout`."""
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    stop_ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sampling.stop]
    rollout = generate(model, prompt_ids, n=n, max_new_tokens=sampling.max_new_tokens,
                       temperature=0.0 if greedy else sampling.temperature, top_p=sampling.top_p,
                       top_k=sampling.top_k, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, stop=stop_ids, seed=seed, backend=sampling.backend,
                       rows_in=rows_in, **engine_options(sampling))
    return prompt_ids, rollout


__all__ = ["Backend", "Rollout", "Sampling", "generate", "hf", "native", "sample", "vllm"]
