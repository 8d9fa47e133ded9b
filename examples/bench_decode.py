"""Issue 15's benchmark: sparse decoding vs the faster of dense torch fp32 and bf16, and how close to memory speed.

For SmolLM2-135M (real weights) and a LLaMA-7B-shaped model (random weights, 2 decoder layers, hidden 4096,
MLP 11008, vocab 2048), each pruned 2:4 and 50% (per layer, magnitude), at 1 thread and at all cores:

1. Bandwidth probe: STREAM-like read and copy (llmprune.sparse.kernel.stream_bandwidth) on the same
   threads, over 512 MiB.
2. Per layer: each linear shape of the model through the kernel at batch 1, weights cycling through
   copies past the last-level cache, with the bytes it reads per second and that as a fraction of the
   probe's read bandwidth (the memory-bound limit); torch fp32/bf16 on the dense weight alongside.
3. End to end: decoding tokens/s (llmprune.decode.generate: prefill untimed, then single-token steps)
   at batch 1, 4 and 8 for dense fp32, dense bf16 and the sparse kernels (bf16 weights packed, the tied
   lm_head and other dense bf16 linears on the kernel's dense decode). Variants run interleaved and the
   median of the repeats is reported, with the weight bytes each step reads per second (and the fraction
   of the probe). At batch 1 the sparse greedy tokens are checked against dense bf16 fed the same
   tokens: equal, or different only at a bf16 tie (llmprune.decode.tie_check).

Timings on a machine shared with other processes are noisy: compare within one run.

    .venv/bin/python examples/bench_decode.py              # everything (~15 min on 2 cores)
    .venv/bin/python examples/bench_decode.py --quick      # 12 tokens, batches 1 and 8, one repeat (~5 min)
    .venv/bin/python examples/bench_decode.py --models smollm2 --patterns 2:4 --threads 1 --json out.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from llmprune._kernels.bench_cpu import llc_bytes, load_str, log  # the kernel benchmark's helpers
from llmprune.decode import compare, dense_variants, forced_logits, tie_check
from llmprune.sparse import format as fmt
from llmprune.sparse import kernel
from llmprune.sparse.linear import KernelLinear, SparseLinear, swap_linears_


# ---------------------------------------------------------------------------- models


def prune_cfg(pattern: str):
    from llmprune.config import PruneConfig, parse_pattern

    return PruneConfig(pattern=parse_pattern("2:4")) if pattern == "2:4" else PruneConfig(sparsity=0.5, scope="layer")


def smollm2(pattern: str):
    """(pruned fp32 model, prompt ids (1, T))."""
    from llmprune.models import load_model
    from llmprune.prune import prune_model_

    model, tok = load_model("smollm2-135m", dtype=torch.float32)
    prune_model_(model, prune_cfg(pattern))
    return model, tok("The capital of France is", return_tensors="pt").input_ids


def llama7b_shaped(pattern: str, layers: int = 2, vocab: int = 2048):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmprune.prune import prune_model_

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    prune_model_(model, prune_cfg(pattern))
    return model, torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0))


MODELS = {"smollm2": ("SmolLM2-135M", smollm2), "llama7b": ("LLaMA-7B shape, 2 layers", llama7b_shaped)}


def weight_bytes(model: nn.Module) -> int:
    """Bytes of linear weights one decoding step reads (packed parts for SparseLinear)."""
    total = 0
    for m in model.modules():
        if isinstance(m, SparseLinear):
            total += fmt.nbytes(m.weight.parts())
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


# ---------------------------------------------------------------------------- part 2: per layer


def per_layer(model: nn.Module, sparse: nn.Module, read_gbs: float, target_bytes: int, budget_s: float) -> list[dict]:
    """Kernel GB/s for each distinct (shape) SparseLinear of `sparse` at batch 1, vs torch on the dense weight."""
    rows, seen = [], set()
    dense = dict(model.named_modules())
    for name, m in sparse.named_modules():
        if not isinstance(m, (SparseLinear, KernelLinear)):
            continue
        shape = (m.out_features, m.in_features)
        key = (shape, type(m).__name__)
        if key in seen:
            continue
        seen.add(key)
        w32 = dense[name].weight.detach().float()
        if isinstance(m, SparseLinear):
            parts = m.weight.parts()
            nbytes, make = fmt.nbytes(parts), lambda: kernel.plan({k: v.clone() for k, v in parts.items()})
        else:
            nbytes, make = w32.numel() * 2, lambda: kernel.dense_plan(w32.bfloat16())
        n = max(2, math.ceil(target_bytes / nbytes))
        plans = [make() for _ in range(n)]
        w32s = [w32.clone() for _ in range(max(2, math.ceil(target_bytes / (w32.numel() * 4))))]
        w16s = [w32.bfloat16() for _ in range(max(2, math.ceil(target_bytes / (w32.numel() * 2))))]
        x16 = torch.randn(1, shape[1]).bfloat16()
        x32 = x16.float()
        fns = {"kernel": (lambda i: kernel.run(plans[i % len(plans)], x16)),
               "torch fp32": (lambda i: F.linear(x32, w32s[i % len(w32s)])),
               "torch bf16": (lambda i: F.linear(x16, w16s[i % len(w16s)]))}
        times = {k: [] for k in fns}
        start, i = time.perf_counter(), 0
        while i < 9 or (time.perf_counter() - start < budget_s and i < 2000):
            for k, f in fns.items():  # round-robin: load from other processes hits all alike
                t = time.perf_counter()
                f(i)
                times[k].append(time.perf_counter() - t)
            i += 1
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        gbs = nbytes / ms["kernel"] / 1e6
        rows.append({"module": name, "kind": "sparse" if isinstance(m, SparseLinear) else "dense kernel",
                     "shape": f"{shape[0]}x{shape[1]}", "bytes": nbytes, **{f"{k}_ms": v for k, v in ms.items()},
                     "kernel_gbs": gbs, "fraction_of_read": gbs / read_gbs,
                     "vs_best_torch": min(ms["torch fp32"], ms["torch bf16"]) / ms["kernel"]})
        del plans, w32s, w16s
    return rows


# ---------------------------------------------------------------------------- part 3: end to end


def end_to_end(variants: dict, prompt: torch.Tensor, batches, tokens: int, repeats: int, read_gbs: float) -> list[dict]:
    rows = []
    nbytes = {k: weight_bytes(m) for k, m in variants.items()}
    for b in batches:
        ids = prompt.expand(b, -1).contiguous()
        load = load_str()
        timed = compare(variants, ids, tokens, repeats=repeats)
        tps = {k: t.median_tokens_per_s for k, t in timed.items()}
        best = max((k for k in tps if k != "sparse"), key=tps.get)
        row = {"batch": b, "load": f"{load} -> {load_str()}", "best_dense": best,
               "speedup": tps["sparse"] / tps[best], "runs": {k: t.tokens_per_s for k, t in timed.items()}}
        for k, v in tps.items():
            gbs = nbytes[k] * v / b / 1e9  # one step reads the weights once for all b rows
            row[k] = {"tokens_per_s": v, "weights_gbs": gbs, "fraction_of_read": gbs / read_gbs}
        if b == 1:
            ref_ids = timed["dense bf16"].generation.ids[0]
            row["agreement"] = tie_check(forced_logits(variants["dense bf16"], prompt, ref_ids),
                                         forced_logits(variants["sparse"], prompt, ref_ids))
            row["agreement"]["free_running_equal"] = bool(torch.equal(timed["sparse"].generation.ids,
                                                                      timed["dense bf16"].generation.ids))
        rows.append(row)
        log(f"    batch {b}: " + ", ".join(f"{k} {v:.2f}" for k, v in tps.items()) + f" tok/s -> {row['speedup']:.2f}x (load {row['load']})")
    return rows


def build_variants(model: nn.Module) -> dict:
    variants = dense_variants(model)  # the pruned model dense in fp32 and bf16
    sparse = copy.deepcopy(variants["dense bf16"])
    swapped = swap_linears_(sparse)
    log(f"    {swapped} linears packed; lm_head on {type(sparse.lm_head).__name__}")
    return {**variants, "sparse": sparse}


# ---------------------------------------------------------------------------- report


def print_report(results: dict) -> None:
    print(f"\nkernel path `{results['path']}`, torch {results['torch']}, LLC {results['llc_mib']} MiB, "
          f"{results['cores']} cores; load average at start {results['load_start']}, at end {results['load_end']} "
          "(a shared machine: figures are noisy, compare within a row)\n")
    print("### Bandwidth probe (STREAM-like, 512 MiB)\n\n| threads | read GB/s | copy GB/s |\n|---|---|---|")
    for th, bw in results["bandwidth"].items():
        print(f"| {th} | {bw['read_gbs']:.1f} | {bw['copy_gbs']:.1f} |")
    print("\n### Per layer, batch 1: kernel bytes/s and fraction of the probe's read bandwidth\n")
    print("| model | pattern | threads | module | shape | kernel ms | GB/s | of read bw | torch fp32 ms | torch bf16 ms | vs best torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["layers"]:
        print(f"| {r['model']} | {r['pattern']} | {r['threads']} | {r['kind']} {r['module'].rsplit('.', 1)[-1]} | {r['shape']} "
              f"| {r['kernel_ms']:.3f} | {r['kernel_gbs']:.1f} | {100 * r['fraction_of_read']:.0f}% | {r['torch fp32_ms']:.3f} "
              f"| {r['torch bf16_ms']:.3f} | {r['vs_best_torch']:.2f}x |")
    print("\n### End to end: decoding tokens/s (median of interleaved repeats; GB/s = linear weight bytes read per second)\n")
    print("| model | pattern | threads | batch | dense fp32 | dense bf16 | sparse | sparse vs best dense | sparse GB/s (of read bw) "
          "| greedy tokens vs dense bf16 (batch 1) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["e2e"]:
        a = r.get("agreement")
        agree = "" if a is None else (f"{a['exact']}/{a['steps']} equal, {a['ties']} bf16 ties, {len(a['real'])} other"
                                      + (" (free-running identical)" if a["free_running_equal"] else ""))
        s = r["sparse"]
        print(f"| {r['model']} | {r['pattern']} | {r['threads']} | {r['batch']} | {r['dense fp32']['tokens_per_s']:.2f} "
              f"| {r['dense bf16']['tokens_per_s']:.2f} | {s['tokens_per_s']:.2f} | **{r['speedup']:.2f}x** (vs {r['best_dense']}) "
              f"| {s['weights_gbs']:.1f} ({100 * s['fraction_of_read']:.0f}%) | {agree} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 tokens, batches 1 and 8, one repeat, short per-layer timings")
    ap.add_argument("--models", default="smollm2,llama7b", help="comma-separated: smollm2, llama7b")
    ap.add_argument("--patterns", default="2:4,50%", help="comma-separated: 2:4, 50%%")
    ap.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1 and all cores)")
    ap.add_argument("--batches", default=None, help="comma-separated batches (default 1,4,8; 1,8 with --quick)")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per run (default 32; 12 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved timed runs per variant (default 3; 1 with --quick)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    threads = [int(t) for t in (args.threads or f"1,{cores}").split(",")]
    threads = sorted(set(threads), key=threads.index)
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,4,8")).split(",")]
    tokens = args.tokens or (12 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 3)
    target = 2 * llc_bytes() + (8 << 20)
    results = {"path": kernel.best_path(), "torch": torch.__version__, "llc_mib": llc_bytes() >> 20, "cores": cores,
               "load_start": load_str(), "bandwidth": {}, "layers": [], "e2e": []}
    log(f"kernel path {results['path']}; threads {threads}; batches {batches}; {tokens} tokens; load {load_str()}")
    for th in threads:
        torch.set_num_threads(th)
        results["bandwidth"][th] = kernel.stream_bandwidth(512 << 20, th, repeats=5)
        log(f"  bandwidth at {th} threads: {results['bandwidth'][th]}")
    for key in args.models.split(","):
        title, make = MODELS[key]
        for pattern in args.patterns.split(","):
            log(f"{title}, {pattern}: pruning")
            model, prompt = make(pattern)
            variants = build_variants(model)
            for th in threads:
                torch.set_num_threads(th)
                read = results["bandwidth"][th]["read_gbs"]
                log(f"  {th} threads: per layer")
                for r in per_layer(variants["dense fp32"], variants["sparse"], read, target, 0.15 if args.quick else 0.6):
                    results["layers"].append({"model": title, "pattern": pattern, "threads": th, **r})
                log(f"  {th} threads: end to end")
                for r in end_to_end(variants, prompt, batches, tokens, repeats, read):
                    results["e2e"].append({"model": title, "pattern": pattern, "threads": th, **r})
            del model, variants
    results["load_end"] = load_str()
    print_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
