from __future__ import annotations

import pytest

from tunelab.evaluate.metrics import UNPARSED, classification_metrics, parse_label, percentile

LABELS = ("business", "entertainment", "politics", "sport", "tech")
ALIASES = {"technology": "tech"}


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("sport", "sport"),
        ("Sport.", "sport"),
        ("The article is about BUSINESS!", "business"),
        ("sports", "sport"),
        ("Technology", "tech"),
        ("business, entertainment, politics", None),  # echoing the list is no answer
        ("I don't know", None),
        ("sportsman", None),  # whole words only
        ("", None),
    ],
)
def test_parse_label(text: str, label: str | None) -> None:
    assert parse_label(text, LABELS, ALIASES) == label


def test_unparsed_counts_as_wrong_in_accuracy_and_f1() -> None:
    gold = ["sport", "sport", "tech", "tech"]
    pred = ["sport", None, "tech", "sport"]
    m = classification_metrics(gold, pred, ["sport", "tech"])
    assert m.accuracy == 0.5
    assert m.unparsed == 1
    assert m.confusion["sport"][UNPARSED] == 1
    # sport: tp 1, fp 1, fn 1 -> f1 .5 ; tech: tp 1, fp 0, fn 1 -> p 1, r .5, f1 2/3
    assert m.per_class["sport"]["f1"] == pytest.approx(0.5)
    assert m.per_class["tech"]["f1"] == pytest.approx(2 / 3)
    assert m.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)


def test_percentile_interpolates() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile([], 50) == 0.0
