"""Generation: one entry point, :func:`generate`, over interchangeable backends.

- ``native`` (r1lab/rollout/native.py): our decoding loop with a preallocated KV cache, for
  Llama- and Qwen2-family models; the default wherever it applies.
- ``hf`` (r1lab/rollout/hf.py): the HF model's forward and cache, for any causal LM, and the
  slow reference ``native`` is tested against token for token.

Both take token ids and return a :class:`Rollout` (completion ids, mask, sampled-token
log-probs, finish reasons); the same seed gives the same tokens on either.
"""

from __future__ import annotations

from typing import Literal

from r1lab.rollout import hf, native
from r1lab.rollout.types import Rollout

Backend = Literal["auto", "native", "hf"]


def generate(model, prompts: list[list[int]], *, backend: Backend = "auto", **kw) -> Rollout:
    """Sample completions of ``prompts`` (see :func:`r1lab.rollout.hf.generate` for the
    arguments). ``auto`` takes ``native`` when it supports the model, else ``hf``."""
    if backend == "native" or (backend == "auto" and native.supports(model)):
        return native.generate(model, prompts, **kw)
    return hf.generate(model, prompts, **kw)


__all__ = ["Backend", "Rollout", "generate", "hf", "native"]
