"""Lottery tickets by iterative magnitude pruning (IMP), as Jaiswal et al. 2023 (Sec. 4) run it after
Chen et al. 2020: fine-tune on the task, remove the smallest `rate` of the remaining prunable weights (one
global magnitude threshold), rewind the kept weights to their pre-trained values, repeat.

Round 0 trains densely; round k trains the ticket of sparsity 1 - (1 - rate)^k. The pruning step is
`prune_model_` at that total sparsity on the trained, already-masked weights: pruned weights are exact
zeros and rank first, so it removes exactly `rate` of the survivors, with the library's exact threshold.
Each round k >= 1 is saved as `roundK/` (the fine-tuned ticket: its nonzeros are the mask).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..config import PruneConfig
from ..errors import LlmpruneError
from ..io import atomic_dir, check_output
from .run import FinetuneConfig, Log, _n, load_for_task, save_run
from .tasks import get_task, load_task
from .train import apply_masks_, mask_sparsity, masks_from_zeros, train_


def imp_sparsity(rate: float, round_: int) -> float:
    """Total sparsity after `round_` IMP prunings that each remove `rate` of the remaining weights."""
    return 1.0 - (1.0 - rate) ** round_


def lottery_tickets(model: str, out: str | Path, cfg: FinetuneConfig, rounds: int, rate: float, *,
                    overwrite: bool = False, log: Log | None = None) -> dict:
    """Run IMP for `rounds` prunings at `rate` each; save `out/roundK/` per round and `out/run.json`."""
    from ..prune import prune_model_, versions
    from ..provenance import provenance
    from .batches import make_loaders

    if not (0 < rate < 1):
        raise LlmpruneError(f"--rate {rate:g} is out of range: use the fraction of remaining weights removed per round, in (0, 1).")
    if rounds < 1:
        raise LlmpruneError(f"--rounds {rounds} must be at least 1.")
    if cfg.sparsity or cfg.mask_from:
        raise LlmpruneError("--imp finds its own masks: drop --sparsity / --mask-from.")
    out = check_output(out, overwrite)
    t0 = time.perf_counter()
    spec = get_task(cfg.task)
    data = load_task(spec, cfg.train_file, cfg.eval_file, cfg.max_train_samples, cfg.max_eval_samples, cfg.train.seed)
    net, tok, src = load_for_task(model, data)
    # the rewind point: pre-trained weights and the freshly initialised head
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    rounds_out, masks = [], {}
    with atomic_dir(out, overwrite) as work:
        for k in range(rounds + 1):
            t1 = time.perf_counter()
            if k > 0:
                prune_model_(net, PruneConfig(sparsity=imp_sparsity(rate, k)))  # on the trained weights
                masks = masks_from_zeros(net)
                net.load_state_dict(init)  # rewind
                apply_masks_(net, masks)
            loaders = make_loaders(data, net, tok, cfg.train.batch_size, cfg.train.eval_batch_size,
                                   cfg.train.max_length, cfg.train.seed, src)
            history = train_(net, masks, *loaders, cfg.train, log=(lambda s, k=k: log(f"round {k}: {s}")) if log else None)
            rec = {"round": k, "target_sparsity": imp_sparsity(rate, k), "sparsity": mask_sparsity(masks),
                   "score": history[-1]["score"] if history else None, "history": history,
                   "seconds": time.perf_counter() - t1}
            rounds_out.append(rec)
            if k > 0:
                (work / f"round{k}").mkdir()
                save_run(net, tok, src, work / f"round{k}",
                         {"model": str(model), "task": spec.name, "imp_round": k, "rate": rate, **rec})
            if log:
                log(f"round {k}: sparsity {rec['sparsity']:.4f}  score {rec['score']:.4f}")
        record = {"model": str(model), "source": str(src), "task": spec.name, "metric": spec.metric,
                  "labels": data.labels, "examples": {"train": _n(data.train), "eval": _n(data.eval)},
                  "config": cfg.to_json(), "imp": {"rounds": rounds, "rate": rate}, "rounds": rounds_out,
                  "timings": {"total": time.perf_counter() - t0}, "versions": versions(), "provenance": provenance(model, src)}
        (work / "run.json").write_text(json.dumps(record, indent=2, default=str))
    return record

