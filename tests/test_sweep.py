"""Sweeps: one-pass thresholds equal prune's, every level equals prune's output (offloaded too), resume, outputs, CLI."""
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.cli import main
from llmprune.config import PruneConfig
from llmprune.budget import scratch_dir
from llmprune.io import Checkpoint
from llmprune.methods.masks import iter_chunks, kth_threshold, kth_thresholds
from llmprune.models import load
from llmprune.offload import Weights
from llmprune.prune import prune_checkpoint
from llmprune.sweep.levels import global_thresholds
from llmprune.sweep.point import Point, PointRunner
from llmprune.sweep.results import ResultsLog, read_results, summarize
from llmprune.sweep.run import SweepConfig, plan, run_sweep

from test_eval_mmlu import write_cais


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


def test_one_pass_thresholds_equal_prunes_own(tiny_lm_dir):
    from llmprune.methods.magnitude import GlobalMagnitude
    from llmprune.prune import prunable_names

    ckpt = Checkpoint(tiny_lm_dir)
    _, names = prunable_names(ckpt, PruneConfig())
    levels = [0.1, 0.3, 0.5, 0.8]
    found = global_thresholds(ckpt, names, levels)
    numel = sum(ckpt.info(n).nbytes // 4 for n in names)
    for s in levels:
        assert found[s] == GlobalMagnitude(names, ckpt.read, (ckpt.info(n).dtype for n in names), numel, s).threshold


class Crash(BaseException):
    """Stands for a kill (like KeyboardInterrupt): stops the sweep, unlike an error, which a point retries."""


class FakeSuite:
    """ppl from the fraction of zeros (deterministic), counting calls; raises after `crash_after` calls.
    It also keeps a copy of every prunable weight the model holds at each call."""

    def __init__(self, calls, crash_after=None):
        self.calls, self.crash_after, self.seen = calls, crash_after, []

    def run(self, model, tokenizer, tasks, progress=None):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise Crash()
        weights = Weights(model)
        held = {n: weights.read(n) for n in weights.params if ".layers." in n and n.endswith("proj.weight")}
        zeros = sum(int((w == 0).sum()) for w in held.values())
        self.calls.append(zeros)
        self.seen.append({n: w.clone() for n, w in held.items()})
        return {"ppl": {"ppl": 10.0 + 100 * zeros / 1e5}}


def runner_for(cfg, ckpt_dir, suite, scratch, max_memory=None):
    return PointRunner(cfg, load(ckpt_dir, max_memory=max_memory, scratch=scratch), suite)


@pytest.mark.parametrize("max_memory", [None, {"cpu": 0}], ids=["in-memory", "disk-offloaded"])
def test_every_level_equals_prune_in_any_order(tiny_lm_dir, tmp_path, max_memory):
    """Magnitude levels up the nested chain, back down, a calibrated level and dense again: each point's
    weights equal `prune`'s output with the same arguments, byte for byte, with nothing held but the model."""
    cfg = SweepConfig(model="tiny", tasks=("ppl",), methods=("magnitude", "wanda"), sparsities=(0.3, 0.6),
                      calib_samples=4, seqlen=32)
    suite = FakeSuite([])
    with scratch_dir(tmp_path / "off") as scratch:
        runner = runner_for(cfg, tiny_lm_dir, suite, scratch, max_memory)
        levels = {lv.label: lv for lv in cfg.levels}
        order = [("magnitude", "0.3"), ("magnitude", "0.6"), ("magnitude", "0.3"), ("wanda", "0.6"), ("dense", None)]
        for method, label in order:
            runner.run(Point(method, levels.get(label), "ppl"))
        for (method, label), seen in zip(order, suite.seen):
            out = tiny_lm_dir if label is None else tmp_path / f"{method}-{label}"
            if label is not None and not out.exists():
                prune_checkpoint(str(tiny_lm_dir), out, cfg.prune_config(method, levels[label]))
            ref = Checkpoint(out)
            assert seen
            for name, w in seen.items():
                assert torch.equal(w.view(torch.uint8), ref.read(name).view(torch.uint8)), (method, label, name)


@pytest.mark.parametrize("max_memory", [None, {"cpu": 0}], ids=["in-memory", "disk-offloaded"])
def test_owl_levels_equal_prune_and_reuse_the_outlier_ratios(tiny_lm_dir, tmp_path, max_memory, monkeypatch):
    """An OWL curve's later levels reuse the ratios scored at its first level (no second scoring pass) and
    still equal `prune --allocation owl` byte for byte."""
    import llmprune.engine as engine
    import llmprune.prune as prune
    import llmprune.streaming as streaming

    cfg = SweepConfig(model="tiny", tasks=("ppl",), methods=("magnitude", "wanda"), sparsities=(0.3, 0.6),
                      allocations=("uniform", "owl"), owl_m=3.0, calib_samples=4, seqlen=32)
    assert [(p.curve, p.weights[1]) for p in plan(cfg)][-2:] == [("wanda+owl", "0.3"), ("wanda+owl", "0.6")]
    suite = FakeSuite([])
    levels = {lv.label: lv for lv in cfg.levels}
    order = [("wanda", "0.6"), ("magnitude", "0.3"), ("wanda", "0.3"), ("magnitude", "0.6")]
    with scratch_dir(tmp_path / "off") as scratch:
        runner = runner_for(cfg, tiny_lm_dir, suite, scratch, max_memory)
        records = [runner.run(Point(m, levels[label], "ppl", "owl")) for m, label in order[:2]]
        with monkeypatch.context() as m:
            m.setattr(engine, "dense_outlier_ratios", lambda *a, **k: pytest.fail("scored again"))
            m.setattr(streaming, "dense_outlier_ratios", lambda *a, **k: pytest.fail("scored again"))
            m.setattr(prune, "weight_allocation", lambda *a, **k: pytest.fail("scored again"))
            records += [runner.run(Point(m_, levels[label], "ppl", "owl")) for m_, label in order[2:]]
    assert [r["method"] for r in records] == ["wanda+owl", "magnitude+owl"] * 2
    for (method, label), seen in zip(order, suite.seen):
        out = tmp_path / f"{method}-owl-{label}"
        prune_checkpoint(str(tiny_lm_dir), out, cfg.prune_config(method, levels[label], "owl"))
        ref = Checkpoint(out)
        assert json.loads((out / "run.json").read_text())["allocation"]["allocation"] == "owl"
        for name, w in seen.items():
            assert torch.equal(w.view(torch.uint8), ref.read(name).view(torch.uint8)), (method, label, name)


def test_killed_sweep_resumes_without_recomputing(tiny_lm_dir, tmp_path):
    cfg = SweepConfig(model="tiny", tasks=("ppl",), sparsities=(0.0, 0.2, 0.4, 0.6, 0.8))
    first = []
    with pytest.raises(Crash):
        run_sweep(runner_for(cfg, tiny_lm_dir, FakeSuite(first, crash_after=3), tmp_path),
                  cfg, ResultsLog(tmp_path, cfg.identity()))
    assert len(first) == 3  # dense, 0.2, 0.4
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"kind": "point", "method": "magn')  # torn line from a kill mid-write
    second = []
    records = run_sweep(runner_for(cfg, tiny_lm_dir, FakeSuite(second), tmp_path), cfg, ResultsLog(tmp_path, cfg.identity()))
    assert len(second) == 2 and len(records) == 5  # only 0.6 and 0.8 computed
    _, again = read_results(tmp_path / "results.jsonl")
    assert [(r["level"], r["metrics"]["ppl"]) for r in again] == [(r["level"], r["metrics"]["ppl"]) for r in records]
    fresh = []
    run_sweep(runner_for(cfg, tiny_lm_dir, FakeSuite(fresh), tmp_path), cfg, ResultsLog(tmp_path / "fresh", cfg.identity()))
    assert sorted(first + second) == sorted(fresh)  # resumed == uninterrupted
    third = []
    run_sweep(runner_for(cfg, tiny_lm_dir, FakeSuite(third), tmp_path), cfg, ResultsLog(tmp_path, cfg.identity()))
    assert third == []
    assert [p.weights for p in plan(cfg)] == [("dense", "dense")] + [("magnitude", f"{s:g}") for s in (0.2, 0.4, 0.6, 0.8)]


def test_results_from_another_sweep_are_refused(tmp_path):
    cfg = SweepConfig(model="a", sparsities=(0.5,))
    ResultsLog(tmp_path, cfg.identity()).append({"method": "dense", "level": "dense", "task": "ppl"})
    assert not (tmp_path / "fresh").exists() and ResultsLog(tmp_path / "fresh", cfg.identity()).records == []
    assert not (tmp_path / "fresh").exists()  # nothing until the first point
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
