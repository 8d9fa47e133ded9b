"""Benchmark of streaming magnitude pruning (issue: core).

For a synthetic sharded fp16 LLaMA-style checkpoint (LLaMA-7B layer shapes, 4 layers, ~2.1 GB, random
init from a config) and for SmolLM2-135M, reports in one run:
  - wall time of `llmprune prune --sparsity 0.5` / wall time of reading and writing the same bytes
    (plain chunked file copy with fsync) — target <= 1.3
  - peak RSS of the prune process / size of the largest tensor — target <= 3

    python examples/bench_prune.py [--workdir /tmp/llmprune-bench] [--skip-synthetic] [--skip-smollm2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch


def build_synthetic(path: Path) -> Path:
    """LLaMA-7B shapes with 4 layers, fp16, 3 shards; tensors generated one at a time (never a whole model)."""
    if (path / "config.json").exists():
        return path
    import transformers

    from llmprune.io import ShardWriter, write_index

    cfg = transformers.LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4,
                                   num_attention_heads=32, num_key_value_heads=32, vocab_size=32000, dtype="float16")
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in transformers.LlamaForCausalLM(cfg).state_dict().items()}
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = list(shapes)
    shards = [names[i::3] for i in range(3)]
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for i, shard_names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-00003.safetensors"
        w = ShardWriter(tmp / fname, shard_names, {"format": "pt"})
        for n in shard_names:
            t = torch.ones(shapes[n]) if len(shapes[n]) == 1 else torch.randn(shapes[n], generator=gen) * 0.02
            w.write(n, t.half())
            weight_map[n] = fname
        w.close()
        total += w.nbytes
    write_index(tmp, weight_map, total)
    cfg.save_pretrained(tmp)
    os.replace(tmp, path)
    return path


def copy_baseline(src: Path, dst: Path) -> float:
    """Read and write the same bytes (chunked copy of every file, fsync), seconds."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    t0 = time.perf_counter()
    buf = bytearray(64 << 20)
    for f in sorted(src.iterdir()):
        with open(f, "rb") as fi, open(dst / f.name, "wb") as fo:
            while n := fi.readinto(buf):
                fo.write(memoryview(buf)[:n])
            fo.flush()
            os.fsync(fo.fileno())
    return time.perf_counter() - t0


def prune_run(model: str, out: Path, threads: int = 1) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of `llmprune prune MODEL --sparsity 0.5` in a fresh process."""
    code = ("import sys, time; from llmprune.cli import main; t=time.perf_counter();\n"
            "try: main(sys.argv[1:])\nexcept SystemExit: pass\n"
            f"print('BENCH', time.perf_counter()-t, {PEAK_RSS}, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code, "prune", model, "--sparsity", "0.5", "-o", str(out), "--overwrite",
                        "--threads", str(threads)],
                       capture_output=True, text=True)
    line = [x for x in r.stderr.splitlines() if x.startswith("BENCH")]
    if r.returncode or not line:
        raise SystemExit(r.stderr[-2000:])
    _, secs, rss = line[-1].split()
    return float(secs), int(rss)


# VmHWM (peak resident set) of the process itself; ru_maxrss would carry over the parent's peak across exec
PEAK_RSS = "int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024"


def import_rss() -> int:
    code = f"import llmprune.cli, llmprune.prune, transformers; print({PEAK_RSS})"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def bench(label: str, model: str, src: Path, work: Path) -> None:
    from llmprune.io import Checkpoint

    largest = max(i.nbytes for i in Checkpoint(src).infos.values())
    size = sum(f.stat().st_size for f in src.iterdir())
    prune_run(model, work / "warm")  # page cache warm for both sides
    base = copy_baseline(src, work / "copy")
    secs2, _ = prune_run(model, work / "pruned", threads=0)  # torch's default thread count, for comparison
    secs, rss = prune_run(model, work / "pruned")
    base2 = copy_baseline(src, work / "copy")  # bracket the prunes to smooth out noise
    base = (base + base2) / 2
    print(f"{label}: {size / 1e9:.2f} GB, largest tensor {largest / 1e6:.0f} MB")
    inner = json.loads((work / "pruned" / "run.json").read_text())["timings"]["total"]
    print(f"  read+write baseline {base:.2f} s | prune 0.5 {secs:.2f} s | ratio {secs / base:.2f} (target <= 1.3)")
    print(f"  prune itself, from run.json (without the torch import at process start): {inner:.2f} s | "
          f"ratio {inner / base:.2f}")
    print(f"  with torch's default threads ({torch.get_num_threads()}): prune {secs2:.2f} s | ratio {secs2 / base:.2f}")
    print(f"  peak RSS {rss / 1e6:.0f} MB | / largest tensor {rss / largest:.2f} (target <= 3) | "
          f"python+torch+llmprune imports alone {import_rss() / 1e6:.0f} MB")
    for d in ("warm", "copy", "pruned"):
        shutil.rmtree(work / d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/llmprune-bench")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not args.skip_synthetic:
        src = build_synthetic(work / "synthetic-llama-fp16")
        bench("synthetic LLaMA-7B-shaped fp16 (4 layers, 3 shards)", str(src), src, work)
    if not args.skip_smollm2:
        from llmprune.models import resolve_model

        src = resolve_model("smollm2-135m")
        bench("SmolLM2-135M fp32", "smollm2-135m", src, work)


if __name__ == "__main__":
    main()
