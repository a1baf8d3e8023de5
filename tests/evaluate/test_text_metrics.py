"""Reference metrics against hand-worked values and against sacrebleu's chrF."""

from __future__ import annotations

import pytest

from tunelab.evaluate.text_metrics import chrf, exact_match, rouge_l, support, token_f1


def test_squad_style_exact_match_and_f1() -> None:
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert exact_match("Eiffel", "eiffel tower") == 0.0
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert token_f1("dog", "cat") == 0.0


def test_rouge_l_is_lcs_f_measure() -> None:
    # LCS of "police killed gunman today" / "police kill gunman today" = police, gunman, today (3 of 4 each side)
    assert rouge_l("police killed gunman today", "police kill gunman today") == pytest.approx(0.75)
    assert rouge_l("The police", "police") == 1.0  # articles are dropped before matching
    assert rouge_l("x y z", "z y x") == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("hyp", "ref"),
    [
        ("The cat sat on the mat.", "A cat was sitting on the mat."),
        ("completely different", "nothing alike here"),
        ("Paris", "Paris is the capital of France"),
        ("x", "xy"),
    ],
)
def test_chrf_equals_sacrebleu_sentence_chrf(hyp: str, ref: str) -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    want = sacrebleu.sentence_chrf(hyp, [ref]).score / 100
    assert chrf(hyp, ref) == pytest.approx(want, abs=1e-9)


def test_support_counts_answer_words_found_in_the_context() -> None:
    ctx = "The meeting was held in Geneva on Tuesday and lasted three hours."
    assert support("It was held in Geneva.", ctx) == 1.0
    assert support("It was held in Paris on Friday.", ctx) == pytest.approx(1 / 3)  # held yes, paris/friday no
    assert support("Yes.", ctx) == 1.0  # nothing claimed
