"""A sweep's results: the append-only `results.jsonl` (resume), curves and knees from it, and the outputs.

`results.jsonl` starts with a header line holding the sweep's identity (model and every setting that changes
a score) and then holds one line per finished point (method, level, task, metrics), flushed and fsynced as
each point finishes, so a killed sweep loses at most the point it was computing. A torn last line (killed
mid-write) is dropped. `sweep.csv`, `summary.json` and `sweep.png` are derived from it and published by
temp-name + rename.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LlmpruneError
from .knee import Knee, find_knee, performance_drop, within_epsilon

RESULTS = "results.jsonl"
DENSE = "dense"  # method and level label of the unpruned model


def point_key(method: str, level: str, task: str) -> tuple[str, str, str]:
    return (method, level, task)


class ResultsLog:
    """`DIR/results.jsonl`: the header (identity) and finished points; `append` is durable at once.

    DIR and the header are written with the first point, so a sweep that fails or is interrupted before
    scoring anything leaves nothing behind.
    """

    def __init__(self, out: str | Path, identity: dict, overwrite: bool = False, header: dict | None = None):
        self.dir = Path(out)
        if self.dir.exists() and not self.dir.is_dir():
            raise LlmpruneError(f"Output {self.dir} exists and is not a directory; remove it or choose another -o.")
        self.path = self.dir / RESULTS
        self.identity = identity
        self.records: list[dict] = []
        self.failures: list[dict] = []  # points that failed in this run (not written: a rerun retries them)
        if self.path.exists() and overwrite:
            self.path.unlink()
        if self.path.exists():
            head, self.records = read_results(self.path, repair=True)
            if head.get("identity") != identity:
                raise LlmpruneError(f"{self.path} holds a different sweep ({_difference(head.get('identity') or {}, identity)}); "
                                    "pass --overwrite to start over, or choose another -o.")
        self._header = {"kind": "header", "identity": identity, **(header or {})}

    @property
    def done(self) -> dict[tuple[str, str, str], dict]:
        return {point_key(r["method"], r["level"], r["task"]): r for r in self.records}

    def append(self, record: dict) -> None:
        if not self.path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write_line(self._header)
        self._write_line({"kind": "point", **record})
        self.records.append(record)

    def fail(self, failure: dict) -> None:
        self.failures.append(failure)

    def reorder_(self, keys: list[tuple[str, str, str]]) -> None:
        """Rewrite the file with its points in `keys` order (others after, as they were), so it reads the same
        whatever order parallel points finished in; temp name + rename, a no-op when already in order."""
        if not self.path.exists():  # nothing scored yet (the header is written with the first point)
            return
        rank = {k: i for i, k in enumerate(keys)}
        ordered = sorted(self.records, key=lambda r: rank.get(point_key(r["method"], r["level"], r["task"]), len(rank)))
        head, on_disk = read_results(self.path)
        if [point_key(r["method"], r["level"], r["task"]) for r in on_disk] == \
                [point_key(r["method"], r["level"], r["task"]) for r in ordered]:
            self.records = ordered
            return
        lines = [json.dumps(head, default=str)] + [json.dumps({"kind": "point", **r}, default=str) for r in ordered]
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.records = ordered

    def _write_line(self, obj: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_results(path: str | Path, repair: bool = False) -> tuple[dict, list[dict]]:
    """(header, point records) of a results.jsonl; a torn last line is ignored (and cut off if `repair`)."""
    path = Path(path)
    if not path.exists():
        raise LlmpruneError(f"{path} does not exist: `llmprune plot` needs a directory written by `llmprune sweep`.")
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    lines = data[:end].decode("utf-8").splitlines()
    if not lines:
        raise LlmpruneError(f"{path} is empty: rerun the sweep with --overwrite.")
    try:
        rows = [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as e:
        raise LlmpruneError(f"{path} is corrupt ({e}); rerun the sweep with --overwrite.") from None
    if rows[0].get("kind") != "header":
        raise LlmpruneError(f"{path} has no sweep header: it was not written by `llmprune sweep`.")
    last = {}
    for r in rows[1:]:  # a point recomputed later (a rerun after a crash) replaces the earlier one
        last[point_key(r["method"], r["level"], r["task"])] = {k: v for k, v in r.items() if k != "kind"}
    return rows[0], list(last.values())


def _difference(old: dict, new: dict) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}={old.get(key)!r} there, {new.get(key)!r} now"
    return "different header"


# --------------------------------------------------------------------------------------------------------
# Curves and knees.

@dataclass
class Curve:
    """One metric of one task under one method, against sparsity; `dense` is the unpruned score."""

    method: str
    task: str
    metric: str                  # "ppl", "acc", or "acc:stem" (an MMLU category)
    higher_is_better: bool
    dense: float
    points: list[dict] = field(default_factory=list)  # {"level", "sparsity", "actual_sparsity", "score"}

    @property
    def unit(self) -> str:
        return "points" if self.higher_is_better else "%"

    def drop(self, score: float) -> float:
        """Drop in display units: accuracy points, or percent of dense for lower-is-better metrics."""
        d = performance_drop(score, self.dense, self.higher_is_better)
        return d if self.higher_is_better else 100.0 * d

    def knee(self, epsilon: float) -> Knee:
        """`epsilon` in display units (1 = 1 accuracy point, or 1% worse than dense)."""
        eps = epsilon if self.higher_is_better else epsilon / 100.0
        k = find_knee([p["sparsity"] for p in self.points], [p["score"] for p in self.points], self.dense, eps,
                      self.higher_is_better, [p["level"] for p in self.points])
        if self.higher_is_better:
            return k
        scale = lambda d: None if d is None else 100.0 * d  # noqa: E731
        return Knee(k.sparsity, k.label, 100.0 * k.drop, k.next_sparsity, k.next_label, scale(k.next_drop),
                    k.censored, k.reentered)


def task_scores(task: str, metrics: dict) -> list[tuple[str, float, bool]]:
    """(metric, score, higher_is_better) of one task's metrics: perplexity, or MMLU accuracy in % and per category."""
    if task == "ppl":
        return [("ppl", float(metrics["ppl"]), False)]
    if task == "mmlu":
        out = [("acc", 100.0 * metrics["accuracy"], True)]
        out += [(f"acc:{c}", 100.0 * v["accuracy"], True) for c, v in metrics.get("categories", {}).items()]
        return out
    raise ValueError(f"unknown task {task}")


