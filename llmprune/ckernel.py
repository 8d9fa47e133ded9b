"""Building and loading llmprune's C kernels (kernels/cpu/*.c): the one loader both kernels use.

A source is compiled once with the system C compiler into llmprune's cache (`cache_dir("kernels")`), named by
a hash of the source, the flags and the compiler version, and opened with ctypes: about a second to build,
no torch headers involved. Building is atomic (temp file, then rename), so concurrent builders are safe.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

CFLAGS = ("-O3", "-fPIC", "-shared", "-fopenmp", "-std=gnu11")


def source_path(name: str) -> Path:
    """A kernel's C source: kernels/cpu/ in a checkout, or llmprune/_kernels/cpu/ in an installed wheel."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "kernels" / "cpu" / name, here.parent / "_kernels" / "cpu" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found next to llmprune (looked in kernels/cpu and llmprune/_kernels/cpu)")


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def build(name: str, force: bool = False, cflags: tuple[str, ...] = CFLAGS) -> Path:
    """Compile kernels/cpu/`name` into the cache, once per source/flags/compiler; return the library's path."""
    from .assets import cache_dir

    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install gcc)")
    src = source_path(name)
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    key = hashlib.sha256(src.read_bytes() + repr((tuple(cflags), version)).encode()).hexdigest()[:16]
    target = cache_dir("kernels") / f"{Path(name).stem}-{key}.so"
    if target.exists() and not force:
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        done = subprocess.run([cc, *cflags, "-o", str(partial), str(src)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed to build {src.name}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)  # atomic: concurrent builders both write a complete library
    return target


def load(name: str, declare: Callable[[ctypes.CDLL], None],
         cflags: tuple[str, ...] = CFLAGS) -> tuple[ctypes.CDLL | None, str | None]:
    """(library, None) with its prototypes set by `declare`, or (None, why) when it cannot be built or opened."""
    try:
        lib = ctypes.CDLL(str(build(name, cflags=cflags)))
    except (OSError, RuntimeError, FileNotFoundError) as err:
        return None, str(err).splitlines()[0]
    declare(lib)
    return lib, None
