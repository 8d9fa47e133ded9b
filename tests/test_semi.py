"""2:4 semi-structured GPU path: the shape rule and detection on CPU, parity with the dense reference on CUDA."""
import pytest
import torch
from torch import nn

from llmprune.methods.masks import nm_mask
from llmprune.sparse.semi import (SHAPE_BLOCKS, backend, is_2_4, shape_reason, to_semi_structured_,
                                  unavailable_reason, use_sparse_kernels_)


def test_detection_and_cpu_notice():
    w = torch.randn(64, 128)
    assert not is_2_4(w)
    assert is_2_4(w * nm_mask(w, 2, 4))
    assert "CUDA" in unavailable_reason("cpu")
    model = nn.Sequential(nn.Linear(128, 64))
    assert to_semi_structured_(model) == 0  # CPU weights are never swapped
    assert "running dense" in use_sparse_kernels_(model)


def test_shape_blocks_are_torchs_own():
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    for name, cls in (("cusparselt", SparseSemiStructuredTensorCUSPARSELT), ("cutlass", SparseSemiStructuredTensorCUTLASS)):
        for dtype, (rows, cols) in SHAPE_BLOCKS[name].items():
            c = cls._DTYPE_SHAPE_CONSTRAINTS[dtype]
            assert (c.sparse_min_rows, c.sparse_min_cols) == (rows, cols)


@pytest.mark.parametrize("shape,dtype,name,ok", [
    ((576, 576), torch.bfloat16, "cusparselt", True),     # SmolLM2 q/o
    ((192, 576), torch.float16, "cutlass", True),         # SmolLM2 k/v: 192 = 6 x 32, 576 = 9 x 64
    ((4096, 11008), torch.bfloat16, "cutlass", True),     # LLaMA-7B down_proj
    ((8, 64), torch.float16, "cusparselt", False),        # fewer rows than the block
    ((24, 64), torch.float16, "cusparselt", False),       # rows not a multiple of 16
    ((48, 64), torch.float16, "cusparselt", True),
    ((48, 64), torch.float16, "cutlass", False),          # CUTLASS wants rows a multiple of 32
    ((64, 96), torch.bfloat16, "cutlass", False),         # columns not a multiple of 64
    ((64, 64), torch.float32, "cusparselt", False),       # 16-bit weights only
])
def test_shape_rule(shape, dtype, name, ok):
    reason = shape_reason(shape, dtype, name)
    assert (reason is None) == ok
    if not ok:
        assert name in reason


def test_backend_choice():
    assert backend(True) == "cusparselt" and backend(False) == "cutlass"


def _model_24(*shapes, dtype=torch.float16, device="cuda"):
    model = nn.Sequential(*(nn.Linear(i, o, bias=True) for o, i in shapes)).to(dtype=dtype, device=device)
    with torch.no_grad():
        for lin in model:
            lin.weight.mul_(nm_mask(lin.weight.float().cpu(), 2, 4).to(device))
    return model


@pytest.mark.gpu
def test_semi_structured_matches_dense_reference():
    if unavailable_reason("cuda"):
        pytest.skip(unavailable_reason("cuda"))
    model = _model_24((256, 512))
    x = torch.randn(64, 512, dtype=torch.half, device="cuda")
    ref = model(x)
    assert to_semi_structured_(model) == 1
    assert isinstance(model[0].weight, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(model(x), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(model(x[:1]), ref[:1], rtol=1e-2, atol=1e-2)  # batch-1 decoding step


@pytest.mark.gpu
def test_rejected_shapes_stay_dense_with_a_notice():
    if unavailable_reason("cuda"):
        pytest.skip(unavailable_reason("cuda"))
    model = _model_24((256, 512), (24, 256), (256, 24))  # 24 rows, then 24 columns: rejected by both backends
    x = torch.randn(3, 512, dtype=torch.half, device="cuda")
    ref = model(x)
    kept = {}
    assert to_semi_structured_(model, kept) == 1
    assert set(kept) == {"1", "2"} and all("multiple" in r for r in kept.values())
    assert not isinstance(model[1].weight, torch.sparse.SparseSemiStructuredTensor)
    torch.testing.assert_close(model(x), ref, rtol=1e-2, atol=1e-2)
    notice = use_sparse_kernels_(_model_24((256, 512), (24, 256)))
    assert "1 of 2 linears on 2:4" in notice and "kept dense" in notice


@pytest.mark.gpu
def test_load_pretrained_with_sparse_kernels_uses_semi_structured_on_cuda(tmp_path):
    if unavailable_reason("cuda"):
        pytest.skip(unavailable_reason("cuda"))
    from test_kernels_cpu import tiny_llama

    import llmprune

    model = tiny_llama(torch.float16)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                mod.weight.mul_(nm_mask(mod.weight.float(), 2, 4))
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 128, (1, 6), device="cuda")
    dense = llmprune.load_pretrained(tmp_path, device="cuda")
    sparse = llmprune.load_pretrained(tmp_path, device="cuda", sparse_kernels=True)
    kinds = {type(m.weight).__name__ for n, m in sparse.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    assert all("SparseSemiStructured" in k for k in kinds), kinds  # no CPU kernel, no host-device copies
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, rtol=2e-2, atol=2e-2)
