"""Image data shared by fine-tuning (finetune/) and vision calibration (calib_images.py): PIL images as
tensors, a checkpoint's normalisation, and scikit-learn's bundled digits (the offline image source)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import LlmpruneError


def pil_to_tensor(imgs, size: int | None = None) -> torch.Tensor:
    """(N, 3, H, W) floats in [0, 1] from PIL images (resized to the first image's size or `size`)."""
    import numpy as np

    size = size or imgs[0].size[0]
    arrays = [np.asarray(im.convert("RGB").resize((size, size)), dtype=np.float32) for im in imgs]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).div_(255.0)


def image_norm(model_dir: Path | None) -> tuple[list[float], list[float]]:
    """(mean, std) from the checkpoint's preprocessor_config.json, else ViT's usual 0.5 / 0.5."""
    cfg = Path(model_dir) / "preprocessor_config.json" if model_dir else None
    if cfg and cfg.exists():
        d = json.loads(cfg.read_text())
        if "image_mean" in d and "image_std" in d:
            return list(d["image_mean"]), list(d["image_std"])
    return [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]


def pixel_values(x: torch.Tensor, size: int, model_dir: Path | None) -> torch.Tensor:
    """Images (B, 3, h, w) in [0, 1] resized to (size, size) and normalised as the checkpoint expects."""
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in image_norm(model_dir))
    return (x - mean) / std


def digits_split(seed: int = 0, eval_fraction: float = 0.2):
    """scikit-learn's 1,797 8x8 handwritten digits, grey levels 0-16 as RGB in [0, 1], split with `seed`:
    ((train images (n, 3, 8, 8), labels), (eval images, labels))."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise LlmpruneError("Task 'digits' needs scikit-learn: pip install scikit-learn") from None
    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).div_(16.0).unsqueeze(1).expand(-1, 3, -1, -1)  # (N, 3, 8, 8)
    labels = torch.tensor(d.target)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(labels) * (1 - eval_fraction))
    tr, ev = perm[:cut], perm[cut:]
    return (images[tr].contiguous(), labels[tr]), (images[ev].contiguous(), labels[ev])
