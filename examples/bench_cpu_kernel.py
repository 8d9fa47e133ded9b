"""Benchmark the CPU bitmask kernel against torch dense bf16 and fp32 matmuls, all in one run.

For each linear shape (out, in) of SmolLM2-135M plus two 7B-sized layers, a random weight is pruned 50%
unstructured or 2:4, packed, and y = x @ W^T is timed for batches 1, 4 and 8 (decoding). Prints one
markdown table: median milliseconds and the kernel's speed-up over each dense baseline (>1 = faster).

    .venv/bin/python examples/bench_cpu_kernel.py            # all shapes
    .venv/bin/python examples/bench_cpu_kernel.py --quick    # SmolLM2 shapes only
    .venv/bin/python examples/bench_cpu_kernel.py --threads 1 --json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from llmprune.methods.masks import nm_mask
from llmprune.sparse import format as fmt
from llmprune.sparse import kernel

SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # q/o, k/v, gate/up, down
LARGE = [(4096, 4096), (11008, 4096)]


def median_ms(fns: dict, min_reps: int = 15, budget_s: float = 1.0) -> dict:
    """Median wall time in ms of each fn, calls interleaved round-robin so that load from other
    processes on a shared machine hits every contender alike; at least min_reps rounds."""
    for fn in fns.values():
        fn(), fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    while len(times[next(iter(fns))]) < min_reps or (time.perf_counter() - start < budget_s and len(times[next(iter(fns))]) < 300):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def pruned_weight(out_features: int, in_features: int, pattern: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.02  # (out, in)
    keep = nm_mask(w, 2, 4) if pattern == "2:4" else torch.rand(w.shape, generator=g) >= 0.5
    return w.masked_fill(~keep, 0).to(torch.bfloat16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 shapes only")
    ap.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's)")
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--json", action="store_true", help="print rows as JSON instead of a table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = kernel.best_path()
    print(f"kernel path: {path}; threads: {torch.get_num_threads()}; torch {torch.__version__}", file=sys.stderr)
    rows = []
    for out_features, in_features in SMOLLM2 + ([] if args.quick else LARGE):
        for pattern in ("50%", "2:4"):
            w16 = pruned_weight(out_features, in_features, pattern)
            w32 = w16.float()
            parts = fmt.pack(w16)
            plan = kernel.plan(parts)  # built once, as SparseLinear does
            for b in (int(v) for v in args.batches.split(",")):
                x16 = torch.randn(b, in_features).to(torch.bfloat16)
                x32 = x16.float()
                # check the kernel before timing it
                err = (kernel.sparse_matmul(x32, parts, path) - x32 @ w32.T).abs().max().item()
                ms = median_ms({"bf16": lambda: F.linear(x16, w16), "fp32": lambda: F.linear(x32, w32),
                                "ours": lambda: kernel.run(plan, x16, path)})
                bf16, fp32, ours = ms["bf16"], ms["fp32"], ms["ours"]
                rows.append({"shape": f"{out_features}x{in_features}", "pattern": pattern, "batch": b,
                             "torch_bf16_ms": bf16, "torch_fp32_ms": fp32, "kernel_ms": ours,
                             "vs_bf16": bf16 / ours, "vs_fp32": fp32 / ours, "max_abs_err": err,
                             "bytes_ratio": fmt.nbytes(parts) / (w16.numel() * 2)})
                print(f"  {rows[-1]['shape']} {pattern} b={b}: {ours:.3f} ms", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"| shape (out x in) | pattern | batch | torch bf16 ms | torch fp32 ms | kernel ({path}) ms | x vs bf16 | x vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['pattern']} | {r['batch']} | {r['torch_bf16_ms']:.3f} | {r['torch_fp32_ms']:.3f} "
              f"| {r['kernel_ms']:.3f} | {r['vs_bf16']:.2f} | {r['vs_fp32']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
