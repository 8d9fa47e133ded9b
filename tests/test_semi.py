"""2:4 semi-structured GPU path: detection on CPU, parity with the dense reference on CUDA."""
import pytest
import torch
from torch import nn

from llmprune.methods.masks import nm_mask
from llmprune.sparse.semi import is_2_4, to_semi_structured_, unavailable_reason, use_sparse_kernels_


def test_detection_and_cpu_notice():
    w = torch.randn(64, 128)
    assert not is_2_4(w)
    assert is_2_4(w * nm_mask(w, 2, 4))
    assert "CUDA" in unavailable_reason("cpu")
    model = nn.Sequential(nn.Linear(128, 64))
    assert to_semi_structured_(model) == 0  # CPU weights are never swapped
    assert "running dense" in use_sparse_kernels_(model)


@pytest.mark.gpu
def test_semi_structured_matches_dense_reference():
    if unavailable_reason("cuda"):
        pytest.skip(unavailable_reason("cuda"))
    lin = nn.Linear(512, 256, bias=True).half().cuda()
    with torch.no_grad():
        lin.weight.mul_(nm_mask(lin.weight.float().cpu(), 2, 4).cuda())
    x = torch.randn(64, 512, dtype=torch.half, device="cuda")
    ref = lin(x)
    model = nn.Sequential(lin)
    assert to_semi_structured_(model) == 1
    torch.testing.assert_close(model(x), ref, rtol=1e-2, atol=1e-2)
