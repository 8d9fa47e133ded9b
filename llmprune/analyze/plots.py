"""The analysis figures (matplotlib, Agg backend): drawing only, from the JSON the `run` module writes."""
from __future__ import annotations

import math
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short(model: str) -> str:
    return Path(model).name or model


def _centres(edges: list[float]) -> list[float]:
    return [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]


def _pct_per_bin(hist: list[int]) -> list[float]:
    n = sum(hist) or 1
    return [100 * c / n for c in hist[1:-1]]  # interior bins only: under/overflow have no finite width


def _x_range(results: list[dict], floor: float = 1e-4) -> tuple[float, float]:
    """|w| range of the bins that hold at least `floor` of some group's weights (plus eps), padded a bin."""
    lo, hi = math.inf, 0.0
    for r in results:
        edges = r["edges"]
        for v in [*r["by_type"].values(), *r["by_layer"].values()]:
            n = sum(v["hist"]) or 1
            used = [i for i, c in enumerate(v["hist"][1:-1]) if c / n >= floor]
            if used:
                lo, hi = min(lo, edges[max(used[0] - 1, 0)]), max(hi, edges[min(used[-1] + 2, len(edges) - 1)])
        lo = min(lo, r["eps"] / 2) if r["eps"] > 0 else lo
    return (lo, hi) if hi > 0 else (r["edges"][0], r["edges"][-1])


def _type_colors(types):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {t: cmap(i % 10) for i, t in enumerate(sorted(types))}


