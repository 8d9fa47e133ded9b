"""`llmprune push`: the dry run (files + card), the card's contents, and the upload path against a stand-in
for the Hub (HfApi methods replaced; nothing touches the network)."""
import json
from types import SimpleNamespace

import huggingface_hub
import pytest
from click.testing import CliRunner

from llmprune.card import base_model_id, model_card, read_extras
from llmprune.cli import main
from llmprune.config import PruneConfig, parse_pattern
from llmprune.push import git_blob_sha, plan_push
from llmprune.prune import prune_checkpoint
from tiny import save_tiny

def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    root = tmp_path_factory.mktemp("push")
    src = save_tiny("llama", root / "src")
    prune_checkpoint(str(src), root / "out", PruneConfig(sparsity=0.0, pattern=parse_pattern("2:4")))
    return root / "out"


class FakeHub:
    """Records what push asks of HfApi; `remote` maps path -> blob id of files already in the repo."""

    def __init__(self, remote=None, fail=None):
        self.remote, self.fail, self.calls = dict(remote or {}), fail, []

    def __call__(self, token=None):  # stands in for the HfApi class
        self.token = token
        return self

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, branch, **kw):
        self.calls.append(("create_branch", repo_id, branch))

    def list_repo_files(self, repo_id, revision=None):
        return [".gitattributes", *self.remote]

    def get_paths_info(self, repo_id, paths, revision=None):
        return [SimpleNamespace(path=p, blob_id=self.remote[p]) for p in paths if p in self.remote]

    def create_commit(self, repo_id, operations, commit_message, revision=None):
        if self.fail:
            raise self.fail
        ops = list(operations)
        self.calls.append(("create_commit", repo_id, ops, commit_message, revision))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


@pytest.fixture
def hub(monkeypatch):
    def install(**kw):
        fake = FakeHub(**kw)
        monkeypatch.setattr(huggingface_hub, "HfApi", fake)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
        return fake
    return install


def test_dry_run_lists_files_and_card(pruned):
    r = run("push", pruned, "me/tiny-2-4", "--dry-run")
    assert r.exit_code == 0, r.output
    for name in ("model.safetensors", "config.json", "run.json", "README.md (generated card)", "LFS"):
        assert name in r.stdout
    assert "library_name: \"transformers\"" in r.stdout and '- "sparse"' in r.stdout and '- "2-4-sparsity"' in r.stdout
    data = json.loads(run("push", pruned, "me/tiny-2-4", "--dry-run", "--json", "--branch", "v1").stdout)
    assert data["dry_run"] and data["revision"] == "v1"
    paths = [f["path"] for f in data["files"]]
    assert paths[-1] == "README.md" and "model.safetensors" in paths
    assert data["total_bytes"] == sum(f["bytes"] for f in data["files"])
    assert "| **all prunable** |" in data["card"] and "50.00%" in data["card"]


