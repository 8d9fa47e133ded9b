"""`llmprune prune --method wanda|sparsegpt` end to end through the CLI on tiny models with a real tokenizer."""
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.cli import main
from llmprune.io import Checkpoint
from llmprune.methods.masks import satisfies_nm
from tiny import save_tiny_lm


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("shape", [("--sparsity", "0.5"), ("--pattern", "2:4")])
@pytest.mark.parametrize("fmt", ["dense", "sparse"])
def test_prune_calibrated_cli(tmp_path, method, shape, fmt):
    src = save_tiny_lm("llama", tmp_path / "src", max_shard_size="150KB")
    args = ["prune", str(src), "--method", method, *shape, "--calib-samples", "4", "--seqlen", "64",
            "-o", str(tmp_path / "out"), "--json", "--format", fmt]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["calibration"]["samples"] == 4 and rec["calibration"]["seqlen"] == 64
    assert rec["sparsity"]["global"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    ckpt = Checkpoint(tmp_path / "out")
    layer_weights = [n for n in ckpt.names if ".layers." in n and len(ckpt.info(n).shape) == 2]
    for n in layer_weights:
        w = ckpt.read(n)
        assert torch.isfinite(w).all()
        if shape[0] == "--pattern":
            assert satisfies_nm(w, 2, 4), n
    assert not (tmp_path / "out.partial").exists()


def test_calibrated_run_reports_weights_that_were_already_zero(tmp_path):
    from tiny import byte_tokenizer, tiny_model

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[:, :8] = 0  # (64, 128): 512 zeros before pruning
    model.save_pretrained(tmp_path / "src")
    byte_tokenizer().save_pretrained(tmp_path / "src")
    r = CliRunner().invoke(main, ["prune", str(tmp_path / "src"), "--method", "wanda", "--sparsity", "0.5",
                                  "--calib-samples", "2", "--seqlen", "32", "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["sparsity"]["global"]["zeros_before"] == 64 * 8
