"""Sparse fine-tuning with the keep-mask held fixed: masks, the training loop, evaluation.

The prunable weights (the architecture table's `Selector`) each carry a keep-mask. After every backward
the masked gradient is zero at pruned positions, so AdamW's moments and update stay exactly zero there,
and weight decay multiplies a zero; the mask is also re-applied after each optimizer step, so pruned
weights are exactly 0.0 after every step whatever the optimizer. Heads and other new layers stay dense.
Runs through `accelerate` (CPU, one GPU, or several with `accelerate launch`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..arch import Selector, arch_for

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings: AdamW, lr decayed linearly to 0 after an optional linear warmup."""

    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.0           # fraction of the steps
    max_length: int = 128
    eval_batch_size: int = 64
    max_steps: int | None = None  # stop early (benchmarks, tests)
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def prunable_params(model: torch.nn.Module, select: Selector | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of the weights the architecture table calls prunable."""
    select = select or Selector(arch_for(model.config))
    return [(n, p) for n, p in model.named_parameters() if select(n, tuple(p.shape))]


def masks_from_zeros(model: torch.nn.Module, select: Selector | None = None) -> dict[str, torch.Tensor]:
    """{name: keep-mask} = the nonzeros of each prunable weight (after `prune_model_`, or of a pruned checkpoint)."""
    return {n: p.detach() != 0 for n, p in prunable_params(model, select)}


def masks_from_checkpoint(model: torch.nn.Module, path) -> dict[str, torch.Tensor]:
    """Keep-masks read from a pruned directory (its nonzeros), named like `model`'s parameters.

    The directory is loaded with `model`'s class and config, so transformers maps saved names (ViT's
    `encoder.layer.0.attention.attention.query`) to in-memory ones (`layers.0.attention.q_proj`)."""
    from ..errors import LlmpruneError
    from ..io import Checkpoint
    from ..maskcmp import prunable_keys
    from ..models import resolve_model

    src = resolve_model(path)
    ckpt = Checkpoint(src)
    spec = arch_for(model.config)
    if arch_for(ckpt.config).family != spec.family:
        raise LlmpruneError(f"--mask-from {path} is a {arch_for(ckpt.config).family} checkpoint, the model is {spec.family}.")
    ours = prunable_params(model)
    theirs = sorted(ckpt.info(n).shape for n in prunable_keys(ckpt).values())
    if theirs != sorted(tuple(p.shape) for _, p in ours):
        raise LlmpruneError(f"--mask-from {path} has other prunable weights than the model: is it pruned from the same model?")
    other = type(model).from_pretrained(src, config=model.config, ignore_mismatched_sizes=True, dtype=torch.float32)
    masks = masks_from_zeros(other)
    del other
    return masks


def apply_masks_(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the pruned positions of every masked weight, in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            p = params[name]
            p.mul_(m.to(device=p.device, dtype=p.dtype))


def mask_sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


def linear_decay(total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then linear decay to 0 at `total_steps`."""
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return f


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "norm" in n.lower() else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


@torch.no_grad()
def evaluate(model, loader, accelerator=None) -> float:
    """Top-1 accuracy of a classifier over an eval loader."""
    model.eval()
    correct = total = 0
    for batch in loader:
        pred = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
        labels = batch["labels"]
        if accelerator is not None:
            pred, labels = accelerator.gather_for_metrics((pred, labels))
        correct += int((pred == labels).sum())
        total += labels.numel()
    return correct / total if total else 0.0


def train_(model, masks: dict[str, torch.Tensor], train_loader, eval_loader, cfg: TrainConfig,
           log: Log | None = None, accelerator=None) -> list[dict]:
    """Fine-tune `model` in place keeping `masks` fixed; returns one record per epoch (loss, score, timings).

    An empty `masks` trains densely (the same loop, so dense and masked throughput compare fairly).
    """
    from accelerate import Accelerator

    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.seed)
    optimizer = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_loader.dataset) / cfg.batch_size / acc.num_processes)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(total, int(cfg.warmup * total)))
    model, optimizer, train_loader, eval_loader, scheduler = acc.prepare(model, optimizer, train_loader, eval_loader, scheduler)
    params = dict(acc.unwrap_model(model).named_parameters())
    pairs = [(params[n], m.to(device=params[n].device, dtype=params[n].dtype)) for n, m in masks.items()]
    apply_masks_(acc.unwrap_model(model), masks)

    history, step, epoch = [], 0, 0
    while step < total:
        model.train()
        t0, seen, loss_sum, batches = time.perf_counter(), 0, 0.0, 0
        t_first = seen_first = None  # after the first step: throughput without warm-up
        for batch in train_loader:
            loss = model(**batch).loss
            acc.backward(loss)
            for p, m in pairs:
                if p.grad is not None:
                    p.grad.mul_(m)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for p, m in pairs:
                    p.mul_(m)
            seen += batch["labels"].shape[0] * acc.num_processes
            loss_sum, batches, step = loss_sum + float(loss.detach()), batches + 1, step + 1
            if t_first is None:
                t_first, seen_first = time.perf_counter(), seen
            if step >= total:
                break
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        score = evaluate(model, eval_loader, acc)
        epoch += 1
        rec = {"epoch": epoch, "steps": step, "loss": loss_sum / max(1, batches), "score": score,
               "train_s": train_s, "eval_s": time.perf_counter() - t1, "samples_per_s": seen / train_s if train_s else 0.0}
        if batches > 1:
            rec["samples_per_s_steady"] = (seen - seen_first) / (t1 - t_first)
        history.append(rec)
        if log:
            log(f"epoch {epoch}: loss {rec['loss']:.4f}  score {score:.4f}  {rec['samples_per_s']:.1f} samples/s")
    return history
