"""Calibration images for vision models (ViT): what Wanda and SparseGPT see instead of token windows.

`--calib` names the source: `digits` (offline default: scikit-learn's bundled 8x8 handwritten digits) or a
folder of images (`<folder>/<class>/<image>` or images directly in the folder). Samples are drawn with the
run's seed, resized to the model's `image_size` and normalised with the checkpoint's preprocessor
mean/std, so a run is reproducible from its run.json.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import LlmpruneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def is_vision(config) -> bool:
    """Whether the architecture table runs this model on images."""
    from .arch import arch_for

    return arch_for(config).auto_class == "AutoModelForImageClassification"


def _folder_images(root: Path) -> torch.Tensor:
    from PIL import Image

    from .images import pil_to_tensor

    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LlmpruneError(f"No images ({', '.join(IMAGE_SUFFIXES)}) under {root} for calibration.")
    return pil_to_tensor([Image.open(f).convert("RGB") for f in files])  # (N, 3, h, w) in [0, 1]


def calibration_images(src: Path, config: dict, calib: str | None, n_samples: int, seed: int) -> torch.Tensor:
    """`n_samples` seeded calibration images for the vision checkpoint at `src`: (n, 3, size, size) floats."""
    from .images import digits_split, pixel_values

    source = calib or "digits"
    if source == "digits":
        images = digits_split(seed)[0][0]
    elif Path(source).is_dir():
        images = _folder_images(Path(source))
    else:
        raise LlmpruneError(f"A vision model calibrates on images: --calib digits (offline, scikit-learn) or a "
                            f"folder of images, not '{source}'.")
    g = torch.Generator().manual_seed(int(seed))
    images = images[torch.randint(0, images.shape[0], (n_samples,), generator=g)]
    return pixel_values(images, int(config.get("image_size", images.shape[-1])), src).contiguous()  # (n, 3, s, s)
