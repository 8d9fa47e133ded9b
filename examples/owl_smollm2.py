"""OWL vs uniform layer sparsity on SmolLM2-135M: perplexity at 50/60/70% with Wanda (or any method).

The paper's anchor (Yin et al., ICML 2024, Table 3): LLaMA-7B at 70%, WikiText perplexity Wanda 85.8 ->
OWL + Wanda 24.6. This script runs the same comparison on the offline SmolLM2 with `llmprune eval ppl`, one
subprocess per point (prune in memory, then score), and prints a table plus JSON:

    dense, then for every sparsity S and allocation A:
    llmprune eval ppl smollm2-135m --method wanda --sparsity S --allocation A --seqlen 512 --limit N --json

Perplexity is on the first N 512-token windows of the pydoc text's test split; Wanda calibrates on
--calib-samples windows of its train split (seed 0). Defaults take a few minutes per point on a shared
2-core CPU.

    .venv/bin/python examples/owl_smollm2.py                          # wanda, 0.5 0.6 0.7, 16 windows
    .venv/bin/python examples/owl_smollm2.py --method magnitude --sparsities 0.5,0.7 --out owl.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def eval_ppl(model: str, args: list[str], a) -> dict:
    cmd = [sys.executable, "-c", "from llmprune.cli import main; main()", "eval", "ppl", model, "--seqlen",
           str(a.seqlen), "--limit", str(a.limit), "--calib-samples", str(a.calib_samples), "--json", *args]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{done.stderr[-2000:]}")
    record = json.loads(done.stdout)
    record["seconds"] = time.perf_counter() - t0
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--sparsities", default="0.5,0.6,0.7")
    ap.add_argument("--limit", type=int, default=16, help="perplexity windows of --seqlen tokens")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--owl-m", type=float, default=5.0)
    ap.add_argument("--owl-lambda", type=float, default=0.08)
    ap.add_argument("--out", default=None, help="also write the results as JSON here")
    a = ap.parse_args()

    results = {"args": vars(a), "points": []}
    dense = eval_ppl(a.model, [], a)
    results["dense"] = {"ppl": dense["tasks"]["ppl"]["ppl"], "seconds": dense["seconds"]}
    print(f"dense: ppl {results['dense']['ppl']:.2f}  ({dense['seconds']:.0f} s)", file=sys.stderr)
    for s in (float(x) for x in a.sparsities.split(",")):
        for allocation in ("uniform", "owl"):
            r = eval_ppl(a.model, ["--method", a.method, "--sparsity", str(s), "--allocation", allocation,
                                   "--owl-m", str(a.owl_m), "--owl-lambda", str(a.owl_lambda)], a)
            layers = r.get("allocation", {}).get("layers", {})
            point = {"sparsity": s, "allocation": allocation, "ppl": r["tasks"]["ppl"]["ppl"],
                     "actual_sparsity": r["sparsity"]["sparsity"], "seconds": r["seconds"],
                     "layer_sparsity_range": [min(v["sparsity"] for v in layers.values()),
                                              max(v["sparsity"] for v in layers.values())] if layers else None}
            results["points"].append(point)
            print(f"{a.method} {s:.0%} {allocation}: ppl {point['ppl']:.2f}  (actual {point['actual_sparsity']:.4f}, "
                  f"{r['seconds']:.0f} s)", file=sys.stderr)
    print(f"\n{a.model}, {a.method}, perplexity on {a.limit} x {a.seqlen} pydoc tokens (dense {results['dense']['ppl']:.2f})")
    print(f"{'sparsity':>8}  {'uniform':>10}  {'owl':>10}")
    by = {(p["sparsity"], p["allocation"]): p["ppl"] for p in results["points"]}
    for s in sorted({p["sparsity"] for p in results["points"]}):
        print(f"{s:>8.0%}  {by[(s, 'uniform')]:>10.2f}  {by[(s, 'owl')]:>10.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
