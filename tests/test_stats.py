"""Tests of mechcheck.stats: properties (hypothesis) and known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mechcheck.results import Estimate
from mechcheck.stats import (
    bonferroni_level,
    hierarchical_bootstrap,
    holm,
    judge,
    paired_pvalue,
    random_head_sets,
    split_halves,
)

FAST = settings(max_examples=40, deadline=None)

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
seed_lists = st.lists(st.lists(finite, min_size=1, max_size=30), min_size=1, max_size=5)


def _arrays(lists: list[list[float]]) -> list[np.ndarray]:
    return [np.asarray(x, dtype=float) for x in lists]


# --- hierarchical_bootstrap: properties -------------------------------------------------------


@FAST
@given(seed_lists, st.integers(0, 2**32 - 1))
def test_bootstrap_deterministic_under_seed(lists, seed):
    a = hierarchical_bootstrap(_arrays(lists), n_boot=100, seed=seed)
    b = hierarchical_bootstrap(_arrays(lists), n_boot=100, seed=seed)
    assert a == b


@FAST
@given(st.lists(st.lists(finite, min_size=5, max_size=30), min_size=1, max_size=5), st.integers(0, 1000))
def test_ci_contains_point_estimate(lists, seed):
    arrays = _arrays(lists)
    est = hierarchical_bootstrap(arrays, n_boot=200, seed=seed)
    tol = 1e-9 * (1 + max(abs(v) for x in lists for v in x))  # rounding of differently ordered sums
    assert est.lo - tol <= est.estimate <= est.hi + tol
    assert est.estimate == pytest.approx(np.mean([a.mean() for a in arrays]))
    assert est.n == min(len(x) for x in lists) and est.n_seeds == len(lists)


@FAST
@given(finite, st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_constant_data_gives_zero_width_ci(value, sizes):
    est = hierarchical_bootstrap([np.full(n, value) for n in sizes], n_boot=100, seed=1)
    tol = 1e-12 * (1 + abs(value))
    assert est.estimate == pytest.approx(value, abs=tol)
    assert est.lo == pytest.approx(value, abs=tol) and est.hi == pytest.approx(value, abs=tol)


# --- hierarchical_bootstrap: known answers -------------------------------------------------------


def _examples_only_ci(arrays: list[np.ndarray], n_boot: int, seed: int) -> tuple[float, float]:
    """The wrong method, for contrast: resample examples within every seed but never the seeds."""
    rng = np.random.default_rng(seed)
    reps = np.mean([a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1) for a in arrays], axis=0)
    lo, hi = np.quantile(reps, [0.025, 0.975])
    return float(lo), float(hi)


def test_coverage_accounts_for_seed_variation():
    # 3 seeds, each with its own random offset (sd 0.2) around the true mean, 100 noisy examples each.
    # Seed noise dominates (0.2 vs 1/sqrt(100) = 0.1 per seed mean), so ignoring it must under-cover badly.
    # With only 3 seeds the hierarchical CI itself under-covers (~0.85 here, not 0.95), hence 0.80.
    rng = np.random.default_rng(2024)
    true_mean, n_data = 0.5, 200
    hit_hier = hit_naive = 0
    for i in range(n_data):
        arrays = [rng.normal(true_mean + 0.2 * rng.normal(), 1.0, 100) for _ in range(3)]
        est = hierarchical_bootstrap(arrays, n_boot=400, seed=i)
        hit_hier += est.lo <= true_mean <= est.hi
        lo, hi = _examples_only_ci(arrays, 400, i)
        hit_naive += lo <= true_mean <= hi
    assert hit_hier / n_data >= 0.80
    assert hit_naive / n_data <= 0.72  # the bound above would fail an examples-only bootstrap


def test_one_seed_is_plain_bootstrap():
    x = np.random.default_rng(0).normal(0.0, 1.0, 400)
    est = hierarchical_bootstrap([x], n_boot=2000, seed=3)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert est.method == "bootstrap (examples)"
    assert est.estimate == pytest.approx(x.mean())
    # percentile CI of the mean ~ mean +- 1.96 SE
    assert est.hi - est.lo == pytest.approx(2 * 1.96 * se, rel=0.1)
    half = hierarchical_bootstrap([x], n_boot=2000, seed=3, level=0.5)
    assert half.level == 0.5
    assert half.hi - half.lo == pytest.approx(2 * 0.674 * se, rel=0.1)


def test_default_path_matches_generic_path():
    # The vectorised default and the per-replicate loop must estimate the same distribution; unequal
    # example counts check that each seed is resampled at its own size and seeds weigh equally.
    rng = np.random.default_rng(5)
    arrays = [rng.normal(mu, 1.0, n) for mu, n in [(0.0, 50), (1.0, 200), (3.0, 80), (0.5, 120)]]

    def mean_of_means(xs):
        return float(np.mean([x.mean() for x in xs]))

    fast = hierarchical_bootstrap(arrays, n_boot=3000, seed=1)
    slow = hierarchical_bootstrap(arrays, statistic=mean_of_means, n_boot=3000, seed=2)
    width = fast.hi - fast.lo
    assert fast.estimate == pytest.approx(slow.estimate)
    assert fast.lo == pytest.approx(slow.lo, abs=0.1 * width)
    assert fast.hi == pytest.approx(slow.hi, abs=0.1 * width)
    assert fast.method == "hierarchical bootstrap (seeds, then examples)"


def test_custom_statistic_gets_rows_resampled_2d_arrays():
    # Each row is one example: column j holds 100 * row_id + j, so a resampled row stays consistent.
    base = np.arange(30)[:, None] * 100.0 + np.arange(4)[None, :]
    arrays = [base, base + 10_000.0]
    seen = []

    def stat(xs):
        for x in xs:
            assert x.shape == (30, 4)
            assert np.all(x - x[:, :1] == np.arange(4))  # columns moved together with their row
            seen.append(x)
        return float(np.argmax([x[:, j].mean() for x in xs for j in range(4)]) % 4)  # "rank the heads"

    est = hierarchical_bootstrap(arrays, statistic=stat, n_boot=20, seed=0)
    assert est.estimate == 3.0 and est.lo == est.hi == 3.0
    rows = {tuple(x[:, 0] // 100 % 100) for x in seen[2:]}
    assert len(rows) > 1  # rows were actually resampled, not passed through unchanged


def test_statistic_must_return_scalar():
    with pytest.raises(ValueError, match="one number"):
        hierarchical_bootstrap([np.ones((5, 3))], statistic=lambda xs: xs[0].mean(axis=0), n_boot=5)
    with pytest.raises(ValueError, match="default statistic"):
        hierarchical_bootstrap([np.ones((5, 3))], n_boot=5)


@pytest.mark.parametrize(
    "per_seed, match",
    [
        ([], "empty"),
        ([np.array([])], "no examples"),
        ([np.float64(1.0)], "scalar"),
        ([np.ones((4, 2)), np.ones((4, 3))], "trailing shape"),
    ],
)
def test_bootstrap_rejects_bad_input(per_seed, match):
    with pytest.raises(ValueError, match=match):
        hierarchical_bootstrap(per_seed, n_boot=10)


def test_nan_data_gives_error_verdict():
    est = hierarchical_bootstrap([np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0])], n_boot=50)
    assert judge(est, 0.0) == "error"


# --- paired_pvalue --------------------------------------------------------------------------------


def test_sign_test_hand_computed():
    # 8 flips: 7 up, 1 down, 2 unchanged (ignored). P(X >= 7 | Bin(8, 1/2)) = (8 + 1) / 256.
    d = np.array([1, 1, 1, 1, 1, 1, 1, -1, 0, 0])
    assert paired_pvalue(d) == pytest.approx(9 / 256)
    # "less": P(X <= 7) = 1 - 1/256
    assert paired_pvalue(d, "less") == pytest.approx(255 / 256)
    assert paired_pvalue(np.array([1, 0, 0])) == pytest.approx(0.5)


def test_ttest_for_continuous_differences():
    d = np.array([0.3, 0.1, 0.4, 0.2, 0.25])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    from scipy.stats import t as t_dist

    assert paired_pvalue(d) == pytest.approx(t_dist.sf(t, df=len(d) - 1))
    assert paired_pvalue(-d, "less") == pytest.approx(paired_pvalue(d))


def test_pvalue_edge_cases():
    assert paired_pvalue(np.zeros(10)) == 1.0
    assert paired_pvalue(np.zeros(10), "less") == 1.0
    assert paired_pvalue(np.full(5, 0.5)) == 0.0
    assert paired_pvalue(np.full(5, 0.5), "less") == 1.0
    assert math.isnan(paired_pvalue(np.array([0.5, np.nan])))
    with pytest.raises(ValueError):
        paired_pvalue(np.array([1.0]), alternative="two-sided")


# --- holm / bonferroni ------------------------------------------------------------------------------


def test_holm_hand_computed():
    # sorted: 0.01*4=0.04, 0.02*3=0.06, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.04, 0.06, 0.06, 0.06
    p = [0.03, 0.01, 0.04, 0.02]
    np.testing.assert_allclose(holm(p), [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.4]), [0.8, 0.8])  # 0.4*2=0.8, max(0.8, 0.5)
    np.testing.assert_allclose(holm([0.6, 0.9]), [1.0, 1.0])  # capped
    assert holm([]).shape == (0,)


@FAST
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_holm_properties(p):
    raw = np.asarray(p)
    adj = holm(raw)
    assert np.all(adj >= raw) and np.all(adj <= 1.0)
    for i in range(len(raw)):
        for j in range(len(raw)):
            if raw[i] < raw[j]:
                assert adj[i] <= adj[j]
            elif raw[i] == raw[j]:
                assert adj[i] == adj[j]


def test_holm_rejects_invalid():
    with pytest.raises(ValueError):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError):
        holm([1.5])


def test_bonferroni_level():
    assert bonferroni_level(0.95, 16) == pytest.approx(1 - 0.05 / 16)
    assert bonferroni_level(0.9, 1) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        bonferroni_level(0.95, 0)


# --- judge -------------------------------------------------------------------------------------------


def _est(lo: float, hi: float, mid: float | None = None) -> Estimate:
    return Estimate(estimate=(lo + hi) / 2 if mid is None else mid, lo=lo, hi=hi, n=10, n_seeds=3)


@pytest.mark.parametrize(
    "lo, hi, threshold, direction, expected",
    [
        (0.2, 0.4, 0.1, ">=", "passed"),
        (0.1, 0.4, 0.1, ">=", "passed"),  # boundary: lo == threshold passes ">="
        (0.0, 0.09, 0.1, ">=", "failed"),
        (0.05, 0.2, 0.1, ">=", "inconclusive"),
        (0.0, 0.1, 0.1, ">=", "inconclusive"),  # hi == threshold is not below it
        (0.0, 0.05, 0.1, "<=", "passed"),
        (0.0, 0.1, 0.1, "<=", "passed"),  # boundary: hi == threshold passes "<="
        (0.2, 0.3, 0.1, "<=", "failed"),
        (0.05, 0.2, 0.1, "<=", "inconclusive"),
        (0.1, 0.3, 0.1, "<=", "inconclusive"),  # lo == threshold is not above it
    ],
)
def test_judge_truth_table(lo, hi, threshold, direction, expected):
    assert judge(_est(lo, hi), threshold, direction) == expected


@pytest.mark.parametrize("direction", [">=", "<="])
def test_judge_nan_is_error(direction):
    nan = float("nan")
    assert judge(_est(nan, 1.0), 0.0, direction) == "error"
    assert judge(_est(0.0, nan), 0.0, direction) == "error"
    assert judge(_est(0.0, 1.0, mid=nan), 0.0, direction) == "error"
    assert judge(_est(0.5, 1.0), nan, direction) == "error"


def test_judge_rejects_unknown_direction():
    with pytest.raises(ValueError):
        judge(_est(0.0, 1.0), 0.5, ">")


# --- split_halves / random_head_sets --------------------------------------------------------------


@FAST
@given(st.integers(2, 500), st.integers(0, 2**32 - 1))
def test_split_halves_is_partition(n, seed):
    a, b = split_halves(n, seed)
    assert len(a) == n // 2 and len(b) == n - n // 2
    assert np.array_equal(np.sort(np.concatenate([a, b])), np.arange(n))
    a2, b2 = split_halves(n, seed)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)


def test_split_halves_is_random():
    a, _ = split_halves(100, 0)
    assert not np.array_equal(a, np.arange(50))  # not just "first half"
    assert not np.array_equal(a, split_halves(100, 1)[0])
    with pytest.raises(ValueError):
        split_halves(1, 0)


def test_random_head_sets():
    exclude = [(0, 0), (1, 3)]
    sets = random_head_sets(2, 4, k=3, n_sets=50, seed=7, exclude=exclude)
    assert len(sets) == 50
    for s in sets:
        assert len(s) == 3 and len(set(s)) == 3
        assert all(0 <= layer < 2 and 0 <= head < 4 for layer, head in s)
        assert not set(s) & set(exclude)
    assert len({tuple(s) for s in sets}) > 5  # actually random
    used = {h for s in sets for h in s}
    assert used == {(layer, head) for layer in range(2) for head in range(4)} - set(exclude)
    assert sets == random_head_sets(2, 4, k=3, n_sets=50, seed=7, exclude=exclude)
    assert sets != random_head_sets(2, 4, k=3, n_sets=50, seed=8, exclude=exclude)


def test_random_head_sets_tops_up_when_exclusion_impossible():
    # 4 heads, 3 excluded, k=2: the one free head must be in every set, plus one excluded head.
    sets = random_head_sets(1, 4, k=2, n_sets=20, seed=0, exclude=[(0, 0), (0, 1), (0, 2)])
    assert all((0, 3) in s and len(set(s)) == 2 for s in sets)
    with pytest.raises(ValueError):
        random_head_sets(1, 4, k=5, n_sets=1, seed=0)
