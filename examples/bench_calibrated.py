"""Calibrated pruning speed and memory on SmolLM2-135M: the recipe of the reference-code comparison.

    python examples/bench_calibrated.py [--threads 1 2] [--methods wanda sparsegpt] [--modes sequential unpruned]
        [--baseline OLD] [--no-reference] [--json out.json]

Recipe: fp32, 32 x 512 calibration tokens from the pydoc "train" split (seed 0), 50% unstructured, streamed
by `llmprune prune`, in each mode: `sequential` (the default: each group of a layer's linears pruned on the
inputs the pruned ones give) and `unpruned` (`--no-sequential`: every statistic from the unpruned layer, the
reference drivers' order). Each run is a fresh process; reported: prune time (run.json), its per-phase profile,
the process's wall time, user and system CPU time, minor page faults, peak RSS, and the perplexity of the
output (first 20 windows of 512 of the pydoc "test" split).

The baseline, run in the same session with the same threads: the reference drivers' procedure
(`reference_drivers.py`: whole model loaded, batch-1 forwards, one statistic per linear), timed the same
way and its output scored the same way. Its prune span leaves out model loading and data, so the process
wall times are compared too. Also measured: one dense forward of the 32 x 512 batch (machine drift), and
the figures the issue quotes for the reference code on another machine (REFERENCE_S, for context only).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_S = {("wanda", 1): 73.7, ("wanda", 2): 37.8, ("sparsegpt", 1): 121.8, ("sparsegpt", 2): 70.9}
CLI = [sys.executable, "-c", "from llmprune.cli import main; main()"]


def run_measured(cmd: list[str], threads: int, tree: str | None = None) -> tuple[str, dict]:
    """Run a command with `threads` intra-op threads (and llmprune imported from `tree` when given); its
    stdout, and its wall time, peak RSS, CPU time and faults."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if tree:
        env["PYTHONPATH"] = tree
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:  # (no pipe to fill up)
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({code}):\n{stderr[-2000:]}")
    return stdout, {"process_s": round(wall, 1), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1), "user_s": round(ru.ru_utime, 2),
                    "system_s": round(ru.ru_stime, 2), "minor_faults": ru.ru_minflt}


MODES = {"sequential": [], "unpruned": ["--no-sequential"]}


def prune_and_score(src: str, dst: Path, method: str, threads: int, windows: int, tree: str | None = None,
                    mode: str = "sequential") -> dict:
    """Prune with the recipe (llmprune from `tree`, default this one; `mode`'s flags unless it is a baseline
    tree, which runs its own default), then score the output with this eval."""
    _, usage = run_measured(CLI + ["prune", src, "--method", method, "--sparsity", "0.5", "--calib-samples", "32",
                                   "--seqlen", "512", "-o", str(dst), "--overwrite", *([] if tree else MODES[mode])],
                            threads, tree)
    timings = json.loads((dst / "run.json").read_text())["timings"]
    return {"prune_s": round(timings["total"], 1), "ppl": score(dst, threads, windows), **usage,
            "system_fraction": round(usage["system_s"] / max(usage["user_s"] + usage["system_s"], 1e-9), 3),
            "profile": timings.get("profile")}


def reference_and_score(src: str, dst: Path, method: str, threads: int, windows: int) -> dict:
    """The reference drivers' procedure on the recipe (examples/reference_drivers.py), its output scored."""
    out, usage = run_measured([sys.executable, str(Path(__file__).with_name("reference_drivers.py")), src,
                               "--method", method, "--samples", "32", "--seqlen", "512", "-o", str(dst)], threads)
    row = json.loads(out.strip().splitlines()[-1])
    return {"prune_s": row["prune_s"], "phases_s": row["phases_s"], "ppl": score(dst, threads, windows), **usage}


def score(dst: Path, threads: int, windows: int) -> float:
    out, _ = run_measured(CLI + ["eval", "ppl", str(dst), "--seqlen", "512", "--limit", str(windows), "--json"], threads)
    shutil.rmtree(dst)
    return round(json.loads(out)["tasks"]["ppl"]["ppl"], 3)


