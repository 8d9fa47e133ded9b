"""Timed generation (llmprune.decode) and `llmprune generate`: token choice, parity with transformers, the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from llmprune.cli import main
from llmprune.decode import Sampling, compare, forced_logits, generate, next_token, tie_check
from llmprune.errors import LlmpruneError
from tiny import byte_tokenizer, tiny_model


def test_next_token_greedy_and_restricted_sampling():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9], [5.0, 0.0, 0.0, 0.0]])
    assert next_token(logits, Sampling()).tolist() == [[1], [0]]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # top-k 1 and a tiny nucleus leave only the argmax to sample
        assert next_token(logits, Sampling(temperature=1.0, top_k=1), g).tolist() == [[1], [0]]
        assert next_token(logits, Sampling(temperature=1.0, top_p=1e-3), g).tolist() == [[1], [0]]
    picks = {int(next_token(logits[:1], Sampling(temperature=1.0, top_k=2), g)) for _ in range(200)}
    assert picks == {1, 3}  # the two best, both drawn
    a = [int(next_token(logits[:1], Sampling(temperature=2.0), torch.Generator().manual_seed(7))) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same draw


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5)])
def test_sampling_rejects_bad_values(bad):
    with pytest.raises(LlmpruneError):
        Sampling(**bad)


def test_greedy_generate_equals_transformers_generate():
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0))
    g = generate(model, ids, 7)
    want = model.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=0)[:, 5:]
    assert torch.equal(g.ids, want)
    assert g.decode_steps == 6 and g.tokens_per_s > 0


def test_generate_stops_once_every_row_saw_eos():
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(1))
    full = generate(model, ids, 6)
    third = int(full.ids[0, 2])
    g = generate(model, ids, 6, eos_ids=[third])
    first = full.ids[0].tolist().index(third)
    assert g.stopped_at_eos and g.ids.shape[1] == first + 1


def test_tie_check_separates_ties_from_real_differences():
    ref = torch.tensor([[10.0, 9.0, 0.0], [8.01, 8.0, 0.0], [4.0, 1.0, 0.0]])
    test = torch.tensor([[10.0, 9.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    # step 0 same; step 1 picks 1, within 2 bf16 ulps of ref's best; step 2 picks 1, 3 below: real
    assert tie_check(ref, test) == {"steps": 3, "exact": 1, "ties": 1, "real": [2]}


def test_compare_interleaves_and_teacher_forcing_reproduces_greedy():
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(2))
    timed = compare({"a": model, "b": model}, ids, 5, repeats=2)
    assert [len(t.tokens_per_s) for t in timed.values()] == [2, 2]
    out = timed["a"].generation.ids[0]
    forced = forced_logits(model, ids, out)
    assert torch.equal(forced.argmax(dim=1), out)


def pruned_tiny_dir(tmp_path, dtype=torch.bfloat16):
    model = tiny_model("llama")
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and name != "lm_head":
                mod.weight.masked_fill_(torch.rand(mod.weight.shape) < 0.5, 0)
    path = tmp_path / "pruned"
    model.to(dtype).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def run_cli(*args):
    return CliRunner().invoke(main, ["generate", *map(str, args)], catch_exceptions=False)


def test_cli_compare_reports_every_variant_and_the_speedup(tmp_path):
    from llmprune.sparse import kernel

    path = pruned_tiny_dir(tmp_path)
    res = run_cli(path, "hello", "--compare", "--json", "--max-new-tokens", 6, "--repeats", 1, "--ignore-eos",
                  "--threads", 1)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["variant"] for r in data["runs"]] == ["dense fp32", "dense bf16", "sparse"]
    assert all(r["new_tokens"] == 6 and r["tokens_per_s"] > 0 for r in data["runs"])
    assert data["best_dense"] in ("dense fp32", "dense bf16")
    best = max(r["tokens_per_s"] for r in data["runs"][:2])
    assert data["runs"][2]["speedup_vs_best_dense"] == pytest.approx(data["runs"][2]["tokens_per_s"] / best)
    assert data["threads"] == 1
    if kernel.best_path() != "reference":
        assert "14 of 15 linears on llmprune's CPU sparse kernels" in data["sparse_kernels"]
        a = data["agreement"]
        assert a["reference"] == "dense bf16" and a["real"] == [] and a["exact"] + a["ties"] == 6


def test_cli_text_output_and_sparse_run(tmp_path):
    path = pruned_tiny_dir(tmp_path)
    res = run_cli(path, "hi", "--sparse-kernels", "--max-new-tokens", 4, "--ignore-eos")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("hi") and "tokens/s" in res.stdout and "sparse" in res.stdout


def test_cli_sampling_is_reproducible(tmp_path):
    path = pruned_tiny_dir(tmp_path, torch.float32)
    args = (path, "hi", "--temperature", 0.8, "--top-k", 20, "--seed", 3, "--json", "--max-new-tokens", 5, "--ignore-eos")
    one, two = (json.loads(run_cli(*args).stdout) for _ in range(2))
    assert one["text"] == two["text"] and one["runs"][0]["dtype"] == "fp32"


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--sparse-kernels", "--dtype", "float32"], "bf16/fp16"),
    (["--dtype", "int8"], "Unknown --dtype"),
    (["--device", "tpu"], "Unknown --device"),
])
def test_cli_rejects_bad_flags_before_loading(tmp_path, args, message):
    res = CliRunner().invoke(main, ["generate", str(tmp_path / "nowhere"), "hi", *args])
    assert res.exit_code != 0 and message in res.output


def test_load_pretrained_with_sparse_kernels_on_cpu(tmp_path):
    import llmprune
    from llmprune.sparse import kernel
    from llmprune.sparse.linear import SparseLinear

    if kernel.best_path() == "reference":
        pytest.skip("no compiled kernel")
    path = pruned_tiny_dir(tmp_path)
    dense = llmprune.load_pretrained(path)
    sparse = llmprune.load_pretrained(path, sparse_kernels=True)
    assert sum(isinstance(m, SparseLinear) for m in sparse.modules()) == 14
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(sparse(ids[:, :1]).logits.float(), dense(ids[:, :1]).logits.float(), atol=3e-2)
