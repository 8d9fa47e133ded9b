"""`llmprune generate`: text from a (pruned) model with its decoding speed, dense and sparse side by side."""
from __future__ import annotations

import click
from rich.table import Table

from ..errors import LlmpruneError
from .common import emit, json_option, stderr, stdout

DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


@click.command("generate")
@click.argument("model")
@click.argument("prompt")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Tokens to generate.")
@click.option("--sparse-kernels", is_flag=True, help="Run pruned linears on sparse kernels: llmprune's bitmask "
              "kernels on CPU (bf16/fp16 weights), torch's 2:4 semi-structured kernels on CUDA.")
@click.option("--compare", is_flag=True, help="Generate with dense fp32, dense bf16 and the sparse kernels, "
              "interleaved, and print each speed and the speed-up over the faster dense one.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed runs per variant with --compare (median).")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy; > 0: sample.")
@click.option("--top-k", type=int, default=None, help="Sample from the k most likely tokens.")
@click.option("--top-p", type=float, default=None, help="Sample from the smallest set of tokens with probability >= p.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--threads", type=int, default=None, help="CPU threads for torch and the kernels [default: all cores].")
@click.option("--dtype", default="auto", show_default=True,
              help="auto, float32, bfloat16, float16. auto: the checkpoint's; bf16 for CPU sparse kernels on an fp32 checkpoint.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the tokenizer's chat template as a user message.")
@click.option("--ignore-eos", is_flag=True, help="Do not stop at end-of-sequence (always max-new-tokens: for timing).")
@json_option
def generate_cmd(model, prompt, max_new_tokens, sparse_kernels, compare, repeats, temperature, top_k, top_p, seed,
                 threads, dtype, device, chat, ignore_eos, as_json):
    """Generate text from MODEL after PROMPT and report decoding tokens/s (prefill not counted).

    \b
    llmprune generate ./pruned "The capital of France is"
    llmprune generate ./pruned "Once upon a time" --sparse-kernels --max-new-tokens 64
    llmprune generate ./pruned "Hello" --compare --ignore-eos      # dense fp32, dense bf16, sparse: speed-up
    llmprune generate smollm2-135m "Tell me a joke" --chat --temperature 0.7 --top-p 0.9
    """
    import torch

    from ..decode import Sampling, compare as compare_runs, dense_variants, forced_logits, generate, tie_check
    from ..models import load_model

    sampling = Sampling(temperature, top_k, top_p, seed)  # validates
    if max_new_tokens < 1:
        raise LlmpruneError(f"--max-new-tokens must be at least 1, got {max_new_tokens}.")
    if repeats < 1:
        raise LlmpruneError(f"--repeats must be at least 1, got {repeats}.")
    if threads is not None and threads < 1:
        raise LlmpruneError(f"--threads must be at least 1, got {threads}.")
    if dtype.lower() not in DTYPES:
        raise LlmpruneError(f"Unknown --dtype '{dtype}'. Available: auto, float32, bfloat16, float16.")
    if not device.startswith(("cpu", "cuda")):
        raise LlmpruneError(f"Unknown --device '{device}': use cpu or cuda[:N].")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise LlmpruneError("--device cuda was given but torch sees no CUDA GPU; use --device cpu.")
    if sparse_kernels and not compare and device == "cpu" and DTYPES[dtype.lower()] == "float32":
        raise LlmpruneError("The CPU sparse kernels read bf16/fp16 weights; use --dtype bfloat16 (or auto).")
    if threads:
        torch.set_num_threads(threads)

    net, tok = load_model(model, dtype=DTYPES[dtype.lower()], device=device)
    if tok is None:
        raise LlmpruneError(f"{model} has no tokenizer: generate needs a text model saved with its tokenizer.")
    if chat:
        if not getattr(tok, "chat_template", None):
            raise LlmpruneError(f"{model}'s tokenizer has no chat template; drop --chat.")
        input_ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        input_ids = tok(prompt, return_tensors="pt").input_ids
    if input_ids.numel() == 0:
        raise LlmpruneError("The prompt is empty after tokenization; give some text.")
    eos = () if ignore_eos else _eos_ids(net, tok)

    runs, notice = {}, None
    if compare or not sparse_kernels:
        runs.update(dense_variants(net) if compare else {"dense": net})
    if compare or sparse_kernels:
        runs["sparse"], notice = _sparse_variant(net, runs)
        stderr.print(notice)
    timed = compare_runs(runs, input_ids, max_new_tokens, repeats if compare else 1, sampling, eos)

    rows = []
    dense_names = [n for n in timed if n != "sparse"]
    best_dense = max(dense_names, key=lambda n: timed[n].median_tokens_per_s) if dense_names else None
    agreement = None
    if compare and sampling.greedy:  # sparse vs dense of the same dtype, fed the same tokens
        same_dtype = "dense " + _dtype_name(next(runs["sparse"].parameters()).dtype)
        if same_dtype in runs:
            ref_ids = timed[same_dtype].generation.ids[0]
            agreement = tie_check(forced_logits(runs[same_dtype], input_ids, ref_ids),
                                  forced_logits(runs["sparse"], input_ids, ref_ids))
            agreement["reference"] = same_dtype
            agreement["free_running_equal"] = bool(torch.equal(timed["sparse"].generation.ids, timed[same_dtype].generation.ids))
    for name, t in timed.items():
        ids = _trim(t.generation.ids[0].tolist(), eos)
        rows.append({"variant": name, "dtype": _dtype_name(next(runs[name].parameters()).dtype),
                     "tokens_per_s": t.median_tokens_per_s, "runs_tokens_per_s": t.tokens_per_s,
                     "new_tokens": len(ids), "prefill_s": t.generation.prefill_s,
                     "speedup_vs_best_dense": (t.median_tokens_per_s / timed[best_dense].median_tokens_per_s
                                               if best_dense else None),
                     "text": tok.decode(ids, skip_special_tokens=True)})
    shown = rows[-1]  # the sparse run when there is one
    result = {"model": str(model), "prompt": prompt, "text": shown["text"], "device": device,
              "threads": torch.get_num_threads(), "sampling": vars(sampling) | {"greedy": sampling.greedy},
              "sparse_kernels": notice, "runs": rows, "best_dense": best_dense, "agreement": agreement}
    if as_json:
        emit(result, True)
        return
    stdout.print(prompt + shown["text"], markup=False, highlight=False)
    table = Table(title=f"decoding speed ({result['threads']} threads, {device}, prefill not counted)")
    for col in ("variant", "dtype", "new tokens", "tokens/s", "vs best dense"):
        table.add_column(col, justify="left" if col in ("variant", "dtype") else "right")
    for r in rows:
        speedup = "" if r["speedup_vs_best_dense"] is None or len(rows) == 1 else f"{r['speedup_vs_best_dense']:.2f}x"
        table.add_row(r["variant"], r["dtype"], str(r["new_tokens"]), f"{r['tokens_per_s']:.1f}", speedup)
    stdout.print(table)
    if agreement:
        stdout.print(_agreement_line(agreement))


