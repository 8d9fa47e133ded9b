"""Benchmark: the same sweep in process and as Ray tasks (`--executor ray`): same scores, Ray's cost per point.

Runs one sweep (SmolLM2-135M, perplexity, dense + global-magnitude levels by default) three ways on this
machine and prints JSON:
  local     load the model here, `run_sweep` with a `PointRunner` (what `llmprune sweep` does by default);
  serial    a local Ray runtime, one point at a time with all the CPUs (`--cpus-per-point` = --threads), so
            the work equals `local` and the difference is Ray's: runtime start, the worker process and
            its model load, and per-task scheduling (first point vs the mean of the others);
  parallel  the same runtime, one CPU per point, points side by side (on 2 cores: 2 at once).
Scores must be identical (`same_scores`). Then, on paper, the expected wall time of an MMLU sweep of a
13B model with `--levels-13b` levels on 1 GPU (local: one load, points in turn) and on `--gpus` GPUs
(Ray: every point loads the model in a fresh process, ceil(points / GPUs) waves), from the overheads
measured here and the per-point costs given as flags (MMLU time per point, load bandwidth).

    .venv/bin/python examples/bench_sweep_ray.py                          # 4 levels, 4 windows of 512
    .venv/bin/python examples/bench_sweep_ray.py --levels 0.2,0.5 --windows 2 --no-parallel
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import torch

from llmprune.config import parse_sparsities
from llmprune.sweep.results import ResultsLog
from llmprune.sweep.run import SweepConfig, run_sweep, suite_config


def scores(records: list[dict]) -> dict:
    return {f"{r['method']} {r['level']} {r['task']}": r["metrics"]["ppl"] for r in records}


def spent(records: list[dict]) -> dict:
    """Prune and eval seconds summed over the points (as the points themselves measured them)."""
    return {f"{k}_s_all_points": round(sum(r["seconds"][k] for r in records), 2) for k in ("prune", "eval")}


def timed_ray(cfg: SweepConfig, cpus: float) -> dict:
    """A Ray sweep on the already started runtime; driver-side finish times give each point's overhead."""
    from llmprune.sweep.executor import RayExecutor
    from llmprune.sweep.remote import LoadAndRun, for_workers

    with tempfile.TemporaryDirectory() as tmp:
        log = ResultsLog(tmp, cfg.identity())
        finished = []
        t0 = time.perf_counter()
        runner = LoadAndRun(for_workers(cfg), "cpu", threads=max(1, int(cpus)))  # what `sweep --executor ray` hands out
        records = run_sweep(runner, cfg, log, lambda r: finished.append((time.perf_counter(), r)),
                            RayExecutor(cpus_per_point=cpus))
        wall = time.perf_counter() - t0
    worker = [r["seconds"]["load"] + r["seconds"]["prune"] + r["seconds"]["eval"] for _, r in finished]
    gaps = [t - (finished[i - 1][0] if i else t0) for i, (t, _) in enumerate(finished)]
    overhead = [g - w for g, w in zip(gaps, worker)]  # meaningful when points run one at a time
    return {"records": records, "wall_s": wall, "worker_s": worker, "overhead_s": overhead,
            "load_s": max(r["seconds"]["load"] for _, r in finished)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--levels", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads locally; CPUs of the Ray runtime")
    ap.add_argument("--no-parallel", action="store_true", help="skip the side-by-side Ray run")
    ap.add_argument("--levels-13b", type=int, default=10, help="pruned levels of the paper estimate (+ dense)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--mmlu-s", type=float, default=3600.0, help="one zero-shot MMLU run of a 13B model on one GPU")
    ap.add_argument("--load-gbps", type=float, default=1.0, help="checkpoint read bandwidth per node, GB/s")
    ap.add_argument("--weights-13b", type=float, default=13.0e9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import ray

    from llmprune.eval.suite import Suite
    from llmprune.models import load
    from llmprune.sweep.point import PointRunner

    cfg = SweepConfig(model=args.model, tasks=("ppl",), sparsities=(0.0, *parse_sparsities(args.levels)),
                      seqlen=args.seqlen, ppl_windows=args.windows)
    n_points = 1 + len(cfg.levels)

    t0 = time.perf_counter()
    loaded = load(args.model)
    local_load = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t1 = time.perf_counter()
        local = run_sweep(PointRunner(cfg, loaded, Suite(suite_config(cfg))), cfg, ResultsLog(tmp, cfg.identity()))
        local_sweep = time.perf_counter() - t1
    del loaded

    t0 = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - t0
    try:
        serial = timed_ray(cfg, float(args.threads))
        parallel = None if args.no_parallel else timed_ray(cfg, 1.0)
    finally:
        t0 = time.perf_counter()
        ray.shutdown()
        ray_stop = time.perf_counter() - t0

    prune = [r["seconds"]["prune"] for r in local if r["method"] != "dense"]
    per_task = sum(serial["overhead_s"][1:]) / max(1, n_points - 1)
    first = serial["overhead_s"][0]
    out = {
        "model": args.model, "points": n_points, "seqlen": args.seqlen, "windows": args.windows, "threads": args.threads,
        "same_scores": {"serial": scores(serial["records"]) == scores(local),
                        **({"parallel": scores(parallel["records"]) == scores(local)} if parallel else {})},
        "local": {"load_s": round(local_load, 2), "sweep_s": round(local_sweep, 2), "total_s": round(local_load + local_sweep, 2),
                  "per_point_s": round(local_sweep / n_points, 2), **spent(local)},
        "ray_serial": {"runtime_start_s": round(ray_start, 2), "runtime_stop_s": round(ray_stop, 2),
                       "sweep_s": round(serial["wall_s"], 2),
                       "total_s": round(ray_start + serial["wall_s"] + ray_stop, 2),
                       "worker_model_load_s": round(serial["load_s"], 2),
                       "first_point_overhead_s (worker start, imports)": round(first, 2),
                       "per_point_overhead_s (scheduling, transfer)": round(per_task, 3), **spent(serial["records"])},
        "ppl": {k: round(v, 3) for k, v in scores(local).items()},
    }
    if parallel:
        out["ray_parallel"] = {"sweep_s": round(parallel["wall_s"], 2), "cpus_per_point": 1,
                               "speedup_vs_local_sweep": round(local_sweep / parallel["wall_s"], 2)}

    # On paper: a 13B MMLU sweep from the costs above (bf16: 2 bytes per weight).
    n13 = 1 + args.levels_13b
    load13 = 2 * args.weights_13b / (args.load_gbps * 1e9)
    prune13 = sum(prune) / max(1, len(prune)) * args.weights_13b / 106_168_320  # per-weight cost measured here (CPU)
    point13 = prune13 + args.mmlu_s
    one_gpu = load13 + n13 * point13
    waves = math.ceil(n13 / args.gpus)
    many = ray_start + first + waves * (load13 + point13 + per_task)
    out["paper_13b_mmlu"] = {
        "points": n13, "mmlu_s_per_point": args.mmlu_s, "load_s": round(load13, 1), "prune_s_per_level": round(prune13, 1),
        "one_gpu_local_h": round(one_gpu / 3600, 2), f"{args.gpus}_gpus_ray_h": round(many / 3600, 2), "waves": waves,
        "speedup": round(one_gpu / many, 2),
        "ray_overhead_share": round((ray_start + first + waves * (load13 + per_task)) / many, 4),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
