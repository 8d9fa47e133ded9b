"""Sweeps over sparsity: find the essential-sparsity knee of a model (Jaiswal et al. 2023) and plot it.

- `knee`: `find_knee`, `performance_drop`, `parse_sparsities` (pure functions);
- `levels`: nested global magnitude masks for all levels from one histogram pass;
- `run`: `SweepConfig`, `run_sweep` (dense + every method x level x task, resumable);
- `points`: one point's work (`PointScorer`, `LoadAndScore` for remote workers) and the driver `run_points`;
- `executor`: run the points in this process or each as a Ray task (retry once, failures reported);
- `results`: `results.jsonl` (durable, resumable), curves, knees, `sweep.csv` / `summary.json`;
- `plot`: the performance-drop figure.
"""
from .knee import Knee, find_knee, parse_sparsities, performance_drop

__all__ = ["Knee", "find_knee", "parse_sparsities", "performance_drop"]
