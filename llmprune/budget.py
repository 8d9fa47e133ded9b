"""Memory budgets (`--max-memory`) in accelerate's meaning and spelling, and the run's scratch folder.

`--max-memory 20GiB` is a budget for the CPU alone; `--max-memory 0=22GiB,cpu=30GiB` gives GPU 0 and the
CPU theirs. Parsed, it is the `max_memory` dict that accelerate's `infer_auto_device_map` takes: devices
named get at most that much (accelerate keeps room in it to bring back the largest layer), devices not
named get nothing, and whatever does not fit is offloaded to disk, into the scratch folder.

The scratch folder holds accelerate's offloaded weights, the pruned values of disk-offloaded weights and
the temporary checkpoints of calibrated levels. It is created for the run and removed after it, also on an
error or Ctrl-C: a fresh folder under `--offload-folder` when one is given (the folder itself is kept),
else under the system's temporary directory (TMPDIR).
"""
from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from pathlib import Path

from .errors import LlmpruneError

UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
FORMS = ("use a size for the CPU alone, like 20GiB, or DEVICE=SIZE pairs like 0=22GiB,cpu=30GiB "
         "(DEVICE: a GPU index or cpu; units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)")

Budget = dict  # {0: bytes, "cpu": bytes}: accelerate's max_memory


def parse_size(text: str) -> int:
    """'600MiB' -> 629145600 bytes; a bare number is bytes. Raises ValueError on anything else."""
    m = _SIZE.fullmatch(text.strip())
    if not m or (m.group(2) and m.group(2).upper() not in UNITS):
        raise ValueError(text)
    return int(float(m.group(1)) * UNITS[m.group(2).upper() or "B"])


def parse_max_memory(text: str | None, gpus: int | None = None) -> Budget | None:
    """`--max-memory` as accelerate's max_memory dict (None when not given); `gpus` (default: what CUDA
    sees) bounds the GPU indices. Any bad value is a one-line error naming the allowed forms."""
    if text is None:
        return None
    budget: Budget = {}
    parts = [p.strip() for p in text.split(",")]
    for part in parts:
        device, sep, size = part.rpartition("=")
        if not sep and len(parts) > 1:
            raise LlmpruneError(f"Invalid --max-memory '{text}': '{part}' names no device; {FORMS}.")
        key = _device(device.strip().lower(), text) if sep else "cpu"
        if key in budget:
            raise LlmpruneError(f"Invalid --max-memory '{text}': {key} is given twice; {FORMS}.")
        try:
            budget[key] = parse_size(size)
        except ValueError:
            raise LlmpruneError(f"Invalid --max-memory '{text}': '{size}' is not a size; {FORMS}.") from None
    indices = [k for k in budget if isinstance(k, int)]
    if indices:
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        missing = [i for i in indices if i >= gpus]
        if missing:
            raise LlmpruneError(f"--max-memory names GPU {missing[0]}, but this machine has {gpus} CUDA GPU(s); "
                                f"give a budget for the CPU alone (e.g. 20GiB) or for GPUs 0..{max(gpus - 1, 0)}.")
    return budget


def _device(name: str, text: str) -> int | str:
    if name == "cpu":
        return "cpu"
    m = re.fullmatch(r"(?:cuda:)?(\d+)", name)
    if m:
        return int(m.group(1))
    raise LlmpruneError(f"Invalid --max-memory '{text}': unknown device '{name}'; {FORMS}.")


def describe(budget: Budget | None) -> str:
    """'GPU 0 22 GiB, cpu 600 MiB' for messages and run records."""
    if budget is None:
        return "unlimited"

    def size(n: int) -> str:
        for unit in ("TiB", "GiB", "MiB", "KiB"):
            if n >= UNITS[unit.upper()]:
                return f"{n / UNITS[unit.upper()]:.4g} {unit}"
        return f"{n} B"

    return ", ".join(f"{'GPU ' + str(k) if isinstance(k, int) else k} {size(v)}" for k, v in budget.items())


@contextlib.contextmanager
def scratch_dir(offload_folder: str | Path | None = None):
    """Yield a fresh folder for offloaded and temporary weights; it is removed when the block ends, however
    it ends. With `offload_folder`, the fresh folder is made inside it (created if needed, then kept)."""
    parent = None
    if offload_folder is not None:
        parent = Path(offload_folder).expanduser()
        if parent.exists() and not parent.is_dir():
            raise LlmpruneError(f"--offload-folder {parent} is a file; give a directory (it is created if missing).")
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="llmprune-offload-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
