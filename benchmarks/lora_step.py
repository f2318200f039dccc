"""A GRPO training step with LoRA (PEFT) against full fine-tuning: same model, same batch.

Workload per model shape: 16 prompts x 8 completions (128 rows) of 24 prompt and 96 completion
tokens (random ids, every token a completion token), beta 0.04, fp32. One step = the KL
reference's forward (no grad), the policy's forward and backward, AdamW's step. Generation is
left out: it is the same for both but for merging the adapters, timed on its own
(``merge_s``, merge + unmerge, what each rollout adds).

- full: the policy trains every weight; the reference is a second frozen copy, as in r1lab's
  GRPO stage without ``lora:``.
- lora / dora: rank 16, alpha 32, every linear layer but the head; the reference is the same
  weights with the adapters off (no copy).

Each (shape, mode) runs in a fresh subprocess: the base model is built, the peak-RSS mark
(VmHWM) reset, then the reference, adapters and optimizer are made and ``--steps`` steps run
after one warm-up; it reports the best step time and the peak RSS rise over the RSS with the
base model alone. The modes run one after another, in the order given.

    python benchmarks/lora_step.py              # one JSON line
    python benchmarks/lora_step.py --shapes tiny --steps 2
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r1lab.models.adapters import Lora, frozen_reference, merged_for_decoding, with_adapters
from r1lab.pipeline import peak_rss_mb, reset_peak_rss, rss_mb
from r1lab.stages.context import RunContext
from r1lab.stages.grpo import GrpoConfig, grpo_batch
from r1lab.forward import logprobs_no_grad
from r1lab.train.optim import build_optimizer

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=384, vocab_size=300),
    "25m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=1376, vocab_size=8192),
}
MODES = {"full": None, "lora": Lora(r=16, alpha=32), "dora": Lora(r=16, alpha=32, use_dora=True)}
ROWS, PROMPT, COMPLETION = 128, 24, 96


def build(shape: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def a_batch(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (ROWS, PROMPT + COMPLETION), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(PROMPT + COMPLETION).expand(ROWS, -1),
            "completion_mask": torch.ones(ROWS, COMPLETION, dtype=torch.bool)}


def one_mode(shape: str, mode: str, steps: int) -> dict:
    """In a fresh process: peak RSS rise and best step time of ``mode`` on ``shape``."""
    model = build(shape)
    batch = a_batch(model.config.vocab_size)
    reset_peak_rss()
    base_rss = rss_mb()
    policy = with_adapters(model, MODES[mode], seed=0)
    ref = frozen_reference(policy, lambda: copy.deepcopy(model))
    opt = build_optimizer(policy, lr=1e-4, weight_decay=0.0)
    cfg = GrpoConfig(kind="grpo", name="b", init="x", beta=0.04)
    ctx = RunContext(config=None, run_dir=None, device=torch.device("cpu"))
    advantages = torch.randn(ROWS, generator=torch.Generator().manual_seed(2))
    best = float("inf")
    for i in range(steps + 1):                                              # the first is a warm-up
        t0 = time.perf_counter()
        ref_logp = logprobs_no_grad(ref, batch)
        policy.train()
        grpo_batch(policy, batch, advantages, None, ref_logp, cfg, ctx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            best = min(best, time.perf_counter() - t0)
    t0 = time.perf_counter()
    with merged_for_decoding(policy):
        pass
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return {"step_s": round(best, 3), "peak_rss_rise_mb": round(peak_rss_mb() - base_rss, 1),
            "trainable_params": trainable, "merge_s": round(time.perf_counter() - t0, 4)}


def in_subprocess(shape: str, mode: str, steps: int) -> dict:
    code = (f"import sys, json, torch; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
            f"torch.set_num_threads({torch.get_num_threads()}); import lora_step; "
            f"print(json.dumps(lora_step.one_mode({shape!r}, {mode!r}, {steps})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="tiny,25m")
    ap.add_argument("--modes", default="full,lora,dora")
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    result = {"bench": "lora_step", "rows": ROWS, "prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
              "threads": torch.get_num_threads(), "steps": args.steps}
    for shape in args.shapes.split(","):
        entry = {"params": sum(p.numel() for p in build(shape).parameters())}
        for mode in args.modes.split(","):
            entry[mode] = in_subprocess(shape, mode, args.steps)
        for mode in entry.keys() - {"params", "full"}:
            entry[f"{mode}_vs_full"] = {"step_time": round(entry[mode]["step_s"] / entry["full"]["step_s"], 2),
                                        "peak_rss": round(entry[mode]["peak_rss_rise_mb"]
                                                          / entry["full"]["peak_rss_rise_mb"], 2)}
        result[shape] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
