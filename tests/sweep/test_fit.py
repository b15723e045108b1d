"""The scaling-law fitter recovers known laws from noisy points, and its checks (frontier, hold-out) behave."""

from __future__ import annotations

import numpy as np
import pytest

from e2erec.sweep import fit as F

# Hoffmann et al. (2022)'s fitted law, as a known truth to recover.
TRUE = F.ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def _points(law: F.ChinchillaFit, noise: float, seed: int, n_range=(1e6, 1e9), d_range=(1e8, 1e11)):
    rng = np.random.default_rng(seed)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(*n_range, 6), np.geomspace(*d_range, 5)))
    return n, d, law.predict(n, d) * np.exp(rng.normal(0.0, noise, n.size))


@pytest.mark.parametrize("seed", [0])
def test_chinchilla_recovers_exponents_from_noisy_points(seed):
    n, d, loss = _points(TRUE, noise=0.01, seed=seed)
    fit = F.fit_chinchilla(n, d, loss, bootstrap=20, seed=seed, target_compute=1e21)
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.04)
    assert fit.beta == pytest.approx(TRUE.beta, abs=0.04)
    assert fit.E == pytest.approx(TRUE.E, rel=0.1)
    assert fit.r2 > 0.99
    lo, hi = fit.ci["alpha"]
    assert lo < fit.alpha < hi and hi - lo < 0.2  # an interval, and an informative one
    n_opt, d_opt = fit.optimal_allocation(1e21)
    true_n, true_d = TRUE.optimal_allocation(1e21)
    assert n_opt == pytest.approx(true_n, rel=0.3) and d_opt == pytest.approx(true_d, rel=0.3)
    assert n_opt * d_opt * 6 == pytest.approx(1e21, rel=1e-9)  # C = 6 N D by construction


def test_fit_is_unit_free_small_models_and_without_noise():
    """CPU sweeps have N ~ 1e4-1e6: the same law in those units is recovered exactly without noise."""
    law = F.ChinchillaFit(E=2.0, A=30.0, B=80.0, alpha=0.5, beta=0.4)
    n, d, loss = _points(law, noise=0.0, seed=0, n_range=(1e4, 1e6), d_range=(1e5, 1e7))
    fit = F.fit_chinchilla(n, d, loss, bootstrap=0)
    assert (fit.alpha, fit.beta) == pytest.approx((0.5, 0.4), abs=0.01)
    assert fit.E == pytest.approx(2.0, rel=0.02)


def test_optimal_allocation_matches_a_brute_force_minimum():
    c = 1e20
    n_grid = np.geomspace(1e7, 1e12, 20001)
    best = n_grid[np.argmin(TRUE.predict(n_grid, c / (6 * n_grid)))]
    assert TRUE.optimal_allocation(c)[0] == pytest.approx(best, rel=2e-3)


def test_compute_law_recovers_exponent():
    rng = np.random.default_rng(0)
    c = np.geomspace(1e12, 1e18, 8)
    loss = (50.0 * c**-0.15 + 1.8) * np.exp(rng.normal(0, 0.005, c.size))
    fit = F.fit_compute(c, loss, bootstrap=20)
    assert fit.b == pytest.approx(0.15, abs=0.03)
    assert fit.c == pytest.approx(1.8, rel=0.1)
    assert fit.r2 > 0.99
    assert fit.ci["b"][0] < fit.b < fit.ci["b"][1]


def test_compute_frontier_is_the_lower_envelope():
    compute = np.array([1, 2, 2, 3, 4, 5.0])
    loss = np.array([5, 4, 4.5, 4.2, 3, 3.5])
    assert F.compute_frontier(compute, loss).tolist() == [0, 1, 4]


def test_holdout_predicts_the_largest_size():
    n, d, loss = _points(TRUE, noise=0.005, seed=3)
    ho = F.holdout_check(n, d, loss)
    assert ho["held_out_params"] == n.max() and ho["fit_points"] == 25 and len(ho["points"]) == 5
    assert ho["mean_abs_rel_error"] < 0.03
    # A wrong law (the largest size's losses inflated) is flagged by the same check.
    bad = np.where(n == n.max(), loss * 1.3, loss)
    assert F.holdout_check(n, d, bad)["mean_abs_rel_error"] > 0.2


def test_isoflop_minimum_matches_the_law():
    c = 1e19
    n = np.geomspace(1e7, 1e10, 9)
    loss = TRUE.predict(n, c / (6 * n))
    (m,) = F.isoflop_minima(n, np.full(n.size, c), loss, budgets=[c])
    assert m["n_opt"] == pytest.approx(TRUE.optimal_allocation(c)[0], rel=0.5)


def test_too_few_points_is_a_clear_error():
    with pytest.raises(ValueError, match="need >= 6 points"):
        F.fit_chinchilla([1e6, 1e7, 1e8], [1e9, 1e9, 1e10], [3.0, 2.8, 2.5])
