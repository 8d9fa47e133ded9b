"""Model-loading flags of `llmprune eval` (8/4-bit bitsandbytes, device_map) as `from_pretrained` kwargs."""
from __future__ import annotations

from ..errors import LlmpruneError


def loading_kwargs(load_in_8bit: bool = False, load_in_4bit: bool = False, device: str | None = "cpu") -> dict:
    """Extra `from_pretrained` kwargs: a BitsAndBytesConfig and `device_map="auto"` for quantized loading,
    `device_map="auto"` for device "auto"; {} otherwise. bitsandbytes needs CUDA: a clear error elsewhere."""
    if load_in_8bit and load_in_4bit:
        raise LlmpruneError("--load-in-8bit and --load-in-4bit exclude each other: choose one.")
    kwargs: dict = {}
    if device == "auto":
        kwargs["device_map"] = "auto"
    if not (load_in_8bit or load_in_4bit):
        return kwargs
    import torch

    flag = "--load-in-8bit" if load_in_8bit else "--load-in-4bit"
    if not torch.cuda.is_available() or (device not in (None, "auto") and not str(device).startswith("cuda")):
        raise LlmpruneError(f"{flag} uses bitsandbytes, which needs a CUDA GPU (device here: {device or 'cpu'}, "
                            f"CUDA available: {torch.cuda.is_available()}). Drop the flag, or use --dtype bfloat16 to halve memory.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LlmpruneError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit)
    kwargs["device_map"] = "auto" if device in (None, "auto") else {"": str(device)}
    return kwargs
