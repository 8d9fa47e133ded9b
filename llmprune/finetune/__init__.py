"""Sparse fine-tuning with a fixed keep-mask (lottery tickets and other masks found while training: tickets/).

tasks.py (task registry, data) -> batches.py (tokenise / normalise) -> train.py (masks, the loop) ->
run.py (one run: prune or take a mask, train, save).
"""
from .run import FinetuneConfig, finetune, train_config
from .tasks import TASKS, get_task, load_task
from .train import TrainConfig, apply_masks_, evaluate, mask_sparsity, masks_from_checkpoint, masks_from_zeros, train_

__all__ = ["FinetuneConfig", "TASKS", "TrainConfig", "apply_masks_", "evaluate", "finetune", "get_task",
           "load_task", "mask_sparsity", "masks_from_checkpoint", "masks_from_zeros", "train_", "train_config"]
