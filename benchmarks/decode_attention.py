"""A decode step's attention: the compiled loop (r1lab/rollout/decode_attention.c) against
native.attend, its PyTorch reference, on SmolLM2-135M's attention shape (9 query heads over 3 KV
heads of 64), each layer's cache read from memory as in decoding (30 layers). Workloads:
rollout.py's (8 prompts of up to 44 tokens x 8 samples, 16-256 used slots of a 256-slot cache),
a GRPO step's (16 prompts of 120 tokens x 8, 48 of 96 slots) and an eval batch's (100 prompts of
250 tokens x 4, 64 of 128 slots: long chat prompts shared by few samples).

    python benchmarks/decode_attention.py          # microseconds a layer, and the ratio
"""

import argparse
import time

import torch

from r1lab.rollout import decode_attention, native


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--turns", type=int, default=3, help="alternating turns; the best of each side is kept")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kernel = decode_attention.load()
    if kernel is None:
        raise SystemExit("the compiled decode attention is not available here (no C compiler?)")
    print(f"{'workload':>9} {'rows':>5} {'prompt':>6} {'used':>5} {'torch us':>9} {'compiled us':>12} {'speed-up':>9} {'max diff':>9}")
    for name, B, n, P, S, used in WORKLOADS:
        for U, (t_torch, t_compiled, diff) in time_one(kernel, B, n, P, S, used, args.turns).items():
            print(f"{name:>9} {B * n:>5} {P:>6} {U:>5} {t_torch:>9.0f} {t_compiled:>12.0f} {t_torch / t_compiled:>8.2f}x {diff:>9.1e}")


WORKLOADS = [("rollout", 8, 8, 44, 256, (16, 64, 128, 256)), ("grpo", 16, 8, 120, 96, (48,)), ("eval", 100, 4, 250, 128, (64,))]


def time_one(kernel, B: int, n: int, P: int, S: int, used: tuple[int, ...], turns: int) -> dict[int, tuple[float, float, float]]:
    """{used slots: (torch us, compiled us, max difference)} for B prompts of P tokens x n samples
    and a completion cache of S slots (the rollout's new tokens)."""
    g = torch.Generator().manual_seed(0)
    L, K, G, D = 30, 3, 3, 64
    N = B * n
    prompt_kv = torch.randn(L, 2, B, K, P, D, generator=g)
    kv = torch.randn(L, 2, N, K, S, D, generator=g)
    bias = torch.zeros(B, P)
    for b in range(B):
        bias[b, :(4 * b) % (P // 2)] = float("-inf")                # left padding, a different amount a prompt
    q = torch.randn(N, K, G, D, generator=g) * D ** -0.5
    prompt_kt = decode_attention.key_tiles(prompt_kv[:, 0])            # the loop's keys, in tiles
    sides = {
        "torch": lambda i, U: native.attend(q, prompt_kv[i, 0], prompt_kv[i, 1], bias, kv[i, 0, :, :, :U],
                                            kv[i, 1, :, :, :U], None, n, True),
        "compiled": lambda i, U: kernel(q, prompt_kt[i], prompt_kv[i, 1], bias, kv[i, 0], kv[i, 1], U, None, n),
    }
    out = {}
    for U in used:
        diff = (sides["torch"](0, U) - sides["compiled"](0, U)).abs().max().item()
        best = {name: float("inf") for name in sides}
        for _ in range(turns):
            for name, f in sides.items():
                t = time.perf_counter()
                for i in range(L):
                    f(i, U)
                best[name] = min(best[name], (time.perf_counter() - t) / L * 1e6)
        out[U] = (best["torch"], best["compiled"], diff)
    return out


if __name__ == "__main__":
    main()
