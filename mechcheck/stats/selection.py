"""Selecting heads without fooling oneself: halves to choose on and measure on, ranks with random tie-breaks
or shared credit, and matched random control sets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["split_halves", "top_k", "top_k_credit", "random_head_sets"]


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random partition of range(n) into two halves (sorted): select on one, measure on the other.

    Choosing "the top head" and measuring it on the same examples reports the winner's curse; measuring it on
    examples the choice never saw does not. The first half has n // 2 indices.
    """
    if n < 2:
        raise ValueError(f"need n >= 2 to split into two non-empty halves, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def top_k(scores: np.ndarray, k: int, seed: int | Sequence[int]) -> np.ndarray:
    """Indices of the k largest `scores`, ties broken at random (by `seed`), not by position.

    Breaking ties by position would fill the top k with the first heads when many heads are tied (e.g. at an
    effect of exactly 0), and so favour low layers.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not 1 <= k <= s.size:
        raise ValueError(f"k must be in [1, {s.size}], got {k}")
    tiebreak = np.random.default_rng(seed).permutation(s.size)
    return np.lexsort((tiebreak, -s))[:k]


def top_k_credit(scores: np.ndarray, k: int) -> np.ndarray:
    """Fractional membership of each item in the top k: 1 above the k-th score, and the slots left shared
    equally by the items tied at it (so the credits sum to k and no tie is decided by position)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not 1 <= k <= s.size:
        raise ValueError(f"k must be in [1, {s.size}], got {k}")
    kth = np.sort(s)[::-1][k - 1]
    credit = (s > kth).astype(np.float64)
    tied = s == kth
    credit[tied] = (k - credit.sum()) / tied.sum()
    return credit


def random_head_sets(n_layers: int, n_heads: int, k: int, n_sets: int, seed: int,
                     exclude: Iterable[tuple[int, int]] = ()) -> list[list[tuple[int, int]]]:
    """`n_sets` random sets of k distinct (layer, head) pairs, avoiding `exclude` where possible: the matched
    control "random heads, same count". Each set is sorted; sets are independent."""
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
