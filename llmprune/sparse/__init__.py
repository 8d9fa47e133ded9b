"""Compact sparse weights: the packed checkpoint format, CPU kernels over it, and SparseLinear.

Importing builds nothing; the C kernel is compiled on the first call that needs it.
"""
from .format import FORMAT_NAME, FORMAT_VERSION, pack, packed_names, sparsity_config, unpack
from .linear import SparseLinear, swap_linears_
from .writer import SparseEncoder

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "SparseEncoder", "SparseLinear", "pack",
           "packed_names", "sparsity_config", "swap_linears_", "unpack"]
