"""Issue 9's CPU benchmark: the bitmask kernel per layer and end to end, against the best dense paths.

Part 1, per layer: for each linear shape (out, in) of LLaMA-7B and SmolLM2 and batches 1/4/8, times
y = x @ W^T for
    torch fp32       F.linear on fp32 weights
    torch bf16       F.linear on bf16 weights
    kernel 0%        llmprune's kernel over the packed format with an all-ones mask: the dense kernel
                     of the same quality (same code, same decode, no pruned entries)
    kernel 50%       50% unstructured, bf16 values
    kernel 2:4       2:4, bf16 values
Every contender cycles through copies of its weight totalling more than 2x the last-level cache (read
from /sys), so weights come from DRAM as in a real decode step, and contenders are called round-robin
so that load from other processes hits them alike. Ratios are time(baseline) / time(kernel), > 1 = faster.

Part 2, end to end: greedy decoding tokens/s (prefill untimed, then one token per step through the KV
cache) of SmolLM2-135M pruned 50% (per layer) and of a synthetic LLaMA-7B-shaped model (random weights,
few decoder layers, pruned 2:4), each with SparseLinear (`swap_linears_`, bf16) vs the same pruned model
dense in torch bf16 and fp32. For SmolLM2 the benchmark asserts that, fed the dense bf16 tokens, the sparse model picks the same
next token at every step up to bf16 ties (its free-running tokens may part at a tie; the table says where).

    .venv/bin/python kernels/bench_cpu.py                 # everything, --threads 1 (the headline)
    .venv/bin/python kernels/bench_cpu.py --quick         # shorter timings, fewer tokens, 2 LLaMA layers
    .venv/bin/python kernels/bench_cpu.py --part layers --threads 2
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmprune.sparse import format as fmt
from llmprune.sparse import kernel

LLAMA7B = [(4096, 4096), (11008, 4096), (4096, 11008)]  # q/k/v/o, gate/up, down
SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # q/o, k/v, gate/up, down
PATTERNS = ("0%", "50%", "2:4")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_str() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def llc_bytes() -> int:
    """Size of the last-level cache from /sys (the highest-level data/unified cache); 32 MiB if unreadable."""
    best = (0, 32 << 20)
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1], 1)
        nbytes = int(size.rstrip("KMG")) * scale
        best = max(best, (level, nbytes))
    return best[1]


def median_ms(fns: dict, min_reps: int, budget_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall ms and median CPU ms of each zero-argument fn, called round-robin; >= min_reps rounds.

    CPU time is the calling thread's (time.thread_time): with --threads 1 both torch and the kernel run
    on that thread, so it leaves out the time slices other processes take on a loaded machine (it still
    includes their pressure on memory bandwidth)."""
    for fn in fns.values():
        fn()
    wall, cpu = {name: [] for name in fns}, {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_reps or (time.perf_counter() - start < budget_s and rounds < 2000):
        for name, fn in fns.items():
            c, t = time.thread_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.thread_time() - c)
        rounds += 1
    return ({name: statistics.median(ts) * 1e3 for name, ts in wall.items()},
            {name: statistics.median(ts) * 1e3 for name, ts in cpu.items()})


def cycling(make_args, call, nbytes: int, target_bytes: int):
    """A zero-argument fn that calls call(*args) on the next of n copies of make_args(), n * nbytes > target."""
    n = max(2, math.ceil(target_bytes / max(nbytes, 1)))
    copies = [make_args() for _ in range(n)]
    state = {"i": 0}

    def fn():
        state["i"] = (state["i"] + 1) % n
        return call(*copies[state["i"]])

    return fn, n


# ---------------------------------------------------------------- part 1: per layer

