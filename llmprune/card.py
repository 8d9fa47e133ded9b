"""The model card (README.md with the Hub's YAML metadata) for a pruned output directory.

Everything comes from files in the directory, each optional except `run.json`:
- `run.json`, as `prune` writes it (method, pattern, scope, calibration, achieved sparsity globally and per
  module type, llmprune version, the command line, format and sizes), or `finetune` (task, score, the mask's
  method and sparsity), an IMP round, or `convert` (its `conversions` decide the format on disk); `run_facts`
  reads every kind into one view;
- `eval*.json` (`llmprune eval ... --json > DIR/eval.json`): perplexity and MMLU (overall, per category);
- `summary.json` (`llmprune sweep`): the essential-sparsity knee per method/task/metric; `sweep.png` its plot,
  `sweep.csv` its table (linked when present).
Files that are absent or unreadable are skipped; the card says what it could not read.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

from .methods import REGISTRY
from .provenance import base_model as provenance_base, describe as describe_source, recorded as recorded_source

# Built-in model names -> the Hub repos their weights come from (a card's base_model must be a Hub id).
BUILTIN_BASE = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m",
                "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
PIPELINES = {"AutoModelForCausalLM": "text-generation", "AutoModelForMaskedLM": "fill-mask",
             "AutoModelForImageClassification": "image-classification", "AutoModelForImageTextToText": "image-text-to-text"}


def base_model_id(model: str | None) -> str | None:
    """The Hub id a run started from: a built-in's source repo, an `owner/name` id, else None (local path)."""
    if not model:
        return None
    if model in BUILTIN_BASE:
        return BUILTIN_BASE[model]
    import re

    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith((".", "/")) and not Path(model).exists():
        return model
    return None


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pct(x) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, (int, float)) else "n/a"


def _command(argv) -> str:
    if isinstance(argv, list) and argv:
        return shlex.join(["llmprune" if Path(argv[0]).name in ("llmprune", "__main__.py") else Path(argv[0]).name, *argv[1:]])
    return str(argv or "n/a")


def read_extras(folder: Path) -> dict:
    """{"evals": {file: record}, "summary": dict | None, "sweep_png": bool, "sweep_csv": bool, "unreadable": [...]}."""
    folder = Path(folder)
    evals, unreadable = {}, []
    for f in sorted(folder.glob("eval*.json")):
        rec = _json(f)
        if rec is not None and isinstance(rec.get("tasks"), dict):
            evals[f.name] = rec
        else:
            unreadable.append(f.name)
    summary = None
    if (folder / "summary.json").exists():
        summary = _json(folder / "summary.json")
        if summary is None or not isinstance(summary.get("knees"), list):
            unreadable.append("summary.json")
            summary = None
    return {"evals": evals, "summary": summary, "sweep_png": (folder / "sweep.png").exists(),
            "sweep_csv": (folder / "sweep.csv").exists(), "unreadable": unreadable}


def run_facts(run: dict) -> dict:
    """One view of any output's run.json (prune, finetune, IMP round, convert) for the card and the commit.

    Keys: kind ("prune", "finetune" or "convert"), method, target (text), calibrated (bool), config (the prune
    config, {} otherwise), sparsity (the summary with "global" and "by_type"; "global" may only hold "sparsity"),
    format (as stored now, after any conversion), output_bytes, size_ratio, model, task, metric, score.
    """
    cfg = run.get("config") if isinstance(run.get("config"), dict) else {}
    sp = run.get("sparsity")
    summary = sp if isinstance(sp, dict) else run.get("mask") if isinstance(run.get("mask"), dict) else {}
    summary = {"global": dict(summary.get("global") or {}), "by_type": summary.get("by_type") or {}}
    if isinstance(sp, (int, float)):  # fine-tuning records the sparsity reached after training
        summary["global"]["sparsity"] = float(sp)
    conversions = [c for c in run.get("conversions") or [] if isinstance(c, dict)]
    last = conversions[-1] if conversions else run
    if "task" in run or "imp_round" in run:
        kind = "finetune"
        method = run.get("method") or ("lth (IMP)" if "imp_round" in run or "imp" in run else
                                        "mask from " + Path(str(cfg["mask_from"])).name if cfg.get("mask_from") else "omp")
        target = f"{_pct(run.get('target_sparsity', cfg.get('sparsity', summary['global'].get('sparsity'))))} unstructured"
    elif isinstance(sp, dict) or "method" in cfg:
        kind, method = "prune", str(cfg.get("method", "magnitude"))
        target = cfg.get("pattern") or f"{_pct(cfg.get('sparsity'))} unstructured, scope {cfg.get('scope', 'global')}"
    else:
        kind, method, target = "convert", "none", "none (converted, not pruned by llmprune)"
    return {"kind": kind, "method": method, "target": target, "calibrated": kind == "prune" and method in REGISTRY and REGISTRY[method].calibrated,
            "config": cfg if kind == "prune" else {}, "sparsity": summary, "format": last.get("format", "dense"),
            "output_bytes": last.get("output_bytes"), "size_ratio": last.get("size_ratio"),
            "model": run.get("model") or (conversions[0].get("source") if conversions else None),
            "task": run.get("task"), "metric": run.get("metric"), "score": run.get("score")}


