"""Sweeps over sparsity: find the essential-sparsity knee of a model (Jaiswal et al. 2023) and plot it.

- `knee`: `find_knee`, `performance_drop` (pure functions);
- `levels`: global magnitude thresholds for all levels from one histogram pass over the checkpoint;
- `run`: `SweepConfig`, `plan` (dense + every curve x level x task) and the driver `run_sweep` (resumable);
- `point`: `Point`, `Work`, `PointRunner` (one loaded model, each level's weights written over it from the
  checkpoint); `remote`: `LoadAndRun`, the same on a remote worker that loads the model itself;
- `executor`: run the works in this process or each as a Ray task (retry once, failures reported);
- `results`: `results.jsonl` (durable, resumable), curves, knees, `sweep.csv` / `summary.json`;
- `plot`: the performance-drop figure.
"""
from .knee import Knee, find_knee, performance_drop

__all__ = ["Knee", "find_knee", "performance_drop"]
