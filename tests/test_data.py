"""Text sources: the offline pydoc default keeps evaluation and calibration text apart; local files; errors."""
import json

import pytest

from llmprune.data import load_text
from llmprune.errors import LlmpruneError


def test_pydoc_default_splits_are_disjoint_halves():
    test, train = load_text(None, "test"), load_text("pydoc", "train")
    assert len(test) > 100_000 and len(train) > 100_000
    assert abs(len(test) - len(train)) < 0.01 * len(test)
    # no paragraph of the evaluation half appears in the calibration half
    head = test[-2000:]
    assert head not in train and train[:2000] not in test


def test_local_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    assert load_text(str(tmp_path / "a.txt"), "test") == "hello world"
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert load_text(str(tmp_path / "b.jsonl"), "train") == "one\n\ntwo"


def test_jsonl_without_text_field(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(LlmpruneError, match=r"b.jsonl:1 has no string field 'text'"):
        load_text(str(tmp_path / "b.jsonl"), "test")


def test_unknown_source_and_split():
    with pytest.raises(LlmpruneError, match=r"Unknown text source 'wikitext'. Did you mean 'wikitext2'\?"):
        load_text("wikitext", "test")
    with pytest.raises(LlmpruneError, match=r"Unknown split 'validation'"):
        load_text(None, "validation")
