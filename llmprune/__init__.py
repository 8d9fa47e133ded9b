"""llmprune: one-shot pruning of large language models (OMP, N:M, Wanda, SparseGPT), streamed layer by layer."""
__version__ = "0.1.0"


def load_pretrained(path, dtype=None, device: str = "cpu", sparse_kernels: bool = False, **kwargs):
    """Load a model directory (dense or llmprune's compact sparse format) as a transformers model.

    With `sparse_kernels=True`, pruned linears run on llmprune's CPU sparse kernels where available.
    """
    from .models import load_model

    model, _ = load_model(path, dtype=dtype, device=device, **kwargs)
    if sparse_kernels:
        from .sparse.linear import swap_linears_

        swap_linears_(model)
    return model
