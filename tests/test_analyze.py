"""`llmprune analyze`: the pure statistics on hand-made tensors, the streamed analyses on tiny models, the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from llmprune.analyze import (Tally, analyze_checkpoints, analyze_weights, find_checkpoints, log_edges,
                              magnitude_histogram, roll_up, step_of, tally)
from llmprune.analyze.stats import count_near_zero, normalised
from llmprune.cli import main
from llmprune.config import PruneConfig
from llmprune.prune import prune_checkpoint
from tiny import save_tiny

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- pure statistics ---------------------------------------------------------------------------------------

def test_log_edges():
    assert torch.allclose(log_edges(1e-2, 1.0, per_decade=1), torch.tensor([1e-2, 1e-1, 1.0], dtype=torch.float64))
    assert len(log_edges(1e-6, 10.0, per_decade=10)) == 71
    with pytest.raises(ValueError):
        log_edges(0.0, 1.0)


def test_magnitude_histogram_hand_computed():
    w = torch.tensor([[0.0, -0.005, 0.01, 0.05], [-0.5, 1.0, 3.0, 0.1]])
    edges = torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64)
    # below 0.01 | [0.01, 0.1) | [0.1, 1) | >= 1
    assert magnitude_histogram(w, edges).tolist() == [2, 2, 2, 2]
    assert magnitude_histogram(w.bfloat16(), edges).sum() == 8
    assert normalised(torch.tensor([1, 3])).tolist() == [0.25, 0.75]


def test_tally_and_roll_up():
    w = torch.tensor([[0.0, 0.001, -0.002, 0.5], [0.0, 2.0, -0.01, 0.02]])
    keep = w.abs() > 0.005
    t = tally(w, (1e-3, 1e-2), keep)
    assert (t.params, t.zeros, t.removed) == (8, 2, 4)
    assert t.near_zero == {1e-3: 3, 1e-2: 5}  # |w| <= eps, zeros included
    assert count_near_zero(w, 0.0) == 2
    a = (0, "attn.q_proj", tally(torch.zeros(2, 2), (1e-3,)))
    b = (1, "attn.q_proj", tally(torch.ones(2, 3), (1e-3,)))
    c = (1, "mlp.up_proj", tally(torch.tensor([[0.0, 1.0]]), (1e-3,)))
    r = roll_up({"a": a, "b": b, "c": c})
    assert (r["global"].params, r["global"].zeros) == (12, 5)
    assert r["by_type"]["attn.q_proj"].params == 10 and r["by_type"]["attn.q_proj"].zeros == 4
    assert list(r["by_layer"]) == [0, 1] and r["by_layer"][1].zeros == 1
    assert r["by_layer_type"][1]["mlp.up_proj"].near_zero == {1e-3: 1}
    j = Tally().add(a[2]).to_json()
    assert j["zero_share"] == 1.0 and j["near_zero_share"] == {"0.001": 1.0}


def test_step_of():
    assert step_of("runs/checkpoint-500") == 500
    assert step_of("step_20") == 20 and step_of("ckpt7") == 7
    assert step_of("final") is None and step_of("model-v2") is None


# --- streamed analyses -------------------------------------------------------------------------------------

def test_omp_location_equals_prune(tmp_path):
    """The removal analyse reports is exactly what `prune --sparsity 0.5` zeroes, per module type."""
    src = save_tiny("llama", tmp_path / "src")
    result = analyze_weights(str(src), sparsity=0.5, eps=1e-3)
    record = prune_checkpoint(str(src), tmp_path / "out", PruneConfig(sparsity=0.5))
    for t, row in record["sparsity"]["by_type"].items():
        assert result["by_type"][t]["omp_removed"] == row["zeros"] - row.get("zeros_before", 0), t
    g = result["global"]
    assert g["omp_removed"] == round(0.5 * g["params"])
    assert sum(g["hist"]) == g["params"]
    assert result["by_layer"].keys() == {"0", "1"}
    # the pruned copy: half its prunable weights are exact zeros, all in the underflow bin
    pruned = analyze_weights(str(tmp_path / "out"), sparsity=0.5)
    assert pruned["global"]["zeros"] == g["omp_removed"] and pruned["global"]["hist"][0] >= g["omp_removed"]
    assert result["omp_threshold"] > 0 and pruned["omp_threshold"] == 0.0  # 50% OMP of a 50%-pruned model: its zeros


def _series(root, steps_zero):
    """checkpoint-<step> folders of one tiny llama with a growing number of weights set to zero."""
    src = save_tiny("llama", root / "src")
    from safetensors.torch import load_file
    state = load_file(src / "model.safetensors")
    for step, frac in steps_zero.items():
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "config.json").write_text((src / "config.json").read_text())
        w = {k: v.clone() for k, v in state.items()}
        for k, v in w.items():
            if k.endswith("proj.weight"):
                v.view(-1)[: int(frac * v.numel())] = 0
        save_file(w, d / "model.safetensors")
    return root


def test_checkpoints_in_step_order(tmp_path):
    root = _series(tmp_path / "run", {100: 0.5, 2: 0.0, 10: 0.25})
    assert [s for s, _ in find_checkpoints([root])] == [2, 10, 100]  # numeric, not lexical
    res = analyze_checkpoints([root], eps=(1e-3,))
    shares = [c["global"]["zero_share"] for c in res["checkpoints"]]
    assert shares[0] == 0.0 and 0.24 < shares[1] < 0.26 and 0.49 < shares[2] < 0.51
    assert res["steps_known"] and res["eps"] == [1e-3]
    assert all(c["global"]["near_zero"]["0.001"] >= c["global"]["zeros"] for c in res["checkpoints"])


def test_cli_weights_one_and_two_models(tmp_path):
    a = save_tiny("llama", tmp_path / "a")
    prune_checkpoint(str(a), tmp_path / "b", PruneConfig(sparsity=0.5))
    out = tmp_path / "ana"
    r = run("analyze", "weights", a, tmp_path / "b", "-o", out, "--sparsity", "0.3", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert {"hist_png", "omp_png", "json", "by_type", "by_layer", "hist"} <= set(data["outputs"])
    for name in ("magnitude_hist.png", "omp_location.png", "weights.json", "by_type.csv", "by_layer.csv", "histograms.csv"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "weights.json").read_text())
    assert len(saved) == 2 and saved[1]["global"]["zero_share"] == pytest.approx(0.5, abs=1e-3)
    header = (out / "by_type.csv").read_text().splitlines()[0]
    assert header.startswith("model,layer,type,params,zeros")
    # an existing output needs --overwrite; three models are refused
    r = run("analyze", "weights", a, "-o", out)
    assert r.exit_code == 1 and "--overwrite" in r.output
    r = run("analyze", "weights", a, a, a, "-o", tmp_path / "x")
    assert r.exit_code == 1 and "one model or two" in r.output
    r = run("analyze", "weights", a, "-o", tmp_path / "y", "--sparsity", "1.5")
    assert r.exit_code == 1 and "[0, 1)" in r.output


def test_cli_checkpoints(tmp_path):
    root = _series(tmp_path / "run", {0: 0.0, 50: 0.1})
    out = tmp_path / "sp"
    r = run("analyze", "checkpoints", root, "-o", out, "--eps", "1e-2", "--eps", "1e-3")
    assert r.exit_code == 0, r.output
    assert (out / "sparsification.png").stat().st_size > 0
    rows = (out / "checkpoints.csv").read_text().splitlines()
    assert rows[0] == ("step,path,type,params,zeros,zero_share,near_zero_0.001,near_zero_0.01,"
                       "near_zero_share_0.001,near_zero_share_0.01")
    assert rows[1].startswith("0,") and any(r.startswith("50,") for r in rows)
    r = run("analyze", "checkpoints", tmp_path / "missing", "-o", tmp_path / "z")
    assert r.exit_code == 1 and "not a directory" in r.output
    (tmp_path / "empty").mkdir()
    r = run("analyze", "checkpoints", tmp_path / "empty", "-o", tmp_path / "z")
    assert r.exit_code == 1 and "checkpoint-<step>" in r.output
