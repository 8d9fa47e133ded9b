"""`prune --format sparse` and `convert` on tiny models of every architecture: exact round trips, real savings."""
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.cli import main
from llmprune.io import Checkpoint
from llmprune.models import load_model
from tiny import CONFIGS, save_tiny


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("arch", list(CONFIGS))
@pytest.mark.parametrize("prune_args", [("--sparsity", "0.5"), ("--pattern", "2:4"), ("--pattern", "4:8")])
def test_sparse_format_round_trips_on_every_architecture(tmp_path, arch, prune_args):
    dtype = {"llama": torch.bfloat16, "opt": torch.float16}.get(arch, torch.float32)
    src = save_tiny(arch, tmp_path / "src", dtype=dtype)
    run("prune", src, *prune_args, "-o", tmp_path / "dense")
    run("prune", src, *prune_args, "-o", tmp_path / "sparse", "--format", "sparse")
    run("convert", tmp_path / "sparse", "--format", "dense", "-o", tmp_path / "back")
    run("convert", tmp_path / "dense", "--format", "sparse", "-o", tmp_path / "packed")
    dense = Checkpoint(tmp_path / "dense")
    for other in ("sparse", "back", "packed"):
        ck = Checkpoint(tmp_path / other)
        assert sorted(ck.names) == sorted(dense.names)
        for name in dense.names:
            a, b = dense.read(name), ck.read(name)
            assert a.dtype == b.dtype and torch.equal(a.view(torch.uint8) if a.dtype != torch.bool else a,
                                                      b.view(torch.uint8) if b.dtype != torch.bool else b), (other, name)
    cfg = json.loads((tmp_path / "sparse" / "config.json").read_text())["sparsity_config"]
    assert cfg["format"] == "llmprune-bitmask" and cfg["modules"]
    assert "sparsity_config" not in json.loads((tmp_path / "back" / "config.json").read_text())
    model, _ = load_model(tmp_path / "sparse")  # every llmprune command reads the compact format
    for name, p in model.state_dict().items():
        if name in dense.infos:
            assert torch.equal(p, dense.read(name)), name
    info = json.loads(run("inspect", tmp_path / "sparse", "--json"))
    assert info["global"]["zeros"] == json.loads(run("inspect", tmp_path / "dense", "--json"))["global"]["zeros"]


def test_sparse_format_is_smaller(tmp_path):
    import transformers

    config = transformers.LlamaConfig(hidden_size=512, intermediate_size=1024, num_hidden_layers=2,
                                      num_attention_heads=8, vocab_size=256)
    src = tmp_path / "src"
    transformers.LlamaForCausalLM(config).half().save_pretrained(src)  # rows long enough for real ratios
    rec = json.loads(run("prune", src, "--sparsity", "0.5", "--scope", "layer", "-o", tmp_path / "s", "--format", "sparse", "--json"))
    prunable = [n for n in Checkpoint(src).names if "layers" in n and "norm" not in n]
    packed = Checkpoint(tmp_path / "s")
    dense_bytes = sum(packed.info(n).nbytes for n in prunable)  # values dtype and dense shape: the dense size
    packed_bytes = sum(packed.raw[f"{n}.{s}"].nbytes for n in prunable for s in ("values", "bitmask", "row_offsets", "shape"))
    assert packed_bytes / dense_bytes <= 0.57
    assert rec["size_ratio"] < 1.0
