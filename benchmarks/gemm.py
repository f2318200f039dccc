"""Float32 matrix products on this CPU: MKL's sgemm (what ``torch.matmul`` and ``F.linear`` run)
against oneDNN's (r1lab/onednn.py), and forward plus backward of SmolLM2-135M's projections
through each, in one process, the two taking turns; the best of ``--repeats`` is kept.

MKL picks its kernels by the processor's vendor and oneDNN by its instruction set, so the two
part on AMD processors with AVX-512: on the Zen 5 EPYC of 2026-12-07 (2 cores) 210 against 489
GFLOP/s on a 1,024^3 product. The other benchmarks take the faster of the two as the machine's
matmul peak (:func:`peak_flops`).

    python benchmarks/gemm.py            # one JSON line
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from r1lab import onednn

PROJECTIONS = {"q/o": (576, 576), "k/v": (576, 192), "gate/up": (576, 1536), "down": (1536, 576)}


def best_seconds(fn, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def product_flops(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a float32 size^3 product ``a @ b.T`` (a linear layer's) through MKL and, where
    PyTorch has it, through oneDNN, alternating."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    ways = {"mkl": lambda: a @ b.t()}
    if onednn.available():
        ways["onednn"] = lambda: onednn.product(a, b, True)
    best = {name: float("inf") for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            best[name] = min(best[name], best_seconds(fn, 1))
    return {name: 2 * size ** 3 / s for name, s in best.items()}


def peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """The machine's float32 matmul peak: the faster of MKL's and oneDNN's product."""
    return max(product_flops(size, repeats).values())


def projection_flops(rows: int, d_in: int, d_out: int, fast: bool, repeats: int) -> float:
    """FLOP/s of forward and backward (6 rows d_in d_out FLOPs) of one linear layer."""
    layer = torch.nn.Linear(d_in, d_out, bias=False)
    x = torch.randn(rows, d_in, requires_grad=True)
    return 6 * rows * d_in * d_out / best_seconds(lambda: onednn.linear(layer, x, fast).sum().backward(), repeats)


def training_products(model, rows: int, head_rows: int, repeats: int = 3) -> dict[str, float]:
    """FLOP/s of one packed micro-batch's matrix products alone, through oneDNN as the packed
    walk runs them (r1lab/onednn.py): every layer's projections over ``rows`` tokens and the LM
    head over ``head_rows`` positions in its tiles (r1lab/forward/packed.py ``head_tile``),
    forward (x W^T) and backward (dY W and dY^T x, operands converted beforehand). Attention,
    norms, the softmax and the conversions are left out: the most a training phase's share of
    the peak could reach at these shapes."""
    from r1lab.forward import CHUNK_SIZE
    from r1lab.forward.packed import head_tile
    layers = model.model.layers
    weights = [m.weight.detach() for m in layers[0].modules() if type(m) is torch.nn.Linear]
    head = model.lm_head.weight.detach()
    (V, d), (tile_rows, cols) = head.shape, head_tile(CHUNK_SIZE, head.shape[0], "cpu")
    dense = {n: torch.randn(rows, n) for w in weights for n in w.shape}    # a layer's inputs and outputs by width
    packed = {n: t.to_mkldnn() for n, t in dense.items()}
    h = torch.randn(head_rows, d)
    blocks = [(r, min(tile_rows, head_rows - r)) for r in range(0, head_rows, tile_rows)]
    tiles = [(v, min(cols, V - v)) for v in range(0, V, cols)]
    dz = {(n, c): torch.randn(n, c).to_mkldnn() for _, n in blocks for _, c in tiles}
    h_packed = {r: h[r:r + n].contiguous().to_mkldnn() for r, n in blocks}

    def forward():
        for _ in layers:
            for w in weights:
                onednn.product(dense[w.shape[1]], w, True)
        for r, n in blocks:
            for v, c in tiles:
                onednn.product(h[r:r + n], head[v:v + c], True)

    def backward():
        for _ in layers:
            for w in weights:
                onednn.grad_input(packed[w.shape[0]], w, True)
                onednn.grad_weight(packed[w.shape[0]], packed[w.shape[1]], True)
        for r, n in blocks:
            for v, c in tiles:
                onednn.grad_input(dz[n, c], head[v:v + c], True)
                onednn.grad_weight(dz[n, c], h_packed[r], True)

    flops = 2 * rows * len(layers) * sum(w.numel() for w in weights) + 2 * head_rows * V * d
    return {"forward": flops / best_seconds(forward, repeats), "backward": 2 * flops / best_seconds(backward, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    peaks = product_flops(repeats=args.repeats)
    result = {"bench": "gemm", "threads": torch.get_num_threads(),
              "product_1024_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()}}
    if onednn.available():
        for name, (d_in, d_out) in PROJECTIONS.items():
            mkl = projection_flops(args.rows, d_in, d_out, False, args.repeats)
            dnn = projection_flops(args.rows, d_in, d_out, True, args.repeats)
            result[f"{name}_fwd_bwd_gflops"] = {"mkl": round(mkl / 1e9, 1), "onednn": round(dnn / 1e9, 1),
                                                "ratio": round(dnn / mkl, 2)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