def plot_magnitude_histograms(results: list[dict], path: Path) -> Path:
    """Fig. 7: normalised histograms of |w| on log bins, per module type (top) and per layer (bottom), one
    column per model; dotted line at eps, dashed at the global-OMP threshold."""
    plt = _plt()
    import matplotlib

    k = len(results)
    fig, axes = plt.subplots(2, k, figsize=(7 * k, 9), sharex=True, sharey="row", squeeze=False)
    colors = _type_colors({t for r in results for t in r["by_type"]})
    for j, r in enumerate(results):
        x = _centres(r["edges"])
        ax = axes[0][j]
        for t, v in r["by_type"].items():
            zs = v["zero_share"]
            label = t + (f"  (exact zeros {100 * zs:.1f}%)" if zs >= 1e-3 else "")
            ax.plot(x, _pct_per_bin(v["hist"]), color=colors[t], lw=1.6, label=label)
        ax.set_title(f"{_short(r['model'])}: |w| by module type")
        ax = axes[1][j]
        layers = [(int(l), v) for l, v in r["by_layer"].items() if l.lstrip("-").isdigit()]
        n = max((l for l, _ in layers), default=0) + 1
        cmap = matplotlib.colormaps["viridis"]
        for l, v in layers:
            ax.plot(x, _pct_per_bin(v["hist"]), color=cmap(l / max(n - 1, 1)), lw=1.0)
        sm = matplotlib.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(0, max(n - 1, 1)))
        fig.colorbar(sm, ax=ax, label="decoder layer (0 = first)")
        ax.set_title(f"{_short(r['model'])}: |w| by depth ({n} layers)")
        ax.set_xlabel("|w| (log scale)")
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log")
            ax.axvline(r["eps"], color="grey", ls=":", lw=1.2, label=f"eps = {r['eps']:g}")
            if r["omp_threshold"] > 0:
                ax.axvline(r["omp_threshold"], color="red", ls="--", lw=1.2,
                           label=f"global OMP {100 * r['sparsity']:.0f}% threshold = {r['omp_threshold']:.2g}")
            ax.grid(alpha=0.3, which="both", lw=0.4)
            ax.set_xlim(*_x_range(results))
            ax.legend(fontsize=8, loc="upper left")
    for i in range(2):
        axes[i][0].set_ylabel("share of weights per bin (%)")
    fig.suptitle("Magnitudes |w| of the prunable weights\n(normalised histograms, 10 log-spaced bins per decade)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_omp_location(results: list[dict], path: Path) -> Path:
    """Fig. 1: where a global OMP threshold removes weights: share removed per module type (top) and per
    layer and module type (bottom), one column per model; the dashed line is the global sparsity."""
    plt = _plt()
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    k = len(results)
    fig, axes = plt.subplots(2, k, figsize=(7 * k, 9), sharey="row", squeeze=False)
    colors = _type_colors({t for r in results for t in r["by_type"]})
    for j, r in enumerate(results):
        s, name = 100 * r["sparsity"], _short(r["model"])
        ax = axes[0][j]
        types = list(r["by_type"])
        removed = [100 * r["by_type"][t]["omp_removed_share"] for t in types]
        total = r["global"]["omp_removed"] or 1
        bars = ax.bar(range(len(types)), removed, color=[colors[t] for t in types])
        for b, t in zip(bars, types):
            ax.annotate(f"{100 * r['by_type'][t]['omp_removed'] / total:.0f}%", (b.get_x() + b.get_width() / 2, b.get_height() + 1),
                        ha="center", va="bottom", fontsize=8)
        ax.axhline(s, color="black", ls="--", lw=1, label=f"global sparsity {s:.0f}%")
        ax.set_xticks(range(len(types)), types, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{name}: removed per module type\n(label: that type's share of all removed weights)", fontsize=11)
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="upper left")
        ax = axes[1][j]
        layers = sorted(int(l) for l in r["by_layer_type"] if l.lstrip("-").isdigit())
        for t in types:
            y = [100 * r["by_layer_type"][str(l)][t]["omp_removed_share"] if t in r["by_layer_type"][str(l)] else np.nan
                 for l in layers]
            ax.plot(layers, y, marker="o", ms=3, color=colors[t], label=t)
        ax.axhline(s, color="black", ls="--", lw=1, label=f"global sparsity {s:.0f}%")
        ax.set_xlabel("decoder layer (0 = first)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{name}: removed per layer and module type")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3, lw=0.4)
        ax.legend(fontsize=7, ncol=2, loc="best")
    for i in range(2):
        axes[i][0].set_ylabel("weights removed (% of that group)")
    fig.suptitle(f"Where one-shot global magnitude pruning (OMP) at {100 * results[0]['sparsity']:.0f}% removes weights")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sparsification(result: dict, path: Path) -> Path:
    """Fig. 8: share of prunable weights that are zero or near zero over training (left: per eps; right:
    per module type at the middle eps)."""
    plt = _plt()

    rows = result["checkpoints"]
    known = result["steps_known"]
    x = [r["step"] if known else r["index"] for r in rows]
    xlabel = "training step" if known else "checkpoint (in the order given)"
    eps = [f"{e:g}" for e in result["eps"]]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    ax = axes[0]
    for e in eps:
        ax.plot(x, [100 * r["global"]["near_zero_share"][e] for r in rows], marker="o", ms=3, label=f"|w| <= {e}")
    ax.plot(x, [100 * r["global"]["zero_share"] for r in rows], marker="s", ms=3, color="black", label="|w| = 0")
    ax.set_title("Near-zero weights over training (all prunable weights)")
    ax.set_ylabel("share of prunable weights (%)")
    ax.legend(fontsize=8)
    ax = axes[1]
    mid = eps[len(eps) // 2] if eps else None
    types = sorted({t for r in rows for t in r["by_type"]})
    colors = _type_colors(types)
    for t in types:
        y = [100 * r["by_type"][t]["near_zero_share"][mid] if t in r["by_type"] else float("nan") for r in rows]
        ax.plot(x, y, marker="o", ms=3, color=colors[t], label=t)
    ax.set_title(f"Near-zero weights (|w| <= {mid}) per module type")
    ax.legend(fontsize=8, ncol=2)
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, lw=0.4)
        ax.set_ylim(bottom=0)
    fig.suptitle(f"Sparsification during training ({len(rows)} checkpoints)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
