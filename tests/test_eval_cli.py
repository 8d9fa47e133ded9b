"""`llmprune eval` through click's CliRunner: flag errors before loading, ppl/mmlu JSON, on-the-fly pruning."""
import json

import pytest
from click.testing import CliRunner

from llmprune.cli import main

from test_eval_mmlu import write_cais


@pytest.fixture(scope="module")
def ckpt(tiny_lm_dir):
    return tiny_lm_dir


def invoke(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


@pytest.mark.slow  # builds lm-eval's whole task index (~1-2 min here)
def test_unknown_lm_eval_task_suggests_close_name(ckpt):
    r = invoke("hellaswagg", ckpt)
    assert r.exit_code == 1 and "Unknown task 'hellaswagg'. Did you mean 'hellaswag'?" in r.output


def test_8bit_on_cpu_is_a_clear_error(ckpt):
    r = invoke("ppl", ckpt, "--load-in-8bit")
    assert r.exit_code == 1 and "needs a CUDA GPU" in r.output


def test_bad_batch_size_and_method_without_target(ckpt):
    assert "Invalid --batch-size 'zero'" in invoke("ppl", ckpt, "--batch-size", "zero").output
    assert "--method wanda needs --sparsity or --pattern" in invoke("ppl", ckpt, "--method", "wanda").output


def test_ppl_json_with_on_the_fly_pruning(ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 40)
    dense = invoke("ppl", ckpt, "--data", text, "--seqlen", "64", "--json")
    assert dense.exit_code == 0, dense.output
    dense = json.loads(dense.stdout)
    pruned = invoke("ppl", ckpt, "--data", text, "--seqlen", "64", "--sparsity", "0.5", "--scope", "layer", "--json")
    assert pruned.exit_code == 0, pruned.output
    pruned = json.loads(pruned.stdout)
    assert dense["tasks"]["ppl"]["windows"] == pruned["tasks"]["ppl"]["windows"] > 1
    assert pruned["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert pruned["tasks"]["ppl"]["ppl"] != dense["tasks"]["ppl"]["ppl"]


def test_mmlu_table_json_and_lm_eval_output(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    write_cais(tmp_path / "q.jsonl")
    r = invoke("mmlu", ckpt, "--data", tmp_path / "q.jsonl", "--subjects", "stem", "--json", "-o", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)["tasks"]["mmlu"]
    assert out["questions"] == 5 and set(out["subjects"]) == {"anatomy", "high_school_biology"}
    assert json.loads((tmp_path / "r.json").read_text())["results"]["mmlu"]["acc,none"] == pytest.approx(out["accuracy"])
    table = invoke("mmlu", ckpt, "--data", tmp_path / "q.jsonl", "--limit", "1")
    assert table.exit_code == 0 and "high_school_biology" in table.stdout and "social_sciences" not in table.stdout


def test_mmlu_bad_data_fails_before_loading(ckpt, tmp_path):
    (tmp_path / "x.jsonl").write_text('{"prompt": "q"}\n')
    r = invoke("mmlu", ckpt, "--data", tmp_path / "x.jsonl")
    assert r.exit_code == 1 and "Unknown MMLU data layout" in r.output and "Loading" not in r.output


def test_output_is_quiet_unless_verbose(ckpt, tmp_path, monkeypatch, capfd):
    """Other libraries' logging and bars (and git's `fatal:` outside a checkout) only with -v; the table says
    where the questions came from."""
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # not a git checkout
    write_cais(tmp_path / "q.jsonl")
    r = invoke("mmlu", ckpt, "--data", tmp_path / "q.jsonl", "--limit", "1")
    fd = capfd.readouterr()
    assert r.exit_code == 0, r.output
    assert f"MMLUquestions:{tmp_path / 'q.jsonl'}" in "".join(r.stdout.split())  # (the caption wraps)
    noise = ("Generating test split", "num_fewshot", "Loading weights", "fatal:", "WARNING")
    assert not [n for n in noise if n in r.output + fd.err + fd.out]
    loud = CliRunner().invoke(main, ["-v", "eval", "mmlu", str(ckpt), "--data", str(tmp_path / "q.jsonl"), "--limit", "1"])
    assert loud.exit_code == 0 and "Loading weights" in loud.output  # transformers' own bar is back