def card_metadata(run: dict, config: dict, base_model: str | None = None) -> dict:
    """The YAML front matter: base_model (when known), library_name, tags, pipeline_tag."""
    from .arch import arch_for
    from .errors import LlmpruneError

    facts = run_facts(run)
    tags = ["sparse", "pruned", "llmprune"] if facts["kind"] != "convert" else ["sparse", "llmprune"]
    if facts["kind"] != "convert":
        tags.append(facts["method"].split(" ")[0])
    if facts["config"].get("pattern"):
        tags.append(f"{facts['config']['pattern'].replace(':', '-')}-sparsity")
    meta: dict = {}
    base = base_model or provenance_base(run) or base_model_id(facts["model"])
    if base:
        meta["base_model"] = base
    meta["library_name"] = "transformers"
    meta["tags"] = tags
    try:
        pipeline = PIPELINES.get(arch_for(config).auto_class)
    except LlmpruneError:
        pipeline = None
    if facts["kind"] == "finetune":  # a task head: sequence or image classification
        pipeline = "image-classification" if config.get("model_type") in ("vit", "dinov2") else "text-classification"
    if pipeline:
        meta["pipeline_tag"] = pipeline
    return meta


def _yaml(meta: dict) -> str:
    lines = []
    for k, v in meta.items():
        if isinstance(v, list):
            lines.append(f"{k}:")
            lines += [f"- {json.dumps(x)}" for x in v]
        else:
            lines.append(f"{k}: {json.dumps(v)}")
    return "\n".join(lines)


def model_card(run: dict, config: dict, extras: dict | None = None, repo_id: str | None = None,
               base_model: str | None = None) -> str:
    """README.md text for an output directory: YAML metadata, what was done, achieved sparsity, results."""
    extras = extras or {"evals": {}, "summary": None, "sweep_png": False, "sweep_csv": False, "unreadable": []}
    facts = run_facts(run)
    cfg, sp, method, target, fmt = facts["config"], facts["sparsity"], facts["method"], facts["target"], facts["format"]
    meta = card_metadata(run, config, base_model)
    g = sp["global"]
    title = repo_id or (Path(str(facts["model"] or "model")).name + f"-{method.split(' ')[0]}-pruned")
    out = ["---", _yaml(meta), "---", "", f"# {title}", ""]
    src = f"[{meta['base_model']}](https://huggingface.co/{meta['base_model']})" if "base_model" in meta else f"`{facts['model']}`"
    lib = "[llmprune](https://pypi.org/project/llmprune/)"
    if facts["kind"] == "finetune":
        score = f"{facts['score']:.4f}" if isinstance(facts["score"], (int, float)) else "n/a"
        out += [f"{src} fine-tuned on `{facts['task']}` with {lib}, its pruning mask held fixed ({method}, target {target}): "
                f"**{_pct(g.get('sparsity'))}** of the prunable weights are zero; {facts['metric'] or 'score'} {score}.", ""]
    elif facts["kind"] == "convert":
        out += [f"{src} converted by {lib} (not pruned by it); stored in the `{fmt}` format.", ""]
    else:
        out += [f"{src} pruned one-shot with {lib} ({method}, {target}): "
                f"**{_pct(g.get('sparsity'))}** of the prunable weights (the linear layers of the decoder blocks) are zero.", ""]
    if fmt != "dense":
        out += [f"Weights are stored in llmprune's compact sparse format (`{fmt}`); load them with "
                "`llmprune.models.load_model(path)` (plain transformers cannot read this format).", ""]
    else:
        out += ["Weights are stored dense (zeros included); load with `AutoModel*.from_pretrained` as usual.", ""]
    out += ["## How it was made", "", "| setting | value |", "|---|---|",
            f"| source weights | {describe_source(recorded_source(run))} |", f"| method | {method} |", f"| target | {target} |"]
    if facts["kind"] == "prune":
        out.append(f"| include / exclude | {', '.join(cfg.get('include') or []) or '-'} / "
                   f"{', '.join(cfg.get('exclude') or []) or '-'} |")
        if cfg.get("allocation", "uniform") != "uniform":
            out.append(f"| layer sparsities | {cfg['allocation']} (M {cfg.get('owl_m')}, lambda {cfg.get('owl_lambda')}; "
                       f"per layer in run.json) |")
        if facts["calibrated"]:
            out.append(f"| calibration | {cfg.get('calib') or 'pydoc'} (train split), {cfg.get('calib_samples')} samples x "
                       f"{cfg.get('seqlen')} tokens, seed {cfg.get('seed')} |")
        else:
            out.append("| calibration | none (magnitude pruning is data-free) |")
    if facts["kind"] == "finetune":
        out.append(f"| task | {facts['task']} ({facts['metric'] or 'score'}) |")
    out += [f"| format | {fmt} |", f"| llmprune version | {run.get('llmprune_version', 'n/a')} |",
            f"| versions | {', '.join(f'{k} {v}' for k, v in (run.get('versions') or {}).items()) or 'n/a'} |"]
    if facts["output_bytes"]:
        out.append(f"| size on disk | {facts['output_bytes'] / 2**20:,.1f} MiB ({facts['size_ratio'] or 1:.2f}x the input) |")
    if run.get("command"):
        out += ["", "Command:", "", "```", _command(run.get("command")), "```"]
    out.append("")
    if sp["by_type"] or g.get("params"):
        out += ["## Achieved sparsity", "", "| module type | parameters | zeros | sparsity |", "|---|---:|---:|---:|"]
        for t, row in sp["by_type"].items():
            out.append(f"| {t} | {row.get('params', 0):,} | {row.get('zeros', 0):,} | {_pct(row.get('sparsity'))} |")
        out += [f"| **all prunable** | {g.get('params', 0):,} | {g.get('zeros', 0):,} | **{_pct(g.get('sparsity'))}** |", ""]
        if facts["kind"] == "finetune":
            out += ["(Per module type: the mask before fine-tuning; the weights it prunes stay exactly zero.)", ""]
    if g.get("zeros_before"):
        out += [f"{g['zeros_before']:,} of these weights were already zero in the source checkpoint and count as pruned.", ""]
    out += _eval_section(extras) + _sweep_section(extras)
    if extras["unreadable"]:
        out += [f"_Not summarised (unreadable or unknown layout): {', '.join(extras['unreadable'])}._", ""]
    out += ["## Reference", "", "Pruning as in Jaiswal et al., *The Emergence of Essential Sparsity in Large Pre-trained "
            "Models: The Weights that Matter* (NeurIPS 2023).", ""]
    return "\n".join(out)


