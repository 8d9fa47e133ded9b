"""examples/gpu_check.py: its quick CPU-vs-CPU run passes every row it can run here (the bitsandbytes rows
skip with the CLI's own error), a broken check is recorded without stopping the others, the time budget
skips with a reason, and the comparison helpers count what they should."""
import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import gpu_check  # noqa: E402
from gpu_check_lib import CliFailed, compare_pruned, invoke, sparse_kernel_count, weight_diff  # noqa: E402

NAMES = ["matmul 2:4 fp16", "matmul 2:4 bf16", "prefill 2:4 7b fp16", "prune wanda 50%", "eval fp32 cpu",
         "eval --device cpu", "eval --device auto", "eval --load-in-8bit", "eval --load-in-4bit", "eval 2:4 fp32 cpu",
         "eval 2:4 bf16 cpu", "eval 2:4 bf16 cpu --sparse-kernels", "prune sparsegpt 50%", "prune wanda 2:4",
         "prune sparsegpt 2:4"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run on the CPU (tiny models from configs), as the default suite can afford."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    threads = torch.get_num_threads()
    try:
        code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp / "report.json"), "--work", str(tmp / "work")])
    finally:
        torch.set_num_threads(threads)  # the quick run uses one thread; leave the session as it was
    return code, json.loads((tmp / "report.json").read_text()), tmp


def test_quick_run_passes_every_row_it_can_run(quick, capsys):
    code, report, _ = quick
    rows = {r["name"]: r for r in report["rows"]}
    assert code == 0 and report["passed"] and report["finished"]
    assert list(rows) == NAMES
    skipped = {n for n, r in rows.items() if r["status"] == "skip"}
    if not torch.cuda.is_available():
        assert skipped == {"eval --load-in-8bit", "eval --load-in-4bit"}
        assert all("needs a CUDA GPU" in rows[n]["reason"] for n in skipped)
    assert all(r["status"] == "pass" for n, r in rows.items() if n not in skipped), rows
    assert report["counts"] == {"pass": len(NAMES) - len(skipped), "fail": 0, "error": 0, "skip": len(skipped)}


def test_quick_prune_on_cpu_twice_is_identical(quick):
    rows = {r["name"]: r for r in quick[1]["rows"]}
    for name in ("prune wanda 50%", "prune sparsegpt 50%", "prune wanda 2:4", "prune sparsegpt 2:4"):
        r = rows[name]
        assert r["ran_on"] == "cpu" and r["tensors"] == 14 and r["sparsity"] == pytest.approx(0.5, abs=0.01)
        assert r["mask_mismatch"] == 0 and r["max_rel_err"] == 0.0, name  # same device, same arithmetic


def test_quick_kernels_and_eval_figures(quick):
    rows = {r["name"]: r for r in quick[1]["rows"]}
    for name in ("matmul 2:4 fp16", "matmul 2:4 bf16"):
        assert all(s["swapped"] for s in rows[name]["shapes"]) and len(rows[name]["shapes"]) == 3
    assert rows["prefill 2:4 7b fp16"]["swapped"] == 14  # every decoder linear on the CPU sparse kernels
    ref = rows["eval fp32 cpu"]
    assert rows["eval --device cpu"]["ppl"] == ref["ppl"] and rows["eval --device cpu"]["ppl_rel_diff"] == 0
    assert rows["eval --device auto"]["devices"] == ["cpu"]
    sparse = rows["eval 2:4 bf16 cpu --sparse-kernels"]
    assert sparse["swapped"] > 0 and sparse["ppl_rel_diff"] <= 0.01 and "CPU sparse kernels" in sparse["sparse_kernels"]
    assert rows["eval 2:4 fp32 cpu"]["ppl"] != ref["ppl"]  # the 2:4 model really is another model


def test_table_lists_every_row(quick, capsys):
    from gpu_check_lib import table

    text = table(quick[1])
    assert "| prune sparsegpt 2:4 | pass |" in text and "| eval --load-in-4bit | skip" in text
    assert text.count("\n| ") == len(NAMES) + 1  # header + one line per row


