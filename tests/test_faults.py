"""Bad input and faults through the real CLI: every case exits non-zero with one `Error:` line that says what
is allowed, and leaves nothing under the final output name (an existing output, or the input, unchanged).
Then the faults a run meets from outside: Ctrl-C (also when the parent started it with SIGINT ignored, as a
shell does for background jobs) and kill -9, after which a rerun resumes to byte-identical output."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import llmprune
from llmprune.cli import main
from llmprune.cli.common import INTERRUPTED
from tiny import byte_tokenizer, save_tiny_lm

DOWN = "model.layers.1.mlp.down_proj.weight"
CALIB = "the quick brown fox jumps over the lazy dog. " * 60


def _variant(root: Path, name: str, base: Path) -> Path:
    d = root / name
    shutil.copytree(base, d)
    return d


def _edit_config(d: Path, **changes) -> Path:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _edit_tensors(d: Path, fn) -> Path:
    f = d / "model.safetensors"
    tensors = load_file(str(f))
    fn(tensors)
    save_file(tensors, str(f), metadata={"format": "pt"})
    return d


def _set(name, value, dtype=None):
    def fn(t):
        if dtype is not None:
            for k, v in t.items():
                t[k] = v.to(dtype)
        t[name][3, 5] = value
    return fn


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """Paths: a good tiny model (and a sharded one), broken copies of it, calibration files, an old output."""
    root = tmp_path_factory.mktemp("faults")
    src = save_tiny_lm("llama", root / "src")
    sharded = save_tiny_lm("llama", root / "sharded", max_shard_size="100KB")
    p = {"root": root, "src": src, "sharded": sharded, "out": root / "out"}
    raw = (src / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")

    def shard(name, data):
        d = _variant(root, name, src)
        (d / "model.safetensors").write_bytes(data)
        return d

    p["garbage"] = shard("garbage", os.urandom(4096))
    p["truncated"] = shard("truncated", raw[: len(raw) // 2])
    p["empty"] = shard("empty", b"")
    p["header_not_json"] = shard("header_not_json", raw[:8] + b"{" * n + raw[8 + n:])
    header = json.loads(raw[8:8 + n])
    header[DOWN]["dtype"] = "F4"
    blob = json.dumps(header, separators=(",", ":")).encode()
    p["bad_dtype"] = shard("bad_dtype", raw[:8] + blob + b" " * (n - len(blob)) + raw[8 + n:])
    d = _variant(root, "missing_shard", sharded)
    sorted(d.glob("model-*.safetensors"))[1].unlink()
    p["missing_shard"] = d
    d = _variant(root, "index_garbage", sharded)
    (d / "model.safetensors.index.json").write_text("{nope")
    p["index_garbage"] = d
    d = _variant(root, "index_stale", sharded)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.7.mlp.up_proj.weight"] = "model-00001-of-00005.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    p["index_stale"] = d
    d = _variant(root, "config_garbage", src)
    (d / "config.json").write_text("{not json")
    p["config_garbage"] = d
    d = _variant(root, "no_config", src)
    (d / "config.json").unlink()
    p["no_config"] = d
    d = _variant(root, "no_weights", src)
    (d / "model.safetensors").unlink()
    p["no_weights"] = d
    d = _variant(root, "garbage_bin", src)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(os.urandom(2048))
    p["garbage_bin"] = d
    d = _variant(root, "duplicate", sharded)
    first, second = sorted(d.glob("model-*.safetensors"))[:2]
    a, b = load_file(str(first)), load_file(str(second))
    b[next(iter(a))] = next(iter(a.values()))
    save_file(b, str(second), metadata={"format": "pt"})
    p["duplicate"] = d
    p["unknown_arch"] = _edit_config(_variant(root, "unknown_arch", src), model_type="fancynet")
    p["remote_code"] = _edit_config(_variant(root, "remote_code", src), model_type="mycustom",
                                    auto_map={"AutoConfig": "configuration_my.MyConfig",
                                              "AutoModelForCausalLM": "modeling_my.MyForCausalLM"})
    p["quantized"] = _edit_config(_variant(root, "quantized", src),
                                  quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    p["int8"] = _edit_tensors(_variant(root, "int8", src),
                              lambda t: t.__setitem__(DOWN, torch.zeros(64, 128, dtype=torch.int8)))
    p["nan32"] = _edit_tensors(_variant(root, "nan32", src), _set(DOWN, float("nan")))
    p["infbf16"] = _edit_tensors(_variant(root, "infbf16", src), _set(DOWN, float("inf"), torch.bfloat16))
    p["ninf16"] = _edit_tensors(_variant(root, "ninf16", src), _set(DOWN, float("-inf"), torch.float16))
    (root / "calib.txt").write_text(CALIB)
    (root / "empty.txt").write_text("")
    (root / "short.txt").write_text("tiny")
    (root / "notext.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    (root / "afile").write_text("keep me")
    p.update({k: root / f for k, f in (("calib", "calib.txt"), ("empty_txt", "empty.txt"), ("short_txt", "short.txt"),
                                        ("notext", "notext.jsonl"), ("afile", "afile"), ("missing_txt", "missing.txt"))})
    old = root / "old_out"
    old.mkdir()
    (old / "keep.txt").write_text("old result")
    p["old_out"] = old
    imp = root / "imp"
    for r in ("round1", "round2"):
        shutil.copytree(src, imp / r)
    p["imp"] = imp
    bad_run = _variant(root, "bad_run", src)
    (bad_run / "run.json").write_text("[1, 2]")
    p["bad_run"] = bad_run
    return p


def snapshot(path: Path) -> dict:
    """{relative path: sha256} of a file or directory tree ({} when absent)."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()} if path.exists() else {}


