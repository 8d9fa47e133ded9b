"""llmprune: one-shot pruning of large language models (OMP, N:M, Wanda, SparseGPT), streamed layer by layer."""
__version__ = "0.1.0"


def load_pretrained(path, dtype=None, device: str = "cpu", sparse_kernels: bool = False, **kwargs):
    """Load a model directory (dense or llmprune's compact sparse format) as a transformers model.

    With `sparse_kernels=True`, pruned linears run on sparse kernels for where the model sits: torch's 2:4
    semi-structured kernels on CUDA, llmprune's bitmask kernels on the CPU (see llmprune.sparse.semi).
    """
    from .models import load_model

    model, _ = load_model(path, dtype=dtype, device=device, **kwargs)
    if sparse_kernels:
        import logging

        from .sparse.semi import use_sparse_kernels_

        logging.getLogger(__name__).info(use_sparse_kernels_(model))
    return model
