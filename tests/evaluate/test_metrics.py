from __future__ import annotations

import pytest

from tunelab.evaluate.metrics import (
    UNPARSED,
    classification_metrics,
    parse_label,
    percentile,
    threshold_at_fpr,
    wilson_upper,
)

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


def test_threshold_with_a_margin_flags_fewer_of_few_negatives() -> None:
    neg = [k / 106 for k in range(106)]  # 106 benign scores, the highest 0.99...
    labels = [False] * 106
    plain = threshold_at_fpr(neg, labels, 0.03)
    assert sum(s >= plain for s in neg) == 3  # floor(0.03 * 106)
    margin = threshold_at_fpr(neg, labels, 0.03, z=1.0)
    assert sum(s >= margin for s in neg) == 1  # 2 of 106 has a Wilson upper bound of 0.037 at one s.e.
    assert wilson_upper(1, 106, 1.0) <= 0.03 < wilson_upper(2, 106, 1.0)
    assert wilson_upper(3, 106, 0.0) == pytest.approx(3 / 106)
    many = [k / 10_000 for k in range(10_000)]  # with many negatives the margin barely matters
    t = threshold_at_fpr(many, [False] * 10_000, 0.03, z=1.0)
    assert 280 <= sum(s >= t for s in many) <= 300
