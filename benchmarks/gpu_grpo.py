"""GPU memory and time of the GRPO stage of ``r1-zero-qwen2.5-1.5b-gsm8k``, measured on one GPU.

docs/gpu-memory.md works the expected memory out on paper; this measures it. No checkpoint can be
downloaded here, so the model is a randomly initialised Qwen2 with the published shape of
Qwen2.5-0.5B or -1.5B (hidden size, layers, heads, KV heads, 151,936-token vocabulary, tied
embeddings), saved with r1lab's own tokenizer; the data are GSM8K-shaped JSONL of arithmetic word
problems (~200-token prompts). The stage runs as the shipped config has it (64 questions x 8
completions, micro-batches of 4, 1,024 new tokens, bf16 autocast, AdamW) but for ``--steps``
steps. Random weights seldom sample EOS, so completions run to 1,024 tokens: the worst case.

Modes (each in a fresh subprocess):
- ``1.5b-lora``: every row of the step on this GPU, LoRA r 16 on every linear layer (paper: 58 GB);
- ``1.5b-rank``: one rank's share of the 8-GPU run (8 questions x 8), every weight trained, without
  DDP's gradient buckets (paper: 62 - 6.2 = 56 GB);
- ``0.5b-full``: every row on this GPU, every weight trained (paper: 35 GB).

The sampling and training phases are measured apart (``torch.cuda.max_memory_allocated`` around
each rollout and between rollouts). Prints one JSON line.

    python benchmarks/gpu_grpo.py --modes 1.5b-lora 0.5b-full --steps 2
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {   # from the published config.json of each model
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2),
}
MODES = {
    "1.5b-lora": ("1.5b", ["stages.r1-zero.lora={r: 16, alpha: 32}"]),
    "1.5b-rank": ("1.5b", ["stages.r1-zero.prompts_per_step=8"]),
    "0.5b-full": ("0.5b", []),
}
NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Mark", "Albert", "Ken"]
THINGS = ["clips", "apples", "pages", "dollars", "marbles", "stickers", "books", "cookies"]


def word_problem(rng: random.Random) -> dict:
    """A GSM8K-shaped question (~50 words) and its "#### N" answer."""
    who, other, thing = rng.choice(NAMES), rng.choice(NAMES), rng.choice(THINGS)
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(1, 50)
    q = (f"{who} sold {thing} to {a} of her friends in April, and then she sold {b} times as many {thing} "
         f"in May as she did in April, after which {other} gave her back {c} {thing} that had been lent "
         f"out earlier in the year. How many {thing} did {who} sell altogether in April and May?")
    return {"question": q, "answer": f"{who} sold {a} + {a * b} - {c}.\n#### {a + a * b - c}"}


def build(work: Path, shape: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from r1lab.data.templates import render
    from r1lab.models.tokenizer import train_tokenizer
    rng = random.Random(0)
    rows = [word_problem(rng) for _ in range(2000)]
    (work / "data/gsm8k").mkdir(parents=True)
    for split, part in (("train", rows[:1500]), ("test", rows[1500:])):
        (work / f"data/gsm8k/{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    tok = train_tokenizer([render("r1", r["question"]) + " " + r["answer"] for r in rows], vocab_size=1000)
    cfg = Qwen2Config(**SHAPES[shape], vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, torch_dtype="float32")
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")


def measure(mode: str, steps: int) -> dict:
    from r1lab import pipeline
    from r1lab.config import load_config
    from r1lab.stages import grpo
    shape, overrides = MODES[mode]
    work = Path(tempfile.mkdtemp(prefix="gpu-grpo-"))
    build(work, shape)
    config = load_config("r1-zero-qwen2.5-1.5b-gsm8k", [
        *overrides, f"stages.eval-base.model={work / 'model'}", f"stages.r1-zero.init={work / 'model'}",
        f"stages.r1-zero.steps={steps}",
        f"task.train_path={work / 'data/gsm8k/train.jsonl'}", f"task.test_path={work / 'data/gsm8k/test.jsonl'}"])
    config = config.model_copy(update={"stages": [s for s in config.stages if s.kind == "grpo"]})
    phases = {"sample": [], "train": []}
    inner = grpo.sample
    mark = [time.time()]

    def close(phase: str) -> None:
        torch.cuda.synchronize()
        phases[phase].append({"peak_alloc_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2),
                              "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 1e9, 2),
                              "seconds": round(time.time() - mark[0], 1)})
        torch.cuda.reset_peak_memory_stats()
        mark[0] = time.time()

    def timed_sample(*args, **kw):
        if phases["sample"]:                      # the training of the step before
            close("train")
        else:
            torch.cuda.reset_peak_memory_stats()
            mark[0] = time.time()
        prompts, rollout = inner(*args, **kw)
        phases["prompt_tokens"] = max(len(p) for p in prompts)
        phases["completion_tokens_mean"] = round(rollout.lengths.float().mean().item(), 1)
        close("sample")
        return prompts, rollout

    grpo.sample = timed_sample
    t0 = time.time()
    pipeline.run(config, work / "run", log=lambda *_: None)
    close("train")
    return {"mode": mode, "gpu": torch.cuda.get_device_name(), "wall_s": round(time.time() - t0, 1), **phases}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps)))
        return
    results = []
    for mode in args.modes:
        out = subprocess.run([sys.executable, __file__, "--one", mode, "--steps", str(args.steps)],
                             capture_output=True, text=True)
        if out.returncode:
            results.append({"mode": mode, "error": out.stderr[-2000:]})
        else:
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "gpu_grpo", "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
