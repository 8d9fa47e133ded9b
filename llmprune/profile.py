"""Where a long run spends its time: wall seconds per named phase, and the process's CPU and page faults.

The engine wraps each step of a layer (load, statistics, solve, rerun, save) in a phase; run.json gets the
totals, user vs system CPU time and minor/major page faults, so a regression in any step shows up there.
"""
from __future__ import annotations

import resource
import time
from collections import defaultdict
from contextlib import contextmanager


class Phases:
    """Accumulates wall time per phase; `summary()` adds the process's CPU time and faults since creation."""

    def __init__(self):
        self.wall: dict[str, float] = defaultdict(float)
        self._t0, self._ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - t

    def summary(self) -> dict:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"phases_s": {k: round(v, 3) for k, v in self.wall.items()},
                "wall_s": round(time.perf_counter() - self._t0, 3),
                "user_s": round(ru.ru_utime - self._ru0.ru_utime, 3),
                "system_s": round(ru.ru_stime - self._ru0.ru_stime, 3),
                "minor_faults": ru.ru_minflt - self._ru0.ru_minflt, "major_faults": ru.ru_majflt - self._ru0.ru_majflt}
