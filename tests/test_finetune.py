"""Sparse fine-tuning: pruned weights stay exactly zero, masks from OMP / a pruned dir / IMP, the CLI."""
import csv
import json

import pytest
import torch
from click.testing import CliRunner

from llmprune.config import PruneConfig
from llmprune.errors import LlmpruneError
from llmprune.finetune import FinetuneConfig, TrainConfig, finetune, get_task, load_task
from llmprune.finetune.train import linear_decay, prunable_params
from llmprune.prune import prune_checkpoint
from llmprune.tickets.scores import imp_sparsity
from tiny import save_tiny

WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad", "the", "movie", "was", "very", "plot"]
STEPS = TrainConfig(epochs=1, batch_size=8, lr=1e-3, weight_decay=0.1, max_steps=6)


def save_tiny_bert(path):
    """Tiny BERT with a word-level WordPiece tokenizer (ids < the tiny vocab of 256)."""
    from transformers import BertTokenizerFast

    save_tiny("bert", path)
    vocab = path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(path)
    return path


def write_sentiment(path, n, pair=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "label"] if pair else ["text", "label"])
        for i in range(n):
            pos = i % 2 == 0
            word = WORDS[int(torch.randint(0, 4, (1,), generator=g)) + (0 if pos else 4)]
            text = f"the movie was very {word}"
            w.writerow([text, "the plot", "pos" if pos else "neg"] if pair else [text, "pos" if pos else "neg"])
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    bert = save_tiny_bert(root / "bert")
    return {"root": root, "bert": bert, "train": write_sentiment(root / "train.csv", 48),
            "eval": write_sentiment(root / "eval.csv", 16, seed=1),
            "train_pair": write_sentiment(root / "train_pair.csv", 32, pair=True)}


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_pure_helpers():
    f = linear_decay(10, 2)
    assert [f(0), f(1), f(2), f(6), f(10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert imp_sparsity(0.2, 0) == 0.0 and imp_sparsity(0.2, 2) == pytest.approx(0.36)


def test_task_registry_errors(assets):
    with pytest.raises(LlmpruneError, match="Did you mean 'glue/sst2'"):
        get_task("glue/sst")
    with pytest.raises(LlmpruneError, match="not supported yet"):
        load_task(get_task("squad"))
    with pytest.raises(LlmpruneError, match="both --train-data and --eval-data"):
        load_task(get_task("text"), train_file=str(assets["train"]))
    with pytest.raises(LlmpruneError, match="not both"):
        FinetuneConfig(task="text", sparsity=0.5, mask_from="x")


def test_local_text_pairs(assets):
    data = load_task(get_task("glue/rte"), str(assets["train_pair"]), str(assets["train_pair"]), max_train=10)
    assert data.labels == ["neg", "pos"] and len(data.train) == 10 and len(data.eval) == 32
    assert data.train[0].text_pair == "the plot"


def test_finetune_omp_keeps_zeros(assets, tmp_path):
    from transformers import AutoModelForSequenceClassification

    cfg = FinetuneConfig(task="text", sparsity=0.5, train_file=str(assets["train"]), eval_file=str(assets["eval"]), train=STEPS)
    rec = finetune(str(assets["bert"]), tmp_path / "out", cfg)
    out = tmp_path / "out"
    assert json.loads((out / "run.json").read_text())["history"][-1]["steps"] == 6
    assert rec["sparsity"] == pytest.approx(0.5, abs=1e-3)  # counted on the trained weights
    model = AutoModelForSequenceClassification.from_pretrained(out)
    before = _weights(assets["bert"])
    changed = 0
    for name, p in prunable_params(model):
        w0 = before[name.removeprefix("bert.")] if name.removeprefix("bert.") in before else before[name]
        kept = p.detach() != 0
        # the OMP mask of the pre-trained weights, recomputed here with the library
        assert kept.sum() > 0
        changed += int((p.detach()[kept] != w0[kept]).sum())
    assert changed > 0  # kept weights trained
    assert (model.classifier.weight != 0).all()  # the head stays dense
    assert model.config.id2label == {0: "neg", 1: "pos"}


def test_mask_exactly_fixed_against_omp_dir(assets, tmp_path):
    """--mask-from a pruned directory: the trained model's zeros are exactly that directory's zeros."""
    pruned = tmp_path / "omp40"
    prune_checkpoint(str(assets["bert"]), pruned, PruneConfig(sparsity=0.4))
    cfg = FinetuneConfig(task="text", mask_from=str(pruned), train_file=str(assets["train"]),
                         eval_file=str(assets["eval"]), train=STEPS)
    finetune(str(assets["bert"]), tmp_path / "ft", cfg)
    from llmprune.maskcmp import compare_dirs

    g = compare_dirs(tmp_path / "ft", pruned)["global"]
    assert g["cosine"] == 1.0 and g["kept_a"] == g["kept_b"] and g["sparsity_a"] == pytest.approx(0.4, abs=1e-3)


def test_vit_digits_mask_from(tmp_path):
    vit = save_tiny("vit", tmp_path / "vit")
    prune_checkpoint(str(vit), tmp_path / "vit-omp30", PruneConfig(sparsity=0.3))
    cfg = FinetuneConfig(task="digits", mask_from=str(tmp_path / "vit-omp30"), max_train_samples=64, max_eval_samples=32,
                         train=TrainConfig(epochs=1, batch_size=16, lr=1e-3, max_steps=3))
    rec = finetune(str(vit), tmp_path / "out", cfg)
    assert rec["labels"] == [str(i) for i in range(10)] and rec["examples"] == {"train": 64, "eval": 32}
    assert rec["sparsity"] == pytest.approx(0.3, abs=1e-3)
    from transformers import AutoModelForImageClassification

    m = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert m.classifier.out_features == 10


def test_imp_rounds(assets, tmp_path):
    """`--imp` is the lth ticket method at 1 - (1 - rate)^rounds, every round's masks kept as roundK/."""
    args = ["finetune", str(assets["bert"]), "--task", "text", "--train", str(assets["train"]), "--eval",
            str(assets["eval"]), "--max-steps", "2", "--batch-size", "16", "--imp", "--rounds", "2", "--rate", "0.5"]
    res = CliRunner().invoke(_cli(), [*args, "-o", str(tmp_path / "lth"), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["method"] == "lth" and rec["ticket"]["rounds"] == 2 and rec["ticket"]["keep_rounds"]
    assert [r["round"] for r in rec["info"]["rounds"]] == [0, 1, 2]
    assert [round(r["sparsity"], 3) for r in rec["info"]["rounds"]] == [0.0, 0.5, 0.75]
    r1, r2 = _weights(tmp_path / "lth" / "round1"), _weights(tmp_path / "lth" / "round2")  # keep-masks
    assert set(r1) == set(r2) and r1
    for n in r1:
        assert not ((r2[n] != 0) & (r1[n] == 0)).any()  # each round prunes only survivors
    assert sum(int(m.sum()) for m in r2.values()) / sum(m.numel() for m in r2.values()) == pytest.approx(0.25, abs=1e-3)
    assert not (tmp_path / "lth" / "round0").exists() and (tmp_path / "lth" / "run.json").exists()


def test_imp_rejects_bad_flags(assets, tmp_path):
    args = ["finetune", str(assets["bert"]), "--task", "text", "--imp", "-o", str(tmp_path / "x")]
    res = CliRunner().invoke(_cli(), [*args, "--sparsity", "0.5"])
    assert res.exit_code == 1 and "drop --sparsity" in res.output
    res = CliRunner().invoke(_cli(), [*args, "--rate", "1.5"])
    assert res.exit_code == 1 and "--rate 1.5 is out of range" in res.output


def _cli():
    from llmprune.cli import main  # the real entry point, with every command registered

    return main


def test_cli_json(assets, tmp_path):
    args = ["finetune", str(assets["bert"]), "--task", "text", "--train", str(assets["train"]), "--eval",
            str(assets["eval"]), "--sparsity", "0.3", "--max-steps", "2", "--batch-size", "8", "-o", str(tmp_path / "o"), "--json"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["sparsity"] == pytest.approx(0.3, abs=1e-3) and rec["config"]["train"]["batch_size"] == 8
    res = CliRunner().invoke(_cli(), args[:-1])  # exists now
    assert res.exit_code == 1 and "already exists" in res.output


def test_cli_errors(tmp_path):
    res = CliRunner().invoke(_cli(), ["finetune", "m", "--task", "glue/sst3", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "Did you mean 'glue/sst2'" in res.output
    res = CliRunner().invoke(_cli(), ["finetune", "m", "--task", "text", "--sparsity", "0.5", "--mask-from", "x",
                                      "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not both" in res.output


@pytest.mark.slow  # the real MiniLM fine-tuned on MMLU categories (~45 s here)
def test_minilm_mmlu_category_small(tmp_path):
    """The real MiniLM on the real offline task, a few steps: zeros fixed, a loadable classifier."""
    from llmprune.models import resolve_model

    try:
        src = resolve_model("all-minilm-l6-v2")
    except LlmpruneError as e:
        pytest.skip(f"MiniLM not available offline: {e}")
    cfg = FinetuneConfig(task="mmlu-category", sparsity=0.5, max_train_samples=32, max_eval_samples=32,
                         train=TrainConfig(epochs=1, batch_size=16, lr=5e-5, max_length=64, max_steps=2))
    rec = finetune(str(src), tmp_path / "m", cfg)
    assert rec["labels"] == ["stem", "humanities", "social_sciences", "other"]
    assert rec["sparsity"] == pytest.approx(0.5, abs=1e-4) and 0.0 <= rec["score"] <= 1.0
