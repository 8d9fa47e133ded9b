"""Sweeps on Ray (`--executor ray`): the same scores as in process, resume after a kill, a failing point
survived, retries, and the error when Ray is missing. One local Ray runtime serves the module."""
import functools
import json
import os
import sys

import pytest
from click.testing import CliRunner

from llmprune.cli import main
from llmprune.errors import LlmpruneError
from llmprune.sweep.executor import LocalExecutor, RayExecutor, make_executor
from llmprune.sweep.remote import LoadAndRun, for_workers
from llmprune.sweep.results import ResultsLog, read_results
from llmprune.sweep.run import SweepConfig, run_sweep

from test_eval_mmlu import write_cais


def flaky(marker_dir, item):
    """A point function that kills its worker once, raises, or returns the item and its process id."""
    if item == "crash-once" and not (marker_dir / "crashed").exists():
        (marker_dir / "crashed").touch()
        os._exit(1)  # the worker process dies: Ray reports the task lost, the executor runs it again
    if item == "always":
        raise ValueError("fails every time")
    if item == "bad":
        raise LlmpruneError("bad input, the same every time")
    (marker_dir / f"ran-{item}-{os.getpid()}").touch()
    return item.upper()


def test_ray_executor_starts_a_runtime_retries_once_reports_errors_and_stops(tmp_path):
    import ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import the tests
    assert not ray.is_initialized()
    items = ["a", "crash-once", "always", "bad", "b"]
    seen = []
    with RayExecutor(cpus_per_point=1) as ex:
        outcomes = ex.run(functools.partial(flaky, tmp_path), items, seen.append)
        assert ray.is_initialized()  # started for the command
    assert not ray.is_initialized()  # and stopped with it
    assert [o.item for o in outcomes] == items  # the points' order, whatever order they finished in
    assert sorted(o.item for o in seen) == sorted(items)
    by = {o.item: o for o in outcomes}
    assert by["a"].value == "A" and by["b"].value == "B" and by["a"].attempts == 1
    assert by["crash-once"].ok and by["crash-once"].value == "CRASH-ONCE" and by["crash-once"].attempts == 2
    assert by["always"].error == "ValueError: fails every time" and by["always"].attempts == 2
    assert by["bad"].error == "LlmpruneError: bad input, the same every time" and by["bad"].attempts == 1
    local = LocalExecutor().run(functools.partial(flaky, tmp_path), ["a", "always", "bad", "b"])
    assert [(o.value, o.error, o.attempts) for o in local] == [
        ("A", None, 1), (None, "ValueError: fails every time", 2), (None, "LlmpruneError: bad input, the same every time", 1),
        ("B", None, 1)]


