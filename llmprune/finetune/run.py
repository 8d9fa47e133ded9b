"""One fine-tuning run end to end: load the model for the task, prune (OMP) or take a mask, train, save.

The output directory is written atomically (`io.atomic_dir`) and loads with transformers
(`AutoModelForSequenceClassification` / `AutoModelForImageClassification`); its run.json holds the resolved
config, the score of every epoch, the sparsity and timings.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import PruneConfig, check_sparsity
from ..errors import LlmpruneError
from ..io import atomic_dir, check_not_input, check_output
from .tasks import TaskData, TaskSpec, get_task, load_task
from .train import TrainConfig, mask_sparsity, masks_from_checkpoint, masks_from_zeros, train_

Log = Callable[[str], None]


@dataclass(frozen=True)
class FinetuneConfig:
    """What to fine-tune on and where the mask comes from (`sparsity` via OMP, or `mask_from` a pruned dir)."""

    task: str
    sparsity: float = 0.0
    mask_from: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        get_task(self.task)
        check_sparsity(self.sparsity)
        if self.mask_from and self.sparsity:
            raise LlmpruneError("Give --sparsity (prune with OMP) or --mask-from (reuse a pruned model's mask), not both.")

    def to_json(self) -> dict:
        return asdict(self)


def train_config(spec: TaskSpec, **overrides) -> TrainConfig:
    """The task's defaults with the given (non-None) overrides."""
    base = dict(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, max_length=spec.max_length)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def load_for_task(model: str, data: TaskData):
    """(model with a fresh classification head sized for the task, tokenizer or None, checkpoint dir)."""
    import transformers

    from ..io import read_config
    from ..models import resolve_model

    path = resolve_model(model)
    config = read_config(path)
    from ..arch import arch_for

    arch_for(config)  # unsupported architectures fail here, with the list of supported ones
    cls = transformers.AutoModelForSequenceClassification if data.kind == "text" else transformers.AutoModelForImageClassification
    labels = {i: n for i, n in enumerate(data.labels)}
    try:
        m = cls.from_pretrained(path, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()},
                                ignore_mismatched_sizes=True, dtype=torch.float32)
    except ValueError as e:
        raise LlmpruneError(f"Cannot load {model} for {data.kind} classification: {str(e).splitlines()[0]}") from None
    tok = None
    if data.kind == "text":
        tok = transformers.AutoTokenizer.from_pretrained(path)
    return m, tok, path


def prepare_masks(model, cfg: FinetuneConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Keep-masks for the prunable weights: OMP at `cfg.sparsity` (exact global threshold, `prune_model_`),
    the nonzeros of `cfg.mask_from`, or none (dense)."""
    from ..prune import prune_model_

    if cfg.mask_from:
        masks = masks_from_checkpoint(model, cfg.mask_from)
        return masks, {"mask_from": str(cfg.mask_from), "sparsity": mask_sparsity(masks)}
    if cfg.sparsity > 0:
        summary = prune_model_(model, PruneConfig(sparsity=cfg.sparsity))
        return masks_from_zeros(model), summary
    return {}, {"sparsity": 0.0}


def save_run(model, tokenizer, src: Path, out: Path, record: dict) -> None:
    """save_pretrained + tokenizer / image-processor files + run.json into `out` (an existing directory)."""
    import shutil

    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    elif (src / "preprocessor_config.json").exists():
        shutil.copyfile(src / "preprocessor_config.json", out / "preprocessor_config.json")
    (out / "run.json").write_text(json.dumps(record, indent=2, default=str))


def finetune(model: str, out: str | Path, cfg: FinetuneConfig, *, overwrite: bool = False, log: Log | None = None) -> dict:
    """Fine-tune MODEL on `cfg.task` with a fixed keep-mask and save it to `out`; returns the run record."""
    from ..provenance import provenance
    from ..record import versions

    out = check_output(out, overwrite)
    if Path(model).exists():  # (a Hub id or built-in name cannot be the output folder)
        check_not_input(out, model)
    t0 = time.perf_counter()
    spec = get_task(cfg.task)
    data = load_task(spec, cfg.train_file, cfg.eval_file, cfg.max_train_samples, cfg.max_eval_samples, cfg.train.seed)
    net, tok, src = load_for_task(model, data)
    masks, pruned = prepare_masks(net, cfg)
    timings = {"load": time.perf_counter() - t0}
    from .batches import make_loaders

    loaders = make_loaders(data, net, tok, cfg.train.batch_size, cfg.train.eval_batch_size, cfg.train.max_length,
                           cfg.train.seed, src)
    t1 = time.perf_counter()
    history = train_(net, masks, *loaders, cfg.train, log=log)
    timings["train"] = time.perf_counter() - t1
    after = masks_from_zeros(net)
    record = {"model": str(model), "source": str(src), "task": spec.name, "metric": spec.metric, "labels": data.labels,
              "examples": {"train": _n(data.train), "eval": _n(data.eval)}, "config": cfg.to_json(),
              "mask": {k: v for k, v in pruned.items() if k != "by_layer"}, "sparsity": mask_sparsity(after) if masks else 0.0,
              "history": history, "score": history[-1]["score"] if history else None, "versions": versions(), "provenance": provenance(model, src)}
    timings["total"] = time.perf_counter() - t0
    record["timings"] = timings
    from accelerate import PartialState

    if PartialState().is_main_process:  # under `accelerate launch`, one process writes
        with atomic_dir(out, overwrite) as work:
            save_run(net, tok, src, work, record)
    return record


def _n(examples) -> int:
    return len(examples[1]) if isinstance(examples, tuple) else len(examples)
