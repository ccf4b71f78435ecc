"""Tests of per-example changes: exact sign tests for correct/incorrect flips, t tests otherwise, Holm and
Bonferroni corrections."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special as _special

__all__ = ["paired_pvalue", "paired_pvalues", "holm", "bonferroni_level"]


def paired_pvalue(diffs: np.ndarray | Sequence[float], alternative: str = "greater") -> float:
    """One-sided p-value that the mean of paired per-example differences is > 0 ("greater") or < 0 ("less").

    Differences all in {-1, 0, 1} (a correct/incorrect flip per example) get an exact sign test on the
    non-zero ones; others a one-sample t-test. All-zero differences give 1.0; constant non-zero differences
    give 0.0 or 1.0 by their sign; NaNs give NaN.
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("diffs is empty")
    return float(paired_pvalues(d[:, None], alternative)[0])


def paired_pvalues(diffs: np.ndarray, alternative: str = "greater") -> np.ndarray:
    """`paired_pvalue` of every column of (n, m) `diffs`, vectorised (sign test for ternary columns)."""
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"diffs must be (n, m) with n >= 1, got shape {d.shape}")
    if alternative == "less":
        d = -d
    out = np.full(d.shape[1], np.nan)
    nan_cols = np.isnan(d).any(axis=0)
    ternary = np.isin(d, (-1.0, 0.0, 1.0)).all(axis=0) & ~nan_cols
    zero = ~np.any(d != 0, axis=0) & ~nan_cols
    out[zero] = 1.0
    tern = ternary & ~zero
    if tern.any():
        pos = (d[:, tern] > 0).sum(0)
        nonzero = (d[:, tern] != 0).sum(0)
        # P(X >= pos), X ~ Binomial(nonzero, 1/2); the special functions behind scipy.stats' binom.sf and
        # t.sf, called directly: same values, without the distribution objects' per-call overhead (these
        # tests run in every draw of the within-replicate bootstraps)
        out[tern] = _special.bdtrc(pos - 1, nonzero, 0.5)
    rest = ~ternary & ~zero & ~nan_cols
    if rest.any():
        x = d[:, rest]
        n = x.shape[0]
        mean, sd = x.mean(0), x.std(0, ddof=1) if n > 1 else np.zeros(x.shape[1])
        with np.errstate(divide="ignore", invalid="ignore"):
            t = mean / (sd / math.sqrt(n))
        p = np.where(sd > 0, _special.stdtr(max(n - 1, 1), -t), np.where(mean > 0, 0.0, 1.0))
        if n < 2:
            p = np.where(mean != 0, np.nan, 1.0)
        out[rest] = p
    return out


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order (family-wise error control at alpha)."""
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
    """Per-comparison confidence level so that m simultaneous intervals jointly hold at `level`."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    return 1.0 - (1.0 - level) / m