def assert_one_line_error(r, code: int, *fragments: str) -> str:
    assert r.exit_code == code, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.output  # one line, and the last thing said
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


P = ["prune", "{src}", "-o", "{out}"]
CAL = ["--calib", "{calib}", "--calib-samples", "2", "--seqlen", "16"]
# (id, argv with {placeholders} from the `w` fixture, exit code, fragments of the error line)
CASES = [
    ("sparsity-out-of-range", P + ["--sparsity", "1.5"], 1, ["Sparsity 1.5 is out of range", "[0, 1)"]),
    ("sparsity-not-a-number", P + ["--sparsity", "abc"], 2, ["'--sparsity'", "not a valid float"]),
    ("pattern-n-above-m", P + ["--pattern", "4:2"], 1, ["need 0 < N < M", "2:4"]),
    ("pattern-indivisible", P + ["--pattern", "2:3"], 1, ["not divisible by M=3", "--exclude"]),
    ("pattern-and-sparsity", P + ["--pattern", "2:4", "--sparsity", "0.3"], 1, ["--sparsity or --pattern, not both"]),
    ("method-typo", P + ["--method", "wandaa"], 1, ["Did you mean 'wanda'?", "magnitude, sparsegpt, wanda"]),
    ("scope-typo", P + ["--scope", "globl"], 1, ["Did you mean 'global'?", "global, layer, row"]),
    ("format-typo", P + ["--format", "sparce"], 1, ["Did you mean 'sparse'?", "dense, sparse"]),
    ("calibrated-global-scope", P + ["--method", "wanda", "--scope", "global", *CAL], 1, ["use --scope layer or row"]),
    ("calib-flag-with-magnitude", P + ["--calib", "{calib}"], 1, ["--calib: only for --method wanda or sparsegpt"]),
    ("negative-threads", P + ["--threads", "-1"], 1, ["--threads -1", "positive count, or 0"]),
    ("zero-calib-samples", P + ["--method", "wanda", "--calib-samples", "0"], 1, ["--calib-samples 0", "positive integer"]),
    ("unknown-device", P + ["--method", "wanda", "--device", "tpu", *CAL], 1, ["Unknown device 'tpu'", "cpu, cuda"]),
    ("bad-regex", P + ["--include", "["], 1, ["Invalid regex '['"]),
    ("nothing-matched", P + ["--include", "nomatch"], 1, ["No prunable weights matched", "--include/--exclude"]),
    ("model-missing", ["prune", "{root}/nope", "-o", "{out}"], 1, ["not found", "smollm2-135m"]),
    ("model-is-a-file", ["prune", "{afile}", "-o", "{out}"], 1, ["is a file; MODEL must be a directory"]),
    ("garbage-shard", ["prune", "{garbage}", "-o", "{out}"], 1, ["Corrupt or truncated shard"]),
    ("truncated-shard", ["prune", "{truncated}", "-o", "{out}"], 1, ["lies beyond the end of the file"]),
    ("empty-shard", ["prune", "{empty}", "-o", "{out}"], 1, ["shorter than a safetensors header"]),
    ("header-not-json", ["prune", "{header_not_json}", "-o", "{out}"], 1, ["header is not valid JSON"]),
    ("unsupported-dtype", ["prune", "{bad_dtype}", "-o", "{out}"], 1, ["Unsupported dtype F4", DOWN]),
    ("index-lists-missing-shard", ["prune", "{missing_shard}", "-o", "{out}"], 1, ["lists missing shard(s) model-00002"]),
    ("index-garbage", ["prune", "{index_garbage}", "-o", "{out}"], 1, ["index.json is not valid JSON", "weight_map"]),
    ("index-names-absent-tensor", ["prune", "{index_stale}", "-o", "{out}"], 1, ["model.layers.7.mlp.up_proj.weight",
                                                                                  "no shard holds it"]),
    ("config-garbage", ["prune", "{config_garbage}", "-o", "{out}"], 1, ["config.json is not valid JSON"]),
    ("config-missing", ["prune", "{no_config}", "-o", "{out}"], 1, ["has no config.json"]),
    ("no-weights", ["prune", "{no_weights}", "-o", "{out}"], 1, ["has no weights", "*.safetensors"]),
    ("garbage-bin", ["prune", "{garbage_bin}", "-o", "{out}"], 1, ["Cannot read checkpoint file", "pytorch_model.bin"]),
    ("tensor-in-two-shards", ["prune", "{duplicate}", "-o", "{out}"], 1, ["appears in both"]),
    ("unknown-architecture", ["prune", "{unknown_arch}", "-o", "{out}"], 1, ["Unsupported architecture 'fancynet'",
                                                                            "Supported model types: bert"]),
    ("remote-code", ["prune", "{remote_code}", "-o", "{out}"], 1, ["modeling_my.MyForCausalLM", "never runs remote code"]),
    ("quantized-checkpoint", ["prune", "{quantized}", "-o", "{out}"], 1, ["quantized (bitsandbytes)", "float weights only"]),
    ("int8-weight", ["prune", "{int8}", "-o", "{out}"], 1, [DOWN, "int8, not floating point"]),
    ("nan-global", ["prune", "{nan32}", "-o", "{out}"], 1, [f"Weight '{DOWN}' holds NaN or inf"]),
    ("inf-bf16-global", ["prune", "{infbf16}", "-o", "{out}"], 1, [f"Weight '{DOWN}' holds NaN or inf"]),
    ("neg-inf-fp16-layer", ["prune", "{ninf16}", "-o", "{out}", "--scope", "layer"], 1, [f"Weight '{DOWN}' holds NaN"]),
    ("nan-row", ["prune", "{nan32}", "-o", "{out}", "--scope", "row"], 1, [f"Weight '{DOWN}' holds NaN or inf"]),
    ("nan-2:4", ["prune", "{nan32}", "-o", "{out}", "--pattern", "2:4"], 1, [f"Weight '{DOWN}' holds NaN or inf"]),
    ("nan-sparsegpt", ["prune", "{nan32}", "-o", "{out}", "--method", "sparsegpt", *CAL], 1, [f"Weight '{DOWN}' holds NaN"]),
    ("calib-empty", P + ["--method", "wanda", "--calib", "{empty_txt}"], 1, ["has 0 tokens", "smaller --seqlen"]),
    ("calib-missing", P + ["--method", "wanda", "--calib", "{missing_txt}"], 1, ["does not exist", "pydoc, wikitext2, c4"]),
    ("calib-too-short", P + ["--method", "wanda", "--calib", "{short_txt}", "--seqlen", "64"], 1, ["has 4 tokens",
                                                                                                  "seqlen=64"]),
    ("calib-unknown-source", P + ["--method", "wanda", "--calib", "c5"], 1, ["Unknown text source 'c5'", "wikitext2"]),
    ("calib-jsonl-without-text", P + ["--method", "wanda", "--calib", "{notext}"], 1, ["has no string field 'text'"]),
    ("output-exists", ["prune", "{src}", "-o", "{old_out}"], 1, ["already exists; pass --overwrite"]),
    ("output-is-a-file", ["prune", "{src}", "-o", "{afile}", "--overwrite"], 1, ["is not a directory"]),
    ("output-is-the-input", ["prune", "{src}", "-o", "{src}", "--overwrite"], 1, ["is the input model",
                                                                                  "would delete the input"]),
    ("finetune-output-is-the-input", ["finetune", "{src}", "--task", "text", "-o", "{src}", "--overwrite"], 1,
     ["is the input model"]),
    ("output-holds-the-input", ["convert", "{src}", "--format", "sparse", "-o", "{root}", "--overwrite"], 1,
     ["a folder holding the input model"]),
    ("eval-4bit-and-sparsity", ["eval", "ppl", "{src}", "--load-in-4bit", "--sparsity", "0.5"], 1,
     ["cannot be combined with --sparsity/--pattern", "Prune first"]),
    ("eval-8bit-and-pattern", ["eval", "ppl", "{src}", "--load-in-8bit", "--pattern", "2:4"], 1, ["--load-in-8bit cannot"]),
    ("eval-both-bit-widths", ["eval", "ppl", "{src}", "--load-in-8bit", "--load-in-4bit"], 1, ["choose one"]),
    ("eval-zero-limit", ["eval", "ppl", "{src}", "--limit", "0"], 1, ["--limit 0", "positive integer"]),
    ("eval-unknown-device", ["eval", "ppl", "{src}", "--device", "tpu"], 1, ["Unknown device 'tpu'", "auto, cpu"]),
    ("eval-unknown-dtype", ["eval", "ppl", "{src}", "--dtype", "float8"], 1, ["Unknown dtype 'float8'", "bfloat16"]),
    ("eval-calib-without-pruning", ["eval", "ppl", "{src}", "--calib", "{calib}"], 1, ["--calib is only for pruning"]),
    ("sweep-bad-range", ["sweep", "{src}", "--sparsities", "0:1.5:0.1", "-o", "{out}"], 1, ["out of range", "start:stop:step"]),
    ("sweep-levels-and-patterns", ["sweep", "{src}", "--sparsities", "0.5", "--pattern", "2:4", "-o", "{out}"], 1,
     ["not both"]),
    ("sweep-unknown-device", ["sweep", "{src}", "--device", "tpu", "-o", "{out}"], 1, ["Unknown device 'tpu'"]),
    ("sweep-empty-calib", ["sweep", "{src}", "--method", "wanda", "--sparsities", "0.5", "--calib", "{empty_txt}",
                           "--seqlen", "16", "-o", "{out}"], 1, ["has 0 tokens"]),
    ("finetune-unknown-task", ["finetune", "{src}", "--task", "glue/sst3", "-o", "{out}"], 1, ["Did you mean 'glue/sst2'"]),
    ("finetune-sparsity-and-mask", ["finetune", "{src}", "--task", "text", "--sparsity", "0.5", "--mask-from", "{src}",
                                    "-o", "{out}"], 1, ["not both"]),
    ("finetune-sparsity-range", ["finetune", "{src}", "--task", "text", "--sparsity", "1.2", "-o", "{out}"], 1,
     ["Sparsity 1.2 is out of range"]),
    ("convert-unknown-format", ["convert", "{src}", "--format", "csr", "-o", "{out}"], 1, ["Unknown format 'csr'"]),
    ("convert-garbage-shard", ["convert", "{garbage}", "--format", "sparse", "-o", "{out}"], 1, ["Corrupt or truncated"]),
    ("push-not-an-output", ["push", "{src}", "me/x", "--dry-run"], 1, ["not an llmprune output: missing run.json"]),
    ("push-run-json-not-an-object", ["push", "{bad_run}", "me/x", "--dry-run"], 1, ["run.json is not a JSON object"]),
    ("push-imp-folder", ["push", "{imp}", "me/x", "--dry-run"], 1, ["holds the rounds of an IMP run", "round2"]),
    ("inspect-bad-pattern", ["inspect", "{src}", "--pattern", "5:4"], 1, ["need 0 < N < M"]),
]


