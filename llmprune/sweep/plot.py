"""The sweep figure, after the paper's Fig. 2/11: performance drop against sparsity, the knee marked.

One panel per task (perplexity and MMLU have different units). Each line is a method; with a single method
the MMLU panel also draws its four categories (thin, dashed). The epsilon band (drop <= epsilon) is shaded,
and each curve's knee (essential sparsity) is a star with a dotted drop-line. Perplexity drops span orders
of magnitude, so that axis is symmetric-log. matplotlib with the Agg backend: no display needed.
"""
from __future__ import annotations

import os
from pathlib import Path

TASK_TITLES = {"ppl": "Perplexity", "mmlu": "MMLU (zero-shot)"}


def plot_sweep(summary: dict, path: str | Path, title: str | None = None) -> Path:
    """Draw `summary` (from `results.summarize`) to the PNG `path` (written atomically); returns the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    eps = summary["epsilon"]
    rows, knees = summary["rows"], summary["knees"]
    tasks = list(dict.fromkeys(k["task"] for k in knees))
    methods = list(dict.fromkeys(k["method"] for k in knees))
    patterns = any(":" in str(r["level"]) for r in rows if r["level"] != "dense")
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.4 * len(tasks), 4.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs_of = _positions(rows) if patterns else None
    for ax, task in zip(axes[0], tasks):
        curves = [k for k in knees if k["task"] == task
                  and (":" not in k["metric"] or len(methods) == 1)]
        unit = curves[0]["unit"]
        lo = hi = 0.0
        for n, k in enumerate(curves):
            pts = [r for r in rows if r["task"] == task and r["metric"] == k["metric"] and r["method"] in (k["method"], "dense")]
            xs = [_x(r, xs_of) for r in pts]
            ys = [r["drop"] for r in pts]
            lo, hi = min(lo, *ys), max(hi, *ys)
            category = ":" in k["metric"]
            label = k["metric"].split(":")[1].replace("_", " ") if category else k["method"]
            color = colors[(n if category else methods.index(k["method"])) % len(colors)]
            ax.plot(xs, ys, marker="o" if not category else None, ms=4, lw=1 if category else 2,
                    ls="--" if category else "-", color=color,
                    label=f"{label}: knee {_level_text(k, patterns)}" + (" (or beyond)" if k["censored"] else ""))
            kx = xs_of[k["label"]] if (patterns and k["label"]) else (100 * k["sparsity"] if not patterns else 0)
            ax.plot([kx], [k["drop"]], marker="*", ms=16 if not category else 11, color=color, mec="black", zorder=5)
            ax.axvline(kx, color=color, ls=":", lw=1, alpha=0.7)
        ax.axhspan(min(lo, 0.0) - 1e-9 if lo < 0 else -eps * 0.25, eps, color="tab:green", alpha=0.15,
                   label=f"within ε = {eps:g}{(' point' if eps == 1 else ' points') if unit == 'points' else '%'} of dense")
        ax.axhline(0, color="black", lw=0.8)
        if unit == "%" and hi > 20 * eps:
            ax.set_yscale("symlog", linthresh=max(eps, 1e-3))
            ax.set_ylim(bottom=min(1.2 * lo, -0.5 * eps), top=2 * hi)
        ax.set_ylabel("accuracy drop vs dense (points)" if unit == "points" else "perplexity increase vs dense (%)")
        if patterns:
            ax.set_xticks(list(xs_of.values()), list(xs_of.keys()))
            ax.set_xlabel("N:M pattern (sparsity of prunable weights)")
        else:
            ax.set_xlabel("sparsity (% of prunable weights set to zero)")
        ax.set_title(TASK_TITLES.get(task, task))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(f"{title}: essential sparsity (one-shot pruning)")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _positions(rows: list[dict]) -> dict[str, int]:
    """Categorical x positions of N:M levels ordered by sparsity ("dense" first), labelled "2:4 (50%)"."""
    levels = sorted({(r["sparsity"], r["level"]) for r in rows}, key=lambda t: (t[0], t[1] != "dense", t[1]))
    return {lv: i for i, (_, lv) in enumerate(levels)}


def _x(row: dict, xs_of: dict | None) -> float:
    return xs_of[row["level"]] if xs_of is not None else 100 * row["sparsity"]


def _level_text(knee: dict, patterns: bool) -> str:
    if knee["label"] is None:
        return "dense (none)"
    return knee["label"] if patterns else f"{100 * knee['sparsity']:g}%"
