"""Streaming magnitude pruning on tiny models of every architecture, and the output directory contract."""
import json

import pytest
import torch
import transformers
from click.testing import CliRunner
from safetensors import safe_open

from llmprune.arch import Selector, arch_for
from llmprune.cli import main
from llmprune.config import PruneConfig, parse_pattern
from llmprune.io import Checkpoint
from llmprune.models import auto_class
from llmprune.prune import prune_checkpoint, prune_model_
from tiny import CONFIGS, save_tiny, tiny_model


def prunable(model):
    select = Selector(arch_for(model.config))
    return {n: p.detach() for n, p in model.named_parameters() if select(n, tuple(p.shape))}


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_prune_every_architecture(tmp_path, arch):
    src = save_tiny(arch, tmp_path / "src")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prune", str(src), "--sparsity", "0.5", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    pruned = auto_class(record and json.loads((out / "config.json").read_text())).from_pretrained(out)
    weights = prunable(pruned)
    n = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == round(0.5 * n) == record["sparsity"]["global"]["zeros"]
    # nothing outside the prunable set changed
    original = tiny_model(arch)
    for name, p in original.state_dict().items():
        if name not in weights:
            assert torch.equal(p, pruned.state_dict()[name]), name
    assert any(k.startswith(("attn.", "mlp.")) for k in record["sparsity"]["by_type"])
    assert (out / "run.json").exists() and not (tmp_path / "out.partial").exists()


def test_pruned_llama_generates_and_keeps_metadata(tmp_path):
    src = save_tiny("llama", tmp_path / "src", dtype=torch.bfloat16, max_shard_size="100KB")
    assert len(list(src.glob("*.safetensors"))) > 1
    prune_checkpoint(str(src), tmp_path / "out", PruneConfig(sparsity=0.3, scope="layer"))
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.bfloat16
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 7)
    shard = sorted((tmp_path / "out").glob("*.safetensors"))[0]
    with safe_open(shard, "pt") as f:
        meta = f.metadata()
    assert meta["method"] == "magnitude" and meta["scope"] == "layer" and meta["llmprune_version"]
    for name, w in prunable(model).items():  # layer scope: the same fraction in every matrix
        assert int((w == 0).sum()) == round(0.3 * w.numel()), name


@pytest.mark.parametrize("cfg", [
    PruneConfig(sparsity=0.6), PruneConfig(sparsity=0.4, scope="row"), PruneConfig(pattern=parse_pattern("2:4")),
])
def test_streaming_equals_in_memory(tmp_path, cfg):
    src = save_tiny("qwen2", tmp_path / "src", dtype=torch.float16, max_shard_size="150KB")
    prune_checkpoint(str(src), tmp_path / "out", cfg)
    model = tiny_model("qwen2", dtype=torch.float16)
    summary = prune_model_(model, cfg)
    ckpt = Checkpoint(tmp_path / "out")
    for name, p in model.state_dict().items():
        if name in ckpt.infos:
            assert torch.equal(ckpt.read(name), p), name
    assert summary["global"]["sparsity"] == pytest.approx(cfg.target_sparsity, abs=0.01)


def test_streamed_global_masks_nested(tmp_path):
    src = save_tiny("llama", tmp_path / "src", dtype=torch.bfloat16)
    kept = []
    for s in (0.3, 0.5, 0.7):
        prune_checkpoint(str(src), tmp_path / f"o{s}", PruneConfig(sparsity=s))
        ckpt = Checkpoint(tmp_path / f"o{s}")
        kept.append({n: ckpt.read(n) != 0 for n in ckpt.names if "layers" in n and ckpt.info(n).shape.__len__() == 2})
    for low, high in zip(kept, kept[1:]):
        for n in low:
            assert not (high[n] & ~low[n]).any()


def test_bin_checkpoint_is_read_and_written_as_safetensors(tmp_path):
    model = tiny_model("opt")
    model.save_pretrained(tmp_path / "src", safe_serialization=False) if "safe_serialization" in \
        model.save_pretrained.__code__.co_varnames else None
    src = tmp_path / "src"
    if not list(src.glob("*.bin")):  # transformers 5 always writes safetensors: write an old-style .bin by hand
        src.mkdir(exist_ok=True)
        for f in src.glob("*.safetensors"):
            f.unlink()
        torch.save(model.state_dict(), src / "pytorch_model.bin")
        model.config.save_pretrained(src)
    prune_checkpoint(str(src), tmp_path / "out", PruneConfig(sparsity=0.5))
    assert (tmp_path / "out" / "model.safetensors").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    w = prunable(reloaded)
    assert sum(int((t == 0).sum()) for t in w.values()) == round(0.5 * sum(t.numel() for t in w.values()))


def test_already_zero_weights_count_as_pruned(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:, :32] = 0
    model.save_pretrained(tmp_path / "src")
    rec = prune_checkpoint(str(tmp_path / "src"), tmp_path / "out", PruneConfig(sparsity=0.1))
    assert rec["sparsity"]["global"]["zeros_before"] == 128 * 32  # up_proj is (128, 64)
    assert rec["sparsity"]["global"]["zeros"] == round(0.1 * rec["sparsity"]["global"]["params"])


def test_include_exclude(tmp_path):
    src = save_tiny("llama", tmp_path / "src")
    rec = prune_checkpoint(str(src), tmp_path / "out", PruneConfig(sparsity=0.5, exclude=(r"self_attn",)))
    assert set(rec["sparsity"]["by_type"]) == {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    rec = prune_checkpoint(str(src), tmp_path / "out2", PruneConfig(sparsity=0.5, include=(r"lm_head",)))
    assert list(rec["sparsity"]["tensors"]) == ["lm_head.weight"] or rec["sparsity"]["global"]["params"] > 0


def test_read_ahead_returns_the_same_tensors_in_any_order(tmp_path):
    from llmprune.io import ReadAhead

    src = save_tiny("llama", tmp_path / "src", max_shard_size="100KB")
    ckpt = Checkpoint(src)
    names = ckpt.names
    read = ReadAhead(ckpt, names)
    for name in names + names[::3] + names:  # in order, out of order, in order again
        assert torch.equal(read(name).clone(), ckpt.read(name)), name
