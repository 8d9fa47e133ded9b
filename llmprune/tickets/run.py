"""One ticket run end to end: load the model for the task, run a method, evaluate, save.

`run_method` is the in-memory core shared by `finetune --method` (`finetune_ticket`, which saves the
fine-tuned model like `finetune` does) and `compare-methods` (which saves only each run's mask).
A saved mask is a loadable-by-`masks compare` directory: the model's config.json plus a safetensors file
holding the keep-masks as uint8 0/1 under the prunable weights' names.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
import torch

from ..finetune.run import FinetuneConfig, load_for_task
from ..finetune.tasks import TaskData, get_task, load_task
from ..finetune.train import mask_sparsity
from . import get_method
from .base import Log, Ticket, TicketConfig, Trainer


def run_method(model: str, data: TaskData, cfg: FinetuneConfig, method: str, opts: TicketConfig,
               log: Log | None = None, seed: int | None = None) -> tuple[Ticket, Trainer, dict]:
    """Run `method` at `cfg.sparsity` on loaded task data; returns (ticket, trainer holding the model, record)."""
    fn = get_method(method)
    tcfg = cfg.train if seed is None else replace(cfg.train, seed=seed)
    torch.manual_seed(tcfg.seed)  # the new classification head
    net, tok, src = load_for_task(model, data)
    tr = Trainer(net, data, tok, src, tcfg, opts.val_fraction, log)
    t0 = time.perf_counter()
    ticket = fn(tr, cfg.sparsity, opts)
    record = {"method": method, "target_sparsity": cfg.sparsity, "sparsity": mask_sparsity(ticket.masks),
              "seed": tcfg.seed, "score": ticket.score, "train_steps": ticket.train_steps,
              "score_batches": ticket.score_batches, "budget_steps": tr.budget,
              "seconds": time.perf_counter() - t0, "info": ticket.info}
    return ticket, tr, record


def save_masks(masks: dict[str, torch.Tensor], config, out: Path, record: dict | None = None) -> None:
    """Write `out/config.json` and `out/model.safetensors` (keep-masks as uint8) so `masks compare` reads it."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file({n: m.to(torch.uint8).contiguous() for n, m in masks.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt", "llmprune": "keep-mask"})
    if record is not None:
        (out / "run.json").write_text(json.dumps(record, indent=2, default=str))


def finetune_ticket(model: str, out: str | Path, cfg: FinetuneConfig, method: str, opts: TicketConfig | None = None,
                    *, overwrite: bool = False, log: Log | None = None) -> dict:
    """`finetune --method METHOD`: find the mask with METHOD while fine-tuning, save the model to `out`
    (and, with `opts.keep_rounds`, every IMP round's masks as `out/roundK/`)."""
    from ..errors import LlmpruneError
    from ..finetune.run import _n, save_run
    from ..io import atomic_dir, check_not_input, check_output
    from ..provenance import provenance
    from ..record import versions

    get_method(method)
    if cfg.mask_from:
        raise LlmpruneError(f"--method {method} finds its own mask: drop --mask-from.")
    if not cfg.sparsity:
        raise LlmpruneError(f"--method {method} needs a target --sparsity in (0, 1).")
    opts = opts or TicketConfig()
    out = check_output(out, overwrite)
    if Path(model).exists():  # (a Hub id or built-in name cannot be the output folder)
        check_not_input(out, model)
    spec = get_task(cfg.task)
    data = load_task(spec, cfg.train_file, cfg.eval_file, cfg.max_train_samples, cfg.max_eval_samples, cfg.train.seed)
    ticket, tr, rec = run_method(model, data, cfg, method, opts, log)
    record = {"model": str(model), "source": str(tr.src), "task": spec.name, "metric": spec.metric,
              "labels": data.labels, "examples": {"train": _n(tr.data.train), "validation": _n(tr.val.train),
                                                  "eval": _n(data.eval)},
              "config": cfg.to_json(), "ticket": opts.to_json(), **rec, "versions": versions(), "provenance": provenance(model, tr.src)}
    with atomic_dir(out, overwrite) as work:
        save_run(tr.net, tr.tok, tr.src, work, record)
        for k, masks in ticket.round_masks.items():  # IMP's rounds, for `masks compare` (e.g. against OMP)
            save_masks(masks, tr.net.config, work / f"round{k}")
    return record

