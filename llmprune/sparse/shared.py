"""Kernel linears that read the same input run as one kernel call: q/k/v, gate/up, for every architecture.

Groups are learned while decoding, from no table of names: kernel linears called one right after another
with the very same x tensor, unchanged (q_proj, k_proj and v_proj on one `hidden_states`) are siblings.
From then on the first of them (in the order seen) computes the outputs of all in one foreign call
(`kernel.run_group_unchecked`: one x conversion, one parallel region over all their rows) and each sibling
that asks next, with that same x object and no other linear in between, is handed its own. Anything else
(another x, x changed in place, another linear first, another thread) makes a module compute alone;
outputs that nobody took dissolve the group for good. Every output row is computed by the same code as a
separate call: results are bitwise equal.
"""
from __future__ import annotations

import threading

import torch

from . import kernel


class _Recent(threading.local):
    """The calling thread's last kernel calls: the x they read and the modules that read it, in order."""
    x: torch.Tensor | None = None
    run: list | None = None
    last: object = None  # the group that served or computed the previous call, or None


_recent = _Recent()


class InputGroup:
    """Sibling modules (2..kernel.MAX_GROUP, same in_features) that read one x per decoding step."""

    def __init__(self, members: list):
        self.members = members
        self.plans: list | None = None
        self.addresses = None
        self.x: torch.Tensor | None = None
        self.version = 0  # x._version when the outputs were computed: an in-place change voids them
        self.thread: int | None = None
        self.pending: dict = {}  # module -> its output for self.x, not yet taken

    def _current_plans(self) -> list | None:
        plans = [m.kernel_plan() for m in self.members]
        if any(p is None for p in plans):
            return None
        if self.plans is None or any(a is not b for a, b in zip(plans, self.plans)):
            self.plans, self.addresses = plans, kernel.group_addresses(plans)
        return plans

    def dissolve(self) -> None:
        for m in self.members:
            m._group, m._groupable = None, False
        self.pending, self.x = {}, None

    def run(self, module, x: torch.Tensor, path_id: int, num_threads: int) -> torch.Tensor | None:
        """module's output for x, from one call for the whole group; None: compute alone."""
        if self.pending and module in self.pending and self.x is x and _version(x) == self.version \
                and _recent.last is self and self.thread == threading.get_ident():
            y = self.pending.pop(module)
            if not self.pending:
                self.x = None
            return y
        if self.pending:  # outputs computed for nobody: this model does not call them together
            self.dissolve()
            return None
        if module is not self.members[0]:  # a step already under way when the group formed
            return None
        plans = self._current_plans()
        if plans is None:
            self.dissolve()
            return None
        ys = kernel.run_group_unchecked(plans, self.addresses, x, path_id, num_threads)
        self.pending = {m: y for m, y in zip(self.members, ys) if m is not module}
        self.x, self.version, self.thread = x, _version(x), threading.get_ident()
        _recent.last = self
        return ys[self.members.index(module)]


def _version(x: torch.Tensor) -> int:
    """x's in-place change counter; inference-mode tensors keep none (-1: identity alone decides)."""
    return -1 if x.is_inference() else x._version


def note(module, x: torch.Tensor) -> None:
    """Record that `module` (no group) ran the kernel on x; siblings seen together become an InputGroup."""
    r = _recent
    r.last = None
    if r.x is x and r.run and module not in r.run and len(r.run) < kernel.MAX_GROUP:
        r.run.append(module)
        return
    _form(r.run)
    r.x, r.run = x, [module]


def _form(run: list | None) -> None:
    if not run or len(run) < 2 or len({m.in_features for m in run}) != 1:
        return
    if all(getattr(m, "_groupable", True) and m._group is None for m in run):
        group = InputGroup(list(run))
        for m in run:
            m._group = group
