"""End to end on the real SmolLM2-135M (fetched from PyPI, converted from GGUF once): prune, load, generate."""
import json

import torch
import transformers
from click.testing import CliRunner

from llmprune.cli import main


def test_prune_inspect_generate_on_smollm2(smollm2_dir, tmp_path):
    out = tmp_path / "omp50"
    r = CliRunner().invoke(main, ["prune", "smollm2-135m", "--sparsity", "0.5", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads(r.output)
    assert rec["sparsity"]["global"]["params"] == 106_168_320  # the 210 decoder linears
    assert rec["sparsity"]["global"]["zeros"] == 53_084_160
    # the paper's Fig. 1 observation: a global threshold prunes attention and MLP unevenly
    by_type = rec["sparsity"]["by_type"]
    assert by_type["attn.o_proj"]["sparsity"] != by_type["mlp.up_proj"]["sparsity"]

    info = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).output)
    assert info["global"]["zeros"] == 53_084_160

    tok = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    dense = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir)
    ids = tok("The capital of France is", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 5
    with torch.no_grad():  # pruning changed the function, but the embeddings and norms did not move
        assert torch.equal(model.model.embed_tokens.weight, dense.model.embed_tokens.weight)
        assert not torch.equal(model(**ids).logits, dense(**ids).logits)