def _eval_section(extras: dict) -> list[str]:
    if not extras["evals"]:
        return []
    out = ["## Evaluation", ""]
    for fname, rec in extras["evals"].items():
        out.append(f"From `{fname}`" + (f" (model `{rec['model']}`)" if rec.get("model") else "") + ":")
        out += ["", "| task | metric | value | n |", "|---|---|---:|---:|"]
        for task, res in rec["tasks"].items():
            if not isinstance(res, dict):
                continue
            if task == "ppl" and "ppl" in res:
                out.append(f"| perplexity | {res.get('data', 'pydoc')}, seqlen {res.get('seqlen', '?')} | {res['ppl']:.3f} | "
                           f"{res.get('tokens', 0):,} tokens |")
            elif task == "mmlu" and "accuracy" in res:
                out.append(f"| MMLU | accuracy | {_pct(res['accuracy'])} | {res.get('questions', '')} |")
                for c, v in (res.get("categories") or {}).items():
                    out.append(f"| MMLU: {c} | accuracy | {_pct(v.get('accuracy'))} | {v.get('questions', '')} |")
            else:
                for metric, v in res.items():
                    if isinstance(v, (int, float)) and "stderr" not in metric:
                        out.append(f"| {task} | {metric.replace(',none', '')} | {v:.4f} | |")
        out.append("")
    return out


def _sweep_section(extras: dict) -> list[str]:
    s = extras["summary"]
    if s is None and not extras["sweep_png"]:
        return []
    out = ["## Essential sparsity (sweep)", ""]
    if s is not None:
        eps = s.get("epsilon")
        out += [f"The knee is the largest sparsity whose drop from dense stays within epsilon = {eps} "
                "(accuracy: points; perplexity: relative).", "",
                "| method | task | metric | dense | knee sparsity | drop at knee | first level out |", "|---|---|---|---:|---:|---:|---:|"]
        for k in s["knees"]:
            nxt = "none (censored)" if k.get("censored") else f"{_pct(k.get('next_sparsity'))}"
            dense = k.get("dense")
            out.append(f"| {k.get('method')} | {k.get('task')} | {k.get('metric')} | "
                       f"{dense:.4g} | {_pct(k.get('sparsity'))} | {k.get('drop', 0):.4g} | {nxt} |" if isinstance(dense, (int, float))
                       else f"| {k.get('method')} | {k.get('task')} | {k.get('metric')} | n/a | {_pct(k.get('sparsity'))} | | {nxt} |")
        out.append("")
    if extras["sweep_png"]:
        out += ["![Performance against sparsity; the knee marks the essential sparsity](sweep.png)", ""]
    if extras["sweep_csv"]:
        out += ["All points: [sweep.csv](sweep.csv).", ""]
    return out