def layer_weights(out_features: int, in_features: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """{pattern: bf16 weight (out, in)}: dense (no zeros), 50% unstructured (random mask), 2:4 (magnitude)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g) * 0.02  # (out, in)
    w = torch.where(w == 0, torch.full_like(w, 1e-3), w)  # an exact 0 would be a pruned entry
    groups = w.abs().reshape(-1, 4)  # 2:4 along the input dimension
    keep24 = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True)
    keep50 = torch.rand(w.shape, generator=g) >= 0.5
    return {"0%": w.to(torch.bfloat16), "50%": w.masked_fill(~keep50, 0).to(torch.bfloat16),
            "2:4": w.masked_fill(~keep24.reshape(w.shape), 0).to(torch.bfloat16)}


def clone_parts(parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in parts.items()}


def bench_layers(shapes, batches, target_bytes: int, budget_s: float) -> list[dict]:
    path = kernel.best_path()
    rows = []
    for out_features, in_features in shapes:
        weights = layer_weights(out_features, in_features)
        packed = {p: fmt.pack(w) for p, w in weights.items()}
        assert bool((packed["0%"]["bitmask"] == -1).all()), "the dense-kernel baseline must have an all-ones mask"
        w16, w32 = weights["0%"], weights["0%"].float()
        for b in batches:
            x16 = torch.randn(b, in_features).to(torch.bfloat16)
            x32 = x16.float()
            for p in PATTERNS:  # check before timing: kernel vs fp32 matmul of the same weight
                ref = x32 @ weights[p].float().T
                err = (kernel.sparse_matmul(x16, packed[p], path).float() - ref).abs().max().item()
                assert err <= 1e-2 * ref.abs().max().item() + 1e-3, f"kernel mismatch {p} {out_features}x{in_features}: {err}"
            fns, copies = {}, {}
            fns["fp32"], copies["fp32"] = cycling(lambda: (w32.clone(),), lambda w: F.linear(x32, w),
                                                  w32.numel() * 4, target_bytes)
            fns["bf16"], copies["bf16"] = cycling(lambda: (w16.clone(),), lambda w: F.linear(x16, w),
                                                  w16.numel() * 2, target_bytes)
            for p in PATTERNS:
                fns[p], copies[p] = cycling(lambda p=p: (kernel.plan(clone_parts(packed[p])),),
                                            lambda plan: kernel.run(plan, x16, path),
                                            fmt.nbytes(packed[p]), target_bytes)
            load_before = load_str()
            ms, cpu = median_ms(fns, min_reps=9, budget_s=budget_s)
            del fns
            best_torch = min(ms["fp32"], ms["bf16"])
            row = {"shape": f"{out_features}x{in_features}", "batch": b, **{f"{k}_ms": v for k, v in ms.items()},
                   "best_torch": "fp32" if ms["fp32"] <= ms["bf16"] else "bf16",
                   "copies": copies, "load": f"{load_before} -> {load_str()}"}
            for p in ("50%", "2:4"):
                row[f"{p}_vs_torch"] = best_torch / ms[p]
                row[f"{p}_vs_kernel0"] = ms["0%"] / ms[p]
            row["0%_vs_torch"] = best_torch / ms["0%"]
            cpu_best = min(cpu["fp32"], cpu["bf16"])
            row["cpu"] = {k: cpu_best / cpu[k] for k in PATTERNS}
            rows.append(row)
            log(f"  {row['shape']} b={b}: fp32 {ms['fp32']:.3f} bf16 {ms['bf16']:.3f} k0 {ms['0%']:.3f} "
                f"k50 {ms['50%']:.3f} k24 {ms['2:4']:.3f} ms (copies {copies}, load {row['load']})")
    return rows


def print_layers(rows: list[dict], target_bytes: int) -> None:
    print(f"\n### Per layer: median ms per call, weights cycling through > {target_bytes >> 20} MiB per contender\n")
    print("| shape (out x in) | batch | torch fp32 | torch bf16 | kernel 0% (dense) | kernel 50% | kernel 2:4 "
          "| 50% vs best torch | 2:4 vs best torch | 50% vs kernel 0% | 2:4 vs kernel 0% | kernel 0% vs best torch "
          "| CPU time: 50% / 2:4 / 0% vs best torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['batch']} | {r['fp32_ms']:.3f} | {r['bf16_ms']:.3f} | {r['0%_ms']:.3f} "
              f"| {r['50%_ms']:.3f} | {r['2:4_ms']:.3f} | {r['50%_vs_torch']:.2f}x | {r['2:4_vs_torch']:.2f}x "
              f"| {r['50%_vs_kernel0']:.2f}x | {r['2:4_vs_kernel0']:.2f}x | {r['0%_vs_torch']:.2f}x "
              f"| {r['cpu']['50%']:.2f}x / {r['cpu']['2:4']:.2f}x / {r['cpu']['0%']:.2f}x |")


# ---------------------------------------------------------------- part 2: end to end

@torch.inference_mode()
def greedy_decode(model, prompt: torch.Tensor, new_tokens: int) -> tuple[list[int], float, float]:
    """(generated ids, decode tokens/s, tokens per CPU second of this thread): prefill untimed, then
    new_tokens - 1 timed single-token steps."""
    out = model(prompt, use_cache=True)
    cache, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    ids = [int(tok)]
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(new_tokens - 1):
        out = model(tok, past_key_values=cache, use_cache=True)
        cache, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        ids.append(int(tok))
    return ids, (new_tokens - 1) / (time.perf_counter() - start), (new_tokens - 1) / (time.thread_time() - cpu)


@torch.inference_mode()
def forced_logits(model, prompt: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """fp32 next-token logits (len(ids), vocab) of model fed prompt then ids[:-1] one token at a time."""
    out = model(prompt, use_cache=True)
    logits = [out.logits[0, -1].float()]
    for t in ids[:-1]:
        out = model(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0, -1].float())
    return torch.stack(logits)


def tie_check(ref: torch.Tensor, test: torch.Tensor) -> tuple[int, int]:
    """(exact, ties): steps where test's argmax equals ref's, and where it differs but ref scores it within
    2 bf16 ulps of ref's max (bf16 logits are rounded to 8 bits: equal-scoring tokens are common). Raises
    AssertionError on any other step: that would be a real difference, not summation order."""
    best = ref.max(dim=1).values  # (steps,)
    pick = test.argmax(dim=1)
    ulp = torch.exp2(torch.floor(torch.log2(best.abs().clamp_min(1e-6))) - 7)
    gap = best - ref.gather(1, pick[:, None])[:, 0]
    exact = int((pick == ref.argmax(dim=1)).sum())
    bad = gap > 2 * ulp
    assert not bool(bad.any()), f"argmax differs beyond bf16 rounding at steps {bad.nonzero()[:, 0].tolist()}: gap {gap[bad].tolist()}"
    return exact, len(pick) - exact


def variants(pruned_fp32) -> dict:
    """{name: model}: the pruned model dense fp32, dense bf16, and bf16 with SparseLinear modules."""
    from llmprune.sparse.linear import swap_linears_

    dense32 = pruned_fp32
    dense16 = copy.deepcopy(pruned_fp32).to(torch.bfloat16)
    sparse16 = copy.deepcopy(dense16)
    swapped = swap_linears_(sparse16)
    log(f"  swapped {swapped} linear modules")
    return {"torch fp32": dense32, "torch bf16": dense16, "llmprune sparse bf16": sparse16}


def bench_model(name: str, models: dict, prompt: torch.Tensor, new_tokens: int, repeats: int,
                assert_same: bool) -> list[dict]:
    runs, cpu_runs = {k: [] for k in models}, {k: [] for k in models}
    ids = {}
    load_before = load_str()
    for _ in range(repeats):  # interleaved repeats; report the median tokens/s
        for k, m in models.items():
            ids[k], tps, cps = greedy_decode(m, prompt, new_tokens)
            runs[k].append(tps)
            cpu_runs[k].append(cps)
    load = f"{load_before} -> {load_str()}"
    tps = {k: statistics.median(v) for k, v in runs.items()}
    cps = {k: statistics.median(v) for k, v in cpu_runs.items()}
    best_dense = max(("torch fp32", "torch bf16"), key=tps.get)
    ref = ids["torch bf16"]
    forced = {}
    if assert_same:  # free-running tokens may part at a bf16 tie; teacher-forced, every step must agree
        ref_logits = forced_logits(models["torch bf16"], prompt, ref)
        for k in models:
            forced[k] = tie_check(ref_logits, forced_logits(models[k], prompt, ref))
    rows = []
    for k in models:
        agree = next((i for i, (a, b) in enumerate(zip(ids[k], ref)) if a != b), len(ref))
        rows.append({"model": name, "variant": k, "tok_s": tps[k], "vs_best_dense": tps[k] / tps[best_dense],
                     "best_dense": best_dense, "cpu_vs_best_dense": cps[k] / max(cps["torch fp32"], cps["torch bf16"]), "agree_bf16": agree, "forced": forced.get(k), "load": load})
        log(f"  {name} {k}: {tps[k]:.2f} tok/s (runs {[round(v, 2) for v in runs[k]]}), load {load}")
    return rows


def smollm2_models() -> tuple[dict, torch.Tensor]:
    from llmprune.config import PruneConfig
    from llmprune.models import load_model
    from llmprune.prune import prune_model_

    model, tok = load_model("smollm2-135m", dtype=torch.float32)
    prune_model_(model, PruneConfig(sparsity=0.5, scope="layer"))
    prompt = tok("The capital of France is", return_tensors="pt").input_ids
    return variants(model), prompt


def llama7b_models(layers: int, vocab: int) -> tuple[dict, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmprune.config import PruneConfig, parse_pattern
    from llmprune.prune import prune_model_

    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)  # transformers' init: normal(0, 0.02) weights, unit norms
    g = torch.Generator().manual_seed(0)
    model.eval()
    prune_model_(model, PruneConfig(pattern=parse_pattern("2:4")))
    prompt = torch.randint(0, vocab, (1, 8), generator=g)
    return variants(model), prompt


def print_e2e(rows: list[dict], new_tokens: int) -> None:
    print(f"\n### End to end: greedy decode tokens/s (batch 1, {new_tokens} new tokens, prefill untimed)\n")
    print("| model | variant | tokens/s | vs best dense torch | same, CPU time | first tokens equal to dense bf16 "
          "| teacher-forced argmax = dense bf16 (rest: bf16 ties) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        forced = "not checked" if r["forced"] is None else f"{r['forced'][0]}/{sum(r['forced'])}"
        print(f"| {r['model']} | {r['variant']} | {r['tok_s']:.2f} | {r['vs_best_dense']:.2f}x "
              f"(best: {r['best_dense']}) | {r['cpu_vs_best_dense']:.2f}x | {r['agree_bf16']}/{new_tokens} | {forced} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short timings, 16 tokens, 2 LLaMA layers, batch 1 and 8")
    ap.add_argument("--part", choices=("all", "layers", "e2e"), default="all")
    ap.add_argument("--threads", type=int, default=1, help="torch and kernel threads (default 1: the headline)")
    ap.add_argument("--batches", default=None, help="comma-separated batches (default 1,4,8)")
    ap.add_argument("--tokens", type=int, default=None, help="new tokens per decode (default 32; 16 with --quick)")
    ap.add_argument("--llama-layers", type=int, default=None, help="decoder layers of the 7B-shaped model (default 4; 2 with --quick)")
    ap.add_argument("--llama-vocab", type=int, default=2048,
                    help="vocab of the 7B-shaped model; 2048 keeps the dense lm_head ~2%% of the weights as in the 32-layer model")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = [int(v) for v in (args.batches or ("1,8" if args.quick else "1,4,8")).split(",")]
    new_tokens = args.tokens or (16 if args.quick else 32)
    llama_layers = args.llama_layers or (2 if args.quick else 4)
    target = 2 * llc_bytes() + (8 << 20)
    log(f"kernel path {kernel.best_path()}; threads {torch.get_num_threads()}; torch {torch.__version__}; "
        f"LLC {llc_bytes() >> 20} MiB; load {load_str()}")
    print(f"kernel path `{kernel.best_path()}`, threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"LLC {llc_bytes() >> 20} MiB, load average at start {load_str()}")
    if args.part in ("all", "layers"):
        rows = bench_layers(LLAMA7B + SMOLLM2, batches, target, budget_s=0.4 if args.quick else 1.5)
        print_layers(rows, target)
        print(f"\nload average after part 1: {load_str()}")
    if args.part in ("all", "e2e"):
        repeats = 1 if args.quick else 3
        e2e = []
        models, prompt = smollm2_models()
        e2e += bench_model("SmolLM2-135M, 50% per layer", models, prompt, new_tokens, repeats, assert_same=True)
        del models
        models, prompt = llama7b_models(llama_layers, args.llama_vocab)
        e2e += bench_model(f"LLaMA-7B shape, {llama_layers} layers, vocab {args.llama_vocab}, 2:4, random",
                           models, prompt, new_tokens, repeats, assert_same=False)
        del models
        print_e2e(e2e, new_tokens)
        print(f"\nload average after part 2: {load_str()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