def build_curves(records: list[dict]) -> list[Curve]:
    """Curves per (method, task, metric), points sorted by sparsity; methods without a dense point are skipped."""
    dense = {}
    for r in records:
        if r["method"] == DENSE:
            for metric, score, hib in task_scores(r["task"], r["metrics"]):
                dense[(r["task"], metric)] = (score, hib)
    curves: dict[tuple, Curve] = {}
    for r in records:
        if r["method"] == DENSE:
            continue
        for metric, score, hib in task_scores(r["task"], r["metrics"]):
            if (r["task"], metric) not in dense:
                continue
            key = (r["method"], r["task"], metric)
            if key not in curves:
                curves[key] = Curve(r["method"], r["task"], metric, hib, dense[(r["task"], metric)][0])
            curves[key].points.append({"level": r["level"], "sparsity": r["sparsity"],
                                       "actual_sparsity": r.get("actual_sparsity"), "score": score})
    for c in curves.values():
        c.points.sort(key=lambda p: p["sparsity"])
    return sorted(curves.values(), key=lambda c: (c.task, c.metric != c.metric.split(":")[0], c.metric, c.method))


def summarize(records: list[dict], epsilon: float) -> dict:
    """{"epsilon", "knees": [...], "rows": [...]}: a knee per curve and one flat row per (curve, level)."""
    knees, rows = [], []
    for c in build_curves(records):
        k = c.knee(epsilon)
        knees.append({"method": c.method, "task": c.task, "metric": c.metric, "unit": c.unit,
                      "higher_is_better": c.higher_is_better, "dense": c.dense, **k.to_json()})
        rows.append({"method": DENSE, "task": c.task, "metric": c.metric, "level": DENSE, "sparsity": 0.0,
                     "actual_sparsity": 0.0, "score": c.dense, "dense": c.dense, "drop": 0.0, "unit": c.unit,
                     "within_epsilon": True})
        for p in c.points:
            d = c.drop(p["score"])
            rows.append({"method": c.method, "task": c.task, "metric": c.metric, **p, "dense": c.dense, "drop": d,
                         "unit": c.unit, "within_epsilon": within_epsilon(d, epsilon)})
    seen, unique = set(), []
    for r in rows:  # the dense row appears once per (task, metric)
        key = (r["method"], r["task"], r["metric"], r["level"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return {"epsilon": epsilon, "knees": knees, "rows": unique}


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


CSV_COLUMNS = ("method", "task", "metric", "level", "sparsity", "actual_sparsity", "score", "dense", "drop", "unit",
               "within_epsilon")


def write_outputs(out: str | Path, summary: dict, extra: dict, plot: bool = True) -> dict[str, Path]:
    """sweep.csv, summary.json (knees + `extra`: config, versions, timings) and sweep.png, each atomically."""
    out = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in summary["rows"]:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
    paths = {"csv": out / "sweep.csv", "summary": out / "summary.json"}
    write_text_atomic(paths["csv"], buf.getvalue())
    write_text_atomic(paths["summary"], json.dumps({**extra, "epsilon": summary["epsilon"], "knees": summary["knees"]},
                                                   indent=2, default=str))
    if plot and summary["knees"]:
        from .plot import plot_sweep

        paths["png"] = plot_sweep(summary, out / "sweep.png", title=extra.get("model"))
    return paths
