"""2:4 on GPU: dense vs semi-structured sparse matmul for a model's linear shapes, and end-to-end tokens/s.

    python kernels/bench_gpu24.py [--model smollm2-135m | DIR] [--shapes llama7b] [--dtype fp16|bf16]

Per linear shape and token count (1, 16, 128, 2048): median time of F.linear with the dense weight vs the
same 2:4-pruned weight as torch.sparse semi-structured, and the ratio. End to end: prefill (2048 tokens)
and decode (greedy, 64 tokens) tokens/s of a random-init model with those shapes, dense vs 2:4 swapped.
Without CUDA it says so and exits 0 (no figures are invented).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from llmprune.methods.masks import nm_mask
from llmprune.sparse.semi import to_semi_structured_, unavailable_reason

LLAMA7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32,
           "num_hidden_layers": 4, "vocab_size": 32000}


def timed(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def linear_shapes(cfg: dict) -> list[tuple[int, int]]:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    return sorted({(h, h), (kv, h), (i, h), (h, i)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="take shapes from this model's config (default: LLaMA-7B shapes)")
    ap.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    args = ap.parse_args()
    reason = unavailable_reason("cuda")
    if reason:
        print(f"{reason}: no 2:4 GPU figures on this machine.")
        return 0
    import transformers

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    if args.model:
        from llmprune.io import read_config
        from llmprune.models import resolve_model

        cfg = {**LLAMA7B, **read_config(resolve_model(args.model))}
    else:
        cfg = LLAMA7B
    print(f"{torch.cuda.get_device_name()} | {args.dtype} | shapes of {args.model or 'LLaMA-7B'}")
    print(f"{'out x in':>12} {'tokens':>7} {'dense ms':>9} {'2:4 ms':>8} {'speedup':>8}")
    for out_f, in_f in linear_shapes(cfg):
        w = torch.randn(out_f, in_f, device="cuda", dtype=dtype)
        w = w * nm_mask(w.float().cpu(), 2, 4).cuda()
        lin = torch.nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
        sparse = torch.nn.Sequential(torch.nn.Linear(in_f, out_f, bias=False, device="cuda", dtype=dtype))
        with torch.no_grad():
            sparse[0].weight.copy_(w)
        to_semi_structured_(sparse)
        for tokens in (1, 16, 128, 2048):
            x = torch.randn(tokens, in_f, device="cuda", dtype=dtype)
            d = timed(lambda: F.linear(x, w))
            s = timed(lambda: sparse(x))
            print(f"{out_f:>5}x{in_f:<6} {tokens:>7} {d * 1e3:>9.3f} {s * 1e3:>8.3f} {d / s:>7.2f}x")
    config = transformers.LlamaConfig(**{k: cfg[k] for k in LLAMA7B})
    model = transformers.LlamaForCausalLM(config).to("cuda", dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "layers" in name:
                p.mul_(nm_mask(p.float().cpu(), 2, 4).cuda())
    prompt = torch.randint(0, config.vocab_size, (1, 2048), device="cuda")
    results = {}
    for label in ("dense", "2:4"):
        if label == "2:4":
            print(f"swapped {to_semi_structured_(model)} linears")
        with torch.no_grad():
            pre = timed(lambda: model(prompt), reps=5)
            dec = timed(lambda: model.generate(prompt[:, :16], max_new_tokens=64, min_new_tokens=64, do_sample=False), reps=3)
        results[label] = (2048 / pre, 64 / dec)
        print(f"{label:>6}: prefill {results[label][0]:,.0f} tok/s, decode {results[label][1]:,.1f} tok/s")
    print(f"ratio 2:4/dense: prefill {results['2:4'][0] / results['dense'][0]:.2f}x, decode {results['2:4'][1] / results['dense'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
