"""What examples/gpu_check.py needs besides the checks: offline models and data, CLI calls, checkpoint diffs,
timing, and the report (JSON written atomically, a markdown table).

Everything here works without a network: LLaMA-shaped checkpoints are built from configs with a byte-level
tokenizer (258 ids: <s>, </s> and the 256 bytes), the stand-in language model is fitted for a few steps to
Python's pydoc text (so that its perplexity moves when its weights are perturbed), and the MMLU-style
questions are cut from the same text for all 57 subject names. The CLI runs in this process through click's
CliRunner, so a check can read the GPU's peak memory around it.
"""
from __future__ import annotations

import json
import math
import os
import random
import re
import time
from pathlib import Path

import torch

# Decoder-layer shapes (LLaMA family); the embeddings are sized by the byte tokenizer unless a vocab is given.
SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=40),
    "lm": dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=2),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2),
}
BYTE_VOCAB = 258


class CliFailed(RuntimeError):
    """`llmprune ...` exited non-zero; the message is its last line of output."""


def byte_tokenizer():
    """A real fast tokenizer: <s>=0, </s>=1, then one id per byte (matches BYTE_VOCAB)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def llama_config(shape: str, layers: int, vocab: int = BYTE_VOCAB, context: int = 4096):
    from transformers import LlamaConfig

    return LlamaConfig(**SHAPES[shape], num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=context,
                       bos_token_id=0, eos_token_id=1, pad_token_id=1)


def save_synthetic(path: Path, shape: str, layers: int, fit_steps: int = 0, device: str = "cpu", seed: int = 0,
                   fit_batch: tuple[int, int] = (16, 256)) -> Path:
    """A random-init LLaMA of `shape` with the byte tokenizer, saved in fp32 (once: reused if present).

    `fit_steps` > 0 first trains it that many AdamW steps on the pydoc train text, on `device`, with batches
    of `fit_batch` (samples, tokens).
    """
    from transformers import LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").exists():
        return path
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(shape, layers))
    tok = byte_tokenizer()
    if fit_steps:
        fit_briefly_(model.to(device), tok, fit_steps, *fit_batch)
    partial = path.with_name(path.name + ".partial")
    model.to("cpu").save_pretrained(partial)
    tok.save_pretrained(partial)
    partial.rename(path)
    return path


def fit_briefly_(model, tok, steps: int, batch: int = 16, seqlen: int = 256, lr: float = 3e-3) -> float:
    """Next-token training on random windows of the pydoc train text; returns the last loss."""
    from llmprune.calib import sample_windows, tokenize
    from llmprune.data import load_text

    device = next(model.parameters()).device
    text = tokenize(tok, load_text("pydoc", "train"))  # (tokens,)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        ids = sample_windows(text, batch, seqlen, seed=step).to(device)  # (batch, seqlen)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return loss.item()


def synthetic_mmlu(path: Path, per_subject: int = 2, subjects=None, seed: int = 0) -> Path:
    """MMLU-layout questions (cais jsonl) for `subjects` (default: all 57), cut from the pydoc test text: the
    start of a line is the question, its true ending one choice and three other lines' endings the rest."""
    from llmprune.data import load_text
    from llmprune.eval.mmlu_data import SUBJECTS

    lines = [ln.strip() for ln in load_text("pydoc", "test").splitlines() if 60 <= len(ln.strip()) <= 200]
    rng = random.Random(seed)
    rows = []
    for subject in subjects or SUBJECTS:
        for _ in range(per_subject):
            picked = rng.sample(lines, 4)
            cut = len(picked[0]) // 2
            answer = rng.randrange(4)
            endings = [ln[len(ln) // 2:] for ln in picked[1:]]
            endings.insert(answer, picked[0][cut:])
            rows.append({"question": picked[0][:cut], "subject": subject, "choices": endings, "answer": answer})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def invoke(args: list[str]) -> dict:
    """Run `llmprune ARGS --json` in this process and return its JSON; CliFailed with the error otherwise."""
    from click.testing import CliRunner

    from llmprune.cli import main

    result = CliRunner().invoke(main, [*map(str, args), "--json"])
    stdout = getattr(result, "stdout", result.output)
    if result.exit_code != 0:
        exc = result.exception
        if exc is not None and not isinstance(exc, SystemExit):
            raise CliFailed(f"{type(exc).__name__}: {exc}".splitlines()[0][:400])
        lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
        raise CliFailed((lines[-1] if lines else f"exit code {result.exit_code}")[:400])
    start = stdout.find("{")
    if start < 0:
        raise CliFailed(f"no JSON on stdout: {stdout[-200:]!r}")
    return json.JSONDecoder().raw_decode(stdout[start:])[0]


def sparse_kernel_count(notice: str) -> int:
    """How many linears `use_sparse_kernels_`'s notice says were swapped ('N of M linears on ...'); 0 if none."""
    m = re.match(r"(\d+) (?:of \d+ )?linears on ", notice or "")
    return int(m.group(1)) if m else 0


def weight_diff(ref: torch.Tensor, other: torch.Tensor) -> tuple[int, float, int]:
    """(entries whose pruned/kept state differs, ||other - ref|| / ||ref||, zeros of ref) for two weights."""
    ref, other = ref.float(), other.float()
    mismatch = int(((ref == 0) != (other == 0)).sum())
    rel = float((other - ref).norm() / ref.norm().clamp_min(1e-30))
    return mismatch, rel, int((ref == 0).sum())


def compare_pruned(ref_dir: Path, other_dir: Path) -> dict:
    """Masks and weights of every 2-D decoder-layer tensor of two pruned checkpoints of the same model."""
    from llmprune.io import Checkpoint

    ref, other = Checkpoint(ref_dir), Checkpoint(other_dir)
    names = [n for n in ref.names if ".layers." in n and len(ref.info(n).shape) == 2]
    if sorted(names) != sorted(n for n in other.names if ".layers." in n and len(other.info(n).shape) == 2):
        raise ValueError(f"{ref_dir} and {other_dir} hold different decoder tensors")
    mismatch = total = zeros = 0
    worst = 0.0
    for name in names:
        m, rel, z = weight_diff(ref.read(name), other.read(name))
        mismatch, zeros, total, worst = mismatch + m, zeros + z, total + math.prod(ref.info(name).shape), max(worst, rel)
    return {"tensors": len(names), "weights": total, "sparsity": zeros / max(total, 1), "mask_mismatch": mismatch,
            "mask_mismatch_frac": mismatch / max(total, 1), "max_rel_err": worst}


# ---- timing ------------------------------------------------------------------------------------------

def timed(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median seconds of fn() over `reps` runs after `warmup`, synchronising CUDA around each."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def geomean(xs) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


# ---- the report --------------------------------------------------------------------------------------

def environment(device: torch.device) -> dict:
    """Device, versions and threads the figures were taken with."""
    from importlib.metadata import PackageNotFoundError, version

    import llmprune

    env = {"device": str(device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "llmprune": llmprune.__version__}
    for pkg in ("transformers", "accelerate", "bitsandbytes", "lm_eval", "click"):
        try:
            env[pkg] = version(pkg)
        except PackageNotFoundError:
            env[pkg] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lt = torch.backends.cusparselt
        env.update(gpu=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                   gpu_memory_gib=props.total_memory / 2**30, cusparselt=lt.version() if lt.is_available() else None)
    return env


def write_json_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str))
    os.replace(partial, path)


def table(report: dict) -> str:
    """The rows as a markdown table under one line naming the machine and versions."""
    env = report["environment"]
    lines = [f"{env.get('gpu', env['device'])} | torch {env['torch']} | transformers {env['transformers']} | "
             f"bitsandbytes {env['bitsandbytes']} | lm_eval {env['lm_eval']} | {report['elapsed_s']:.0f} s",
             "", "| check | status | figures | s | GPU MiB |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        what = r.get("summary") or r.get("error") or r.get("reason", "")
        mib = "-" if r.get("gpu_peak_mib") is None else f"{r['gpu_peak_mib']:,.0f}"
        lines.append(f"| {r['name']} | {r['status']} | {what} | {r.get('wall_s', 0):.1f} | {mib} |")
    return "\n".join(lines)
