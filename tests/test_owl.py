"""OWL layer-wise sparsity: the pure maths on hand-computed values, then magnitude, Wanda and SparseGPT with
`allocation="owl"` streamed and in memory (equal), the dense first pass against a hook-based reference,
resuming, the CLI and a sweep comparing allocations."""
import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM

from llmprune.allocation import Allocation
from llmprune.arch import Selector, arch_for
from llmprune.config import PruneConfig, parse_pattern
from llmprune.engine import prune_model_calibrated_
from llmprune.streaming import prune_calibrated
from llmprune.errors import LlmpruneError
from llmprune.io import Checkpoint
from llmprune.methods.owl import outlier_ratio, outlier_score, owl_sparsities
from llmprune.prune import prune_checkpoint, prune_model_


# -- the maths --------------------------------------------------------------------------------------------

def test_sparsities_equal_sizes():
    # d = 2 * 0.1 * (r - 0.1) / 0.2 = [0, 0.2, 0.1]; mean 0.1; s = 0.5 + 0.1 - d
    assert owl_sparsities([0.1, 0.3, 0.2], [1, 1, 1], 0.5, 0.1) == pytest.approx([0.6, 0.4, 0.5])


def test_sparsities_weighted_by_size():
    # d = [0, 0.2, 0.1]; size-weighted mean (0 + 0.4 + 0.1) / 4 = 0.125; s = 0.625 - d
    s = owl_sparsities([0.0, 1.0, 0.5], [1, 2, 1], 0.5, 0.1)
    assert s == pytest.approx([0.625, 0.425, 0.525])
    assert (s[0] * 1 + s[1] * 2 + s[2] * 1) / 4 == pytest.approx(0.5, abs=1e-15)


def test_sparsities_clipped_and_rebalanced():
    # s = [1.05, 0.85] -> [0.99, 0.85]; 0.06 too few pruned goes to the free layer: [0.99, 0.91]
    assert owl_sparsities([0.0, 1.0], [1, 1], 0.95, 0.1) == pytest.approx([0.99, 0.91])
    # s = [0.15, -0.05] -> [0.15, 0]; 0.05 too many pruned comes off the free layer: [0.10, 0]
    assert owl_sparsities([0.0, 1.0], [1, 1], 0.05, 0.1) == pytest.approx([0.10, 0.0])


def test_sparsities_degenerate():
    assert owl_sparsities([0.2, 0.2, 0.2], [5, 1, 3], 0.7, 0.08) == [0.7, 0.7, 0.7]
    assert owl_sparsities([0.1, 0.9], [1, 1], 0.7, 0.0) == [0.7, 0.7]
    with pytest.raises(ValueError):
        owl_sparsities([0.1], [1, 2], 0.5, 0.1)


def test_outlier_ratio_over_a_whole_layer():
    # one tensor: mean 13 / 4 = 3.25, above 2 x 3.25 only the 10
    assert outlier_ratio(lambda: [torch.tensor([[1.0, 1.0, 1.0, 10.0]])], 2.0) == 0.25
    # two tensors share one mean (12 / 4 = 3): the 9 is an outlier of the layer, not of its own tensor's mean 5
    parts = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 9.0])]
    assert outlier_ratio(lambda: parts, 2.0) == 0.25
    assert outlier_ratio(lambda: parts, 4.0) == 0.0


def test_outlier_score():
    w = torch.tensor([[-2.0, 1.0]])
    assert torch.equal(outlier_score(w), torch.tensor([[2.0, 1.0]]))
    assert torch.equal(outlier_score(w, torch.tensor([4.0, 9.0])), torch.tensor([[4.0, 3.0]]))  # |W| * sqrt(sum x^2)


def test_config_validation():
    assert PruneConfig(allocation="owl").scope == "layer"  # no global threshold under per-layer sparsities
    assert PruneConfig(method="wanda", allocation="owl").scope == "row"
    with pytest.raises(LlmpruneError, match="does not apply to an N:M --pattern"):
        PruneConfig(method="wanda", pattern=parse_pattern("2:4"), allocation="owl")
    with pytest.raises(LlmpruneError, match="--owl-m 0 must be > 0"):
        PruneConfig(allocation="owl", owl_m=0)
    with pytest.raises(LlmpruneError, match=r"--owl-lambda 0.6 is out of range"):
        PruneConfig(allocation="owl", owl_lambda=0.6)
    with pytest.raises(LlmpruneError, match="Unknown allocation 'owll'. Did you mean 'owl'?"):
        PruneConfig(allocation="owll")


# -- on models ----------------------------------------------------------------------------------------------

LAYERS = 4


