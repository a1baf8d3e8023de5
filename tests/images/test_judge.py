"""The judge's KID: near zero between two halves of the same real set, large for noise; paired intervals."""

from __future__ import annotations

import numpy as np

from tunelab.images.evaluate import _nn_dist, grid
from tunelab.images.judge import kid, paired_kid


def test_kid_tells_the_same_distribution_from_another() -> None:
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (400, 16))
    same = rng.normal(0, 1, (200, 16))
    shifted = rng.normal(0.7, 1, (200, 16))
    assert abs(kid(same, real)) < 0.05
    assert kid(shifted, real) > 10 * max(abs(kid(same, real)), 1e-3)
    # features are standardised: the scale of a judge's features does not change KID
    assert abs(kid(shifted * 1000, real * 1000) - kid(shifted, real)) < 1e-4


def test_paired_kid_interval_holds_the_point_and_says_which_is_closer() -> None:
    rng = np.random.default_rng(1)
    real = rng.normal(0, 1, (300, 8))
    base = rng.normal(1.0, 1, (100, 8))
    tuned = rng.normal(0.1, 1, (100, 8))
    r = paired_kid(base, tuned, real, resamples=300)
    assert r["delta"] < 0 and r["delta_ci95"][1] < 0 and r["p_tuned_not_better"] < 0.01
    assert r["tuned_ci95"][0] <= r["tuned"] <= r["tuned_ci95"][1]
    same = paired_kid(base, base.copy(), real, resamples=100)
    assert same["delta"] == 0 and same["delta_ci95"] == [0.0, 0.0]


def test_nearest_training_distance_and_grid_layout() -> None:
    train = np.zeros((3, 4, 4, 1), dtype=np.uint8)
    train[1] = 255
    x = np.full((2, 4, 4, 1), 255, dtype=np.uint8)
    x[1] = 0
    assert _nn_dist(x, train).tolist() == [0.0, 0.0]
    g = grid(x, x, ["a", "b"], ["a", "b"], 1)  # two rows of (base, gap, tuned), 2-pixel borders, upscaled
    scale = 128 // 4
    assert g.shape == ((2 * (4 + 2) + 2) * scale, (3 * (4 + 2) + 2) * scale, 1)
    assert g[2 * scale, 2 * scale, 0] == 255 and g[(2 + 6) * scale, 2 * scale, 0] == 0  # row a white, row b black
