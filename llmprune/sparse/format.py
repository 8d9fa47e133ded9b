"""The compact sparse checkpoint format ("llmprune-bitmask"): pure tensor packing, no file I/O.

A pruned 2-D weight W (out, in) whose zeros are the pruned entries is stored as four plain tensors, so
they go straight into a safetensors file next to the dense tensors of the model:

    <name>.values       dtype of W, (nnz,)           kept values, row-major
    <name>.bitmask      int32, (out, ceil(in / 32))  bit j of word c of row r set <=> column 32c+j kept
    <name>.row_offsets  int64, (out + 1,)            row r's values are values[row_offsets[r]:row_offsets[r+1]]
    <name>.shape        int64, (2,)                  [out, in]

Pad bits (columns >= in of the last word) are 0. "Kept" means "not equal to zero": both +0.0 and -0.0
are pruned, so `unpack` returns +0.0 where W held -0.0 (a pruner that multiplies by a 0/1 mask writes
-0.0 for negative weights, and those must not cost storage). Every other bit pattern, NaN and inf
included, round-trips exactly. At 50% sparsity fp16/bf16 the parts take 2 B * 0.5 + 1/8 B = 0.5625x the
dense bytes (plus 8 B per row of offsets).
"""
from __future__ import annotations

import numpy as np
import torch

FORMAT_NAME = "llmprune-bitmask"
FORMAT_VERSION = 1
SUFFIXES = ("values", "bitmask", "row_offsets", "shape")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CHUNK = 1 << 22  # weights per row chunk; bounds the temporaries of pack/unpack to a few tens of MB