def checkpoint(tmp_path, seed=0):
    """A tiny LLaMA of 4 layers whose layers hold different amounts of outliers."""
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            for p in layer.parameters():
                if p.dim() == 2:  # heavier tails in later layers: more outliers there
                    p.mul_(torch.exp(torch.randn(p.shape) * 0.3 * i))
    out = tmp_path / "src"
    model.save_pretrained(out, max_shard_size="100KB")
    return out


def calib_ids(n=6, seqlen=32):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(0))


def stream(src, out, cfg, **kw):
    ckpt = Checkpoint(src)
    select = Selector(arch_for(ckpt.config), cfg.include, cfg.exclude)
    names = [n for n in ckpt.names if select(n, ckpt.info(n).shape)]
    return prune_calibrated("tiny", src, ckpt, select, names, out, cfg, calib=calib_ids(), **kw)


def load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def check_allocation(alloc: dict, summary: dict, target: float):
    layers = alloc["layers"]
    assert alloc["allocation"] == "owl" and len(layers) == LAYERS
    sizes = [row["params"] for row in layers.values()]
    mean = sum(row["sparsity"] * row["params"] for row in layers.values()) / sum(sizes)
    assert mean == pytest.approx(target, abs=1e-12) and alloc["mean_sparsity"] == pytest.approx(target, abs=1e-12)
    sp = [row["sparsity"] for row in layers.values()]
    assert max(sp) - min(sp) == pytest.approx(2 * alloc["lambda"])  # the full band is used
    for layer, row in layers.items():  # each layer got its own sparsity, up to rounding per matrix (or per
        # row of 64 inputs under Wanda's row scope: 1/128)
        assert summary["by_layer"][layer]["sparsity"] == pytest.approx(row["sparsity"], abs=1 / 128)
    ratios = [row["outlier_ratio"] for row in layers.values()]
    assert sp.index(min(sp)) == ratios.index(max(ratios))  # most outliers: pruned least
    assert summary["global"]["sparsity"] == pytest.approx(target, abs=1 / 128)


def test_magnitude_streamed_equals_in_memory(tmp_path):
    src = checkpoint(tmp_path)
    cfg = PruneConfig(sparsity=0.6, allocation="owl", owl_m=3.0, owl_lambda=0.1)
    rec = prune_checkpoint(str(src), tmp_path / "out", cfg)
    assert rec["config"]["scope"] == "layer" and rec["allocation"]["scored_on"].startswith("weights")
    check_allocation(rec["allocation"], rec["sparsity"], 0.6)
    model = load(src)
    summary = prune_model_(model, cfg)
    assert summary["allocation"] == rec["allocation"]
    out = Checkpoint(tmp_path / "out")
    for name, p in model.state_dict().items():
        assert torch.equal(out.read(name), p), name
    # against uniform: the same total, other layer sparsities
    uni = prune_checkpoint(str(src), tmp_path / "uni", PruneConfig(sparsity=0.6, scope="layer"))
    assert uni["allocation"] == {"allocation": "uniform"}
    assert uni["sparsity"]["by_layer"]["3"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert rec["sparsity"]["by_layer"]["3"]["sparsity"] < 0.58


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_streamed_equals_in_memory(tmp_path, method):
    src = checkpoint(tmp_path)
    cfg = PruneConfig(method=method, sparsity=0.7, allocation="owl", owl_m=3.0, extra={"batch_size": 4})
    rec = stream(src, tmp_path / "out", cfg)
    assert "first streamed pass" in rec["allocation"]["scored_on"]
    check_allocation(rec["allocation"], rec["sparsity"], 0.7)
    model = load(src)
    summary = prune_model_calibrated_(model, Selector(arch_for(model.config)), cfg, calib_ids())
    assert summary["allocation"] == rec["allocation"]
    out = Checkpoint(tmp_path / "out")
    for name, p in model.state_dict().items():
        assert torch.equal(out.read(name), p), name


@torch.no_grad()
def test_ratios_come_from_the_dense_model(tmp_path):
    """Reference: one forward of the unpruned model with hooks summing x^2 into every linear."""
    src = checkpoint(tmp_path)
    cfg = PruneConfig(method="wanda", sparsity=0.5, allocation="owl", owl_m=3.0, extra={"batch_size": 4})
    rec = stream(src, tmp_path / "out", cfg)
    model = load(src)
    sums, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            def hook(m, args, name=name):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(0)
            hooks.append(mod.register_forward_pre_hook(hook))
    model(calib_ids(), use_cache=False)
    for i, layer in enumerate(model.model.layers):
        lins = [(f"model.layers.{i}.{n}", m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
        want = outlier_ratio(lambda: [outlier_score(m.weight, sums[n].float()) for n, m in lins], 3.0)
        assert rec["allocation"]["layers"][str(i)]["outlier_ratio"] == pytest.approx(want, abs=2e-3)


def test_resume_reuses_the_first_pass(tmp_path, monkeypatch):
    src = checkpoint(tmp_path)
    cfg = PruneConfig(method="wanda", sparsity=0.6, allocation="owl", owl_m=3.0, extra={"batch_size": 4})
    stream(src, tmp_path / "ref", cfg)

    class Killed(Exception):
        pass

    def kill_after_1(i):
        if i == 1:
            raise Killed

    with pytest.raises(Killed):
        stream(src, tmp_path / "out", cfg, on_layer=kill_after_1)
    assert (tmp_path / "out.partial" / "engine" / "allocation.json").exists()
    import llmprune.streaming as streaming

    monkeypatch.setattr(streaming, "dense_outlier_ratios", lambda *a, **k: pytest.fail("first pass rerun"))
    rec = stream(src, tmp_path / "out", cfg)
    assert rec["resumed_after_layer"] == 1
    a, b = Checkpoint(tmp_path / "ref"), Checkpoint(tmp_path / "out")
    for name in a.names:
        assert torch.equal(a.read(name), b.read(name)), name
    assert Allocation.from_json(rec["allocation"]).to_json() == rec["allocation"]


def test_cli_prune_and_inspect(tmp_path):
    from llmprune.cli import main

    src = checkpoint(tmp_path)
    r = CliRunner().invoke(main, ["prune", str(src), "--sparsity", "0.5", "--allocation", "owl", "--owl-m", "3",
                                  "--owl-lambda", "0.05", "-o", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)
    assert rec["allocation"]["m"] == 3.0 and rec["allocation"]["lambda"] == 0.05
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "o"), "--json"])
    summary = json.loads(r.stdout)
    assert summary["allocation"] == rec["allocation"]
    assert summary["by_layer"]["0"]["target"] == rec["allocation"]["layers"]["0"]["sparsity"]
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "o"), "--by", "layer"])
    assert r.exit_code == 0 and "target" in r.output
    r = CliRunner().invoke(main, ["prune", str(src), "--pattern", "2:4", "--allocation", "owl", "-o", str(tmp_path / "x")])
    assert r.exit_code == 1 and "does not apply to an N:M --pattern" in r.output


