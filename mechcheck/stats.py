"""The statistics behind every verdict: confidence intervals, p-values, multiplicity, controls.

Data arrive as one array of per-example values per independently trained replicate ("seed"). Two
sources of noise matter: which examples were evaluated, and which seed was trained. A CI that only
resamples examples treats one lucky seed as the truth and is far too narrow, so `hierarchical_bootstrap`
resamples both levels. `judge` turns an `Estimate` into a verdict by comparing the *whole* CI with a
threshold, so a claim passes only when the data rule out the threshold, never on a lucky point estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as _st

from mechcheck.results import Estimate

__all__ = [
    "hierarchical_bootstrap",
    "bootstrap_difference",
    "paired_pvalue",
    "holm",
    "bonferroni_level",
    "judge",
    "split_halves",
    "random_head_sets",
]

Statistic = Callable[[list[np.ndarray]], float]

# Cap on the number of resampling indices materialised at once by the vectorised default path
# (~32 MiB of int64), so large n_boot x n_examples never blows memory.
_CHUNK_ELEMENTS = 1 << 22


def _validate(per_seed: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Float64, C-contiguous copies of the per-seed arrays, or a ValueError saying what is wrong."""
    if len(per_seed) == 0:
        raise ValueError("per_seed is empty: need at least one seed's array of per-example values")
    # asarray first: ascontiguousarray would silently promote a scalar to shape (1,).
    arrays = [np.asarray(a, dtype=np.float64) for a in per_seed]
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"per_seed[{i}] is a scalar: need shape (n_examples,) or (n_examples, ...)")
        if a.shape[0] == 0:
            raise ValueError(f"per_seed[{i}] has no examples (shape {a.shape})")
        if a.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"per_seed[{i}] has trailing shape {a.shape[1:]} but per_seed[0] has {arrays[0].shape[1:]}: "
                "every seed must measure the same quantities"
            )
    return [np.ascontiguousarray(a) for a in arrays]


def _mean_of_seed_means(arrays: list[np.ndarray]) -> float:
    """The default statistic: average each seed over its examples, then average the seeds."""
    if arrays[0].ndim != 1:
        raise ValueError(
            f"the default statistic needs 1-D per-seed arrays, got trailing shape {arrays[0].shape[1:]}; "
            "pass a statistic that reduces the resampled arrays to one number"
        )
    # Seeds weigh equally (not examples): the claim is about the training recipe, and a seed evaluated
    # on more examples is not more representative of it.
    return float(np.mean([a.mean() for a in arrays]))