@pytest.fixture(scope="module")
def ray_runtime(tmp_path_factory):
    """One local Ray runtime (2 CPUs, no dashboard, a small object store) for the module's sweeps."""
    import ray

    with pytest.MonkeyPatch.context() as mp:  # workers inherit the environment at start
        mp.setenv("LLMPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 << 20, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cais(root / "q.jsonl")
    (root / "t.txt").write_text("Pruning removes weights from a network. " * 60)
    return root


def invoke(*args):
    return CliRunner().invoke(main, list(map(str, args)))


def sweep_args(model, data, out, *extra):
    return ["sweep", model, "--ppl-data", data / "t.txt", "--mmlu-data", data / "q.jsonl", "--limit", "1", "--seqlen", "64",
            "--ppl-windows", "2", "-o", out, *extra, "--json"]


def scores(out):
    return {(r["method"], r["level"], r["task"]): (r["actual_sparsity"], r["metrics"])
            for r in read_results(out / "results.jsonl")[1]}


def test_ray_sweep_gives_exactly_the_local_scores_in_the_grid_order(ray_runtime, tiny_lm_dir, data, tmp_path):
    grid = ["--task", "ppl", "--task", "mmlu", "--method", "magnitude", "--method", "wanda", "--sparsities", "0,0.5"]
    local = invoke(*sweep_args(tiny_lm_dir, data, tmp_path / "local", *grid))
    assert local.exit_code == 0, local.output
    remote = invoke(*sweep_args(tiny_lm_dir, data, tmp_path / "ray", *grid, "--executor", "ray", "--cpus-per-point", "1"))
    assert remote.exit_code == 0, remote.output
    assert scores(tmp_path / "ray") == scores(tmp_path / "local") and len(scores(tmp_path / "local")) == 6
    order = [(r["method"], r["level"], r["task"]) for r in read_results(tmp_path / "ray" / "results.jsonl")[1]]
    assert order == [(m, lv, t) for m, lv in [("dense", "dense"), ("magnitude", "0.5"), ("wanda", "0.5")]
                     for t in ("ppl", "mmlu")]
    loads = [r["seconds"]["load"] for r in read_results(tmp_path / "ray" / "results.jsonl")[1] if r["task"] == "ppl"]
    assert min(loads) == 0.0 < max(loads)  # 3 points on 2 CPU workers: a worker kept its model for a second point
    result = json.loads(remote.stdout)
    assert result["timings"]["executor"] == "ray" and result["failed"] == []
    assert result["knees"] == json.loads(local.stdout)["knees"]
    assert (tmp_path / "ray" / "sweep.png").exists() and ray_runtime.is_initialized()  # a runtime it did not start stays


def test_ray_workers_load_under_the_budget_and_score_owl_curves_as_in_process(ray_runtime, tiny_lm_dir, data, tmp_path):
    """Workers load under --max-memory (every weight on disk here) with their scratch under --offload-folder,
    and an OWL curve (whose outlier ratios a worker keeps between levels) scores as in process."""
    grid = ["--task", "ppl", "--method", "wanda", "--allocation", "owl", "--sparsities", "0,0.5,0.7",
            "--calib", data / "t.txt", "--calib-samples", "4", "--max-memory", "0"]
    local = invoke(*sweep_args(tiny_lm_dir, data, tmp_path / "local", *grid, "--offload-folder", tmp_path / "off-local"))
    assert local.exit_code == 0, local.output
    remote = invoke(*sweep_args(tiny_lm_dir, data, tmp_path / "ray", *grid, "--offload-folder", tmp_path / "off-ray",
                                "--executor", "ray", "--cpus-per-point", "2"))  # one worker: it keeps its model
    assert remote.exit_code == 0, remote.output
    assert scores(tmp_path / "ray") == scores(tmp_path / "local") and len(scores(tmp_path / "local")) == 3
    assert {k[0] for k in scores(tmp_path / "ray")} == {"dense", "wanda+owl"}
    assert any((tmp_path / "off-ray").iterdir())  # the worker's scratch folder, under --offload-folder


class Kill(BaseException):
    pass


def test_killed_ray_sweep_resumes_only_the_missing_points(ray_runtime, tiny_lm_dir, data, tmp_path):
    cfg = SweepConfig(model=str(tiny_lm_dir), tasks=("ppl",), sparsities=(0.0, 0.2, 0.4, 0.6, 0.8), seqlen=64,
                      ppl_windows=2, ppl_data=str(data / "t.txt"))
    out = tmp_path / "sweep"
    log = ResultsLog(out, cfg.identity(), header={"config": cfg.to_json()})

    def kill_after_two(record):
        if len(log.records) == 2:
            raise Kill()  # the driver dies with points still running

    with pytest.raises(Kill):
        run_sweep(LoadAndRun(for_workers(cfg), "cpu", threads=1), cfg, log, kill_after_two, RayExecutor())
    assert len(read_results(out / "results.jsonl")[1]) == 2
    with open(out / "results.jsonl", "a") as f:
        f.write('{"kind": "point", "method": "magn')  # and tore the line it was writing
    args = ["sweep", tiny_lm_dir, "--task", "ppl", "--sparsities", "0:0.8:0.2", "--ppl-data", data / "t.txt", "--seqlen",
            "64", "--ppl-windows", "2", "--no-plot", "--json"]
    resumed = invoke(*args, "-o", out, "--executor", "ray")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["timings"]["points_computed"] == 3
    fresh = invoke(*args, "-o", tmp_path / "fresh")
    assert fresh.exit_code == 0, fresh.output
    assert scores(out) == scores(tmp_path / "fresh") and len(scores(out)) == 5


def test_a_failing_point_is_reported_and_the_others_finish(ray_runtime, tiny_lm_dir, data, tmp_path):
    grid = ["--task", "ppl", "--pattern", "2:4", "--pattern", "3:5", "--pattern", "4:8"]  # 64 inputs: 5 does not divide
    for executor in ("local", "ray"):
        out = tmp_path / executor
        r = invoke(*sweep_args(tiny_lm_dir, data, out, *grid, "--executor", executor))
        assert r.exit_code == 1, r.output
        assert "1 point failed (magnitude 3:5: LlmpruneError: Cannot apply 3:5" in r.output
        assert "Rerun the same command to retry only the missing points" in r.output
        assert {k[1] for k in scores(out)} == {"dense", "2:4", "4:8"}
        summary = json.loads((out / "summary.json").read_text())
        assert [(f["level"], f["attempts"]) for f in summary["failed"]] == [("3:5", 1)]  # not retried: same every time
    assert scores(tmp_path / "ray") == scores(tmp_path / "local")


@pytest.mark.parametrize("args, message", [
    (["--executor", "ray", "--device", "cuda"], "--gpus-per-point 1 but the Ray cluster has 0 GPUs in all"),
    (["--executor", "ray", "--cpus-per-point", "3"], "--cpus-per-point 3 but the Ray cluster has 2 CPUs in all"),
])
def test_unschedulable_points_fail_before_any_runs(ray_runtime, tiny_lm_dir, data, tmp_path, args, message):
    r = invoke(*sweep_args(tiny_lm_dir, data, tmp_path / "out", "--sparsities", "0,0.5", *args))
    assert r.exit_code == 1 and message in r.output
    assert not (tmp_path / "out" / "results.jsonl").exists()  # nothing written: results appear with the first point


@pytest.mark.parametrize("args, message", [
    (["--ray-address", "auto"], "--ray-address applies to --executor ray only"),
    (["--executor", "slurm"], "Unknown executor 'slurm'. Available: local, ray"),
    (["--executor", "ray", "--gpus-per-point", "1"], "--gpus-per-point 1 with --device cpu: add --device cuda"),
    (["--executor", "ray", "--device", "cuda:1"], "use --device cuda; Ray gives each point its own GPUs"),
])
def test_bad_executor_flags_fail_before_loading(tmp_path, args, message):
    r = invoke("sweep", tmp_path / "no-such-model", "--sparsities", "0.5", "-o", tmp_path / "out", *args)
    assert r.exit_code == 1 and message in r.output and "Loading" not in r.output


def test_missing_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    with pytest.raises(LlmpruneError, match=r"needs Ray, an optional extra: pip install 'llmprune\[cluster\]'"):
        make_executor("ray")
    r = invoke("sweep", tmp_path / "no-such-model", "--sparsities", "0.5", "-o", tmp_path / "out", "--executor", "ray")
    assert r.exit_code == 1 and "pip install 'llmprune[cluster]'" in r.output and not (tmp_path / "out").exists()