def _rows_per_chunk(in_features: int) -> int:
    return max(1, CHUNK // max(in_features, 1))


def _check_weight(w: torch.Tensor) -> None:
    if w.dim() != 2:
        raise ValueError(f"sparse packing needs a 2-D weight (out, in), got shape {tuple(w.shape)}")
    if w.dtype not in DTYPES:
        raise ValueError(f"sparse packing supports float32, float16 and bfloat16 weights, got {w.dtype}")


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """Bitmask words of a (rows, in) bool keep-mask: int32 (rows, ceil(in / 32)), little-endian bits."""
    rows, in_features = keep.shape
    words = (in_features + 31) // 32
    padded = np.zeros((rows, words * 32), dtype=np.bool_)
    padded[:, :in_features] = keep.cpu().numpy()
    packed = np.packbits(padded, axis=1, bitorder="little")  # (rows, words * 4) uint8, byte k = cols 8k..8k+7
    return torch.from_numpy(packed.view("<i4").astype(np.int32, copy=False))  # (rows, words)


def unpack_mask(bitmask: torch.Tensor, in_features: int) -> torch.Tensor:
    """Bool keep-mask (rows, in) of int32 bitmask words (rows, words); inverse of `pack_mask`."""
    words = np.ascontiguousarray(bitmask.cpu().numpy().astype("<i4", copy=False)).view(np.uint8)
    bits = np.unpackbits(words, axis=1, bitorder="little")[:, :in_features]  # (rows, in) uint8
    return torch.from_numpy(bits.astype(np.bool_))


def pack(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pack a pruned weight (out, in) into {suffix: tensor} (see module docstring); zeros are pruned."""
    _check_weight(w)
    w = w.detach().cpu()
    out_features, in_features = w.shape
    step = _rows_per_chunk(in_features)
    values, masks, counts = [], [], []
    for r in range(0, out_features, step):
        block = w[r : r + step]  # (rows, in)
        keep = block != 0  # -0.0 == 0 is pruned; NaN != 0 is kept
        values.append(block[keep])  # row-major, bit-exact copy
        masks.append(pack_mask(keep))
        counts.append(keep.sum(dim=1))
    row_offsets = torch.zeros(out_features + 1, dtype=torch.int64)
    if out_features:
        row_offsets[1:] = torch.cumsum(torch.cat(counts), dim=0)
    words = (in_features + 31) // 32
    return {
        "values": torch.cat(values) if values else w.new_empty(0),
        "bitmask": torch.cat(masks) if masks else torch.zeros(0, words, dtype=torch.int32),
        "row_offsets": row_offsets,
        "shape": torch.tensor([out_features, in_features], dtype=torch.int64),
    }


def check_parts(parts: dict[str, torch.Tensor], deep: bool = False) -> tuple[int, int]:
    """Validate packed parts (suffixes, dtypes, sizes); return (out, in). Raises ValueError.

    deep=True also checks that every row's popcount matches its row_offsets span and that pad bits are
    0 (a full pass over the bitmask); kernels that read values through row_offsets need that.
    """
    missing = [s for s in SUFFIXES if s not in parts]
    if missing:
        raise ValueError(f"packed weight lacks {', '.join(missing)}; needs {', '.join(SUFFIXES)}")
    shape, bitmask, offsets, values = parts["shape"], parts["bitmask"], parts["row_offsets"], parts["values"]
    if shape.dtype != torch.int64 or shape.numel() != 2:
        raise ValueError(f"packed .shape must be int64 [out, in], got {shape.dtype} {tuple(shape.shape)}")
    out_features, in_features = (int(v) for v in shape.tolist())
    words = (in_features + 31) // 32
    if bitmask.dtype != torch.int32 or tuple(bitmask.shape) != (out_features, words):
        raise ValueError(f"packed .bitmask must be int32 {(out_features, words)}, got {bitmask.dtype} {tuple(bitmask.shape)}")
    if offsets.dtype != torch.int64 or tuple(offsets.shape) != (out_features + 1,):
        raise ValueError(f"packed .row_offsets must be int64 ({out_features + 1},), got {offsets.dtype} {tuple(offsets.shape)}")
    if values.dtype not in DTYPES or values.dim() != 1 or values.numel() != int(offsets[-1]):
        raise ValueError(f"packed .values must be 1-D float with {int(offsets[-1])} entries, got {values.dtype} {tuple(values.shape)}")
    if deep:
        step = _rows_per_chunk(words * 32)
        counts, pad_bits = [], False
        for r in range(0, out_features, step):
            words_u8 = np.ascontiguousarray(bitmask[r : r + step].cpu().numpy().astype("<i4", copy=False)).view(np.uint8)
            bits = np.unpackbits(words_u8, axis=1, bitorder="little")  # (rows, words * 32)
            counts.append(torch.from_numpy(bits[:, :in_features].sum(axis=1, dtype=np.int64)))
            pad_bits |= bool(bits[:, in_features:].any())
        spans = offsets.cpu().diff()
        if pad_bits or int(offsets[0]) != 0 or (out_features and not torch.equal(torch.cat(counts), spans)):
            raise ValueError("packed .bitmask and .row_offsets disagree (row popcounts, pad bits or offsets[0])")
    return out_features, in_features


def unpack(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Dense weight (out, in) in the dtype of `.values`; bit-exact inverse of `pack` (-0.0 comes back as +0.0)."""
    out_features, in_features = check_parts(parts)
    values, bitmask, offsets = parts["values"].cpu(), parts["bitmask"].cpu(), parts["row_offsets"].cpu()
    w = torch.zeros(out_features, in_features, dtype=values.dtype)
    step = _rows_per_chunk(in_features)
    for r in range(0, out_features, step):
        block = w[r : r + step]
        keep = unpack_mask(bitmask[r : r + step], in_features)
        block.masked_scatter_(keep, values[int(offsets[r]) : int(offsets[min(r + step, out_features)])])
    return w


def nbytes(parts: dict[str, torch.Tensor]) -> int:
    """Bytes the packed parts take in a file (tensor data only)."""
    return sum(t.numel() * t.element_size() for t in parts.values())


def estimate_nbytes(out_features: int, in_features: int, nnz: int, dtype: torch.dtype) -> int:
    """Bytes `pack` would produce for a (out, in) weight with nnz kept entries, without packing it."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return nnz * itemsize + out_features * ((in_features + 31) // 32) * 4 + (out_features + 1) * 8 + 16


def packed_names(keys) -> list[str]:
    """Base names `<name>` for which `keys` (e.g. a safetensors file's keys) hold every packed suffix."""
    keys = set(keys)
    bases = {k.rsplit(".", 1)[0] for k in keys if k.endswith(".bitmask")}
    return sorted(b for b in bases if all(f"{b}.{s}" in keys for s in SUFFIXES))


def sparsity_config(pattern=None, sparsity: float | None = None, modules=(), **extra) -> dict:
    """The `sparsity_config` entry for config.json describing a checkpoint written in this format.

    pattern: an NMPattern, a "2:4" string or None (unstructured); modules: names of packed weights.
    """
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "pattern": str(pattern) if pattern else None,
        "sparsity": None if sparsity is None else float(sparsity),
        "bitmask_bit_order": "little",  # bit j of int32 word c <=> column 32c+j
        "modules": sorted(modules),
        **extra,
    }
