"""Build the CPU bitmask kernel into llmprune's cache and print the library path and usable paths.

    .venv/bin/python kernels/cpu/build.py [--force]
"""
import sys

from llmprune.sparse import kernel

if __name__ == "__main__":
    print(kernel.build(force="--force" in sys.argv))
    print("paths:", ", ".join(kernel.available_paths()))
