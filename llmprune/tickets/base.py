"""What every ticket method shares: its options, its result, and a `Trainer` that drives the one
fine-tuning loop (`finetune.train_`) in segments while counting the training steps each method spends.

A method is a function `(trainer, sparsity, opts) -> Ticket`; it asks the trainer to train for n steps
with a mask, to score batches, or to select masks from scores with the library's exact global threshold.
Each `train` call is one call of `train_`: AdamW state and the linear learning-rate decay restart per
segment (a method with several segments trains with a restarted schedule in each).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import torch

from ..finetune.tasks import TaskData, _subset
from ..finetune.train import TrainConfig, apply_masks_, evaluate, prunable_params, train_
from ..methods.magnitude import GlobalMagnitude
from .scores import VOTES

Log = Callable[[str], None]


@dataclass(frozen=True)
class TicketConfig:
    """Method options; every method reads only its own. Step counts are fractions of the main budget
    (the fine-tuning steps of the task's TrainConfig), so one set of options fits every budget."""

    stages: int = 3               # progressive, isp: pruning stages
    weak_runs: int = 3            # isp: weak masks per stage
    weak_fraction: float = 0.1    # isp: steps of one weak run, as a fraction of an epoch
    vote: str = "majority"        # isp: any | majority | all
    rounds: int = 2               # lth, lth-rewind, lottery-pool: IMP rounds
    rewind_fraction: float = 0.1  # lth-rewind: rewind to this fraction of the dense run
    score_batches: int = 4        # snip, grasp: batches scored before training
    eb_every: float = 0.1         # earlybird: check the mask every this fraction of the budget
    eb_eps: float = 0.1           # earlybird: stop when the mask distance drops below this
    eb_max: float = 0.5           # earlybird: give up searching after this fraction of the budget
    val_fraction: float = 0.1     # training examples held out for validation (lottery-pool's choice)
    keep_rounds: bool = False     # lth, lth-rewind: keep every round's masks (saved as roundK/, `finetune --imp`)

    def __post_init__(self):
        from ..errors import unknown

        if self.vote not in VOTES:
            raise unknown("vote rule", self.vote, VOTES)
        from ..errors import LlmpruneError

        for name in ("stages", "weak_runs", "rounds", "score_batches"):
            if getattr(self, name) < 1:
                raise LlmpruneError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1.")
        for name in ("weak_fraction", "rewind_fraction", "eb_every", "eb_max", "val_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise LlmpruneError(f"--{name.replace('_', '-')} {getattr(self, name):g} must be in (0, 1).")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Ticket:
    """A method's outcome: the final keep-masks, the eval score, and what it cost."""

    masks: dict[str, torch.Tensor]
    score: float
    train_steps: int = 0
    score_batches: int = 0
    info: dict = field(default_factory=dict)
    round_masks: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # IMP round -> masks, if kept


class Trainer:
    """A model, its task data and the shared training loop, with a running count of steps spent."""

    def __init__(self, net, data: TaskData, tokenizer, src, cfg: TrainConfig, val_fraction: float = 0.1,
                 log: Log | None = None):
        self.net, self.tok, self.src, self.cfg, self.log = net, tokenizer, src, cfg, log
        n = _n(data.train)
        n_val = max(1, round(val_fraction * n))
        perm = _shuffled(data.train, cfg.seed + 7)  # a fixed shuffle, then train / validation slices
        self.data = TaskData(data.kind, data.labels, _slice(perm, n_val, None), data.eval, data.meta)
        self.val = TaskData(data.kind, data.labels, _slice(perm, 0, n_val), _slice(perm, 0, n_val), data.meta)
        self.steps_per_epoch = math.ceil(_n(self.data.train) / cfg.batch_size)
        budget = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.budget = min(budget, cfg.max_steps) if cfg.max_steps else budget
        self.steps = 0
        self.batches = 0
        self._segments = 0

    # -- the masks --------------------------------------------------------------------------------
    def params(self) -> list[tuple[str, torch.nn.Parameter]]:
        return prunable_params(self.net)

    def select(self, scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        return select_global(scores, sparsity)

    def magnitude_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        """Global magnitude keep-masks of the current weights (OMP on whatever the model holds now)."""
        return self.select({n: p.detach().abs() for n, p in self.params()}, sparsity)

    def apply(self, masks: dict[str, torch.Tensor]) -> None:
        apply_masks_(self.net, masks)

    # -- training and evaluation ------------------------------------------------------------------
    def train(self, masks: dict[str, torch.Tensor], steps: int, data: TaskData | None = None,
              seed: int | None = None, quiet: bool = False) -> float | None:
        """Train `steps` optimizer steps with `masks` fixed (the shared loop); returns the eval score
        (None for a `quiet` side run, which evaluates on one validation batch only)."""
        if steps <= 0:
            return None
        from ..finetune.batches import make_loaders

        self._segments += 1
        seed = self.cfg.seed + self._segments if seed is None else seed
        data = data or self.data
        if quiet:  # weak runs and searches: no full evaluation
            data = TaskData(data.kind, data.labels, data.train, _subset(self.val.eval, 8, seed), data.meta)
        tc = replace(self.cfg, epochs=float(math.ceil(steps / self.steps_per_epoch) + 1), max_steps=steps, seed=seed)
        loaders = make_loaders(data, self.net, self.tok, tc.batch_size, tc.eval_batch_size, tc.max_length, seed, self.src)
        history = train_(self.net, masks, *loaders, tc, log=None if quiet else self.log)
        self.steps += history[-1]["steps"]
        return None if quiet else history[-1]["score"]

    def subset(self, fraction_or_n: float, seed: int) -> TaskData:
        """A seeded random subset of the training examples (a weak run's data)."""
        n = _n(self.data.train)
        k = max(1, round(fraction_or_n * n)) if fraction_or_n <= 1 else int(fraction_or_n)
        return TaskData(self.data.kind, self.data.labels, _subset(self.data.train, k, seed), self.data.eval, self.data.meta)

    def score_batches(self, n: int, seed: int | None = None) -> Iterator[dict]:
        """`n` training batches (each counted in `self.batches`), for scores computed before training."""
        from ..finetune.batches import make_loaders

        seed = self.cfg.seed if seed is None else seed
        loader, _ = make_loaders(self.data, self.net, self.tok, self.cfg.batch_size, self.cfg.eval_batch_size,
                                 self.cfg.max_length, seed, self.src)
        for i, batch in enumerate(loader):
            if i >= n:
                break
            self.batches += 1
            yield batch

    def evaluate(self, validation: bool = False) -> float:
        from ..finetune.batches import make_loaders

        data = self.val if validation else self.data
        _, loader = make_loaders(data, self.net, self.tok, self.cfg.batch_size, self.cfg.eval_batch_size,
                                 self.cfg.max_length, self.cfg.seed, self.src)
        return evaluate(self.net, loader)

    def state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def ticket(self, masks: dict[str, torch.Tensor], score: float | None, **info) -> Ticket:
        return Ticket(masks, self.evaluate() if score is None else score, self.steps, self.batches, info)


def select_global(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks pruning the `sparsity` fraction of weights with the smallest scores, one exact global
    threshold (the library's OMP selection, `GlobalMagnitude`; ties pruned by sorted name, then index).
    Signed scores (GraSP) are shifted by their minimum first: a monotone shift keeps their order."""
    scores = {k: v.detach().float().cpu() for k, v in scores.items()}
    low = min(float(v.min()) for v in scores.values())
    if low < 0:
        scores = {k: v - low for k, v in scores.items()}
    numel = sum(v.numel() for v in scores.values())
    g = GlobalMagnitude(scores, scores.__getitem__, [torch.float32], numel, sparsity, finite=False)  # +inf pins (fit_scores)
    return {k: g.mask(k, v) for k, v in scores.items()}


def _n(examples) -> int:
    return len(examples[1]) if isinstance(examples, tuple) else len(examples)


def _shuffled(examples, seed: int):
    idx = torch.randperm(_n(examples), generator=torch.Generator().manual_seed(seed))
    if isinstance(examples, tuple):
        return examples[0][idx], examples[1][idx]
    return [examples[i] for i in idx.tolist()]


def _slice(examples, start: int, stop: int | None):
    if isinstance(examples, tuple):
        return examples[0][start:stop], examples[1][start:stop]
    return examples[start:stop]
