"""Memory budgets: parsing, the scratch folder's cleanup, and pruning on the fly that equals `prune` byte for
byte whatever accelerate offloads (device, CPU offload, disk), for eval and for every sweep level."""
import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.budget import parse_max_memory, scratch_dir
from llmprune.cli import main
from llmprune.config import PruneConfig, parse_pattern
from llmprune.errors import LlmpruneError
from llmprune.io import Checkpoint
from llmprune.models import load
from llmprune.offload import Weights, param_names, placement, prune_loaded_
from llmprune.prune import prune_checkpoint

GiB, MiB = 2**30, 2**20
BUDGETS = {"unlimited": None, "cpu+disk": {"cpu": 400_000}, "disk": {"cpu": 0}}  # the tiny LLaMA is ~430 kB


def test_budget_forms():
    assert parse_max_memory(None) is None
    assert parse_max_memory("20GiB") == {"cpu": 20 * GiB}
    assert parse_max_memory("600MiB") == {"cpu": 600 * MiB}
    assert parse_max_memory("0=22GiB,cpu=30GiB", gpus=1) == {0: 22 * GiB, "cpu": 30 * GiB}
    assert parse_max_memory("cuda:1=1.5GB, cpu=512mib", gpus=2) == {1: 1_500_000_000, "cpu": 512 * MiB}
    assert parse_max_memory("1000") == {"cpu": 1000}


@pytest.mark.parametrize("bad, why", [("", "'' is not a size"), ("20 GiBs", "is not a size"), ("-1GiB", "is not a size"),
                                      ("gpu=2GiB", "unknown device 'gpu'"), ("0=1GiB,20GiB", "'20GiB' names no device"),
                                      ("cpu=1GiB,cpu=2GiB", "cpu is given twice")])
def test_bad_budgets_say_the_allowed_forms(bad, why):
    with pytest.raises(LlmpruneError) as e:
        parse_max_memory(bad, gpus=0)
    msg = str(e.value)
    assert why in msg and "20GiB" in msg and "0=22GiB,cpu=30GiB" in msg and "\n" not in msg


def test_budget_naming_a_missing_gpu():
    with pytest.raises(LlmpruneError, match="names GPU 1, but this machine has 1 CUDA GPU"):
        parse_max_memory("1=10GiB", gpus=1)


def test_scratch_dir_is_removed_also_on_error(tmp_path):
    with scratch_dir() as a:
        (a / "x").write_bytes(b"1")
    assert not a.exists()
    given = tmp_path / "offload"
    with pytest.raises(KeyboardInterrupt):
        with scratch_dir(given) as b:
            assert b.parent == given
            (b / "w.safetensors").write_bytes(b"1")
            raise KeyboardInterrupt
    assert not b.exists() and given.is_dir() and not any(given.iterdir())
    (tmp_path / "file").write_text("")
    with pytest.raises(LlmpruneError, match="is a file"):
        with scratch_dir(tmp_path / "file"):
            pass


def digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


def assert_same_weights(model, pruned_dir, scratch):
    """Every parameter of `model`, wherever it lives, equals the checkpoint at `pruned_dir` bit for bit."""
    ckpt = Checkpoint(pruned_dir)
    weights = Weights(model, scratch)
    for name, key in param_names(model, ckpt.names).items():
        ours, ref = weights.read(key), ckpt.read(name)
        assert ours.dtype == ref.dtype and torch.equal(ours.view(torch.uint8), ref.view(torch.uint8)), name


CONFIGS = [PruneConfig(sparsity=0.5), PruneConfig(sparsity=0.3, scope="layer"), PruneConfig(pattern=parse_pattern("2:4")),
           PruneConfig(method="wanda", sparsity=0.5, calib_samples=4, seqlen=32)]


@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe().replace(" ", "-"))
def test_pruning_on_the_fly_equals_prune_whatever_is_offloaded(tiny_lm_dir, tmp_path, budget, cfg):
    before = digest(tiny_lm_dir)
    prune_checkpoint(str(tiny_lm_dir), tmp_path / "pruned", cfg)
    with scratch_dir(tmp_path / "off") as scratch:
        loaded = load(tiny_lm_dir, max_memory=BUDGETS[budget], scratch=scratch)
        where = placement(loaded.model)
        assert {"unlimited": {"cpu"}, "cpu+disk": {"cpu", "disk"}, "disk": {"disk"}}[budget] == set(where)
        summary = prune_loaded_(loaded.model, loaded.source, cfg, scratch)
        assert summary["global"]["sparsity"] == pytest.approx(cfg.target_sparsity, abs=0.01)
        assert_same_weights(loaded.model, tmp_path / "pruned", scratch)
        reference = load(tmp_path / "pruned").model
        ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.allclose(loaded.model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-6)
    assert digest(tiny_lm_dir) == before  # the source checkpoint is never written


