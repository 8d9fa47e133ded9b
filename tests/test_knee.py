"""find_knee on hand-made curves (the paper's definition and the documented rule for noisy ones), and --sparsities parsing."""
import math

import pytest

from llmprune.errors import LlmpruneError
from llmprune.config import parse_sparsities
from llmprune.sweep.knee import find_knee, performance_drop

S = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_drop_units():
    assert performance_drop(48.0, 50.0, True) == 2.0          # accuracy points
    assert performance_drop(10.5, 10.0, False) == pytest.approx(0.05)  # relative for perplexity
    assert performance_drop(9.0, 10.0, False) == pytest.approx(-0.1)   # better than dense: negative


def test_flat_then_cliff_accuracy():
    k = find_knee(S, [50.0, 49.8, 49.5, 49.1, 40.0, 30.0], dense=50.0, epsilon=1.0, higher_is_better=True)
    assert (k.sparsity, k.label, k.next_sparsity, k.censored) == (0.4, "0.4", 0.5, False)
    assert k.drop == pytest.approx(0.9) and k.next_drop == pytest.approx(10.0)


def test_epsilon_boundary_is_inside():
    k = find_knee([0.1, 0.2], [49.0, 48.0], dense=50.0, epsilon=1.0, higher_is_better=True)
    assert k.sparsity == 0.1 and k.next_sparsity == 0.2


def test_perplexity_relative_band():
    # dense 10: 1% band is ppl <= 10.1
    k = find_knee(S, [10.0, 10.05, 10.1, 10.2, 15.0, 90.0], dense=10.0, epsilon=0.01, higher_is_better=False)
    assert k.sparsity == 0.3 and k.next_sparsity == 0.4 and k.next_drop == pytest.approx(0.02)


def test_never_drops_is_censored_at_last_level():
    k = find_knee(S, [50.0] * 6, dense=50.0, epsilon=1.0, higher_is_better=True)
    assert (k.sparsity, k.censored, k.next_sparsity, k.next_drop) == (0.6, True, None, None)


def test_drops_at_once_knee_is_dense():
    k = find_knee(S, [30.0] * 6, dense=50.0, epsilon=1.0, higher_is_better=True)
    assert (k.sparsity, k.label, k.drop, k.next_sparsity, k.next_drop) == (0.0, None, 0.0, 0.1, 20.0)
    assert not k.censored


def test_noisy_first_exit_ends_the_range_and_reentries_are_reported():
    # out at 0.3, back in at 0.4 (noise), out for good at 0.5
    k = find_knee(S, [50.5, 49.5, 48.0, 49.6, 45.0, 49.9], dense=50.0, epsilon=1.0, higher_is_better=True)
    assert k.sparsity == 0.2 and k.next_sparsity == 0.3 and k.reentered == ("0.4", "0.6")


def test_unsorted_input_labels_and_missing_scores():
    k = find_knee([0.5, 0.25, 0.75], [49.9, 50.0, 10.0], 50.0, 1.0, True, labels=["2:4", "3:4", "1:4"])
    assert (k.label, k.next_label) == ("2:4", "1:4")
    k = find_knee([0.1, 0.2], [50.0, float("nan")], 50.0, 1.0, True)
    assert k.sparsity == 0.1 and k.next_sparsity == 0.2 and math.isnan(k.next_drop)
    assert k.to_json()["next_drop"] is None
    k = find_knee([0.1, 0.2], [None, 50.0], 50.0, 1.0, True)
    assert k.sparsity == 0.0 and k.reentered == ("0.2",)


def test_bad_arguments():
    with pytest.raises(ValueError):
        find_knee([0.1], [1.0, 2.0], 1.0, 1.0, True)
    with pytest.raises(ValueError):
        find_knee([0.1], [1.0], 1.0, -1.0, True)


def test_parse_sparsities():
    assert parse_sparsities("0:0.9:0.1") == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_sparsities("0.5:0.7:0.1") == (0.5, 0.6, 0.7)
    assert parse_sparsities("0.7, 0.5,0.5") == (0.5, 0.7)
    assert parse_sparsities("0.5") == (0.5,)


@pytest.mark.parametrize("text, message", [
    ("0:1:0.1", "1 is out of range"),
    ("0.5,1.2", "1.2 is out of range"),
    ("-0.1,0.5", "-0.1 is out of range"),
    ("0:0.9", "use start:stop:step"),
    ("a,b", "use start:stop:step"),
    ("0.9:0.1:0.1", "start <= stop"),
    ("0:0.9:0", "step > 0"),
    (",", "no values"),
])
def test_parse_sparsities_errors(text, message):
    with pytest.raises(LlmpruneError, match=message) as e:
        parse_sparsities(text)
    assert "\n" not in str(e.value)
