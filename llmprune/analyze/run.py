"""Streaming checkpoints through the statistics of `stats`, and writing the results (JSON, CSV, PNG).

Only the weights the architecture table calls prunable (2-D linears of the layer list) are analysed, one
tensor in memory at a time. The OMP location uses `GlobalMagnitude`, the exact global threshold `prune`
uses, so "where 50% OMP removes weights" is exactly what `llmprune prune --sparsity 0.5` would remove.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Callable

import torch

from ..arch import Selector, arch_for
from ..errors import LlmpruneError
from ..io import Checkpoint
from .stats import log_edges, roll_up, step_of, tally

Step = Callable[[str], None]


def _prunable(ckpt: Checkpoint, include=(), exclude=()) -> tuple[Selector, list[str]]:
    select = Selector(arch_for(ckpt.config), tuple(include), tuple(exclude))
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    if not names:
        raise LlmpruneError(f"No prunable weights in {ckpt.path}: check --include/--exclude (regexes on tensor names).")
    return select, names


def _views(rolled: dict) -> dict:
    return {"global": rolled["global"].to_json(),
            "by_type": {k: v.to_json() for k, v in rolled["by_type"].items()},
            "by_layer": {str(k): v.to_json() for k, v in rolled["by_layer"].items()},
            "by_layer_type": {str(k): {t: v.to_json() for t, v in d.items()} for k, d in rolled["by_layer_type"].items()}}


def analyze_weights(model: str, sparsity: float = 0.5, eps: float = 1e-3, include=(), exclude=(),
                    edges: torch.Tensor | None = None, step: Step | None = None) -> dict:
    """|w| histograms, near-zero shares and the global-OMP removal of MODEL, per layer and module type.

    Passes over the checkpoint: the threshold histogram of `GlobalMagnitude` (one pass for 16-bit weights,
    two for fp32), then one pass for the statistics.
    """
    from ..methods.magnitude import GlobalMagnitude
    from ..models import resolve_model

    if not 0 <= sparsity < 1:
        raise LlmpruneError(f"--sparsity must be in [0, 1), got {sparsity}.")
    if eps < 0:
        raise LlmpruneError(f"--eps must be >= 0, got {eps}.")
    edges = log_edges() if edges is None else edges
    ckpt = Checkpoint(resolve_model(model))
    select, names = _prunable(ckpt, include, exclude)
    numel = sum(torch.Size(ckpt.info(n).shape).numel() for n in names)
    omp = GlobalMagnitude(names, ckpt.read, (ckpt.info(n).dtype for n in names), numel, sparsity)
    tensors, threshold = {}, 0.0
    for name in names:
        w = ckpt.read(name)
        keep = omp.mask(name, w)
        dropped = w[~keep]
        if dropped.numel():
            threshold = max(threshold, float(dropped.float().abs().max()))
        tensors[name] = (*select.describe(name), tally(w, (eps,), keep, edges))
        if step:
            step(name)
    return {"model": str(model), "model_type": ckpt.config.get("model_type"), "sparsity": sparsity, "eps": eps,
            "omp_threshold": threshold, "edges": edges.tolist(), **_views(roll_up(tensors))}


def find_checkpoints(paths: list[str | Path]) -> list[tuple[int | None, Path]]:
    """(step, dir) in training order: one folder of `checkpoint-<step>` subfolders (else of any model
    subfolders), or the given dirs.

    Given dirs are sorted by the step in their name (or `trainer_state.json`'s global_step) when every one
    has a step; otherwise they keep the order given.
    """
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_dir():
            raise LlmpruneError(f"{p} is not a directory: pass checkpoint directories, or one folder holding checkpoint-<step> folders.")
    if len(paths) == 1 and not (paths[0] / "config.json").exists():
        subs = [d for d in paths[0].iterdir() if d.is_dir() and (d / "config.json").exists()]
        if not subs:
            raise LlmpruneError(f"{paths[0]} holds no checkpoints: expected config.json there or checkpoint-<step>/ folders with one.")
        stepped = [d for d in subs if step_of(d) is not None]
        paths = stepped or subs  # checkpoint-<step>/ folders when there are any (a Trainer's output dir)
    found = [(step_of(p) if step_of(p) is not None else _trainer_step(p), p) for p in paths]
    if all(s is not None for s, _ in found):
        found.sort(key=lambda sp: sp[0])
    return found


def _trainer_step(path: Path) -> int | None:
    state = path / "trainer_state.json"
    if state.exists():
        step = json.loads(state.read_text()).get("global_step")
        return int(step) if step is not None else None
    return None


def analyze_checkpoints(paths: list[str | Path], eps: tuple[float, ...] = (1e-4, 1e-3, 1e-2), include=(), exclude=(),
                        step: Step | None = None) -> dict:
    """Zero and near-zero counts of the prunable weights of each checkpoint, in training order (Fig. 8)."""
    if any(e < 0 for e in eps):
        raise LlmpruneError(f"--eps must be >= 0, got {', '.join(f'{e:g}' for e in eps)}.")
    eps = tuple(sorted(set(eps)))
    rows = []
    for i, (s, path) in enumerate(find_checkpoints(paths)):
        ckpt = Checkpoint(path)
        select, names = _prunable(ckpt, include, exclude)
        tensors = {}
        for name in names:
            tensors[name] = (*select.describe(name), tally(ckpt.read(name), eps))
        rolled = roll_up(tensors)
        rows.append({"path": str(path), "step": s, "index": i, "global": rolled["global"].to_json(),
                     "by_type": {k: v.to_json() for k, v in rolled["by_type"].items()}})
        if step:
            step(path.name)
    return {"eps": list(eps), "steps_known": all(r["step"] is not None for r in rows), "checkpoints": rows}


def write_weight_outputs(results: list[dict], out: Path, plot: bool = True) -> dict[str, Path]:
    """weights.json, by_type.csv, by_layer.csv, histograms.csv and (plot) magnitude_hist.png, omp_location.png."""
    out = Path(out)
    paths = {"json": out / "weights.json", "by_type": out / "by_type.csv", "by_layer": out / "by_layer.csv",
             "hist": out / "histograms.csv"}
    paths["json"].write_text(json.dumps(results if len(results) > 1 else results[0], indent=1))
    cols = ["model", "layer", "type", "params", "zeros", "zero_share", "near_zero", "near_zero_share", "omp_removed",
            "omp_removed_share", "share_of_all_removed"]
    by_type, by_layer, hist = [], [], []
    for r in results:
        e, total_removed = f"{r['eps']:g}", r["global"]["omp_removed"] or 1

        def row(layer, mtype, t):
            return {"model": r["model"], "layer": layer, "type": mtype, "params": t["params"], "zeros": t["zeros"],
                    "zero_share": t["zero_share"], "near_zero": t["near_zero"][e], "near_zero_share": t["near_zero_share"][e],
                    "omp_removed": t["omp_removed"], "omp_removed_share": t["omp_removed_share"],
                    "share_of_all_removed": t["omp_removed"] / total_removed}

        by_type += [row("all", k, t) for k, t in r["by_type"].items()] + [row("all", "all", r["global"])]
        by_layer += [row(layer, k, t) for layer, d in r["by_layer_type"].items() for k, t in d.items()]
        lo = [0.0] + r["edges"]
        hi = r["edges"] + [float("inf")]
        groups = [("type", k, t) for k, t in r["by_type"].items()] + [("layer", k, t) for k, t in r["by_layer"].items()]
        for kind, key, t in groups:
            n = sum(t["hist"]) or 1
            hist += [{"model": r["model"], "group": kind, "key": key, "bin_lo": a, "bin_hi": b, "count": c, "fraction": c / n}
                     for a, b, c in zip(lo, hi, t["hist"])]
    _write_csv(paths["by_type"], cols, by_type)
    _write_csv(paths["by_layer"], cols, by_layer)
    _write_csv(paths["hist"], ["model", "group", "key", "bin_lo", "bin_hi", "count", "fraction"], hist)
    if plot:
        from .plots import plot_magnitude_histograms, plot_omp_location

        paths["hist_png"] = plot_magnitude_histograms(results, out / "magnitude_hist.png")
        paths["omp_png"] = plot_omp_location(results, out / "omp_location.png")
    return paths


def write_checkpoint_outputs(result: dict, out: Path, plot: bool = True) -> dict[str, Path]:
    """checkpoints.json, checkpoints.csv (one row per checkpoint and module type) and sparsification.png."""
    out = Path(out)
    paths = {"json": out / "checkpoints.json", "csv": out / "checkpoints.csv"}
    paths["json"].write_text(json.dumps(result, indent=1))
    eps = [f"{e:g}" for e in result["eps"]]
    cols = ["step", "path", "type", "params", "zeros", "zero_share"] + [f"near_zero_{e}" for e in eps] + \
        [f"near_zero_share_{e}" for e in eps]
    rows = []
    for c in result["checkpoints"]:
        for mtype, t in [("all", c["global"]), *c["by_type"].items()]:
            rows.append({"step": c["step"], "path": c["path"], "type": mtype, "params": t["params"], "zeros": t["zeros"],
                         "zero_share": t["zero_share"], **{f"near_zero_{e}": t["near_zero"][e] for e in eps},
                         **{f"near_zero_share_{e}": t["near_zero_share"][e] for e in eps}})
    _write_csv(paths["csv"], cols, rows)
    if plot:
        from .plots import plot_sparsification

        paths["png"] = plot_sparsification(result, out / "sparsification.png")
    return paths


def _write_csv(path: Path, cols: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    path.write_text(buf.getvalue())
