"""What autograd keeps for backward in one GRPO micro-batch: the packed forward against the
plain padded one (its slow reference), on a real rollout of a pre-trained base.

Samples 16 prompts x 8 completions (96 new tokens, T = 1) from ``--model`` (by default the 25M
base that benchmarks/grpo_step.py pre-trains), takes the first ``--micro-batch`` rows, and runs
each forward under ``torch.autograd.graph.saved_tensors_hooks``, counting the bytes of every
distinct storage saved that is not a parameter. Peak RSS holds more (gradients, optimizer state,
what the allocator keeps); this is the part the forward decides.

    python benchmarks/saved_activations.py            # one JSON line
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from r1lab.data.tasks import ArithmeticTask
from r1lab.models.io import load_model
from r1lab.rewards import build_rewards
from r1lab.rollout import Sampling
from r1lab.train.rl_step import scored_rollout
from r1lab.forward import completion_logprobs, plain_completion_logprobs


def saved_mb(forward, model, batch) -> float:
    """MB of the non-parameter storages autograd saves during ``forward``."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward(model, batch, with_entropy=True)
    return round(sum(storages.values()) / 2**20, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/r1lab-grpo-step/25m-40/stages/0-base/model"))
    ap.add_argument("--micro-batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tokenizer = load_model(args.model, torch.device("cpu"))
    task = ArithmeticTask(kind="arithmetic", template="r1-compact")
    sampling = Sampling(max_new_tokens=96, temperature=1.0, top_p=1.0, stop=[])
    scored = scored_rollout(model, tokenizer, task, task.sample_train(0, 0, 16), 8, sampling, 0,
                            build_rewards({"accuracy": 1.0, "format": 0.5}), [])
    batch = {k: v[:args.micro_batch] for k, v in scored.batch.items()}
    model.train()
    packed, plain = saved_mb(completion_logprobs, model, batch), saved_mb(plain_completion_logprobs, model, batch)
    print(json.dumps({"bench": "saved_activations", "model": str(args.model), "rows": args.micro_batch,
                      "completion_tokens": int(batch["completion_mask"].sum()),
                      "padded_positions": int(batch["input_ids"].numel()),
                      "packed_mb": packed, "plain_mb": plain, "ratio": round(packed / plain, 2)}))


if __name__ == "__main__":
    main()
