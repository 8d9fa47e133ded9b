"""Sweeps over sparsity: find the essential-sparsity knee of a model (Jaiswal et al. 2023) and plot it.

- `knee`: `find_knee`, `performance_drop` (pure functions);
- `levels`: nested global magnitude masks for all levels from one histogram pass;
- `run`: `SweepConfig`, `run_sweep` (dense + every method x level x task, resumable);
- `results`: `results.jsonl` (durable, resumable), curves, knees, `sweep.csv` / `summary.json`;
- `plot`: the performance-drop figure.
"""
from .knee import Knee, find_knee, performance_drop

__all__ = ["Knee", "find_knee", "performance_drop"]
