"""Intervals and verdicts: what an estimate of a claim covers, and how it is judged (see the package
docstring of `mechcheck.stats`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import optimize as _optimize
from scipy import stats as _st

from mechcheck.results import Estimate

__all__ = [
    "RECIPE",
    "CHECKPOINT",
    "mean_estimate",
    "difference_estimate",
    "replicate_estimate",
    "replicate_difference",
    "bootstrap_variance",
    "bounded",
    "insufficient",
    "judge",
]

RECIPE, CHECKPOINT = "recipe", "checkpoint"


# ---------------------------------------------------------------------------------------------- helpers


def _t_quantile(level: float, df: float) -> float:
    q = 1.0 - (1.0 - level) / 2.0
    return float(_st.norm.ppf(q)) if not math.isfinite(df) else float(_st.t.ppf(q, max(df, 1e-9)))


def _combine(components: Sequence[tuple[float, float]], level: float) -> tuple[float, float, float]:
    """(se, half-width, effective df) of an estimate whose variance is a sum of independent estimated
    components ``(variance, degrees of freedom)``.

    Each component is widened by the t quantile of its own degrees of freedom, and the widened parts are
    added in quadrature: half = sqrt(sum t_{df_i}^2 v_i) (a modified large-sample interval, Graybill and
    Wang 1980). With one component it is the ordinary t interval. Welch-Satterthwaite degrees of freedom were
    measured to give up to 6 % one-sided errors with 2 seeds (an unluckily small seed variance also raises
    the df); this combination stayed at or below 2.6 % in the same simulations.
    """
    parts = [(max(float(v), 0.0), float(d)) for v, d in components if math.isfinite(v)]
    if not parts or any(d <= 0 for _, d in parts):
        return math.nan, math.nan, math.nan
    se = math.sqrt(sum(v for v, _ in parts))
    half = math.sqrt(sum(_t_quantile(level, d) ** 2 * v for v, d in parts))
    if se == 0:
        return 0.0, 0.0, min(d for _, d in parts)
    return se, half, _effective_df(half / se, level)


def _effective_df(q: float, level: float) -> float:
    """The degrees of freedom whose t quantile at `level` is `q` (inf when q is at or below the normal's)."""
    z = _t_quantile(level, math.inf)
    if q <= z * (1 + 1e-12):
        return math.inf
    # Brent's method on log df (t quantiles decrease with df): ~15 quantile evaluations where the bisection
    # it replaces took 200 (7 ms per estimate, the main cost of the calibration benchmark); same df to ~1e-12.
    lo, hi = math.log(1e-3), math.log(1e7)

    def excess(log_df: float) -> float:
        return _t_quantile(level, math.exp(log_df)) - q

    if excess(hi) >= 0:
        return 1e7
    if excess(lo) <= 0:
        return 1e-3
    return math.exp(_optimize.brentq(excess, lo, hi, xtol=1e-13, rtol=4 * np.finfo(float).eps))


def _finish(estimate: float, components: Sequence[tuple[float, float]], level: float, n: int, n_seeds: int,
            scope: str, method: str, replicates: Iterable[float], other: Iterable[float] = ()) -> Estimate:
    se, half, df = _combine(components, level) if math.isfinite(estimate) else (math.nan, math.nan, math.nan)
    lo, hi = (estimate - half, estimate + half) if math.isfinite(half) else (math.nan, math.nan)
    return Estimate(estimate=float(estimate), lo=float(lo), hi=float(hi), n=int(n), n_seeds=int(n_seeds),
                    level=level, method=method, se=float(se), df=float(df), scope=scope,
                    replicates=[float(v) for v in replicates], replicates_other=[float(v) for v in other])


def bounded(est: Estimate, lo: float, hi: float) -> Estimate:
    """`est` with its interval cut to the range the quantity cannot leave (an accuracy to [0, 1]): the truth
    is inside that range, so cutting changes no verdict with a threshold inside it and no coverage."""
    if est.insufficient or math.isnan(est.lo) or math.isnan(est.hi):
        return est
    return dataclasses.replace(est, lo=max(est.lo, lo), hi=min(est.hi, hi))


def insufficient(reason: str, estimate: float = math.nan, n: int = 0, n_seeds: int = 0, scope: str = RECIPE,
                 replicates: Iterable[float] = (), level: float = 0.95) -> Estimate:
    """An estimate without an interval, because the data cannot support one; the verdict is inconclusive."""
    return Estimate(estimate=float(estimate), lo=math.nan, hi=math.nan, n=n, n_seeds=n_seeds, level=level,
                    method="none", scope=scope, replicates=[float(v) for v in replicates], insufficient=reason)


def _arrays(per_replicate: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(per_replicate) == 0:
        raise ValueError("no replicates: need at least one array of per-example values")
    out = [np.asarray(a, dtype=np.float64).ravel() for a in per_replicate]
    for i, a in enumerate(out):
        if a.size == 0:
            raise ValueError(f"replicate {i} has no examples")
    return out


def _one_replicate_reason(scope: str) -> str:
    return ("1 replicate of a trained recipe cannot support a claim about the recipe (its seed-to-seed "
            "variation is unknown): run 2 or more seeds")


# ------------------------------------------------------------------------------------------ estimates


def mean_estimate(per_replicate: Sequence[np.ndarray], scope: str = RECIPE, level: float = 0.95,
                  proportion: bool = False) -> Estimate:
    """Mean over replicates of each replicate's mean, with the crossed-design interval (module docstring).

    `per_replicate`: one (n,) array of per-example values per replicate; arrays of equal length are taken to
    be the same examples (the eval set is shared). One replicate: an interval over examples if `scope` is
    "checkpoint", else insufficient. `proportion`: the values are 0/1 by construction (correct or not), so one
    checkpoint gets the exact binomial interval. Not for values that merely happen to be 0/1 in the sample
    (an ablation effect in {-1, 0, 1} without a -1): their mean may lie outside [0, 1].
    """
    arrays = _arrays(per_replicate)
    R = len(arrays)
    means = np.array([a.mean() for a in arrays])
    estimate = float(means.mean())
    n = min(a.size for a in arrays)
    if np.isnan(means).any():
        return _finish(math.nan, [], level, n, R, scope, "none", means)
    if R == 1:
        if scope != CHECKPOINT:
            return insufficient(_one_replicate_reason(scope), estimate, n, 1, scope, means, level)
        a = arrays[0]
        if proportion and np.isin(a, (0.0, 1.0)).all():
            return _clopper_pearson(a, level, scope)
        v = float(a.var(ddof=1)) / a.size if a.size > 1 else math.nan
        est = _finish(estimate, [(v, a.size - 1)], level, n, 1, scope, "t interval over examples (one checkpoint)",
                      means)
        if np.isin(a, (-1.0, 0.0, 1.0)).all() and math.isfinite(est.lo):
            return _with_flip_bounds(est, a, level)
        return est
    components = [(float(means.var(ddof=1)) / R, R - 1)]
    if len({a.size for a in arrays}) == 1 and n > 1:
        cols = np.stack(arrays).mean(axis=0)  # per-example means over replicates
        components.append((float(cols.var(ddof=1)) / n, n - 1))
        method = f"t interval, crossed replicates x examples ({R} x {n})"
    else:
        method = f"t interval over {R} replicate means"
    return _finish(estimate, components, level, n, R, scope, method, means)


def _with_flip_bounds(est: Estimate, a: np.ndarray, level: float) -> Estimate:
    """`est` widened to the score interval for the mean of values in {-1, 0, 1} (one checkpoint's flips).

    Like Wilson's interval for a proportion, the variance is taken at each candidate mean m rather than at the
    sample mean: with the observed share q of zeros, Var = (1 - q) - m^2, and the interval is every m with
    (mean - m)^2 <= z^2 Var(m) / n. Near a boundary (an ablation that breaks almost every answer: values
    almost all +1) the t interval over examples is a Wald interval, and it was measured to pass 9 % of the time
    at the threshold; away from the boundary the two agree. The result is the hull of both.
    """
    n = a.size
    z = _t_quantile(level, n - 1)
    c = 1.0 - float((a == 0).mean())  # P(+1) + P(-1)
    x = float(a.mean())
    A, B, C = n + z * z, -2.0 * n * x, n * x * x - z * z * c
    disc = B * B - 4 * A * C
    if disc < 0:
        return est
    root = math.sqrt(disc)
    lo, hi = (-B - root) / (2 * A), (-B + root) / (2 * A)
    return dataclasses.replace(est, lo=min(est.lo, lo), hi=max(est.hi, hi),
                               method=est.method + ", widened to the score interval of a {-1, 0, 1} mean")


def _clopper_pearson(a: np.ndarray, level: float, scope: str) -> Estimate:
    """The exact (Clopper-Pearson) interval of the mean of one checkpoint's 0/1 values (module docstring)."""
    n, k = a.size, int(a.sum())
    tail = (1.0 - level) / 2.0
    lo = float(_st.beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    hi = float(_st.beta.ppf(1.0 - tail, k + 1, n - k)) if k < n else 1.0
    p = k / n
    return Estimate(estimate=p, lo=lo, hi=hi, n=n, n_seeds=1, level=level,
                    method="exact binomial (Clopper-Pearson) interval over examples (one checkpoint)",
                    se=math.sqrt(p * (1 - p) / n), df=math.inf, scope=scope, replicates=[p])


def difference_estimate(a: Sequence[np.ndarray], b: Sequence[np.ndarray], scope_a: str = RECIPE,
                        scope_b: str = RECIPE, level: float = 0.95) -> Estimate:
    """mean(a) - mean(b) for two roles measured per example; paired by example when they share examples.

    Each role's replicates are independent trainings (their seed variances add); the example noise shared by
    both roles is taken from the per-example difference of their replicate-averaged values, so what both
    models find hard on the same examples cancels. Two checkpoints on the same examples with 0/1 values (two
    models' accuracies) the interval is widened to the paired score interval (`_paired_score_bounds`).
    """
    A, B = _arrays(a), _arrays(b)
    for side, arrays, scope in (("first", A, scope_a), ("second", B, scope_b)):
        if len(arrays) == 1 and scope != CHECKPOINT:
            return insufficient(f"the {side} role: " + _one_replicate_reason(scope), n_seeds=1, scope=scope)
    mA, mB = np.array([x.mean() for x in A]), np.array([x.mean() for x in B])
    estimate = float(mA.mean() - mB.mean())
    components = [(float(m.var(ddof=1)) / len(m), len(m) - 1) for m in (mA, mB) if len(m) > 1]
    sizes = {x.size for x in (*A, *B)}
    n = min(sizes)
    if len(sizes) == 1 and n > 1:
        diff = np.stack(A).mean(axis=0) - np.stack(B).mean(axis=0)
        components.append((float(diff.var(ddof=1)) / n, n - 1))
        how = "paired by example"
    else:
        components += [(float(x[0].var(ddof=1)) / x[0].size, x[0].size - 1) for x in (A, B) if len(x) == 1]
        how = "independent examples"
    scope = RECIPE if RECIPE in (scope_a, scope_b) else CHECKPOINT
    est = _finish(estimate, components, level, n, min(len(A), len(B)), scope,
                  f"difference, t interval ({len(A)} vs {len(B)} replicates, {how})", mA, mB)
    if (len(A) == len(B) == 1 and how == "paired by example" and math.isfinite(est.lo)
            and np.isin(A[0], (0.0, 1.0)).all() and np.isin(B[0], (0.0, 1.0)).all()):
        return _paired_score_bounds(est, A[0], B[0], level)
    return est


def _paired_score_bounds(est: Estimate, a: np.ndarray, b: np.ndarray, level: float) -> Estimate:
    """`est` widened to the score interval (Tango 1998) of the difference of two paired proportions.

    Two checkpoints' 0/1 values on the same n examples: k10 examples where only the first is right, k01 where only
    the second is. The interval is every d with |k10 - k01 - n d| <= z sqrt(n (2 q + d - d^2)), q the maximum-
    likelihood share of (0, 1) pairs given d; like Wilson's interval, the variance is taken at each candidate d,
    not at the estimate. Near a bound (0.99 vs 0.97 with 200 examples: a handful of discordant pairs) the t
    interval over the paired differences alone gave 6.5 % false fails at the threshold. The result is the hull.
    """
    n = a.size
    k10, k01 = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    z = _t_quantile(level, n - 1)
    d_hat = (k10 - k01) / n

    def score(d: float) -> float:
        w = (2 * n - k10 + k01) * d - (k10 + k01)
        q = (-w + math.sqrt(max(w * w + 8 * n * k01 * d * (1 - d), 0.0))) / (4 * n)  # max: rounding at d = -1
        var = n * (2 * q + d - d * d)
        gap = k10 - k01 - n * d
        return gap / math.sqrt(var) if var > 0 else math.copysign(math.inf, gap) if gap else 0.0

    edge = 1e-12
    lo = -1.0 if score(-1 + edge) <= z else _optimize.brentq(lambda d: score(d) - z, -1 + edge, d_hat)
    hi = 1.0 if score(1 - edge) >= -z else _optimize.brentq(lambda d: score(d) + z, d_hat, 1 - edge)
    return dataclasses.replace(est, lo=min(est.lo, lo), hi=max(est.hi, hi),
                               method=est.method + ", widened to the paired score interval")


def _replicate_component(v: np.ndarray, w: np.ndarray, scope: str, side: str) -> tuple[float, float] | str:
    """(variance of the mean, df) of one role's per-replicate statistic, or why there is none."""
    if v.size == 0:
        return f"the {side}has no replicate with this statistic"
    if v.size == 1:
        if scope != CHECKPOINT:
            return side.capitalize() + _one_replicate_reason(scope) if side else _one_replicate_reason(scope)
        return max(float(w[0]), 0.0), math.inf
    return max(float(v.var(ddof=1)), float(np.nanmean(w))) / v.size, v.size - 1


def replicate_estimate(values: Sequence[float], within: Sequence[float] | None = None, scope: str = RECIPE,
                       level: float = 0.95) -> Estimate:
    """Mean of a per-replicate statistic, t interval with R - 1 degrees of freedom.

    `within`: each replicate's sampling variance of the statistic over examples; their mean floors the
    between-replicate variance (a statistic equal in every replicate is not known exactly). With one
    replicate: a normal interval from `within` for a checkpoint, insufficient for a recipe. NaN values
    (replicates without the statistic) must be left out by the caller.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.zeros_like(v) if within is None else np.asarray(within, dtype=np.float64)
    part = _replicate_component(v, w, scope, "")
    if isinstance(part, str):
        return insufficient(part, float(v.mean()) if v.size else math.nan, 0, v.size, scope, v, level)
    how = f"t interval over {v.size} replicates" if v.size > 1 else "normal interval from the within-checkpoint bootstrap"
    return _finish(float(v.mean()), [part], level, 0, v.size, scope, how, v)


def replicate_difference(a: Sequence[float], b: Sequence[float], within_a: Sequence[float] | None = None,
                         within_b: Sequence[float] | None = None, scope_a: str = RECIPE, scope_b: str = RECIPE,
                         level: float = 0.95) -> Estimate:
    """mean(a) - mean(b) of a per-replicate statistic of two independently trained roles (Welch-type)."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    wa = np.zeros_like(va) if within_a is None else np.asarray(within_a, dtype=np.float64)
    wb = np.zeros_like(vb) if within_b is None else np.asarray(within_b, dtype=np.float64)
    parts = []
    for v, w, scope, side in ((va, wa, scope_a, "first role: "), (vb, wb, scope_b, "second role: ")):
        part = _replicate_component(v, w, scope, side)
        if isinstance(part, str):
            return insufficient(part, n_seeds=v.size, scope=scope, replicates=va, level=level)
        parts.append(part)
    scope = RECIPE if RECIPE in (scope_a, scope_b) else CHECKPOINT
    return _finish(float(va.mean() - vb.mean()), parts, level, 0, min(va.size, vb.size), scope,
                   f"difference, Welch-type t interval ({va.size} vs {vb.size} replicates)", va, vb)


def bootstrap_variance(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 200, seed: int = 0) -> float:
    """Variance of `statistic(rows)` over `n_boot` resamples (with replacement) of the row indices range(n).

    The statistic redoes everything it does on the full data (selection included) on each resample. NaN
    draws are ignored; fewer than two finite draws give NaN.
    """
    rng = np.random.default_rng([seed, 0xB007])
    draws = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    return float(draws.var(ddof=1)) if draws.size > 1 else math.nan


# ------------------------------------------------------------------------------------------- verdicts


def judge(est: Estimate, threshold: float, direction: str = ">=") -> str:
    """"passed" / "failed" / "inconclusive" / "error" for "effect `direction` threshold" from an interval.

    ">=": passed when the whole interval is above the threshold (lo > threshold), failed when it is wholly
    below (hi < threshold), otherwise inconclusive. "<=" mirrors it. An insufficient estimate is
    inconclusive; a NaN anywhere else is an error: a broken measurement is never a verdict.
    """
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', got {direction!r}")
    if est.insufficient:
        return "inconclusive"
    if any(math.isnan(float(v)) for v in (est.estimate, est.lo, est.hi, threshold)):
        return "error"
    if direction == ">=":
        return "passed" if est.lo > threshold else "failed" if est.hi < threshold else "inconclusive"
    return "passed" if est.hi < threshold else "failed" if est.lo > threshold else "inconclusive"