def test_a_broken_check_is_recorded_and_the_next_still_runs(tmp_path):
    args = gpu_check.parse_args(["--device", "cpu", "--quick", "--out", str(tmp_path / "r.json")])
    run = gpu_check.Run(args)

    def broken():
        raise RuntimeError("kernel exploded\nsecond line")

    bad = gpu_check.run_check(run, "broken", 0, broken)
    good = gpu_check.run_check(run, "fine", 0, lambda: {"passed": True, "summary": "ok"})
    assert bad["status"] == "error" and bad["error"] == "RuntimeError: kernel exploded"
    assert good["status"] == "pass" and good["summary"] == "ok" and good["gpu_peak_mib"] is None
    run.rows += [bad, good]
    report = gpu_check.write_report(run, {"device": "cpu"}, done=True)
    assert not report["passed"] and report["counts"]["error"] == 1
    assert json.loads((tmp_path / "r.json").read_text())["rows"][1]["name"] == "fine"
    assert not (tmp_path / "r.json.partial").exists()


def test_budget_skips_with_a_reason(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = gpu_check.main(["--device", "cpu", "--quick", "--budget", "0", "--only", "matmul,prefill", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and [r["name"] for r in report["rows"]] == ["matmul 2:4 fp16", "matmul 2:4 bf16", "prefill 2:4 7b fp16"]
    assert all(r["status"] == "skip" and r["reason"].startswith("time budget") for r in report["rows"])
    assert "| matmul 2:4 fp16 | skip | time budget" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    assert "--device cpu --quick" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.gpu
def test_quick_run_on_cuda(tmp_path):
    """Every CUDA path at tiny sizes against the CPU (the full-size figures come from the script itself)."""
    out = tmp_path / "r.json"
    code = gpu_check.main(["--device", "cuda", "--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert code == 0, [r for r in rows if r["status"] not in ("pass", "skip")]
    assert all(r["gpu_peak_mib"] is not None for r in rows if r["status"] != "skip")


def test_weight_diff_counts_flipped_masks():
    ref = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0]])
    other = torch.tensor([[1.0, 5.0, 0.0, 0.0], [0.0, 3.0, 0.0, 4.0]])  # two weights flipped
    mismatch, rel, zeros = weight_diff(ref, other)
    assert (mismatch, zeros) == (2, 4)
    assert rel == pytest.approx(((5**2 + 2**2) / (1 + 4 + 9 + 16)) ** 0.5)
    assert weight_diff(ref, ref.clone()) == (0, 0.0, 4)


def test_compare_pruned_checkpoints(tmp_path):
    from safetensors.torch import save_file

    a = {"model.layers.0.mlp.up_proj.weight": torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
         "model.embed_tokens.weight": torch.ones(3, 2)}
    b = {**a, "model.layers.0.mlp.up_proj.weight": torch.tensor([[1.0, 0.0], [2.0, 0.0]])}
    for name, tensors in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        save_file(tensors, tmp_path / name / "model.safetensors")
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "llama"}))
    diff = compare_pruned(tmp_path / "a", tmp_path / "b")
    assert diff["tensors"] == 1 and diff["weights"] == 4 and diff["mask_mismatch"] == 2
    assert diff["mask_mismatch_frac"] == 0.5 > gpu_check.TOL["mask_mismatch_frac"]


def test_notice_parsing_and_cli_errors(tmp_path):
    assert sparse_kernel_count("14 linears on 2:4 semi-structured kernels") == 14
    assert sparse_kernel_count("3 linears on llmprune's CPU sparse kernels") == 3
    assert sparse_kernel_count("2:4 semi-structured kernels need a CUDA GPU: running dense") == 0
    with pytest.raises(CliFailed, match="not found"):
        invoke(["inspect", str(tmp_path / "missing")])
