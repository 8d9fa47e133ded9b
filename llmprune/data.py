"""Text sources for evaluation (perplexity) and calibration, by name or local file.

`load_text(source, split)` returns one string. split "test" is evaluation text, "train" calibration text;
every named source keeps the two apart so calibration never sees the text a model is scored on:

- None / "pydoc": Python's stdlib `pydoc_data.topics` (offline, ~113k SmolLM2 tokens). test = first half of
  the text, train = second half (cut at a paragraph break).
- "wikitext2": `Salesforce/wikitext`, config wikitext-2-raw-v1, its own test / train splits, lines joined
  as SparseGPT and Wanda join them: with "\\n\\n" (test) and " " (train).
- "c4": `allenai/c4` English, first validation shard (test: its first 1,100 documents joined with " ", as
  SparseGPT/Wanda) or first train shard (train: documents joined with "\\n\\n"; calibration draws from
  the documents themselves, `c4_documents`, as the reference does).
- a path to a .txt file (used whole, for either split) or a .jsonl file (the "text" field of every line).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import LlmpruneError, unknown

SPLITS = ("test", "train")
NAMED = ("pydoc", "wikitext2", "c4")

_C4_FILES = {
    "test": "en/c4-validation.00000-of-00008.json.gz",
    "train": "en/c4-train.00000-of-01024.json.gz",
}
_C4_TEST_DOCS = 1100


def load_text(source: str | None, split: str) -> str:
    """The text of `source` (a name in NAMED or a .txt/.jsonl path; None means "pydoc") for `split`."""
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    source = source or "pydoc"
    if source == "pydoc":
        return pydoc_text(split)
    if source == "wikitext2":
        rows = _hub_dataset("Salesforce/wikitext", split, name="wikitext-2-raw-v1")
        return ("\n\n" if split == "test" else " ").join(rows["text"])
    if source == "c4":
        rows = c4_documents(split)
        if split == "test":
            return " ".join(rows[:_C4_TEST_DOCS]["text"])
        return "\n\n".join(rows["text"])
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl", ".json") or path.exists():
        return _read_file(path)
    raise unknown("text source", source, NAMED + ("PATH.txt", "PATH.jsonl"))


def c4_documents(split: str):
    """The documents of c4's first validation ("test") or train shard: `len(docs)`, `docs[i]["text"]`."""
    name = "validation" if split == "test" else "train"
    return _hub_dataset("allenai/c4", name, data_files={name: _C4_FILES[split]})


def pydoc_text(split: str) -> str:
    """Half of the stdlib pydoc topics text: "test" the first half, "train" the second."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics.values())
    cut = text.find("\n\n", len(text) // 2)
    cut = len(text) // 2 if cut < 0 else cut
    return text[:cut] if split == "test" else text[cut + 2:]


def _read_file(path: Path) -> str:
    if not path.is_file():
        raise LlmpruneError(f"Text file {path} does not exist. Give a .txt or .jsonl file, or one of: {', '.join(NAMED)}.")
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    if path.suffix in (".jsonl", ".json"):
        texts = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LlmpruneError(f"{path}:{lineno} is not valid JSON ({e.msg}); expected one object per line.") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise LlmpruneError(f"{path}:{lineno} has no string field 'text'; a .jsonl text source needs one per line.")
                texts.append(row["text"])
        return "\n\n".join(texts)
    raise LlmpruneError(f"Cannot read text from {path}: use a .txt or .jsonl file (a 'text' field per line).")


def _hub_dataset(repo: str, split: str, **kwargs):
    try:
        import datasets

        return datasets.load_dataset(repo, split=split, **kwargs)
    except Exception as e:  # offline, missing repo, ...: one line for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LlmpruneError(
            f"Could not load {repo} ({split}) from the Hugging Face Hub: {first}. "
            "Offline, use the default pydoc text or give a local .txt/.jsonl file.") from None
