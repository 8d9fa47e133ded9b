"""The CLI's contract: exit codes, --json, and one-line errors that say what is allowed, with nothing left behind."""
import errno
import json

import pytest
from click.testing import CliRunner

from llmprune.cli import main
from tiny import save_tiny


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def tiny_dir(tmp_path):
    return save_tiny("llama", tmp_path / "src", max_shard_size="150KB")


def assert_error(result, *fragments):
    assert result.exit_code != 0
    text = result.output.strip()
    assert len(text.splitlines()) == 1, text
    for f in fragments:
        assert f in text, text


def test_help_and_version():
    assert run("-h").exit_code == 0 and "prune" in run("-h").output
    assert run("--version").output.startswith("llmprune, version")


def test_prune_json_and_inspect(tiny_dir, tmp_path):
    out = tmp_path / "out"
    r = run("prune", tiny_dir, "--sparsity", 0.4, "-o", out, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["sparsity"]["global"]["sparsity"] == pytest.approx(0.4, abs=1e-4)
    r = run("inspect", out, "--json", "--pattern", "2:4", "--eps", "1e-3")
    info = json.loads(r.output)
    assert info["global"]["sparsity"] == pytest.approx(0.4, abs=1e-4)
    assert info["global"]["near_zero"] >= info["global"]["zeros"]
    assert info["pattern"]["satisfied"] is False
    r = run("prune", tiny_dir, "--pattern", "2:4", "-o", tmp_path / "nm")
    assert r.exit_code == 0
    assert json.loads(run("inspect", tmp_path / "nm", "--pattern", "2:4", "--json").output)["pattern"]["satisfied"]
    assert "mlp.down_proj" in run("inspect", out).output


def test_missing_model(tmp_path):
    assert_error(run("prune", tmp_path / "nope", "-o", tmp_path / "o"), "not found", "smollm2-135m")


def test_directory_without_weights(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
    assert_error(run("prune", tmp_path / "m", "-o", tmp_path / "o"), "has no weights", "*.safetensors")


def test_corrupt_and_truncated_shards(tiny_dir, tmp_path):
    shard = sorted(tiny_dir.glob("*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    assert_error(run("prune", tiny_dir, "-o", tmp_path / "o"), "truncated", shard.name)
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert_error(run("inspect", tiny_dir), "Corrupt")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


@pytest.mark.parametrize("args,fragments", [
    (["--sparsity", "1.0"], ["[0, 1)"]),
    (["--sparsity", "-0.1"], ["[0, 1)"]),
    (["--method", "wandda"], ["Did you mean 'wanda'", "magnitude, sparsegpt, wanda"]),
    (["--scope", "model"], ["Available: global, layer, row"]),
    (["--pattern", "4:2"], ["0 < N < M"]),
    (["--pattern", "2:3"], ["not divisible by M=3"]),
    (["--format", "zip"], ["Available: dense, sparse"]),
    (["--exclude", "("], ["Invalid regex"]),
])
def test_bad_flags(tiny_dir, tmp_path, args, fragments):
    assert_error(run("prune", tiny_dir, "-o", tmp_path / "o", *args), *fragments)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_unsupported_architecture(tmp_path):
    save_tiny("llama", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    assert_error(run("prune", tmp_path / "m", "-o", tmp_path / "o"), "Unsupported architecture 'gpt2'", "llama")


def test_output_exists_needs_overwrite(tiny_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_error(run("prune", tiny_dir, "-o", out), "already exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    assert run("prune", tiny_dir, "-o", out, "--overwrite").exit_code == 0
    assert not (out / "keep.txt").exists() and (out / "run.json").exists()


def test_disk_full_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    import llmprune.io as io

    real = io.ShardWriter.write

    def full(self, name, tensor):
        if "layers.1" in name:
            self._io(lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        return real(self, name, tensor)

    monkeypatch.setattr(io.ShardWriter, "write", full)
    assert_error(run("prune", tiny_dir, "-o", tmp_path / "o"), "Disk full")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_crash_mid_write_leaves_nothing(tiny_dir, tmp_path, monkeypatch):
    import llmprune.io as io

    def boom(self, name, tensor):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.ShardWriter, "write", boom)
    r = run("prune", tiny_dir, "-o", tmp_path / "o")
    assert r.exit_code != 0
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


def test_unknown_repo_id_offline(tmp_path):
    r = run("prune", "no-such-owner/no-such-model-xyz", "-o", tmp_path / "o")
    assert_error(r, "Cannot get 'no-such-owner/no-such-model-xyz'", "local directory")


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.txt").write_text("hello")
    assert_error(run("inspect", tmp_path / "weights.txt"), ".gguf", "smollm2-135m")


def test_sequential_flag_needs_a_calibrated_method(tiny_dir, tmp_path):
    assert_error(run("prune", tiny_dir, "--no-sequential", "-o", tmp_path / "m"),
                 "--no-sequential: only for --method wanda or sparsegpt")
    assert not (tmp_path / "m").exists()