def test_dry_run_sparse_format(tmp_path):
    src = save_tiny("llama", tmp_path / "src")
    prune_checkpoint(str(src), tmp_path / "sp", PruneConfig(sparsity=0.5), fmt="sparse")
    r = run("push", tmp_path / "sp", "me/tiny-sparse", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    card = json.loads(r.stdout)["card"]
    assert "compact sparse format (`sparse`)" in card and "load_model" in card


def test_card_reads_evals_and_sweep(pruned, tmp_path):
    run_json = json.loads((pruned / "run.json").read_text())
    (tmp_path / "eval.json").write_text(json.dumps({"model": "out", "tasks": {
        "ppl": {"ppl": 361.25, "seqlen": 512, "tokens": 20480, "data": "pydoc"},
        "mmlu": {"accuracy": 0.25, "questions": 40, "categories": {"stem": {"accuracy": 0.3, "questions": 20}}}}}))
    (tmp_path / "eval_broken.json").write_text("{not json")
    (tmp_path / "summary.json").write_text(json.dumps({"epsilon": 0.01, "knees": [
        {"method": "magnitude", "task": "ppl", "metric": "ppl", "dense": 14.0, "sparsity": 0.3, "drop": 0.008,
         "next_sparsity": 0.4, "censored": False}]}))
    (tmp_path / "sweep.png").write_bytes(b"\x89PNG")
    card = model_card(run_json, {"model_type": "llama"}, read_extras(tmp_path))
    assert "| perplexity | pydoc, seqlen 512 | 361.250 |" in card
    assert "| MMLU: stem | accuracy | 30.00% | 20 |" in card
    assert "| magnitude | ppl | ppl | 14 | 30.00% | 0.008 | 40.00% |" in card
    assert "](sweep.png)" in card and "eval_broken.json" in card
    bare = model_card(run_json, {"model_type": "llama"})  # nothing else in the directory: no result sections
    assert "## Evaluation" not in bare and "sweep" not in bare


def test_base_model_id():
    assert base_model_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base_model_id("owner/model") == "owner/model"
    assert base_model_id("/tmp/local") is None and base_model_id(None) is None


def test_not_an_llmprune_output(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    r = run("push", tmp_path, "me/x", "--dry-run")
    assert r.exit_code == 1
    assert "not an llmprune output: missing weights (*.safetensors), run.json" in r.output


def test_upload_commits_every_file_and_the_card(pruned, hub):
    fake = hub()
    r = run("push", pruned, "me/tiny", "--private", "--revision", "exp", "--commit-message", "hello")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == "https://huggingface.co/me/tiny/commit/abc"
    assert fake.calls[0] == ("create_repo", "me/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert fake.calls[1] == ("create_branch", "me/tiny", "exp")
    _, repo, ops, message, revision = fake.calls[-1]
    assert (repo, message, revision) == ("me/tiny", "hello", "exp")
    added = {op.path_in_repo: op for op in ops}
    local = {p.name for p in pruned.iterdir() if p.is_file()} | {"README.md"}
    assert set(added) == local
    assert b"llmprune" in added["README.md"].path_or_fileobj


def test_rerun_of_the_same_upload_continues(pruned, hub):
    fake = hub(remote={"run.json": git_blob_sha((pruned / "run.json").read_bytes()), "config.json": "x"})
    r = run("push", pruned, "me/tiny")
    assert r.exit_code == 0, r.output
    assert fake.calls[-1][0] == "create_commit"
    assert fake.calls[0][2]["private"] is None  # no --private: the account's default visibility


def test_repo_with_other_content_needs_force(pruned, hub):
    fake = hub(remote={"run.json": "0" * 40, "pytorch_model.bin": "y"})
    r = run("push", pruned, "me/tiny")
    assert r.exit_code == 1 and "already holds different content" in r.output and "--force" in r.output
    assert not any(c[0] == "create_commit" for c in fake.calls)
    r = run("push", pruned, "me/tiny", "--force")
    assert r.exit_code == 0, r.output
    ops = fake.calls[-1][2]
    deleted = [op.path_in_repo for op in ops if type(op).__name__ == "CommitOperationDelete"]
    assert deleted == ["pytorch_model.bin"]


def test_no_token(pruned, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    r = run("push", pruned, "me/tiny")
    assert r.exit_code == 1 and "No Hugging Face token" in r.output and "HF_TOKEN" in r.output and "login" in r.output


def test_network_failure_mid_upload(pruned, hub):
    hub(fail=ConnectionError("Connection reset by peer"))
    r = run("push", pruned, "me/tiny")
    assert r.exit_code == 1
    assert "failed (ConnectionError: Connection reset by peer)" in r.output and "Rerun the same command" in r.output


def test_token_rejected(pruned, hub):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    response = httpx2.Response(403, request=httpx2.Request("POST", "https://huggingface.co/api/x"))
    hub(fail=HfHubHTTPError("403 Forbidden", response=response))
    r = run("push", pruned, "me/tiny")
    assert r.exit_code == 1 and "HTTP 403" in r.output and "HF_TOKEN" in r.output


def test_plan_rejects_bad_repo_id(pruned):
    with pytest.raises(Exception, match="Invalid repo id"):
        plan_push(pruned, "me/../x")


def test_dry_run_on_every_kind_of_output(tmp_path):
    """Outputs of prune (dense, sparse, calibrated), finetune and convert all get a card that says what they are."""
    from test_finetune import save_tiny_bert, write_sentiment
    from tiny import save_tiny_lm

    src = save_tiny_lm("llama", tmp_path / "src")
    (tmp_path / "calib.txt").write_text("calibration text for a tiny model. " * 40)
    bert = save_tiny_bert(tmp_path / "bert")
    data = ["--train", write_sentiment(tmp_path / "train.csv", 16), "--eval", write_sentiment(tmp_path / "eval.csv", 8, seed=1)]
    made = {
        "prune": ["prune", src, "--sparsity", "0.5", "-o", tmp_path / "prune"],
        "sparse": ["prune", src, "--pattern", "2:4", "--format", "sparse", "-o", tmp_path / "sparse"],
        "wanda": ["prune", src, "--method", "wanda", "--sparsity", "0.5", "--calib", tmp_path / "calib.txt",
                  "--calib-samples", "2", "--seqlen", "16", "-o", tmp_path / "wanda"],
        "finetune": ["finetune", bert, "--task", "text", *data, "--sparsity", "0.3", "--max-steps", "1",
                     "--batch-size", "8", "-o", tmp_path / "finetune"],
        "convert": ["convert", tmp_path / "sparse", "--format", "dense", "-o", tmp_path / "convert"],
    }
    cards = {}
    for kind, args in made.items():
        assert run(*args).exit_code == 0, kind
        r = run("push", tmp_path / kind, f"me/{kind}", "--dry-run", "--json")
        assert r.exit_code == 0, (kind, r.output)
        cards[kind] = json.loads(r.stdout)
    assert "pruned one-shot" in cards["prune"]["card"] and "magnitude 50% pruned" in cards["prune"]["commit_message"]
    assert "compact sparse format" in cards["sparse"]["card"] and '- "2-4-sparsity"' in cards["sparse"]["card"]
    assert "| calibration | pydoc" not in cards["wanda"]["card"] and "calib.txt (train split), 2 samples x 16" in cards["wanda"]["card"]
    ft = cards["finetune"]["card"]
    assert "fine-tuned on `text`" in ft and "**30.00%**" in ft and 'pipeline_tag: "text-classification"' in ft
    assert "stored dense" in cards["convert"]["card"] and "compact sparse" not in cards["convert"]["card"]  # after the conversion