def test_cpu_offload_weights_are_written_in_place(tiny_lm_dir, tmp_path):
    """accelerate's CPU offload (GPU machines put non-fitting layers there), exercised on CPU by cpu_offload."""
    from accelerate import cpu_offload

    cfg = PruneConfig(sparsity=0.6)
    prune_checkpoint(str(tiny_lm_dir), tmp_path / "pruned", cfg)
    loaded = load(tiny_lm_dir)
    cpu_offload(loaded.model, execution_device=torch.device("cpu"))
    assert set(placement(loaded.model)) == {"cpu-offload"}
    prune_loaded_(loaded.model, loaded.source, cfg, tmp_path)
    assert_same_weights(loaded.model, tmp_path / "pruned", tmp_path)
    with torch.no_grad():
        out = loaded.model(torch.tensor([[1, 2, 3]])).logits
    ref = load(tmp_path / "pruned").model(torch.tensor([[1, 2, 3]])).logits
    assert torch.allclose(out, ref, atol=1e-6)


def invoke(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def test_eval_budget_errors_before_loading(tiny_lm_dir):
    r = invoke("eval", "ppl", tiny_lm_dir, "--max-memory", "lots")
    assert r.exit_code == 1 and "Invalid --max-memory 'lots'" in r.output and "Loading" not in r.output
    r = invoke("eval", "ppl", tiny_lm_dir, "--max-memory", "1GiB", "--device", "cuda")
    assert r.exit_code == 1 and "drop --device cuda" in r.output


def test_eval_offloaded_equals_unconstrained_and_cleans_up(tiny_lm_dir, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 60)
    common = ["eval", "ppl", tiny_lm_dir, "--data", text, "--seqlen", "64", "--sparsity", "0.5", "--json"]
    free = invoke(*common)
    assert free.exit_code == 0, free.output
    off = tmp_path / "off"
    tight = invoke(*common, "--max-memory", "300kB", "--offload-folder", off)
    assert tight.exit_code == 0, tight.output
    free, tight = json.loads(free.stdout), json.loads(tight.stdout)
    assert tight["tasks"]["ppl"]["ppl"] == pytest.approx(free["tasks"]["ppl"]["ppl"], rel=1e-6)
    assert tight["sparsity"] == free["sparsity"] and "disk" in tight["memory"]["placement"]
    assert off.is_dir() and not any(off.iterdir())  # our folder inside it is gone


def test_eval_error_still_removes_the_offload_folder(tiny_lm_dir, tmp_path, monkeypatch):
    import llmprune.eval.suite as suite

    def boom(*a, **k):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(suite.Suite, "run", boom)
    off = tmp_path / "off"
    r = invoke("eval", "ppl", tiny_lm_dir, "--sparsity", "0.5", "--max-memory", "0", "--offload-folder", off)
    assert r.exit_code != 0 and isinstance(r.exception, RuntimeError)
    assert off.is_dir() and not any(off.iterdir())


def test_sweep_under_a_budget_matches_eval_of_prune(tiny_lm_dir, tmp_path):
    """The issue's check, tiny: a 2-level sweep fully disk-offloaded; its 50% point equals `eval ppl` of
    `prune --sparsity 0.5`'s output, its dense point the unconstrained dense perplexity."""
    text = tmp_path / "t.txt"
    text.write_text("Pruning removes weights from a network. " * 60)
    off = tmp_path / "off"
    r = invoke("sweep", tiny_lm_dir, "--task", "ppl", "--sparsities", "0,0.5", "--max-memory", "0", "--offload-folder", off,
               "--ppl-data", text, "--seqlen", "64", "--no-plot", "-o", tmp_path / "sweep", "--json")
    assert r.exit_code == 0, r.output
    ppl = {row["level"]: row["score"] for row in json.loads(r.stdout)["rows"]}
    assert invoke("prune", tiny_lm_dir, "--sparsity", "0.5", "-o", tmp_path / "p50").exit_code == 0
    for level, model in (("dense", tiny_lm_dir), ("0.5", tmp_path / "p50")):
        e = invoke("eval", "ppl", model, "--data", text, "--seqlen", "64", "--json")
        assert ppl[level] == pytest.approx(json.loads(e.stdout)["tasks"]["ppl"]["ppl"], rel=1e-6), level
    assert not any(off.iterdir())
