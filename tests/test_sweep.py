"""Sweeps: nested magnitude thresholds equal the one-level code, resume after a crash, outputs, and the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.cli import main
from llmprune.cli.sweep import plot_cmd, sweep_cmd
from llmprune.config import PruneConfig
from llmprune.methods.masks import iter_chunks, kth_threshold
from llmprune.prune import prune_model_
from llmprune.sweep.levels import NestedMagnitude, kth_thresholds
from llmprune.sweep.results import ResultsLog, read_results, summarize
from llmprune.sweep.run import SweepConfig, run_sweep

from test_eval_mmlu import tiny_llama_and_tokenizer, write_cais

for _cmd in (sweep_cmd, plot_cmd):  # until llmprune/cli/__init__.py registers them
    if _cmd.name not in main.commands:
        main.add_command(_cmd)


@pytest.mark.parametrize("dtype, bits", [(torch.float32, 31), (torch.bfloat16, 15)])
def test_all_thresholds_from_one_pass_equal_one_at_a_time(dtype, bits):
    torch.manual_seed(0)
    tensors = [torch.randn(37, 19), torch.randint(-3, 4, (50, 8)).float(), torch.randn(5, 5) * 1e-3]  # ties too
    tensors = [t.to(dtype) for t in tensors]

    def values():
        for i, t in enumerate(tensors):
            for chunk in iter_chunks(t):
                yield i, chunk

    n = sum(t.numel() for t in tensors)
    ks = [0, 1, 5, 100, 300, 701, n // 2, n - 1, n]
    assert kth_thresholds(values, ks, bits, len(tensors)) == [kth_threshold(values, k, bits, len(tensors)) for k in ks]


def test_nested_levels_equal_prune_model_and_restore():
    model, _ = tiny_llama_and_tokenizer()
    ref_model, _ = tiny_llama_and_tokenizer()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = {n: p.data for n, p in model.named_parameters() if p.dim() == 2 and ".layers." in n}
    nested = NestedMagnitude(params, [0.3, 0.5, 0.8])
    for s in (0.8, 0.3, 0.5):  # any order
        assert nested.apply_(s) == pytest.approx(s, abs=1e-4)
        ref_model.load_state_dict(dense)
        prune_model_(ref_model, PruneConfig(sparsity=s))
        for n, p in ref_model.named_parameters():
            assert torch.equal(dict(model.named_parameters())[n], p), (s, n)
    zeros = {s: None for s in (0.3, 0.5)}
    for s in zeros:
        nested.apply_(s)
        zeros[s] = {n: p == 0 for n, p in params.items()}
    assert all((zeros[0.3][n] <= zeros[0.5][n]).all() for n in params)  # masks are nested
    nested.restore_()
    assert all(torch.equal(p, dense[n]) for n, p in model.named_parameters())


class Crash(BaseException):
    """Stands for a kill (like KeyboardInterrupt): stops the sweep, unlike an error, which a point retries."""


def fake_evaluators(calls, crash_after=None):
    """ppl from the fraction of zeros (deterministic), counting calls; raises after `crash_after` calls."""
    def ppl(model):
        if crash_after is not None and len(calls) >= crash_after:
            raise Crash()
        zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)
        calls.append(zeros)
        return {"ppl": 10.0 + 100 * zeros / 1e5}
    return {"ppl": ppl}


def test_killed_sweep_resumes_without_recomputing(tmp_path):
    model, _ = tiny_llama_and_tokenizer()
    cfg = SweepConfig(model="tiny", tasks=("ppl",), sparsities=(0.0, 0.2, 0.4, 0.6, 0.8))
    first = []
    with pytest.raises(Crash):
        run_sweep(model, cfg, ResultsLog(tmp_path, cfg.identity()), fake_evaluators(first, crash_after=3))
    assert len(first) == 3  # dense, 0.2, 0.4
    assert all((p != 0).all() for n, p in model.named_parameters() if ".layers." in n and p.dim() == 2)  # restored
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"kind": "point", "method": "magn')  # torn line from a kill mid-write
    second = []
    records = run_sweep(model, cfg, ResultsLog(tmp_path, cfg.identity()), fake_evaluators(second))
    assert len(second) == 2 and len(records) == 5  # only 0.6 and 0.8 computed
    _, again = read_results(tmp_path / "results.jsonl")
    assert [(r["level"], r["metrics"]["ppl"]) for r in again] == [(r["level"], r["metrics"]["ppl"]) for r in records]
    fresh = []
    run_sweep(model, cfg, ResultsLog(tmp_path / "fresh", cfg.identity()), fake_evaluators(fresh))
    assert sorted(first + second) == sorted(fresh)  # resumed == uninterrupted
    third = []
    run_sweep(model, cfg, ResultsLog(tmp_path, cfg.identity()), fake_evaluators(third))
    assert third == []


def test_results_from_another_sweep_are_refused(tmp_path):
    cfg = SweepConfig(model="a", sparsities=(0.5,))
    ResultsLog(tmp_path, cfg.identity())
    other = SweepConfig(model="a", sparsities=(0.5,), seqlen=128)
    with pytest.raises(Exception, match=r"holds a different sweep \(seqlen=2048 there, 128 now\).*--overwrite"):
        ResultsLog(tmp_path, other.identity())
    assert ResultsLog(tmp_path, other.identity(), overwrite=True).records == []
    more = SweepConfig(model="a", sparsities=(0.5, 0.7), methods=("magnitude", "wanda"), epsilon=2, seqlen=128)
    ResultsLog(tmp_path, more.identity())  # more levels / methods / another epsilon extend a sweep


def test_summary_knees_per_method_task_and_category():
    def rec(method, level, s, ppl, acc, stem):
        return [{"method": method, "level": level, "sparsity": s, "task": "ppl", "metrics": {"ppl": ppl}},
                {"method": method, "level": level, "sparsity": s, "task": "mmlu",
                 "metrics": {"accuracy": acc, "categories": {"stem": {"accuracy": stem}}}}]
    records = rec("dense", "dense", 0.0, 10.0, 0.50, 0.40)
    for s, ppl, acc, stem in [(0.1, 10.05, 0.50, 0.40), (0.2, 10.5, 0.495, 0.35), (0.3, 30.0, 0.30, 0.39)]:
        records += rec("magnitude", f"{s:g}", s, ppl, acc, stem)
    knees = {(k["method"], k["metric"]): k for k in summarize(records, 1.0)["knees"]}
    assert knees[("magnitude", "ppl")]["sparsity"] == 0.1 and knees[("magnitude", "ppl")]["next_drop"] == pytest.approx(5.0)
    assert knees[("magnitude", "acc")]["sparsity"] == 0.2 and knees[("magnitude", "acc")]["next_drop"] == pytest.approx(20.0)
    assert knees[("magnitude", "acc:stem")]["sparsity"] == 0.1 and knees[("magnitude", "acc:stem")]["reentered"] == ["0.3"]


@pytest.fixture(scope="module")
def ckpt(tiny_lm_dir):
    return tiny_lm_dir


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


@pytest.mark.parametrize("args, message", [
    (["--sparsities", "0:1:0.1"], "Invalid --sparsities '0:1:0.1': 1 is out of range"),
    (["--task", "hellaswag"], "Unknown task 'hellaswag'"),
    (["--method", "wandda"], "Unknown method 'wandda'. Did you mean 'wanda'?"),
    (["--pattern", "4:2"], "Invalid N:M pattern '4:2'"),
    (["--pattern", "2:4", "--sparsities", "0.5"], "either --sparsities or --pattern"),
])
def test_bad_flags_fail_before_loading(tmp_path, args, message):
    r = invoke("sweep", tmp_path / "no-such-model", "-o", tmp_path / "out", *args)
    assert r.exit_code == 1 and message in r.output and "Loading" not in r.output
    assert not (tmp_path / "out").exists() or "--pattern" in args


def test_cli_sweep_ppl_and_mmlu_writes_csv_json_png_and_replots(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path / "cache"))
    write_cais(tmp_path / "q.jsonl")
    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 60)
    out = tmp_path / "sweep"
    args = ["sweep", ckpt, "--task", "ppl", "--task", "mmlu", "--sparsities", "0,0.5,0.9", "--ppl-data", text,
            "--mmlu-data", tmp_path / "q.jsonl", "--limit", "1", "--seqlen", "64", "--ppl-windows", "2", "-o", out]
    r = invoke(*args, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert {(k["task"], k["metric"]) for k in result["knees"]} >= {("ppl", "ppl"), ("mmlu", "acc"), ("mmlu", "acc:stem")}
    assert (out / "sweep.png").stat().st_size > 10_000
    csv_lines = (out / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,task,metric,level,sparsity") and any(",0.9," in line for line in csv_lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seqlen"] == 64 and "torch" in summary["versions"] and summary["timings"]["sweep"] > 0
    assert len(read_results(out / "results.jsonl")[1]) == 6  # dense + 2 levels, x 2 tasks
    again = invoke(*args)  # everything done: nothing recomputed, the table printed
    assert again.exit_code == 0 and "essential sparsity" in again.stdout
    assert json.loads((out / "summary.json").read_text())["timings"]["points_computed"] == 0
    (out / "sweep.png").unlink()
    p = invoke("plot", out, "--epsilon", "1000000", "--json")
    assert p.exit_code == 0, p.output and (out / "sweep.png").exists()
    assert all(k["censored"] for k in json.loads(p.stdout)["knees"])
    clash = invoke(*args[:-2], "--seqlen", "32", "-o", out)
    assert clash.exit_code == 1 and "different sweep" in clash.output


def test_cli_nm_patterns(ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 60)
    r = invoke("sweep", ckpt, "--pattern", "2:4", "--pattern", "1:4", "--pattern", "4:8", "--ppl-data", text,
               "--seqlen", "64", "--ppl-windows", "2", "-o", tmp_path / "nm", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [row["level"] for row in rows] == ["dense", "2:4", "4:8", "1:4"]
    assert rows[3]["actual_sparsity"] == pytest.approx(0.75)
    assert (tmp_path / "nm" / "sweep.png").exists()


def test_config_needs_levels():
    with pytest.raises(Exception, match="No levels to prune to"):
        SweepConfig(model="a", sparsities=(0.0,))
    assert [lv.label for lv in SweepConfig(model="a", patterns=("2:4", "1:4")).levels] == ["2:4", "1:4"]
