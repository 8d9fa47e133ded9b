"""Calibrated pruning of a vision model (ViT) end to end: images from scikit-learn's digits or a folder."""
import json

import torch
from click.testing import CliRunner

from llmprune.calib_images import calibration_images
from llmprune.cli import main
from llmprune.io import Checkpoint
from tiny import save_tiny


def test_vit_wanda_prune_from_the_cli(tmp_path):
    src = save_tiny("vit", tmp_path / "vit")
    r = CliRunner().invoke(main, ["prune", str(src), "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "8",
                                  "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    out = Checkpoint(tmp_path / "out")
    pruned = [n for n in out.names if "attention.attention.query.weight" in n]
    assert pruned and all(float((out.read(n) == 0).float().mean()) == 0.5 for n in pruned)
    calib = json.loads((tmp_path / "out" / "run.json").read_text())["calibration"]
    assert calib["samples"] == 8 and calib["image_size"] == 32 and calib["source"] == "digits"


def test_calibration_images_from_a_folder_are_seeded_and_normalised(tmp_path):
    from PIL import Image

    for i in range(5):
        (tmp_path / "imgs" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (50 * i, 10, 200)).save(tmp_path / "imgs" / f"c{i % 2}" / f"{i}.png")
    cfg = {"model_type": "vit", "image_size": 24}
    a = calibration_images(tmp_path, cfg, str(tmp_path / "imgs"), 7, seed=3)
    b = calibration_images(tmp_path, cfg, str(tmp_path / "imgs"), 7, seed=3)
    assert a.shape == (7, 3, 24, 24) and torch.equal(a, b)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0  # (x - 0.5) / 0.5 of [0, 1] pixels
