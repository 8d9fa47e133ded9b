"""Wanda and SparseGPT on the real Gemma3-270M (sliding and full attention layers): perplexity per method.

Gemma3 alternates sliding-window and full-attention layers with different rotary tables, so it is where a
calibration engine that replays one layer's arguments for all layers goes wrong. Run this once with the
current code and once with an older checkout on PYTHONPATH to see the difference:

    python examples/bench_gemma3_calibrated.py --json after.json
    PYTHONPATH=/path/to/old/checkout python examples/bench_gemma3_calibrated.py --json before.json

Each point is `llmprune eval ppl gemma3-270m --method M (--sparsity 0.5 | --pattern 2:4)`: pruned in memory
on 32 x 512 calibration tokens of the offline pydoc text (seed 0), scored on the first 20 windows of 512.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

POINTS = [("dense", None), ("wanda", "0.5"), ("wanda", "2:4"), ("sparsegpt", "0.5"), ("sparsegpt", "2:4")]


def run_point(model: str, method: str, level: str | None, windows: int, samples: int) -> dict:
    cmd = [sys.executable, "-c", "from llmprune.cli import main; main()", "eval", "ppl", model, "--seqlen", "512",
           "--limit", str(windows), "--json"]
    if level is not None:
        cmd += ["--method", method, "--calib-samples", str(samples)]
        cmd += ["--pattern", level] if ":" in level else ["--sparsity", level]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{out.stderr[-2000:]}")
    return {"method": method, "level": level or "dense", "result": json.loads(out.stdout),
            "seconds": round(time.perf_counter() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    rows = []
    for method, level in POINTS:
        row = run_point(args.model, method, level, args.windows, args.calib_samples)
        rows.append(row)
        print(f"{method:10s} {row['level']:5s} {json.dumps(row['result'])[:160]}  ({row['seconds']} s)", flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=2)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