def _scalar(value: object) -> float:
    """`value` as a float, or a ValueError when a statistic returned several numbers."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size != 1:
        raise ValueError(f"statistic must return one number, got shape {arr.shape}")
    return float(arr.reshape(()))


def _default_replicates(arrays: list[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the mean of seed means, vectorised over replicates.

    Each replicate has len(arrays) seed slots; each slot holds a drawn seed and that seed's mean over a
    fresh resample of its examples. Slots are grouped by drawn seed so every seed's example resamples
    are drawn as one (count, n_examples) index matrix instead of a Python loop per slot.
    """
    n_seeds = len(arrays)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    slot_means = np.empty((n_boot, n_seeds))
    for s, a in enumerate(arrays):
        where = np.nonzero(drawn == s)
        count, n = len(where[0]), a.shape[0]
        means = np.empty(count)
        step = max(1, _CHUNK_ELEMENTS // n)
        for start in range(0, count, step):
            stop = min(count, start + step)
            means[start:stop] = a[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
        slot_means[where] = means
    return slot_means.mean(axis=1)


def hierarchical_bootstrap(
    per_seed: Sequence[np.ndarray],
    statistic: Statistic | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Point estimate and percentile CI from a two-stage (seeds, then examples) bootstrap.

    One replicate draws len(per_seed) seeds with replacement, then resamples the rows (examples) of each
    drawn seed with replacement, and evaluates `statistic` on that list of arrays. Resampling seeds puts
    seed-to-seed variation into the CI; resampling examples adds evaluation noise. The CI is the
    ((1-level)/2, (1+level)/2) quantiles of the replicates; the point estimate is `statistic` on the
    original data. With one seed this is an ordinary bootstrap over examples.

    Caveat: with very few seeds (e.g. 3) the seed stage can only recombine the seeds seen, so the CI is
    roughly the range of the seed means and under-covers somewhat; more seeds is the remedy.

    `statistic` receives a list of arrays shaped like the inputs (rows resampled, trailing dimensions
    kept, so it may e.g. rank k heads) and must return one number. The default, the mean over seeds of
    each seed's mean, takes a vectorised path. NaNs in the data propagate to the Estimate (which `judge`
    reports as "error") rather than raising. `n` is the smallest example count of any seed.
    """
    arrays = _validate(per_seed)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    n_seeds = len(arrays)

    if statistic is None:
        estimate = _mean_of_seed_means(arrays)
        reps = _default_replicates(arrays, n_boot, rng)
    else:
        estimate = _scalar(statistic(arrays))
        reps = np.empty(n_boot)
        for b in range(n_boot):
            chosen = rng.integers(0, n_seeds, size=n_seeds)
            sample = [arrays[s][rng.integers(0, arrays[s].shape[0], size=arrays[s].shape[0])] for s in chosen]
            reps[b] = _scalar(statistic(sample))

    alpha = 1.0 - level
    if np.isnan(reps).any():
        lo = hi = math.nan  # np.quantile would silently order NaNs; the CI is simply undefined
    else:
        lo, hi = (float(q) for q in np.quantile(reps, [alpha / 2, 1 - alpha / 2]))
    method = "hierarchical bootstrap (seeds, then examples)" if n_seeds > 1 else "bootstrap (examples)"
    return Estimate(
        estimate=estimate, lo=lo, hi=hi, n=min(a.shape[0] for a in arrays), n_seeds=n_seeds,
        level=level, method=method,
    )


def bootstrap_difference(
    per_seed_a: Sequence[np.ndarray],
    per_seed_b: Sequence[np.ndarray],
    statistic: Statistic | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """statistic(a) - statistic(b) for two *independent* groups of replicates (e.g. two training recipes).

    Each bootstrap replicate resamples both groups the way `hierarchical_bootstrap` resamples one (seeds,
    then examples), independently, and takes the difference, so the CI carries the seed-to-seed and
    example noise of both sides. The groups may have different numbers of replicates (one pretrained
    checkpoint vs three fine-tuned seeds). `n` / `n_seeds` of the result are the smaller of the two.
    """
    a, b = _validate(per_seed_a), _validate(per_seed_b)
    stat = statistic or _mean_of_seed_means
    rng = np.random.default_rng(seed)

    def resample(arrays: list[np.ndarray]) -> list[np.ndarray]:
        chosen = rng.integers(0, len(arrays), size=len(arrays))
        return [arrays[s][rng.integers(0, arrays[s].shape[0], size=arrays[s].shape[0])] for s in chosen]

    estimate = _scalar(stat(a)) - _scalar(stat(b))
    reps = np.array([_scalar(stat(resample(a))) - _scalar(stat(resample(b))) for _ in range(n_boot)])
    alpha = 1.0 - level
    if np.isnan(reps).any():
        lo = hi = math.nan
    else:
        lo, hi = (float(q) for q in np.quantile(reps, [alpha / 2, 1 - alpha / 2]))
    return Estimate(estimate=estimate, lo=lo, hi=hi, n=min(x.shape[0] for x in (*a, *b)),
                    n_seeds=min(len(a), len(b)), level=level,
                    method=f"difference of independent hierarchical bootstraps ({len(a)} vs {len(b)} replicates)")


def paired_pvalue(diffs: np.ndarray | Sequence[float], alternative: str = "greater") -> float:
    """One-sided p-value that the mean of paired per-example differences is > 0 ("greater") or < 0 ("less").

    If every difference is in {-1, 0, 1} (a correct/incorrect flip per example), an exact sign test on the
    non-zero differences is used: mean > 0 is then exactly P(+1) > P(-1), and the binomial test is exact
    where a t-test on three-valued data would lean on a normal approximation. Otherwise a one-sample
    t-test against 0. Edge cases: all-zero differences give 1.0 (no evidence either way); constant
    non-zero differences (zero variance, n >= 2) give 0.0 or 1.0 by their sign; NaNs, or a single
    non-ternary value, give NaN.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("diffs is empty")
    if np.isnan(d).any():
        return math.nan
    if not d.any():
        return 1.0
    if np.isin(d, (-1.0, 0.0, 1.0)).all():
        nonzero = d[d != 0]
        return float(_st.binomtest(int((nonzero > 0).sum()), nonzero.size, 0.5, alternative=alternative).pvalue)
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):
        # ttest_1samp returns NaN for zero variance; a constant shift is as decisive as data get.
        return 0.0 if (d[0] > 0) == (alternative == "greater") else 1.0
    return float(_st.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sort ascending; the i-th smallest (0-based) is multiplied by (m - i), then a running maximum keeps the
    adjusted values monotone in the raw ones and they are capped at 1. Rejecting where adjusted <= alpha
    controls the family-wise error rate at alpha, and is uniformly more powerful than plain Bonferroni.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    if np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must lie in [0, 1] (no NaN), got {p.tolist()}")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out


def bonferroni_level(level: float, m: int) -> float:
    """Per-comparison confidence level so that m simultaneous CIs jointly hold at `level` (Bonferroni).

    The error budget 1 - level is split evenly: 0.95 with m=16 gives 1 - 0.05/16 = 0.996875.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    return 1.0 - (1.0 - level) / m


def judge(est: Estimate, threshold: float, direction: str = ">=") -> str:
    """Verdict of "effect `direction` threshold" from a CI: "passed", "failed", "inconclusive" or "error".

    ">=": passed when the whole CI is at or above the threshold (lo >= threshold), failed when the whole
    CI is below it (hi < threshold), otherwise inconclusive -- the data cannot tell. "<=" mirrors this.
    A NaN in the estimate, its bounds or the threshold is "error": a broken measurement is never a verdict.
    """
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', got {direction!r}")
    if any(math.isnan(float(v)) for v in (est.estimate, est.lo, est.hi, threshold)):
        return "error"
    if direction == ">=":
        return "passed" if est.lo >= threshold else "failed" if est.hi < threshold else "inconclusive"
    return "passed" if est.hi <= threshold else "failed" if est.lo > threshold else "inconclusive"


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic random partition of range(n) into two halves (sorted index arrays), for cross-fitting.

    Choosing "the top head" and measuring its effect on the same examples overstates the effect (the
    winner's curse: the noise that made it win is counted as effect). Select on one half, measure on the
    other. The first half has n // 2 indices, the second the rest.
    """
    if n < 2:
        raise ValueError(f"need n >= 2 to split into two non-empty halves, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def random_head_sets(
    n_layers: int,
    n_heads: int,
    k: int,
    n_sets: int,
    seed: int,
    exclude: Iterable[tuple[int, int]] = (),
) -> list[list[tuple[int, int]]]:
    """`n_sets` random sets of k distinct (layer, head) pairs: the matched control "random heads, same count".

    An effect of ablating k chosen heads means little unless it beats ablating k arbitrary heads. Heads in
    `exclude` (the claimed ones) are left out so the control does not contain the treatment; only when
    fewer than k other heads exist is each set topped up with randomly chosen excluded heads. Each set is
    sorted; sets are independent, so two sets may coincide.
    """
    total = n_layers * n_heads
    if n_layers < 1 or n_heads < 1:
        raise ValueError(f"need n_layers >= 1 and n_heads >= 1, got {n_layers} x {n_heads}")
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}] for a {n_layers} x {n_heads} model, got {k}")
    if n_sets < 0:
        raise ValueError(f"n_sets must be >= 0, got {n_sets}")
    excluded = {(int(layer), int(head)) for layer, head in exclude}
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    pool = [h for h in heads if h not in excluded]
    rest = [h for h in heads if h in excluded]
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(n_sets):
        if len(pool) >= k:
            picked = [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]
        else:
            picked = pool + [rest[i] for i in rng.choice(len(rest), size=k - len(pool), replace=False)]
        sets.append(sorted(picked))
    return sets