DENSE = """
import json, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmprune.calib import calibration_batch
from llmprune.data import load_text
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
ids = calibration_batch(tok, load_text(None, "train"), 32, 512, 0)
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
with torch.no_grad():
    t = time.perf_counter()
    for chunk in ids.split(8):
        model.model(input_ids=chunk, use_cache=False)
print(json.dumps({"dense_forward_s": time.perf_counter() - t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--windows", type=int, default=20)
    ap.add_argument("--baseline", help="a checkout of an earlier llmprune (e.g. `git worktree add /tmp/old REV`): "
                                       "each point is also pruned with it, in the same session")
    ap.add_argument("--no-reference", action="store_true", help="skip the reference drivers' runs")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    from llmprune.models import resolve_model

    src = str(resolve_model("smollm2-135m"))
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench-calibrated-"))
    try:
        for threads in args.threads:
            out, dense_usage = run_measured([sys.executable, "-c", DENSE, src], threads)
            dense = json.loads(out.strip().splitlines()[-1])["dense_forward_s"]
            for method in args.methods:
                ref = None if args.no_reference else reference_and_score(src, work / "ref", method, threads, args.windows)
                for mode in args.modes:
                    rows.append(row := {"method": method, "mode": mode, "threads": threads, "dense_forward_s": round(dense, 2),
                                        "dense_peak_rss_mb": dense_usage["peak_rss_mb"],
                                        "issue_reference_s": REFERENCE_S.get((method, threads)),
                                        **prune_and_score(src, work / "out", method, threads, args.windows, mode=mode)})
                    row["reference"] = ref
                    if ref:
                        for key in ("prune_s", "process_s", "peak_rss_mb"):
                            row[f"{key}_vs_reference"] = round(row[key] / ref[key], 3)
                    row["rss_vs_dense_model"] = round(row["peak_rss_mb"] / dense_usage["peak_rss_mb"], 3)
                    if args.baseline:
                        row["baseline"] = prune_and_score(src, work / "out", method, threads, args.windows, args.baseline)
                        row["ratio_to_baseline"] = round(row["prune_s"] / row["baseline"]["prune_s"], 3)
                    print(f"{method:9s} {mode:10s} threads={threads}  prune {row['prune_s']:6.1f} s  process "
                          f"{row['process_s']} s  peak RSS {row['peak_rss_mb']} MB ({row['rss_vs_dense_model']}x the "
                          f"dense model's {dense_usage['peak_rss_mb']} MB)  user {row['user_s']} s  sys {row['system_s']} s"
                          f" ({row['system_fraction']:.1%})  ppl {row['ppl']}  dense fwd {row['dense_forward_s']} s", flush=True)
                    if ref:
                        print(f"   vs reference drivers: prune x{row['prune_s_vs_reference']}  process "
                              f"x{row['process_s_vs_reference']}  peak RSS x{row['peak_rss_mb_vs_reference']}", flush=True)
                    if args.baseline:
                        b = row["baseline"]
                        print(f"   baseline: prune {b['prune_s']} s (new/baseline x{row['ratio_to_baseline']})  peak RSS "
                              f"{b['peak_rss_mb']} MB  user {b['user_s']} s  sys {b['system_s']} s  ppl {b['ppl']}",
                              flush=True)
                    print("   phases:", json.dumps((row.get("profile") or {}).get("phases_s")), flush=True)
                if ref:
                    print(f"{method:9s} reference  threads={threads}  prune {ref['prune_s']} s  process {ref['process_s']} s"
                          f"  peak RSS {ref['peak_rss_mb']} MB  user {ref['user_s']} s  sys {ref['system_s']} s  ppl "
                          f"{ref['ppl']}  phases {json.dumps(ref['phases_s'])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json + ".tmp").write_text(json.dumps(rows, indent=2))
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
