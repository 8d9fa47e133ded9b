"""Calibration sampling: c4 and wikitext2 windows equal the SparseGPT/Wanda reference loaders' for the same
seed (written out here as they are in their datautils.py); c4 windows lie inside one document longer than
seqlen; the offline pydoc default and local files keep their seeded windows."""
import random

import pytest
import torch

from llmprune import data
from llmprune.calib import calibration_batch, calibration_for, document_windows, reference_windows
from llmprune.config import PruneConfig
from llmprune.errors import LlmpruneError

BOS = 1


class CharTokenizer:
    """One id per character (2 + ord % 250); BOS first when special tokens are asked for, like LLaMA's."""

    def __call__(self, text, add_special_tokens=True, return_attention_mask=False, return_tensors=None):
        ids = ([BOS] if add_special_tokens else []) + [2 + ord(c) % 250 for c in text]
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else ids}


def documents(n=40, seed=0):
    """Documents of varied length, each written in its own letter, so a window shows which one it came from."""
    g = random.Random(seed)
    return [{"text": chr(ord("a") + i % 26) * g.randint(5, 120)} for i in range(n)]


def reference_c4(docs, tokenizer, nsamples, seqlen, seed):
    """Wanda's lib/data.py get_c4 training loop, verbatim in logic."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            trainenc = tokenizer(docs[i]["text"], return_tensors="pt")
            if trainenc["input_ids"].shape[1] > seqlen:
                break
        i = random.randint(0, trainenc["input_ids"].shape[1] - seqlen - 1)
        out.append(trainenc["input_ids"][:, i:i + seqlen])
    return torch.cat(out)


def reference_wikitext2(rows, tokenizer, nsamples, seqlen, seed):
    """SparseGPT's / Wanda's get_wikitext2 training loop."""
    trainenc = tokenizer(" ".join(rows), return_tensors="pt")["input_ids"]
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.shape[1] - seqlen - 1)
        out.append(trainenc[:, i:i + seqlen])
    return torch.cat(out)


def test_c4_windows_equal_the_reference_and_stay_inside_one_long_document():
    docs, tok = documents(), CharTokenizer()
    got = document_windows(tok, docs, 16, 48, seed=3)
    assert torch.equal(got, reference_c4(docs, tok, 16, 48, 3))
    assert got.shape == (16, 48)
    for row in got.tolist():
        letters = {r for r in row if r != BOS}
        assert len(letters) == 1  # one document per window, never a join of two
    long_letters = {2 + ord(d["text"][0]) % 250 for d in docs if len(d["text"]) + 1 > 48}
    assert {r for row in got.tolist() for r in row if r != BOS} <= long_letters
    assert not torch.equal(got, document_windows(tok, docs, 16, 48, seed=4))


def test_c4_without_a_long_enough_document_is_an_error():
    with pytest.raises(LlmpruneError, match=r"has more than seqlen=500 tokens: use a smaller --seqlen"):
        document_windows(CharTokenizer(), documents(5), 2, 500, seed=0)


def test_wikitext2_windows_equal_the_reference():
    rows = [d["text"] for d in documents(30)]
    ids = torch.tensor(CharTokenizer()(" ".join(rows))["input_ids"])
    assert torch.equal(reference_windows(ids, 8, 64, seed=0), reference_wikitext2(rows, CharTokenizer(), 8, 64, 0))
    with pytest.raises(LlmpruneError, match=r"fewer than one window"):
        reference_windows(ids[:64], 1, 64, seed=0)


def test_named_sources_are_drawn_like_the_reference(monkeypatch):
    docs = documents(60)
    calls = []

    def fake_hub(repo, split, **kw):
        calls.append((repo, split))
        return docs if repo == "allenai/c4" else {"text": [d["text"] for d in docs]}

    monkeypatch.setattr(data, "_hub_dataset", fake_hub)
    tok = CharTokenizer()
    c4 = calibration_for(tok, PruneConfig(method="wanda", calib="c4", calib_samples=6, seqlen=40, seed=2))
    assert torch.equal(c4, reference_c4(docs, tok, 6, 40, 2)) and calls[-1] == ("allenai/c4", "train")
    wiki = calibration_for(tok, PruneConfig(method="wanda", calib="wikitext2", calib_samples=6, seqlen=40, seed=2),
                           context=32)  # capped at the model's context
    assert torch.equal(wiki, reference_wikitext2([d["text"] for d in docs], tok, 6, 32, 2))
    assert calls[-1] == ("Salesforce/wikitext", "train")


def test_pydoc_default_and_files_keep_their_windows(tmp_path):
    tok = CharTokenizer()
    default = calibration_for(tok, PruneConfig(method="wanda", calib_samples=4, seqlen=64, seed=1))
    assert torch.equal(default, calibration_batch(tok, data.load_text("pydoc", "train"), 4, 64, 1))
    assert BOS not in default.tolist()[0]  # one long text: no special tokens inside
    (tmp_path / "c.txt").write_text("some calibration text " * 40)
    own = calibration_for(tok, PruneConfig(method="wanda", calib=str(tmp_path / "c.txt"), calib_samples=3, seqlen=16))
    assert torch.equal(own, calibration_batch(tok, (tmp_path / "c.txt").read_text(), 3, 16, 0))
