"""Unpack into one folder the packages that examples/gpu_check.py needs and a bare GPU image may lack.

    python examples/gpu_check_site.py [DIR]        # here, where PyPI is reachable (default DIR: .gpu_site)
    PYTHONPATH=$PWD/.gpu_site:$PWD python3 examples/gpu_check.py --out $OUT/gpu_check.json    # there

For a machine that has torch, transformers and accelerate but no network: lm_eval and the modules it
imports during `llmprune eval` (datasets, dill, multiprocess), and bitsandbytes with only its CUDA 13
libraries (8 of its 43 MB); about 13 MiB in all. Wheels for CPython 3.12 on x86-64 Linux are fetched with `pip download
--no-deps` and unzipped as they are (dist-info included, so `importlib.metadata` finds their versions);
nothing is installed. Pass other pins with --packages.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = ["lm_eval==0.4.13", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "bitsandbytes==0.50.2"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64"]


def keep(member: str) -> bool:
    """Every file of a wheel except bitsandbytes' libraries for other CUDA versions, ROCm and XPU, and
    lm_eval's ~15,000 built-in task files (llmprune writes its own MMLU task folder)."""
    parts = Path(member).parts
    if parts[:2] == ("lm_eval", "tasks") and len(parts) > 3:
        return False
    name = parts[-1]
    if not name.startswith("libbitsandbytes_"):
        return True
    return name.startswith(("libbitsandbytes_cpu", "libbitsandbytes_cuda13"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", nargs="?", default=".gpu_site")
    p.add_argument("--packages", nargs="+", default=PACKAGES)
    p.add_argument("--python-version", default="3.12")
    args = p.parse_args()
    target = Path(args.dir)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp",
               *[f"--platform={p}" for p in PLATFORMS], "-d", tmp, *args.packages]
        subprocess.run(cmd, check=True)
        target.mkdir(parents=True, exist_ok=True)
        for wheel in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                members = [m for m in zf.namelist() if keep(m)]
                zf.extractall(target, members)
            print(f"{wheel.name}: {len(members)} files", file=sys.stderr)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
