"""Mask similarity: hand-computed cosine/IoU, then streamed comparisons of pruned tiny checkpoints."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from llmprune.config import PruneConfig
from llmprune.errors import LlmpruneError
from llmprune.maskcmp import MaskCounts, compare_dirs, mask_cosine, mask_counts, mask_iou
from llmprune.prune import prune_checkpoint
from tiny import save_tiny


def test_hand_made_masks():
    a = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    assert mask_counts(a, b) == MaskCounts(n=4, a=2, b=2, both=1)
    assert mask_cosine(a, b) == pytest.approx(0.5)
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    assert mask_counts(a, b).agreement == pytest.approx(0.5)
    c = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)  # a is a subset of c
    assert mask_cosine(a, c) == pytest.approx(2 / math.sqrt(2 * 3))
    assert mask_cosine(a, a) == 1.0 and mask_iou(a, a) == 1.0


def test_empty_masks_and_sums():
    empty = torch.zeros(3, dtype=torch.bool)
    full = torch.ones(3, dtype=torch.bool)
    assert mask_cosine(empty, empty) == 1.0
    assert mask_cosine(empty, full) == 0.0
    total = mask_counts(full, full) + mask_counts(empty, full)
    assert total == MaskCounts(6, 3, 6, 3)
    assert total.cosine == pytest.approx(3 / math.sqrt(18))


def test_shape_mismatch():
    with pytest.raises(LlmpruneError, match="shapes differ"):
        mask_counts(torch.ones(2, 3, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool))


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("maskcmp")
    src = save_tiny("bert", root / "bert")
    for s in (0.3, 0.5):
        prune_checkpoint(str(src), root / f"omp{int(s * 100)}", PruneConfig(sparsity=s))
    return root


def test_compare_dirs_nested_omp(pruned):
    r = compare_dirs(pruned / "omp50", pruned / "omp30")
    g = r["global"]
    assert g["sparsity_a"] == pytest.approx(0.5, abs=1e-4) and g["sparsity_b"] == pytest.approx(0.3, abs=1e-4)
    # global OMP masks are nested: the 50% mask lies inside the 30% mask
    assert g["kept_both"] == g["kept_a"]
    assert g["cosine"] == pytest.approx(math.sqrt(g["kept_a"] / g["kept_b"]))
    assert g["iou"] == pytest.approx(g["kept_a"] / g["kept_b"])
    assert set(r["by_layer"]) == {"0", "1"}
    assert "attn.attention.self.query" in r["by_type"]
    assert sum(v["params"] for v in r["tensors"].values()) == g["params"]


def test_compare_self_is_one(pruned):
    assert compare_dirs(pruned / "omp30", pruned / "omp30")["global"]["cosine"] == 1.0


def test_compare_other_architecture(pruned, tmp_path):
    vit = save_tiny("vit", tmp_path / "vit")
    with pytest.raises(LlmpruneError, match="different architectures"):
        compare_dirs(pruned / "omp30", vit)


def _cli():
    from llmprune.cli import main  # the real entry point, with every command registered

    return main


def test_cli_json_and_table(pruned):
    main = _cli()
    res = CliRunner().invoke(main, ["masks", "compare", str(pruned / "omp50"), str(pruned / "omp30"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["global"]["kept_both"] > 0
    res = CliRunner().invoke(main, ["masks", "compare", str(pruned / "omp50"), str(pruned / "omp30"), "--by", "type"])
    assert res.exit_code == 0 and "mlp.intermediate.dense" in res.output and "cosine" in res.output


def test_cli_error(pruned, tmp_path):
    res = CliRunner().invoke(_cli(), ["masks", "compare", str(pruned / "omp30"), str(tmp_path / "nope")])
    assert res.exit_code == 1 and "not found" in res.output
