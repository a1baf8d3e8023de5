from __future__ import annotations

import math

import pytest

from tunelab.evaluate.stats import compare_binary, mcnemar_exact, paired_bootstrap_ci


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (0, 0, 1.0),
        (3, 3, 1.0),
        (0, 5, 2 / 32),
        (1, 9, 2 * (1 + 10) / 1024),
        (9, 1, 2 * (1 + 10) / 1024),
        (2, 10, 2 * (1 + 12 + 66) / 4096),
    ],
)
def test_mcnemar_exact_matches_the_binomial_tail(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_handles_large_counts_without_overflow() -> None:
    p = mcnemar_exact(0, 2000)
    assert 0 < p < 1e-300 or p == 0.0
    assert math.isfinite(p)


def test_bootstrap_ci_is_seeded_and_brackets_the_delta() -> None:
    a = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0] * 10
    b = [1, 1, 1, 1, 0, 1, 1, 1, 0, 1] * 10
    ci1 = paired_bootstrap_ci(a, b, resamples=2000, seed=3)
    ci2 = paired_bootstrap_ci(a, b, resamples=2000, seed=3)
    assert ci1 == ci2
    assert ci1[0] < 0.5 < ci1[1]
    assert ci1[0] > 0.3 and ci1[1] < 0.7


def test_identical_models_have_zero_width_ci_and_p_one() -> None:
    a = [True, False, True, True]
    cmp = compare_binary("accuracy", a, a, resamples=500)
    assert (cmp.delta, cmp.p_value, cmp.ci95, cmp.only_a, cmp.only_b) == (0.0, 1.0, (0.0, 0.0), 0, 0)


def test_compare_counts_discordant_pairs() -> None:
    base = [True, True, False, False, False]
    tuned = [True, False, True, True, False]
    cmp = compare_binary("accuracy", base, tuned, resamples=500)
    assert (cmp.only_a, cmp.only_b, cmp.n) == (1, 2, 5)
    assert cmp.delta == pytest.approx(0.2)
    assert cmp.p_value == pytest.approx(1.0)  # 1 vs 2 discordant: no evidence