@pytest.mark.parametrize("argv, code, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error_and_leaves_nothing(w, argv, code, fragments):
    out = w["out"]
    watched = [w["src"], w["old_out"], w["afile"]]
    before = [snapshot(p) for p in watched]
    r = CliRunner().invoke(main, [a.format(**w) for a in argv])
    assert_one_line_error(r, code, *fragments)
    assert not out.exists()  # nothing under the final name
    if "--method" not in argv:  # (calibrated runs keep their resumable work in OUT.partial)
        assert not Path(f"{out}.partial").exists()
    shutil.rmtree(f"{out}.partial", ignore_errors=True)
    assert [snapshot(p) for p in watched] == before  # the input, an old output, a file: untouched


def test_battery_is_large():
    assert len(CASES) >= 30


def test_nan_refused_on_the_torch_path_too(w, monkeypatch):
    """Without the C kernel, the torch histogram sees the same NaN bins."""
    from llmprune.methods import fast

    for fn in ("hist_high15", "apply_threshold_", "keep_mask"):
        monkeypatch.setattr(fast, fn, lambda *a, **k: None)
    for model in (w["nan32"], w["infbf16"]):
        r = CliRunner().invoke(main, ["prune", str(model), "-o", str(w["out"])])
        assert_one_line_error(r, 1, f"Weight '{DOWN}' holds NaN or inf")
        assert not w["out"].exists() and not Path(f"{w['out']}.partial").exists()


def test_nan_refused_by_wanda_naming_the_tensor(w):
    r = CliRunner().invoke(main, ["prune", str(w["nan32"]), "-o", str(w["out"]), "--method", "wanda",
                                  *[a.format(**w) for a in CAL]])
    shutil.rmtree(f"{w['out']}.partial", ignore_errors=True)
    assert_one_line_error(r, 1, f"Weight '{DOWN}' holds NaN or inf")


def test_nan_refused_before_pruning_in_memory(w):
    r = CliRunner().invoke(main, ["eval", "ppl", str(w["nan32"]), "--sparsity", "0.5", "--seqlen", "16", "--limit", "1"])
    assert_one_line_error(r, 1, f"Weight '{DOWN}' holds NaN or inf")


@pytest.mark.parametrize("where, argv", [
    ("llmprune.output.ShardWriter.close", ["prune", "{src}", "-o", "{out}", "--sparsity", "0.5"]),
    ("llmprune.output.ShardWriter.close", ["convert", "{src}", "--format", "sparse", "-o", "{out}"]),
    ("llmprune.eval.ppl.windows_perplexity", ["eval", "ppl", "{src}", "--seqlen", "16", "--limit", "1"]),
], ids=["prune", "convert", "eval"])
def test_ctrl_c_is_exit_130_one_line_and_nothing_published(w, monkeypatch, where, argv):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(where, interrupted)
    r = CliRunner().invoke(main, [a.format(**w) for a in argv])
    assert r.exit_code == 130, r.output
    assert r.output.strip().splitlines()[-1] == INTERRUPTED
    assert not w["out"].exists() and not Path(f"{w['out']}.partial").exists()
    monkeypatch.undo()
    if argv[0] != "eval":  # the rerun starts clean and publishes
        assert CliRunner().invoke(main, [a.format(**w) for a in argv]).exit_code == 0
        shutil.rmtree(w["out"])


# ---------------------------------------------------------------------------------------------------------------
# Real signals on a real process: a calibrated prune of a 4-layer model slow enough to catch between layers.

@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("signals")
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "src")
    byte_tokenizer().save_pretrained(root / "src")
    (root / "calib.txt").write_text(CALIB * 4)
    return root


