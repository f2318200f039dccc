"""A decode step's attention: the compiled loop (r1lab/rollout/decode_attention.c) against
native.attend, its PyTorch reference, on SmolLM2-135M's attention shape (64 rows = 8 prompts x
8 samples, 9 query heads over 3 KV heads of 64, prompts of up to 44 tokens), each layer's cache
read from memory as in decoding (30 layers, a 256-slot completion cache).

    python benchmarks/decode_attention.py          # microseconds a layer at U used slots, and the ratio
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
    g = torch.Generator().manual_seed(0)
    L, B, n, K, G, D, P, S = 30, 8, 8, 3, 3, 64, 44, 256
    N = B * n
    prompt_kv = torch.randn(L, 2, B, K, P, D, generator=g)
    kv = torch.randn(L, 2, N, K, S, D, generator=g)
    bias = torch.zeros(B, P)
    for b in range(B):
        bias[b, :4 * (B - 1 - b)] = float("-inf")                    # left padding of prompts of 16..44
    q = torch.randn(N, K, G, D, generator=g) * D ** -0.5
    sides = {
        "torch": lambda i, U: native.attend(q, prompt_kv[i, 0], prompt_kv[i, 1], bias, kv[i, 0, :, :, :U],
                                            kv[i, 1, :, :, :U], None, n, True),
        "compiled": lambda i, U: kernel(q, prompt_kv[i, 0], prompt_kv[i, 1], bias, kv[i, 0], kv[i, 1], U, None, n),
    }
    print(f"{'used slots':>10} {'torch us':>9} {'compiled us':>12} {'speed-up':>9} {'max diff':>9}")
    for U in (16, 64, 128, 256):
        diff = (sides["torch"](0, U) - sides["compiled"](0, U)).abs().max().item()
        best = {name: float("inf") for name in sides}
        for _ in range(args.turns):
            for name, f in sides.items():
                t = time.perf_counter()
                for i in range(L):
                    f(i, U)
                best[name] = min(best[name], (time.perf_counter() - t) / L * 1e6)
        print(f"{U:>10} {best['torch']:>9.0f} {best['compiled']:>12.0f} {best['torch'] / best['compiled']:>8.2f}x {diff:>9.1e}")


if __name__ == "__main__":
    main()
