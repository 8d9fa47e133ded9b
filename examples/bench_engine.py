"""Benchmark of the layer-by-layer engine: memory, time per layer, and pruning quality on SmolLM2.

    .venv/bin/python examples/bench_engine.py memory  [--samples 128 --seqlen 512]
    .venv/bin/python examples/bench_engine.py ppl     [--samples 128 --seqlen 512]

memory: each run is a fresh subprocess streaming a checkpoint through Wanda and SparseGPT; it reports
peak RSS (VmHWM), the RSS after imports, and the ratio of peak RSS (also net of that baseline) to one
decoder layer's bytes plus the calibration activations' bytes (n * seqlen * hidden * dtype size). Models:
SmolLM2-135M cut to its first 4 of 30 layers (per-layer figures are the same for all 30), and a synthetic
LLaMA-style checkpoint (hidden 512) with 2 and 8 layers: peak RSS should not grow with depth.

ppl: perplexity of SmolLM2 on the pydoc "test" text (first --windows 40 windows of 512 tokens) dense,
and pruned 50% / 2:4 by magnitude (per layer), Wanda and SparseGPT (calibrated on the pydoc "train" text,
streamed through the engine). SmolLM2 comes from $SMOLLM2_DIR (default /tmp/smollm2, a safetensors
conversion of the GGUF) or llmprune's built-in `smollm2-135m`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def smollm2_dir() -> Path:
    path = Path(os.environ.get("SMOLLM2_DIR", "/tmp/smollm2"))
    if (path / "config.json").exists():
        return path
    from llmprune.models import resolve_model

    return resolve_model("smollm2-135m")


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def layer_index(name: str) -> int | None:
    m = re.search(r"\.layers\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def truncated_copy(src: Path, dst: Path, n_layers: int) -> Path:
    """A copy of a checkpoint keeping only its first `n_layers` decoder layers."""
    from safetensors.torch import save_file

    from llmprune.io import Checkpoint

    if (dst / "config.json").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpoint(src)
    keep = {n: ckpt.read(n) for n in ckpt.names if layer_index(n) is None or layer_index(n) < n_layers}
    save_file(keep, dst / "model.safetensors", metadata={"format": "pt"})
    config = dict(ckpt.config, num_hidden_layers=n_layers)
    (dst / "config.json").write_text(json.dumps(config))
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json" and f.suffix != ".safetensors":
            shutil.copy(f, dst / f.name)
    return dst


def synthetic_llama(dst: Path, n_layers: int, hidden: int = 512, intermediate: int = 1408, vocab: int = 4096) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    if (dst / "config.json").exists():
        return dst
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=n_layers,
                      num_attention_heads=8, num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=2048)
    LlamaForCausalLM(cfg).save_pretrained(dst)
    return dst


def calib_for(src: Path, samples: int, seqlen: int) -> torch.Tensor:
    from llmprune.calib import calibration_batch
    from llmprune.data import load_text

    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src)
    except Exception:  # synthetic checkpoints have no tokenizer: random ids
        vocab = json.loads((src / "config.json").read_text())["vocab_size"]
        return torch.randint(0, vocab, (samples, seqlen), generator=torch.Generator().manual_seed(0))
    return calibration_batch(tok, load_text("pydoc", "train"), samples, seqlen, seed=0)


def stream_prune(src: Path, out: Path, method: str, pattern: str | None, sparsity: float, calib: torch.Tensor) -> dict:
    from llmprune.arch import Selector, arch_for
    from llmprune.config import PruneConfig, parse_pattern
    from llmprune.streaming import prune_calibrated
    from llmprune.io import Checkpoint

    cfg = PruneConfig(method=method, sparsity=sparsity, pattern=parse_pattern(pattern), seqlen=calib.shape[1],
                      calib_samples=calib.shape[0], extra={"device": "cpu"})
    ckpt = Checkpoint(src)
    select = Selector(arch_for(ckpt.config), cfg.include, cfg.exclude)
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    return prune_calibrated(str(src), src, ckpt, select, names, out, cfg, overwrite=True, calib=calib)


def child(args) -> None:
    """One measured run (in its own process, so VmHWM is this run's peak)."""
    from llmprune.io import Checkpoint

    src = Path(args.src)
    calib = calib_for(src, args.samples, args.seqlen)
    ckpt = Checkpoint(src)
    layer_bytes = sum(ckpt.info(n).nbytes for n in ckpt.names if layer_index(n) == 0)
    hidden = ckpt.config["hidden_size"]
    act_bytes = calib.numel() * hidden * ckpt.info(ckpt.names[0]).dtype.itemsize
    base = rss_kb("VmRSS") * 1024
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        t, cpu = time.perf_counter(), time.process_time()
        record = stream_prune(src, Path(tmp) / "out", args.method, None, 0.5, calib)
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = rss_kb("VmHWM") * 1024
    n_layers = ckpt.config["num_hidden_layers"]
    print(json.dumps({"layers": n_layers, "layer_bytes": layer_bytes, "act_bytes": act_bytes, "base_rss": base,
                      "peak_rss": peak, "ratio": peak / (layer_bytes + act_bytes),
                      "ratio_net": (peak - base) / (layer_bytes + act_bytes), "wall": wall, "cpu_per_layer": cpu / n_layers,
                      "per_layer": record["timings"]["per_layer_mean"]}))


def run_child(src: Path, method: str, args) -> dict:
    cmd = [sys.executable, __file__, "child", "--src", str(src), "--method", method, "--samples", str(args.samples),
           "--seqlen", str(args.seqlen), "--tmp", args.tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(args) -> None:
    work = Path(args.tmp)
    models = []
    if "smollm2" in args.models:
        models.append(("SmolLM2 (4 of 30 layers)", truncated_copy(smollm2_dir(), work / "smollm2-4l", 4)))
    models += [(f"synthetic LLaMA h512, {n} layers", synthetic_llama(work / f"synth-{n}l", n))
               for n in (2, 8) if f"synth{n}" in args.models]
    print(f"calibration: {args.samples} x {args.seqlen} tokens\n")
    print("| model | method | layer MB | activations MB | RSS after imports MB | peak RSS MB | "
          "peak / (layer+act) | (peak - base) / (layer+act) | wall s / layer | CPU s / layer |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, src in models:
        for method in args.methods.split(","):
            r = run_child(src, method, args)
            mb = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
            print(f"| {label} | {method} | {mb(r['layer_bytes'])} | {mb(r['act_bytes'])} | {mb(r['base_rss'])} | "
                  f"{mb(r['peak_rss'])} | {r['ratio']:.2f} | {r['ratio_net']:.2f} | {r['per_layer']:.1f} | "
                  f"{r['cpu_per_layer']:.1f} |", flush=True)


def ppl(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmprune.config import PruneConfig, parse_pattern
    from llmprune.data import load_text
    from llmprune.eval.ppl import perplexity
    from llmprune.prune import prune_model_

    src = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(src)
    text = load_text("pydoc", "test")
    calib = calib_for(src, args.samples, args.seqlen)

    def score(path) -> float:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        return perplexity(model, tok, text, seqlen=512, batch_size=4, max_windows=args.windows).ppl

    print(f"SmolLM2-135M perplexity, pydoc test text, {args.windows} x 512 tokens; "
          f"calibration {args.samples} x {args.seqlen}\n")
    print("| method | sparsity | perplexity | prune s |")
    print("|---|---|---|---|")
    print(f"| dense | 0 | {score(src):.2f} | - |", flush=True)
    for method in args.methods.split(","):
        for pattern in (None, "2:4"):
            what = pattern or "50%"
            t = time.perf_counter()
            if method == "magnitude":
                model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
                prune_model_(model, PruneConfig(method="magnitude", sparsity=0.5, scope="layer",
                                                pattern=parse_pattern(pattern)))
                secs = time.perf_counter() - t
                value = perplexity(model, tok, text, seqlen=512, batch_size=4, max_windows=args.windows).ppl
            else:
                with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
                    stream_prune(src, Path(tmp) / "out", method, pattern, 0.5, calib)
                    secs = time.perf_counter() - t
                    value = score(Path(tmp) / "out")
            print(f"| {method} | {what} | {value:.2f} | {secs:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["memory", "ppl", "child"])
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=40, help="perplexity windows of 512 tokens")
    p.add_argument("--methods", default=None, help="default: magnitude,wanda,sparsegpt (ppl); wanda,sparsegpt (memory)")
    p.add_argument("--models", default="smollm2,synth2,synth8", help="memory: which checkpoints")
    p.add_argument("--tmp", default=os.environ.get("BENCH_TMP", "/tmp/bench_engine"))
    p.add_argument("--src")
    p.add_argument("--method")
    args = p.parse_args()
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    args.methods = args.methods or ("wanda,sparsegpt" if args.what == "memory" else "magnitude,wanda,sparsegpt")
    torch.set_grad_enabled(False)
    {"memory": memory, "ppl": ppl, "child": child}[args.what](args)


if __name__ == "__main__":
    main()