def test_sweep_compares_allocations(tiny_lm_dir, tmp_path):
    """One command, one plot: every method with and without OWL; a uniform sweep can grow an OWL curve."""
    from llmprune.cli import main

    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network, and outliers matter. " * 80)
    out = tmp_path / "sweep"
    args = ["sweep", str(tiny_lm_dir), "--method", "magnitude", "--method", "wanda", "--sparsities", "0,0.5,0.7",
            "--ppl-data", str(text), "--calib", str(text), "--calib-samples", "4", "--seqlen", "64",
            "--ppl-windows", "2", "-o", str(out), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, [*args, "--allocation", "uniform", "--allocation", "owl", "--owl-m", "3"])
    assert r.exit_code == 1 and "different sweep" in r.output  # M changes every OWL score
    r = CliRunner().invoke(main, [*args, "--allocation", "uniform", "--allocation", "owl"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert [k["method"] for k in result["knees"]] == ["magnitude", "magnitude+owl", "wanda", "wanda+owl"]
    assert result["timings"]["points_computed"] == 4  # only the OWL levels were new
    rows = {(row["method"], row["level"]): row for row in result["rows"]}
    assert rows[("wanda+owl", "0.7")]["actual_sparsity"] == pytest.approx(0.7, abs=1 / 64)
    assert (out / "sweep.png").stat().st_size > 10_000


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_outlier_ratios_reused_across_targets(tmp_path, monkeypatch, method):
    """A sweep's later levels reuse the dense model's outlier ratios: same result as scoring again."""
    import llmprune.engine as engine
    import llmprune.prune as prune

    src = checkpoint(tmp_path)
    first = prune_model_(load(src), PruneConfig(method=method, sparsity=0.5, allocation="owl", owl_m=3.0), calib_ids())
    cfg = PruneConfig(method=method, sparsity=0.7, allocation="owl", owl_m=3.0)
    fresh_model = load(src)
    fresh = prune_model_(fresh_model, cfg, calib_ids())
    monkeypatch.setattr(engine, "dense_outlier_ratios", lambda *a, **k: pytest.fail("scored again"))
    monkeypatch.setattr(prune, "weight_allocation", lambda *a, **k: pytest.fail("scored again"))
    reused_model = load(src)
    reused = prune_model_(reused_model, cfg, calib_ids(), outliers=Allocation.from_json(first["allocation"]))
    assert reused["allocation"] == fresh["allocation"]
    for (name, a), b in zip(fresh_model.state_dict().items(), reused_model.state_dict().values()):
        assert torch.equal(a, b), name
