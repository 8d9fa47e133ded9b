"""Checkpoint files: read tensor by tensor, write shards streaming, publish output directories atomically.

safetensors is a tiny format (8-byte header length, JSON header, raw bytes), so reading and writing it
here directly keeps memory exact: a read copies one tensor into fresh memory with `readinto` (no mmap
pages lingering in RSS), and a write lays out the header up front from the known shapes, then appends each
tensor as it is produced. Old `.bin` checkpoints are read through torch's memory-mapped, weights-only load.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LlmpruneError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    start: int = 0  # byte offset inside the file (safetensors only)
    end: int = 0
    packed: bool = False  # stored in llmprune's compact sparse format (several raw tensors)

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Tensor table and metadata of one .safetensors file; a corrupt or truncated file is a user error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LlmpruneError(f"Corrupt or truncated shard {path}: shorter than a safetensors header.")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            raise LlmpruneError(f"Corrupt or truncated shard {path}: header length {n} exceeds the file.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LlmpruneError(f"Corrupt shard {path}: its header is not valid JSON.") from None
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos = {}
    for name, h in header.items():
        if h.get("dtype") not in DTYPES:
            raise LlmpruneError(f"Unsupported dtype {h.get('dtype')} for '{name}' in {path}.")
        start, end = (base + o for o in h["data_offsets"])
        info = TensorInfo(DTYPES[h["dtype"]], tuple(h["shape"]), path, start, end)
        if end > size or end - start != info.nbytes:
            raise LlmpruneError(f"Corrupt or truncated shard {path}: tensor '{name}' lies beyond the end of the file.")
        infos[name] = info
    return dict(sorted(infos.items(), key=lambda kv: kv[1].start)), meta


def read_tensor(info: TensorInfo, name: str = "", buffer: torch.Tensor | None = None) -> torch.Tensor:
    """One safetensors tensor read with `readinto` (no mmap pages left in RSS): into fresh, owned memory, or
    into the front of `buffer` (uint8, large enough) to spare the page faults of a new allocation."""
    n = info.end - info.start
    buf = buffer[:n] if buffer is not None and buffer.numel() >= n else torch.empty(n, dtype=torch.uint8)
    with open(info.file, "rb") as f:
        f.seek(info.start)
        got = f.readinto(memoryview(buf.numpy())) if n else 0
    if got != n:
        raise LlmpruneError(f"Truncated shard {info.file}: '{name}' ended early.")
    return buf.view(info.dtype).reshape(info.shape)


class Checkpoint:
    """A local checkpoint directory (safetensors, sharded or not, or .bin), read one tensor at a time.

    Weights stored in llmprune's compact sparse format appear under their dense name and are unpacked on
    read, so every command reads dense and sparse outputs alike.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = weight_files(self.path)
        self.infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict] = {}
        self._bins: dict[Path, dict] = {}
        for file in self.files:
            if file.suffix == ".safetensors":
                infos, meta = read_safetensors_header(file)
                self.metadata[file.name] = meta
            else:
                state = self._load_bin(file)
                infos = {k: TensorInfo(v.dtype, tuple(v.shape), file) for k, v in state.items() if torch.is_tensor(v)}
            for k in infos:
                if k in self.infos:
                    raise LlmpruneError(f"Tensor '{k}' appears in both {self.infos[k].file.name} and {file.name}.")
            self.infos.update(infos)
        self.config = read_config(self.path)
        self._check_index()
        self.raw = self.infos
        if any(k.endswith(".bitmask") for k in self.raw):
            self.infos = self._logical()

    def _check_index(self) -> None:
        """Every tensor the index lists is in the shard it names (a stale or hand-edited index is corrupt)."""
        weight_map = index_map(self.path) or {}
        for name, file in weight_map.items():
            info = self.infos.get(name)
            if info is None or info.file.name != file:
                held = f"it is in {info.file.name}" if info is not None else "no shard holds it"
                raise LlmpruneError(f"{self.path} is inconsistent: its index puts '{name}' in {file}, but {held}; "
                                    f"re-save the checkpoint or fix the index.")

    def _logical(self) -> dict[str, TensorInfo]:
        from .sparse.format import SUFFIXES, packed_names

        bases = set(packed_names(self.raw))
        out = {}
        for name, info in self.raw.items():
            base, _, suffix = name.rpartition(".")
            if base not in bases:
                out[name] = info
            elif suffix == SUFFIXES[0]:
                shape = tuple(int(d) for d in self._read_raw(f"{base}.shape"))
                out[base] = TensorInfo(info.dtype, shape, info.file, info.start, info.end, packed=True)
        return out

    def _load_bin(self, file: Path) -> dict:
        if file not in self._bins:
            try:
                self._bins[file] = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # torch raises many types for a bad pickle/zip
                raise LlmpruneError(f"Cannot read checkpoint file {file}: {type(e).__name__}: {e}".splitlines()[0]) from None
        return self._bins[file]

    @property
    def names(self) -> list[str]:
        return list(self.infos)

    def info(self, name: str) -> TensorInfo:
        return self.infos[name]

    def read(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """A writable CPU tensor (dense, also for weights stored packed): fresh memory, or for a plain
        safetensors tensor the front of `buffer` when one is given."""
        info = self.infos[name]
        if info.packed:
            from .sparse.format import SUFFIXES, check_parts
            from .sparse.kernel import dense_weight

            parts = {s: self._read_raw(f"{name}.{s}") for s in SUFFIXES}
            try:
                check_parts(parts, deep=True)
            except ValueError as e:
                raise LlmpruneError(f"Corrupt sparse weight {name} in {info.file}: {e}") from None
            return dense_weight(parts)
        return self._read_raw(name, buffer)

    def read_mapped(self, name: str) -> torch.Tensor:
        """A plain safetensors tensor backed by a private mapping of its file: only the pages a computation
        touches become resident (an embedding looked up for a few thousand tokens), writes stay private.
        Anything else (packed, .bin, unaligned, truncated) is `read`."""
        info = self.infos[name]
        if (info.packed or info.file.suffix != ".safetensors" or info.start % info.dtype.itemsize
                or info.end <= info.start or info.end > info.file.stat().st_size):
            return self.read(name)
        whole = torch.from_file(str(info.file), shared=False, size=info.end, dtype=torch.uint8)
        return whole[info.start:info.end].view(info.dtype).reshape(info.shape)

    def _read_raw(self, name: str, buffer: torch.Tensor | None = None) -> torch.Tensor:
        info = self.raw[name]
        if info.file.suffix != ".safetensors":
            return self._load_bin(info.file)[name].clone()
        return read_tensor(info, name, buffer)

    def iter_bytes(self, name: str, block: int = 16 << 20):
        """The raw bytes of a safetensors tensor in blocks, so untouched tensors are copied, never materialised."""
        info = self.infos[name]
        buf = memoryview(bytearray(min(block, max(info.end - info.start, 1))))  # one block, reused
        with open(info.file, "rb") as f:
            f.seek(info.start)
            left = info.end - info.start
            while left > 0:
                got = f.readinto(buf[: min(len(buf), left)])
                if not got:
                    raise LlmpruneError(f"Truncated shard {info.file}: '{name}' ended early.")
                left -= got
                yield buf[:got]

    def by_file(self) -> dict[Path, list[str]]:
        out: dict[Path, list[str]] = {}
        for name, info in self.infos.items():
            out.setdefault(info.file, []).append(name)
        return out


class ReadAhead:
    """`read(name)` over a checkpoint that, asked for names in a known order, reads the next one on a
    background thread, into one of two reused buffers.

    File reads release the GIL, so the next tensor's I/O overlaps the current tensor's maths, and reusing
    two buffers spares the page faults of fresh memory. Contract: a returned tensor is overwritten by the
    call after next, so use it up (or copy it) before then. Names asked out of order are read into fresh memory.
    """

    def __init__(self, ckpt: "Checkpoint", order):
        from concurrent.futures import ThreadPoolExecutor

        self._ckpt, order = ckpt, list(order)
        self._next = {n: (i + 1, order[i + 1]) for i, n in enumerate(order[:-1])}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmprune-read")
        self._pending: dict = {}
        self._slots: list[torch.Tensor | None] = [None, None]

    def _read_into(self, name: str, slot: int) -> torch.Tensor:
        need = self._ckpt.info(name).nbytes
        if self._slots[slot] is None or self._slots[slot].numel() < need:
            self._slots[slot] = torch.empty(need, dtype=torch.uint8)
        return self._ckpt.read(name, self._slots[slot])

    def __call__(self, name: str) -> torch.Tensor:
        fut = self._pending.pop(name, None)
        if fut is not None:
            w = fut.result()
        else:
            for stale in self._pending.values():  # let a stale prefetch finish before reusing its buffer
                stale.result()
            w = self._ckpt.read(name)
        self._pending.clear()
        if name in self._next:
            i, nxt = self._next[name]
            self._pending[nxt] = self._pool.submit(self._read_into, nxt, i % 2)
        return w


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object; a corrupt one is a one-line user error naming `what` it is."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LlmpruneError(f"{path} is not valid JSON ({str(e).splitlines()[0]}): {what}.") from None
    if not isinstance(data, dict):
        raise LlmpruneError(f"{path} holds a JSON {type(data).__name__}, not an object: {what}.")
    return data


def read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.exists():
        raise LlmpruneError(f"{path} has no config.json: a model directory needs config.json and weight files.")
    return read_json_object(cfg, "a model's config.json is a JSON object with its model_type")


def index_map(path: Path) -> dict[str, str] | None:
    """The index's tensor name -> shard file map (None without an index file)."""
    for index in INDEX_FILES:
        if (path / index).exists():
            weight_map = read_json_object(path / index, 'a shard index is {"weight_map": {tensor: file}}').get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise LlmpruneError(f"{path / index} has no valid weight_map: a shard index is "
                                    '{"weight_map": {tensor: file}}.')
            return weight_map
    return None


def weight_files(path: Path) -> list[Path]:
    """Weight files of a checkpoint directory, in index order when an index exists."""
    for index in INDEX_FILES:
        if (path / index).exists():
            weight_map = index_map(path)
            files = list(dict.fromkeys(weight_map.values()))
            missing = [f for f in files if not (path / f).exists()]
            if missing:
                raise LlmpruneError(f"{path} is incomplete: {index} lists missing shard(s) {', '.join(missing[:3])}.")
            return [path / f for f in files]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not files:
        raise LlmpruneError(f"{path} has no weights: expected *.safetensors (sharded or not) or *.bin files.")
    return files


def output_file_name(src: Path) -> str:
    """model-00001-of-00002.safetensors stays; pytorch_model-00001-of-00002.bin -> model-00001-of-00002.safetensors."""
    name = src.name
    if src.suffix != ".safetensors":
        name = name.replace("pytorch_model", "model").rsplit(".", 1)[0] + ".safetensors"
    return name


class ShardWriter:
    """Writes one safetensors file, appending tensors as they are produced (names declared up front).

    Header space is reserved from the declared names, data is appended, and the real header (padded with
    spaces, which the format allows) is written last, so shapes need not be known in advance (compact
    sparse tensors). Nothing is held in memory but the tensor being written.
    """

    def __init__(self, path: Path, names: list[str], metadata: dict | None = None):
        self.path = Path(path)
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        reserve = 64 + len(json.dumps(self.metadata)) + sum(len(json.dumps(n)) + 200 for n in names)
        self._reserve = reserve + (-reserve % 8)
        self._names = list(names)
        self._header: dict[str, dict] = {}
        self._offset = 0
        self._file = open(self.path, "wb")
        self._io(self._file.write, b"\0" * (8 + self._reserve))

    def _io(self, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            self._file.close()
            if e.errno == errno.ENOSPC:
                raise LlmpruneError(f"Disk full while writing {self.path}; free space and rerun (nothing was published).") from None
            raise

    def write(self, name: str, tensor: torch.Tensor) -> None:
        i = len(self._header)
        if i >= len(self._names) or self._names[i] != name:
            raise ValueError(f"{self.path.name}: '{name}' written out of the declared order")
        t = tensor.detach().contiguous().cpu()
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        n = t.numel() * t.element_size()
        self._header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [self._offset, self._offset + n]}
        self._offset += n
        self._io(self._file.write, memoryview(data) if n else b"")

    def copy(self, name: str, ckpt: "Checkpoint") -> None:
        """Copy a tensor unchanged from a checkpoint, block by block (.bin or packed tensors are loaded instead)."""
        info = ckpt.info(name)
        if info.file.suffix != ".safetensors" or info.packed:
            return self.write(name, ckpt.read(name))
        i = len(self._header)
        if i >= len(self._names) or self._names[i] != name:
            raise ValueError(f"{self.path.name}: '{name}' written out of the declared order")
        n = info.end - info.start
        self._header[name] = {"dtype": DTYPE_NAMES[info.dtype], "shape": list(info.shape),
                              "data_offsets": [self._offset, self._offset + n]}
        self._offset += n
        for data in ckpt.iter_bytes(name):
            self._io(self._file.write, data)

    def close(self) -> None:
        if len(self._header) != len(self._names):
            raise ValueError(f"{self.path.name}: wrote {len(self._header)} of {len(self._names)} tensors")
        header = dict(self._header)
        if self.metadata:
            header["__metadata__"] = self.metadata
        blob = json.dumps(header, separators=(",", ":")).encode()
        if len(blob) > self._reserve:
            raise ValueError(f"{self.path.name}: header larger than reserved")
        self._file.seek(0)
        self._io(self._file.write, self._reserve.to_bytes(8, "little") + blob + b" " * (self._reserve - len(blob)))
        self._io(self._file.flush)
        os.fsync(self._file.fileno())
        self._file.close()

    @property
    def nbytes(self) -> int:
        return 8 + self._reserve + self._offset


def write_index(out: Path, weight_map: dict[str, str], total_size: int) -> None:
    if len(set(weight_map.values())) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def copy_aux_files(src: Path, dst: Path) -> None:
    """Copy config, tokenizer and generation files: every top-level file that is not weights or an index."""
    for f in sorted(Path(src).iterdir()):
        if f.is_file() and f.suffix not in WEIGHT_SUFFIXES and f.name not in INDEX_FILES and f.suffix != ".gguf":
            shutil.copyfile(f, dst / f.name)


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def check_output(final: str | Path, overwrite: bool) -> Path:
    """Fail early (before loading anything) when the output exists and --overwrite was not given."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise LlmpruneError(f"Output {final} already exists; pass --overwrite to replace it, or choose another -o.")
    if final.exists() and not final.is_dir():
        raise LlmpruneError(f"Output {final} exists and is not a directory; remove it or choose another -o.")
    return final


def check_not_input(final: str | Path, src: str | Path) -> None:
    """Refuse an output that is the input model's directory or a folder holding it: publishing the output
    (even with --overwrite) would delete the input."""
    final, src = Path(final).resolve(), Path(src).resolve()
    if final == src or final in src.parents:
        what = "the input model" if final == src else "a folder holding the input model"
        raise LlmpruneError(f"Output {final} is {what} {src}: choose another -o (publishing there would delete the input).")


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = False, keep_partial: bool = False):
    """Yield `<final>.partial`; publish it as `final` only when the block completes.

    On any error (Ctrl-C included) the partial directory is removed, unless `keep_partial` (resumable runs
    keep their work there); nothing ever appears under the final name half-written.
    """
    final = check_output(final, overwrite)
    work = partial_path(final)
    if work.exists() and not keep_partial:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        yield work
    except BaseException:
        if not keep_partial:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        trash = final.with_name(final.name + ".old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
        os.replace(work, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
