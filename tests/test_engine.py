"""The streaming engine: equals an in-memory run, runs on every decoder family of the table, and resumes after
a crash into byte-identical output (the sequential reference on every architecture: test_engine_parity.py)."""
import hashlib
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from llmprune.arch import Selector, arch_for
from llmprune.config import NMPattern, PruneConfig
from llmprune.engine import prune_model_calibrated_
from llmprune.streaming import prune_calibrated
from llmprune.errors import LlmpruneError
from llmprune.io import Checkpoint

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
CONFIGS = {
    "llama": dict(TINY),
    "mistral": dict(TINY),
    "qwen2": dict(TINY),
    "gemma": dict(TINY, head_dim=16),
    "opt": dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
                max_position_embeddings=128, word_embed_proj_dim=64),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=256, max_position_embeddings=128),
}


def tiny_checkpoint(tmp_path: Path, model_type="llama", seed=0, dtype=torch.float32) -> Path:
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    with torch.no_grad():  # spread the weight scales so the methods disagree
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.exp(torch.randn(p.shape[1]) * 0.5))
    out = tmp_path / f"{model_type}-src"
    model.save_pretrained(out, max_shard_size="100KB")
    return out


def calib_ids(n=6, seqlen=32, seed=0):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def stream(src, out, cfg, **kw):
    ckpt = Checkpoint(src)
    select = Selector(arch_for(ckpt.config), cfg.include, cfg.exclude)
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    prune_calibrated("tiny", src, ckpt, select, names, out, cfg, calib=calib_ids(), **kw)
    return Checkpoint(out), names


def state(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method,pattern", [("wanda", None), ("sparsegpt", None), ("sparsegpt", NMPattern(2, 4))])
def test_streamed_equals_in_memory(tmp_path, method, pattern):
    src = tiny_checkpoint(tmp_path)
    assert len(list(src.glob("*.safetensors"))) >= 2
    cfg = PruneConfig(method=method, sparsity=0.5, pattern=pattern, extra={"batch_size": 4})
    out, names = stream(src, tmp_path / "out", cfg)
    model, _ = state(src)
    prune_model_calibrated_(model, Selector(arch_for(model.config)), cfg, calib_ids())
    ref = model.state_dict()
    for name in out.names:
        assert torch.equal(out.read(name), ref[name]), name
    assert (tmp_path / "out" / "run.json").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("model_type", list(CONFIGS))
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_every_architecture(tmp_path, model_type, method):
    src = tiny_checkpoint(tmp_path, model_type)
    cfg = PruneConfig(method=method, pattern=NMPattern(2, 4))
    out, names = stream(src, tmp_path / "out", cfg)
    assert len(names) >= 8
    for name in names:
        w = out.read(name)
        assert ((w != 0).reshape(-1, 4).sum(dim=1) <= 2).all(), name
    ref = Checkpoint(src)
    for name in set(ref.names) - set(names):  # everything else untouched
        assert torch.equal(out.read(name), ref.read(name)), name
    # the same as pruning the loaded model in memory (so the skeleton's rotary tables, masks etc. were right)
    model, _ = state(src)
    prune_model_calibrated_(model, Selector(arch_for(model.config)), cfg, calib_ids())
    mem = model.state_dict()
    for name in names:
        assert torch.allclose(out.read(name), mem[name], atol=1e-6), name
    assert torch.isfinite(model(calib_ids(2, 16)).logits).all()


def digest(path: Path) -> dict:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.name != "run.json"}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_resume_after_crash_is_byte_identical(tmp_path, method):
    src = tiny_checkpoint(tmp_path)
    cfg = PruneConfig(method=method, sparsity=0.5, extra={"batch_size": 4})
    stream(src, tmp_path / "clean", cfg)

    class Killed(Exception):
        pass

    def kill_after_0(i):
        if i == 0:
            raise Killed

    with pytest.raises(Killed):
        stream(src, tmp_path / "out", cfg, on_layer=kill_after_0)
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "out.partial" / "engine" / "progress.json").exists()
    seen = []
    stream(src, tmp_path / "out", cfg, on_layer=seen.append)
    assert seen == [1]  # layer 0 was not redone
    assert digest(tmp_path / "out") == digest(tmp_path / "clean")


class CharTokenizer:
    """A stand-in tokenizer: one id per character."""

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": [ord(c) % 256 for c in text]}


