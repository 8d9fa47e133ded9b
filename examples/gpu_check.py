"""One run over every CUDA path of llmprune, each against fp32 CPU results: a JSON report and a short table.

    python examples/gpu_check.py --out gpu_check.json        # a machine with an NVIDIA GPU: under 8 minutes
    python examples/gpu_check.py --device cpu --quick        # every code path but the CUDA calls, CPU vs CPU

Each check is one row (pass / fail / error / skip, its figures, the GPU's peak memory during it); a check
that raises records its error and the others still run. The JSON is rewritten atomically after every row,
and a time budget (--budget, default 450 s) skips the remaining checks, with the reason, once a check's
estimate would overrun it. No network: LLaMA-shaped checkpoints are built from configs, the eval model is
the built-in SmolLM2 when it is in llmprune's cache (else a small LLaMA fitted for a few steps to the pydoc
text), and the MMLU-style questions are cut from the same text unless --mmlu-data names real ones.

  matmul 2:4 fp16|bf16   F.linear, dense vs 2:4 semi-structured (`use_sparse_kernels_`), for the prefill
                         shapes (2048 tokens) of LLaMA-7B and -13B layers. Anchor: PyTorch's semi-structured
                         sparsity tutorial, 1.3-1.38x on an A100. Pass: same output, geomean speedup >= 1.
  prefill 2:4 7b fp16    a 7B-shaped LLaMA (2 layers, vocab 32000) pruned 2:4 by magnitude: prefill tokens/s
                         dense vs swapped; pass: same logits, speedup >= 1.
  prune METHOD 50%|2:4   `llmprune prune --device DEVICE` vs `--device cpu` on a 7B-shaped 2-layer checkpoint:
                         keep-masks agree, weights within tolerance, wall time per layer on both.
  eval ...               `llmprune eval ppl,mmlu` with --device DEVICE, --device auto, --load-in-8bit,
                         --load-in-4bit, and --sparse-kernels on a 2:4 model: numbers vs fp32 CPU.
On a CPU (`--device cpu`) the sparse side is llmprune's CPU bitmask path and the bitsandbytes rows are
skipped with the CLI's own error; speed is judged only on CUDA without --quick.
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from gpu_check_lib import (SHAPES, CliFailed, compare_pruned, environment, geomean, invoke, llama_config,  # noqa: E402
                           rel_err, save_synthetic, sparse_kernel_count, synthetic_mmlu, table, timed,
                           write_json_atomic)

# Pass criteria. CUDA and CPU sum in different orders, so a few keep/prune choices at near-ties may flip
# (measured on CPU with 1e-6 relative noise on the statistics: Wanda 2e-6 of the weights, SparseGPT 6e-5
# with 0.6% weight difference, 2:4 none); a real bug moves far more.
TOL = {
    "mask_mismatch_frac": 1e-3, "weight_rel_err": 2e-2,   # prune on DEVICE vs CPU
    "matmul_rel_err": 1e-2, "logits_rel_err": 2e-2,       # 2:4 kernels vs dense, same weights
    "min_speedup": 1.0,                                   # 2:4 vs dense on CUDA (not judged on CPU)
    # bf16 vs fp32 of one 2:4 model: SmolLM2 2:4 by magnitude (ppl 2491, fragile) measured 1.4e-2 on CPU
    "sparse_vs_fp32_ppl": 5e-2,                           # eval --sparse-kernels (bf16) vs fp32 CPU
}
# eval rows: (name, model: dense|2:4, flags (DEV = the device under test), reference, ppl rel tol, acc abs tol)
EVALS = [
    ("eval fp32 cpu", "dense", ["--device", "cpu", "--dtype", "float32"], None, 0, 0),
    ("eval --device DEV", "dense", ["--device", "DEV", "--dtype", "float32"], "fp32", 1e-3, 0.02),
    ("eval --device auto", "dense", ["--device", "auto", "--dtype", "float32"], "fp32", 1e-3, 0.02),
    ("eval --load-in-8bit", "dense", ["--device", "DEV", "--load-in-8bit"], "fp32", 0.05, 0.05),
    ("eval --load-in-4bit", "dense", ["--device", "DEV", "--load-in-4bit"], "fp32", 0.5, 0.10),
    ("eval 2:4 fp32 cpu", "2:4", ["--device", "cpu", "--dtype", "float32"], None, 0, 0),
    ("eval 2:4 bf16 DEV", "2:4", ["--device", "DEV", "--dtype", "bfloat16"], "fp32", 0.05, 0.05),
    ("eval 2:4 bf16 DEV --sparse-kernels", "2:4", ["--device", "DEV", "--dtype", "bfloat16", "--sparse-kernels"],
     "bf16", 0.01, 0.03),
]
REFERENCES = {"fp32": ["--device", "cpu", "--dtype", "float32"], "bf16": ["--device", "DEV", "--dtype", "bfloat16"]}
QUICK_SUBJECTS = ("anatomy", "philosophy", "sociology", "virology")  # one per MMLU category


class Skip(Exception):
    """A check that cannot run here; the message says why."""


class Run:
    """Options, the device under test, the work folder, lazily built assets, and the rows so far."""

    def __init__(self, args):
        self.args, self.quick = args, args.quick
        self.device = torch.device(args.device)
        self.t0 = time.perf_counter()
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict] = []
        self._assets: dict = {}
        self.model_note = ""

    def asset(self, key, build):
        """Build once, reuse after (checkpoints, CPU references); a failed build is retried by the next user."""
        if key not in self._assets:
            self._assets[key] = build()
        return self._assets[key]

    def remember(self, key, value) -> None:
        self._assets.setdefault(key, value)

    def dev(self, flags: list[str]) -> list[str]:
        return [str(self.device) if f == "DEV" else f for f in flags]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def judge_speed(self) -> bool:
        """Speed is a pass criterion only for the full-size shapes on CUDA."""
        return self.cuda and not self.quick


# ---- 2:4 kernels -------------------------------------------------------------------------------------

def two_four_weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    from llmprune.methods.masks import nm_mask

    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed)) * 0.02  # (out, in)
    return w * nm_mask(w, 2, 4)


def check_matmul(run: Run, dtype: torch.dtype) -> dict:
    from llmprune.sparse.semi import use_sparse_kernels_

    tokens, per_shape = (64 if run.quick else 2048), []
    for layer in (["tiny"] if run.quick else ["7b", "13b"]):
        h, i = SHAPES[layer]["hidden_size"], SHAPES[layer]["intermediate_size"]
        for out_f, in_f in ((h, h), (i, h), (h, i)):
            w = run.asset(("w24", out_f, in_f), lambda: two_four_weight(out_f, in_f)).to(run.device, dtype)
            sparse = nn.Sequential(nn.Linear(in_f, out_f, bias=False, device=run.device, dtype=dtype))
            with torch.no_grad():
                sparse[0].weight.copy_(w)
                swapped = sparse_kernel_count(use_sparse_kernels_(sparse))
                x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(1)).to(run.device, dtype)
                err = rel_err(sparse(x), F.linear(x, w))
                t_dense = timed(lambda: F.linear(x, w), run.device, reps=20)
                t_sparse = timed(lambda: sparse(x), run.device, reps=20)
            per_shape.append({"layer": layer, "shape": f"{out_f}x{in_f}", "tokens": tokens, "swapped": swapped == 1,
                              "dense_ms": t_dense * 1e3, "sparse_ms": t_sparse * 1e3, "speedup": t_dense / t_sparse,
                              "rel_err": err})
    speed = geomean([r["speedup"] for r in per_shape])
    worst = max(r["rel_err"] for r in per_shape)
    swapped = all(r["swapped"] for r in per_shape)
    return {"passed": swapped and worst <= TOL["matmul_rel_err"] and (not run.judge_speed or speed >= TOL["min_speedup"]),
            "geomean_speedup": speed, "max_rel_err": worst, "shapes": per_shape,
            "summary": f"{speed:.2f}x geomean ({min(r['speedup'] for r in per_shape):.2f}-"
                       f"{max(r['speedup'] for r in per_shape):.2f}x) over {len(per_shape)} shapes at {tokens} tokens; "
                       f"err {worst:.1e}{'' if swapped else '; NOT all swapped'}; A100 anchor 1.3-1.38x"}


def check_prefill(run: Run) -> dict:
    from transformers import AutoModelForCausalLM

    from llmprune.config import PruneConfig, parse_pattern
    from llmprune.prune import prune_model_
    from llmprune.sparse.semi import use_sparse_kernels_

    shape, tokens, layers = ("tiny", 64, 2) if run.quick else ("7b", 2048, run.args.e2e_layers)
    config = llama_config(shape, layers, vocab=258 if run.quick else 32000)
    with torch.device(run.device):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
    prune_model_(model, PruneConfig(method="magnitude", pattern=parse_pattern("2:4")))
    ids = torch.randint(0, config.vocab_size, (1, tokens), generator=torch.Generator().manual_seed(0)).to(run.device)
    with torch.no_grad():
        fwd = lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1).logits  # noqa: E731
        reps = 20 if run.cuda else 5
        ref = fwd()
        t_dense = timed(fwd, run.device, reps)
        swapped = sparse_kernel_count(use_sparse_kernels_(model))
        err = rel_err(fwd(), ref)
        t_sparse = timed(fwd, run.device, reps)
    linears = 7 * layers
    speed = t_dense / t_sparse
    return {"passed": swapped > 0 and err <= TOL["logits_rel_err"] and (not run.judge_speed or speed >= TOL["min_speedup"]),
            "shape": shape, "layers": layers, "tokens": tokens, "swapped": swapped, "linears": linears,
            "dense_tok_s": tokens / t_dense, "sparse_tok_s": tokens / t_sparse, "speedup": speed, "logits_rel_err": err,
            "summary": f"{tokens / t_dense:,.0f} -> {tokens / t_sparse:,.0f} tok/s ({speed:.2f}x), "
                       f"{swapped}/{linears} linears swapped, logits err {err:.1e}"}


# ---- prune on the device vs on the CPU --------------------------------------------------------------

def prune_source(run: Run) -> Path:
    shape, layers = ("tiny", 2) if run.quick else ("7b", run.args.prune_layers)
    return run.asset("prune-src", lambda: save_synthetic(run.work / f"synthetic-{shape}-{layers}l", shape, layers))


def check_prune(run: Run, method: str, what: str) -> dict:
    src = prune_source(run)
    samples, seqlen = (4, 32) if run.quick else (run.args.calib_samples, run.args.calib_seqlen)
    shape = ["--pattern", "2:4"] if what == "2:4" else ["--sparsity", "0.5", "--scope", "row" if method == "wanda" else "layer"]
    flags = ["--method", method, *shape, "--calib-samples", samples, "--seqlen", seqlen, "--overwrite"]
    tag = f"{method}-{what.replace(':', '')}"
    cpu_dir, dev_dir = run.work / f"{tag}-reference-cpu", run.work / f"{tag}-on-{run.device.type}"
    ref = invoke(["prune", src, *flags, "--device", "cpu", "-o", cpu_dir])
    try:
        rec = invoke(["prune", src, *flags, "--device", run.device, "-o", dev_dir])
        diff = compare_pruned(cpu_dir, dev_dir)
    finally:
        shutil.rmtree(cpu_dir, ignore_errors=True)
        shutil.rmtree(dev_dir, ignore_errors=True)
    cpu_s, dev_s = ref["timings"]["per_layer_mean"], rec["timings"]["per_layer_mean"]
    ok = (rec.get("device") == run.device.type and diff["mask_mismatch_frac"] <= TOL["mask_mismatch_frac"]
          and diff["max_rel_err"] <= TOL["weight_rel_err"])
    return {"passed": ok, "ran_on": rec.get("device"), "cpu_s_per_layer": cpu_s, "device_s_per_layer": dev_s,
            "speedup": cpu_s / dev_s if dev_s else None, "calibration": f"{samples}x{seqlen}", **diff,
            "summary": f"{cpu_s:.2f} s/layer cpu, {dev_s:.2f} on {rec.get('device')} ({cpu_s / max(dev_s, 1e-9):.1f}x); "
                       f"masks differ {diff['mask_mismatch']:,}/{diff['weights']:,}; w err {diff['max_rel_err']:.1e}"}


# ---- eval on the device vs fp32 CPU -----------------------------------------------------------------

def eval_model(run: Run) -> Path:
    def find() -> Path:
        from llmprune.assets import cache_dir
        from llmprune.models import resolve_model

        name = run.args.model
        if name == "auto" and not run.quick:
            cached = cache_dir("models") / "smollm2-135m"
            if (cached / "config.json").exists():
                return cached
            run.model_note = "SmolLM2 is not in llmprune's cache here; "
        if name != "auto":
            return resolve_model(name)
        shape, steps = ("tiny", 30) if run.quick else ("lm", run.args.fit_steps)
        layers = 2 if run.quick else 4
        run.model_note += f"stand-in: LLaMA '{shape}' shape, {layers} layers, fitted {steps} steps to the pydoc text"
        return save_synthetic(run.work / f"fitted-{shape}", shape, layers, fit_steps=steps, device=run.device,
                              fit_batch=(4, 64) if run.quick else (16, 256))
    return run.asset("eval-model", find)


def model_24(run: Run) -> Path:
    """The eval model pruned 2:4 by magnitude (streamed by `llmprune prune`), built once."""
    def build() -> Path:
        out = run.work / "eval-model-24"
        invoke(["prune", eval_model(run), "--pattern", "2:4", "-o", out, "--overwrite"])
        return out
    return run.asset("eval-model-24", build)


def eval_once(run: Run, which: str, flags: list[str]) -> dict:
    """`llmprune eval ppl,mmlu` of the dense or 2:4 eval model with `flags`; the record is kept for later rows."""
    path = eval_model(run) if which == "dense" else model_24(run)
    data = run.args.mmlu_data or run.asset("mmlu", lambda: synthetic_mmlu(
        run.work / "mmlu.jsonl", subjects=QUICK_SUBJECTS if run.quick else None))
    limit, seqlen, bs = (1, 64, 4) if run.quick else (run.args.limit, 2048, 8)
    rec = invoke(["eval", "ppl,mmlu", path, "--data", data, "--limit", limit, "--seqlen", seqlen, "--batch-size", bs,
                  *flags])
    run.remember(("eval", which, tuple(flags)), rec)
    return rec


def eval_record(run: Run, which: str, flags: list[str]) -> dict:
    """The record of an earlier identical eval, else a new one."""
    return run.asset(("eval", which, tuple(flags)), lambda: eval_once(run, which, flags))


def loaded_facts(run: Run, which: str, flags: list[str]) -> dict:
    """Where the weights went and how many linears bitsandbytes holds, loading as `eval` does."""
    from llmprune.eval.loading import loading_kwargs
    from llmprune.models import load_model

    device = flags[flags.index("--device") + 1]
    kwargs = loading_kwargs("--load-in-8bit" in flags, "--load-in-4bit" in flags, device)
    path = eval_model(run) if which == "dense" else model_24(run)
    dtype = flags[flags.index("--dtype") + 1] if "--dtype" in flags else None
    model, _ = load_model(path, dtype=dtype, device="cpu" if device == "auto" else device, **kwargs)
    facts = {"footprint_mib": model.get_memory_footprint() / 2**20,
             "devices": sorted({str(p.device) for p in model.parameters()}),
             "bnb_linears": sum(type(m).__module__.startswith("bitsandbytes") for m in model.modules())}
    del model
    return facts


def check_eval(run: Run, which: str, flags: list[str], reference: str | None, ppl_tol: float, acc_tol: float) -> dict:
    flags = run.dev(flags)
    if reference is None:  # a reference row: the others are judged against its numbers
        rec = eval_record(run, which, flags)
    else:
        try:
            rec = eval_once(run, which, flags)  # always run afresh, even where it equals the reference (CPU vs CPU)
        except CliFailed as e:
            if not run.cuda and "CUDA" in str(e):
                raise Skip(str(e)) from None
            raise
    ppl, acc = rec["tasks"]["ppl"]["ppl"], rec["tasks"]["mmlu"]["accuracy"]
    out = {"model": str(eval_model(run)) + (" pruned 2:4" if which == "2:4" else ""), "note": run.model_note,
           "ppl": ppl, "mmlu_acc": acc, "mmlu_questions": rec["tasks"]["mmlu"]["questions"]}
    if reference is None:
        out.update(passed=math.isfinite(ppl), summary=f"ppl {ppl:.3f}, mmlu {acc:.3f} (reference)")
        return out
    ref = eval_record(run, which, run.dev(REFERENCES[reference]))
    d_ppl = abs(ppl - ref["tasks"]["ppl"]["ppl"]) / ref["tasks"]["ppl"]["ppl"]
    d_acc = abs(acc - ref["tasks"]["mmlu"]["accuracy"])
    ok = d_ppl <= ppl_tol and d_acc <= acc_tol
    out.update(reference=reference, ref_ppl=ref["tasks"]["ppl"]["ppl"], ref_acc=ref["tasks"]["mmlu"]["accuracy"],
               ppl_rel_diff=d_ppl, acc_diff=d_acc)
    extra = ""
    if "--sparse-kernels" in flags:
        out["sparse_kernels"] = rec.get("sparse_kernels")
        out["swapped"] = sparse_kernel_count(rec.get("sparse_kernels"))
        base = eval_record(run, which, REFERENCES["fp32"])
        out["fp32_ppl_rel_diff"] = abs(ppl - base["tasks"]["ppl"]["ppl"]) / base["tasks"]["ppl"]["ppl"]
        ok = ok and out["swapped"] > 0 and out["fp32_ppl_rel_diff"] <= TOL["sparse_vs_fp32_ppl"]
        extra = f"; {out['swapped']} linears swapped, vs fp32 cpu {out['fp32_ppl_rel_diff']:.1e}"
    if "--load-in-8bit" in flags or "--load-in-4bit" in flags or "auto" in flags:
        out.update(loaded_facts(run, which, flags))
        if "auto" in flags:
            ok = ok and (not run.cuda or any(d.startswith("cuda") for d in out["devices"]))
        else:
            ok = ok and out["bnb_linears"] > 0
        extra += f"; {out['footprint_mib']:.1f} MiB on {','.join(out['devices'])}, {out['bnb_linears']} bnb linears"
    out.update(passed=ok, summary=f"ppl {ppl:.3f} (vs {reference} {d_ppl:.1e}), mmlu {acc:.3f} (diff {d_acc:.3f}){extra}")
    return out


# ---- the run ----------------------------------------------------------------------------------------

def checks(run: Run):
    """(name, estimated seconds on one H200, thunk), in order of priority."""
    yield "matmul 2:4 fp16", 20, lambda: check_matmul(run, torch.float16)
    yield "matmul 2:4 bf16", 20, lambda: check_matmul(run, torch.bfloat16)
    yield "prefill 2:4 7b fp16", 40, lambda: check_prefill(run)
    yield "prune wanda 50%", 40, lambda: check_prune(run, "wanda", "50%")
    for name, which, flags, ref, ppl_tol, acc_tol in EVALS:
        yield (name.replace("DEV", str(run.device)), 30 if ref is None else 20,
               lambda which=which, flags=flags, ref=ref, p=ppl_tol, a=acc_tol: check_eval(run, which, flags, ref, p, a))
    yield "prune sparsegpt 50%", 70, lambda: check_prune(run, "sparsegpt", "50%")  # its CPU reference is the slowest
    yield "prune wanda 2:4", 30, lambda: check_prune(run, "wanda", "2:4")
    yield "prune sparsegpt 2:4", 60, lambda: check_prune(run, "sparsegpt", "2:4")


def run_check(run: Run, name: str, estimate: float, thunk) -> dict:
    elapsed = time.perf_counter() - run.t0
    if elapsed + (0 if run.quick else estimate) > run.args.budget:
        return {"name": name, "status": "skip", "reason": f"time budget: {elapsed:.0f} s spent of {run.args.budget:.0f} s "
                                                          f"and this check takes ~{estimate} s"}
    if run.cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    t = time.perf_counter()
    row: dict = {"name": name}
    try:
        figures = thunk()
        row["status"] = "pass" if figures.pop("passed") else "fail"
        row.update(figures)
    except Skip as e:
        row.update(status="skip", reason=str(e))
    except Exception as e:  # one broken path must not hide the others
        row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
        traceback.print_exc(file=sys.stderr)
    row["wall_s"] = time.perf_counter() - t
    row["gpu_peak_mib"] = torch.cuda.max_memory_allocated(run.device) / 2**20 if run.cuda else None
    gc.collect()
    if run.cuda:
        torch.cuda.empty_cache()
    return row


def write_report(run: Run, env: dict, done: bool) -> dict:
    counts = {s: sum(r["status"] == s for r in run.rows) for s in ("pass", "fail", "error", "skip")}
    report = {"script": "examples/gpu_check.py", "argv": sys.argv[1:], "environment": env, "tolerances": TOL,
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(run.args).items()},
              "elapsed_s": time.perf_counter() - run.t0, "finished": done, "counts": counts,
              "passed": counts["fail"] == 0 and counts["error"] == 0, "rows": run.rows}
    write_json_atomic(run.args.out, report)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device under test (cuda, cuda:N, or cpu for the CPU-only run)")
    p.add_argument("--quick", action="store_true", help="tiny models and shapes: checks the code paths, not speed")
    p.add_argument("--out", default="gpu_check.json", help="the JSON report (rewritten atomically after every row)")
    p.add_argument("--budget", type=float, default=450,
                   help="seconds; a check that would end past it is skipped (--quick: estimates count as 0)")
    p.add_argument("--only", default=None, help="comma-separated substrings of check names to run")
    p.add_argument("--model", default="auto", help="eval model: auto (SmolLM2 if cached, else a fitted stand-in), or a MODEL")
    p.add_argument("--mmlu-data", default=None, help="real MMLU questions (any layout `llmprune eval` reads)")
    p.add_argument("--limit", type=int, default=2, help="eval: MMLU questions per subject and perplexity windows")
    p.add_argument("--fit-steps", type=int, default=150, help="training steps of the stand-in eval model")
    p.add_argument("--prune-layers", type=int, default=2, help="decoder layers of the 7B-shaped prune checkpoint")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--e2e-layers", type=int, default=2, help="decoder layers of the 7B-shaped prefill model")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads [default: torch's; 1 with --quick]")
    p.add_argument("--work", default=None, help="folder for checkpoints (default: a temporary one, removed after)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("No CUDA device here: run with --device cpu --quick for the CPU-only check.", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if args.quick else 0)
    if threads:
        torch.set_num_threads(threads)  # tiny ops on a busy machine: one thread does not wait for a second core
    run = Run(args)
    env = environment(run.device)
    wanted = [s.strip().lower() for s in args.only.split(",")] if args.only else None
    try:
        write_report(run, env, done=False)
        for name, estimate, thunk in checks(run):
            if wanted and not any(w in name.lower() for w in wanted):
                continue
            row = run_check(run, name, estimate, thunk)
            run.rows.append(row)
            write_report(run, env, done=False)
            print(f"[{time.perf_counter() - run.t0:6.1f} s] {name}: {row['status']}  "
                  f"{row.get('summary') or row.get('error') or row.get('reason', '')}", file=sys.stderr, flush=True)
        report = write_report(run, env, done=True)
    finally:
        if not args.work:
            shutil.rmtree(run.work, ignore_errors=True)
    print(table(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
