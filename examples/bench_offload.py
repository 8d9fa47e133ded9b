"""Benchmark (issue 14): `eval` and `sweep` of a checkpoint larger than the memory budget, through offloading.

On the synthetic fp16 LLaMA-7B-shaped checkpoint of bench_prune.py (4 layers, ~2.1 GB; a byte-level
tokenizer is added here), each in a fresh process, wall time and peak RSS (VmHWM, interpreter included) of
  1. `eval ppl` unconstrained, and with `--max-memory 600MiB` (most weights offloaded to disk);
  2. a two-level sweep `sweep --task ppl --sparsities 0,0.5 --max-memory 600MiB`;
  3. the two ways to evaluate a pruned model under the budget: `eval ppl --sparsity 0.5 --max-memory 600MiB`
     (load once, write the pruned weights over the live ones wherever they are: llmprune's mechanism)
     against `prune --sparsity 0.5 -o tmp` + `eval ppl tmp --max-memory 600MiB` (a pruned copy on disk);
and checks: the budgeted perplexity equals the unconstrained one (relative difference <= 1e-3), peak RSS
<= 1.5 GB under the budget, and the sweep's 50% point equals `eval ppl` of `prune --sparsity 0.5`'s output.
Figures print as ratios (budgeted / unconstrained, sweep / one eval).

fp16 matrix products are slow on CPU: the default scores 2 windows of 64 tokens. Larger: --seqlen 512.

    python examples/bench_offload.py [--workdir /tmp/llmprune-bench] [--seqlen 64] [--windows 2] [--budget 600MiB]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_prune import PEAK_RSS, build_synthetic, import_rss  # noqa: E402
from tiny import byte_tokenizer  # noqa: E402  (the test models' byte-level tokenizer)


def synthetic_lm(path: Path) -> Path:
    build_synthetic(path)
    if not (path / "tokenizer.json").exists():
        byte_tokenizer().save_pretrained(path)
    return path


def cli(*args) -> tuple[float, int, dict | None]:
    """(wall seconds, peak RSS bytes, --json output or None) of `llmprune ARGS` in a fresh process."""
    code = ("import sys, time; from llmprune.cli import main; t=time.perf_counter();\n"
            "try: main(sys.argv[1:])\nexcept SystemExit as e: code = e.code\nelse: code = 0\n"
            f"print('BENCH', time.perf_counter()-t, {PEAK_RSS}, code, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    line = [x for x in r.stderr.splitlines() if x.startswith("BENCH")]
    if r.returncode or not line or line[-1].split()[3] not in ("0", "None"):
        raise SystemExit(f"llmprune {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    _, secs, rss, _ = line[-1].split()
    out = r.stdout.strip()
    return float(secs), int(rss), json.loads(out) if out.startswith("{") else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/llmprune-bench")
    ap.add_argument("--seqlen", type=int, default=64)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--budget", default="600MiB")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = synthetic_lm(work / "synthetic-llama-fp16")
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    ppl = ["--seqlen", args.seqlen, "--limit", args.windows, "--json"]
    budget = ["--max-memory", args.budget]
    print(f"synthetic LLaMA-7B-shaped fp16, 4 layers: {size / 1e9:.2f} GB; ppl on {args.windows} windows of "
          f"{args.seqlen} tokens; budget {args.budget}; python+torch+llmprune imports alone {import_rss() / 1e6:.0f} MB")
    cli("eval", "ppl", src, *ppl)  # warm the page cache for every run alike

    rows = {}
    rows["eval"] = cli("eval", "ppl", src, *ppl)
    rows["eval budget"] = cli("eval", "ppl", src, *ppl, *budget)
    out = work / "offload-sweep"
    rows["sweep budget"] = cli("sweep", src, "--task", "ppl", "--sparsities", "0,0.5", "--seqlen", args.seqlen,
                               "--ppl-windows", args.windows, "--no-plot", "--overwrite", "-o", out, "--json", *budget)
    rows["eval --sparsity budget"] = cli("eval", "ppl", src, *ppl, "--sparsity", "0.5", *budget)
    pruned = work / "offload-pruned50"
    t0 = time.perf_counter()
    rows["prune"] = cli("prune", src, "--sparsity", "0.5", "-o", pruned, "--overwrite", "--json")
    rows["eval pruned budget"] = cli("eval", "ppl", pruned, *ppl, *budget)
    copy_path_s = time.perf_counter() - t0

    for label, (secs, rss, _) in rows.items():
        print(f"  {label:24s} {secs:7.1f} s   peak RSS {rss / 1e6:6.0f} MB")
    (t_free, m_free, j_free), (t_b, m_b, j_b) = rows["eval"], rows["eval budget"]
    ppl_free, ppl_b = j_free["tasks"]["ppl"]["ppl"], j_b["tasks"]["ppl"]["ppl"]
    rel = abs(ppl_b - ppl_free) / ppl_free
    print(f"eval ppl: budget / unconstrained: time {t_b / t_free:.2f}, peak RSS {m_b / m_free:.2f} "
          f"({m_b / 1e9:.2f} GB, target <= 1.5); ppl {ppl_b:.6g} vs {ppl_free:.6g}, relative difference {rel:.1e} "
          f"(target <= 1e-3); weights placed: {j_b['memory']['placement']}")
    t_s, m_s, j_s = rows["sweep budget"]
    scores = {r["level"]: r["score"] for r in j_s["rows"]}
    ref50 = rows["eval pruned budget"][2]["tasks"]["ppl"]["ppl"]
    print(f"sweep 0,0.5 under the budget: time / one unconstrained eval {t_s / t_free:.2f}, peak RSS "
          f"{m_s / 1e9:.2f} GB (/ unconstrained eval {m_s / m_free:.2f}); dense {scores['dense']:.6g} "
          f"(rel. diff {abs(scores['dense'] - ppl_free) / ppl_free:.1e}), 50% {scores['0.5']:.6g} vs eval of "
          f"prune's output {ref50:.6g} (rel. diff {abs(scores['0.5'] - ref50) / ref50:.1e})")
    t_o = rows["eval --sparsity budget"][0]
    print(f"pruned eval under the budget: written in place {t_o:.1f} s vs prune to disk + eval the copy "
          f"{copy_path_s:.1f} s (ratio {t_o / copy_path_s:.2f}); sparsity {rows['eval --sparsity budget'][2]['sparsity']}")
    for d in (out, pruned):
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