def test_calibration_batch_is_seeded_windows():
    from llmprune.calib import calibration_batch, describe_batch

    text = "".join(chr(97 + (i * 7) % 26) for i in range(5000))
    a = calibration_batch(CharTokenizer(), text, 16, 64, seed=1)
    b = calibration_batch(CharTokenizer(), text, 16, 64, seed=1)
    c = calibration_batch(CharTokenizer(), text, 16, 64, seed=2)
    assert a.shape == (16, 64) and a.dtype == torch.long
    assert torch.equal(a, b) and not torch.equal(a, c)
    ids = torch.tensor([ord(ch) for ch in text])
    for row in a:  # every sample is a window of the token stream
        start = int(torch.nonzero((ids.unfold(0, 64, 1) == row).all(dim=1))[0])
        assert torch.equal(ids[start:start + 64], row)
    assert describe_batch(a, 1) == describe_batch(b, 1) != describe_batch(c, 2)


def test_calibration_text_too_short():
    from llmprune.calib import calibration_batch
    from llmprune.errors import LlmpruneError

    with pytest.raises(LlmpruneError, match="fewer than one window"):
        calibration_batch(CharTokenizer(), "short text", 4, 64, seed=0)


def test_global_scope_rejected(tmp_path):
    from llmprune.errors import LlmpruneError

    cfg = PruneConfig(method="wanda", sparsity=0.5)
    object.__setattr__(cfg, "scope", "global")
    with pytest.raises(LlmpruneError, match="within a layer"):
        stream(tiny_checkpoint(tmp_path), tmp_path / "out", cfg)


def test_resume_after_crash_in_the_last_step(tmp_path):
    """Killed after the last layer (while assembling): the rerun only assembles."""
    src = tiny_checkpoint(tmp_path)
    cfg = PruneConfig(method="wanda", sparsity=0.5, extra={"batch_size": 4})
    stream(src, tmp_path / "clean", cfg)

    def kill_after_1(i):
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stream(src, tmp_path / "out", cfg, on_layer=kill_after_1)
    seen = []
    stream(src, tmp_path / "out", cfg, on_layer=seen.append)
    assert seen == []
    assert digest(tmp_path / "out") == digest(tmp_path / "clean")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tmp_path):
    src = tiny_checkpoint(tmp_path)
    outs = {}
    for device in ("cpu", "cuda"):
        cfg = PruneConfig(method="sparsegpt", pattern=NMPattern(2, 4), extra={"device": device, "batch_size": 4})
        outs[device], names = stream(src, tmp_path / device, cfg)
    for name in names:
        a, b = outs["cpu"].read(name), outs["cuda"].read(name)
        assert (a.eq(0) == b.eq(0)).float().mean() > 0.99, name
        assert torch.allclose(a, b, atol=1e-3), name


def test_activations_on_disk_equal_in_memory_and_resume(tmp_path):
    """Activations in a memory-mapped file give the same bytes; a run killed after layer 0 (activations not
    saved, recomputed from the finished layers on resume, here with another thread count) too."""
    src = tiny_checkpoint(tmp_path)
    cfg = PruneConfig(method="sparsegpt", sparsity=0.5, extra={"batch_size": 4})
    on_disk = PruneConfig(method="sparsegpt", sparsity=0.5, extra={"batch_size": 4, "activations": "disk"})
    stream(src, tmp_path / "memory", cfg)
    stream(src, tmp_path / "disk", on_disk)
    assert digest(tmp_path / "disk") == digest(tmp_path / "memory")

    def kill_after_0(i):
        if i == 0:
            raise KeyboardInterrupt

    threads = torch.get_num_threads()
    with pytest.raises(KeyboardInterrupt):
        stream(src, tmp_path / "out", on_disk, on_layer=kill_after_0)
    assert not list((tmp_path / "out.partial" / "engine").glob("acts-*"))  # no activations written per layer
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        seen = []
        stream(src, tmp_path / "out", cfg, on_layer=seen.append)
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]
    assert digest(tmp_path / "out") == digest(tmp_path / "memory")


def test_unknown_activations_placement(tmp_path):
    from llmprune.errors import LlmpruneError

    cfg = PruneConfig(method="wanda", sparsity=0.5, extra={"activations": "gpu"})
    with pytest.raises(LlmpruneError, match="Available: auto, memory, disk"):
        stream(tiny_checkpoint(tmp_path), tmp_path / "out", cfg)


def test_capture_maps_weights_and_reads_copies_otherwise(tmp_path):
    """Modules outside the layers are mapped for the capture (only touched pages resident): the values equal
    a plain read, writes stay private to the process, and a shard cut short falls back to `read`'s error."""
    src = tiny_checkpoint(tmp_path)
    ckpt = Checkpoint(src)
    name = "model.embed_tokens.weight"
    mapped = ckpt.read_mapped(name)
    assert torch.equal(mapped, ckpt.read(name))
    mapped.zero_()
    assert not torch.equal(Checkpoint(src).read(name), mapped)  # (the file is untouched)
    info = ckpt.infos[name]
    with open(info.file, "r+b") as f:
        f.truncate(info.end - 8)
    with pytest.raises(LlmpruneError, match="Truncated"):  # (cut after the checkpoint was opened)
        ckpt.read_mapped(name)