def _argv(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "from llmprune.cli import main; main()", "prune", str(root / "src"), "--method",
            "sparsegpt", "--sparsity", "0.5", "--calib", str(root / "calib.txt"), "--calib-samples", "16",
            "--seqlen", "128", "-o", str(out)]


def _env() -> dict:
    here = str(Path(llmprune.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _start_and_wait_for_a_layer(root: Path, out: Path, **popen) -> subprocess.Popen:
    proc = subprocess.Popen(_argv(root, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            **popen)
    progress = Path(f"{out}.partial") / "engine" / "progress.json"
    deadline = time.monotonic() + 300
    while not progress.exists():  # layer 0 finished and recorded
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run never finished a layer"
        time.sleep(0.005)
    assert json.loads(progress.read_text())["done"] < 3, "the run outpaced the test"
    return proc


def _digest(path: Path) -> dict:
    return {k: v for k, v in snapshot(path).items() if k != "run.json"}


def _rerun(root: Path, out: Path) -> dict:
    done = subprocess.run(_argv(root, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "run.json").read_text())


def test_sigint_stops_a_prune_whose_parent_ignored_it_then_rerun_resumes(slow):
    """A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop the run."""
    out = slow / "interrupted"
    proc = _start_and_wait_for_a_layer(slow, out, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # a hang guard, not a timing assert
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED
    assert not out.exists()
    record = _rerun(slow, out)
    assert record["resumed_after_layer"] is not None and record["resumed_after_layer"] >= 0


def test_kill_9_mid_prune_then_rerun_resumes_to_identical_bytes(slow):
    clean = slow / "clean"
    assert _rerun(slow, clean)["resumed_after_layer"] is None
    out = slow / "killed"
    proc = _start_and_wait_for_a_layer(slow, out)
    proc.kill()
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    record = _rerun(slow, out)
    assert record["resumed_after_layer"] >= 0
    assert _digest(out) == _digest(clean)