def _sparse_variant(net, dense: dict):
    """The model on sparse kernels (a copy when dense variants also run) and the notice of what ran where.
    fp32 weights become bf16 first: both kernels read 16-bit values."""
    import copy

    import torch

    from ..sparse.semi import use_sparse_kernels_

    own = next(net.parameters()).dtype
    want = torch.bfloat16 if own == torch.float32 else own
    source = next((m for m in dense.values() if next(m.parameters()).dtype == want), None)
    if source is not None:
        sparse = copy.deepcopy(source)
    else:
        sparse = (copy.deepcopy(net) if dense else net).to(want)
    notice = use_sparse_kernels_(sparse)
    return sparse, notice + (" (fp32 checkpoint run in bf16: the kernels read 16-bit weights)" if own != want else "")


def _eos_ids(net, tok) -> tuple[int, ...]:
    ids = getattr(net.generation_config, "eos_token_id", None) if getattr(net, "generation_config", None) else None
    ids = tok.eos_token_id if ids is None else ids
    return () if ids is None else tuple(ids if isinstance(ids, (list, tuple)) else [ids])


def _trim(ids: list[int], eos) -> list[int]:
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i]
    return ids


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "").replace("float32", "fp32").replace("bfloat16", "bf16").replace("float16", "fp16")


def _agreement_line(a: dict) -> str:
    if a["free_running_equal"] and not a["ties"] and not a["real"]:
        return f"greedy tokens: sparse equals {a['reference']} at all {a['steps']} steps"
    line = (f"greedy tokens fed the {a['reference']} ones: {a['exact']}/{a['steps']} steps equal, {a['ties']} "
            f"differ only at a bf16 tie (within 2 ulps)")
    if a["real"]:
        line += f", {len(a['real'])} differ by more (steps {a['real'][:8]})"
    return line
