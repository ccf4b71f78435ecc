"""Layer checks (experiment `head_ablation`): where the heads a model needs sit.

`top_heads_in_layers` counts a top head (chosen on one half of the examples, ties sharing credit) only if it
lies in the layers and is significant on the other half (Holm over the heads tested). `layer_centroid_higher`
compares the layer centroids of two models' head effects, each head weighted by the product of its mean
effects on two halves (`experiments.head_ablation.centroid`: exactly 0 in expectation for a head that does
nothing). Both are statistics per replicate: a t interval over replicates, floored by each replicate's own
bootstrap variance over examples with every selection redone in each draw (`mechcheck.checks.ablation` has
the selection rules shared with the effect checks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, CheckContext, metric_of
from mechcheck.checks.ablation import _ALPHA, _METRIC, _flat, _halves, _validate_heads
from mechcheck.checks.behaviour import scope_note
from mechcheck.experiments.head_ablation import centroid
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["top_heads_in_layers", "layer_centroid_higher"]


# ---------------------------------------------------------------------------------- top heads in layers


def _share_in_layers(eff: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, top: int,
                     in_layers: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    """Share of the top `top` heads (by mean effect on rows_a; ties share credit) that lie in the layers and
    are significant on rows_b (Holm over the heads tested), and the per-head details. eff: (n, L*H)."""
    credit = stats.top_k_credit(eff[rows_a].mean(0), top)
    cand = np.flatnonzero(credit > 0)
    p = stats.holm(stats.paired_pvalues(eff[rows_b][:, cand]))
    significant = p < _ALPHA
    share = float((credit[cand] * in_layers[cand] * significant).sum() / top)
    return share, [{"index": int(i), "credit": float(credit[i]), "p_holm": float(pi), "significant": bool(s),
                    "in_layers": bool(in_layers[i])} for i, pi, s in zip(cand, p, significant)]


def _resampled(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rows[rng.integers(0, len(rows), size=len(rows))]


def _within_variance(fn, a: np.ndarray, b: np.ndarray, n_boot: int, seed) -> float:
    """Bootstrap variance of ``fn(rows_a, rows_b)`` resampling examples within each half."""
    rng = np.random.default_rng(seed)
    draws = np.array([fn(_resampled(a, rng), _resampled(b, rng)) for _ in range(n_boot)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    return float(draws.var(ddof=1)) if draws.size > 1 else float("nan")


@CHECKS.register("top_heads_in_layers", params=(
    MODEL,
    Param("top", "int", required=True, min=1, limit="heads", doc="how many of the most important heads to look at"),
    Param("layers", "layers", required=True, doc="the layers they should lie in"),
    Param("at_least", "float", default=0.5, min=0.0, max=1.0, doc="share of the top heads that must lie there"),
    _METRIC,
), experiments=("head_ablation",))
def top_heads_in_layers(ctx: CheckContext, model: str, top: int, layers: list[int], at_least: float = 0.5,
                        metric: str | None = None) -> CheckResult:
    """The `top` heads with the largest ablation effect lie (mostly) in `layers`, and matter."""
    metric = metric_of(ctx, metric)
    data = ctx.role(model)
    L, H = data.n_layers, data.n_heads
    if top > L * H:
        raise ctx.error(f"top: {top} is more than the {L * H} heads of model '{model}'")
    bad = [layer for layer in layers if not 0 <= layer < L]
    if bad:
        raise ctx.error(f"layers: {bad} do not exist in model '{model}' (layers 0..{L - 1})")
    in_layers = np.zeros(L * H, dtype=bool)
    for layer in layers:
        in_layers[layer * H:(layer + 1) * H] = True
    a, b = _halves(ctx)
    shares, within, details = [], [], []
    for r, eff in enumerate(data.values(f"sweep/head/{metric}")):
        flat = eff.reshape(eff.shape[0], -1)
        share, heads = _share_in_layers(flat, a, b, top, in_layers)
        shares.append(share)
        within.append(_within_variance(lambda ra, rb: _share_in_layers(flat, ra, rb, top, in_layers)[0], a, b,
                                       ctx.n_boot, [ctx.seed, r, 0x5E]))
        for h in heads:
            layer, head = _flat(h.pop("index"), H)
            h["head"] = f"L{layer}H{head}"
            h["effect"] = float(flat[b, layer * H + head].mean())
        details.append(heads)
    est = stats.bounded(stats.replicate_estimate(shares, within, data.scope, ctx.level), 0.0, 1.0)
    outcome = stats.judge(est, at_least, ">=")
    chance = len(set(layers)) / L
    msg = (f"share of the top {top} heads of '{model}' (by {metric} drop, chosen on half the examples) that lie "
           f"in layers {list(layers)} and matter on the other half = {est} (needs > {at_least}; random heads: "
           f"{chance:.2f}; per replicate {', '.join(f'{s:.2f}' for s in shares)}){scope_note(est)}")
    return CheckResult("top_heads_in_layers", {}, outcome, msg, est, at_least, ">=",
                       {"label": f"random {top} heads (expected share)", "estimate": chance},
                       {"top_heads": details, "metric": metric, "alpha": _ALPHA})


# ------------------------------------------------------------------------------------------ layer profiles


def _critical(per_rep: list[np.ndarray], tau: float) -> list[str]:
    """Heads whose mean effect is >= tau in at least 2/3 of the replicates (informational)."""
    means = np.stack([e.mean(0) for e in per_rep])  # (R, L, H)
    share = (means >= tau).mean(0)
    H = share.shape[1]
    return [f"L{i // H}H{i % H}" for i in np.flatnonzero(share.reshape(-1) >= 2 / 3 - 1e-9)]


@CHECKS.register("layer_centroid_higher", params=(
    MODEL,
    Param("than", "model", required=True, doc="the model whose heads should sit in earlier layers"),
    Param("by", "float", default=0.0, doc="how many layers higher the centroid must at least be"),
    Param("critical", "float", default=0.05, min=0.0, doc="effect from which a head counts as critical (listed)"),
    Param("expected_heads", "heads", doc="heads a paper names for `model`: reported as critical or not, never judged"),
    _METRIC,
), experiments=("head_ablation",))
def layer_centroid_higher(ctx: CheckContext, model: str, than: str, by: float = 0.0, critical: float = 0.05,
                          expected_heads: Any = None, metric: str | None = None) -> CheckResult:
    """`model` relies on later layers than `than`: its importance-weighted layer centroid is higher by > `by`."""
    metric = metric_of(ctx, metric)
    La, Lb = ctx.role(model).n_layers, ctx.role(than).n_layers
    if La != Lb:
        raise ctx.error(f"'{model}' has {La} layers and '{than}' {Lb}: layer centroids are only comparable "
                        "between models of the same depth")
    a, b = _halves(ctx)
    per: dict[str, dict[str, list]] = {}
    for role in (model, than):
        effs = ctx.role(role).values(f"sweep/head/{metric}")
        got = {"centroid": [], "within": [], "profile": [], "left_out": 0}
        for r, eff in enumerate(effs):
            c, profile = centroid(eff, a, b)
            got["profile"].append(np.round(profile, 4).tolist())
            if np.isnan(c):  # no head matters (e.g. a replicate at chance): no profile to compare
                got["left_out"] += 1
                continue
            got["centroid"].append(c)
            got["within"].append(_within_variance(lambda ra, rb, eff=eff: centroid(eff, ra, rb)[0], a, b,
                                                  ctx.n_boot, [ctx.seed, r, 0xCE]))
        per[role] = got
    A, B = per[model], per[than]
    details: dict[str, Any] = {
        "metric": metric, "alpha": _ALPHA,
        "centroids": {r: [round(c, 3) for c in per[r]["centroid"]] for r in (model, than)},
        "layer_profile": {r: per[r]["profile"] for r in (model, than)},
        "replicates_without_profile": {r: per[r]["left_out"] for r in (model, than)},
        "critical_heads": {r: _critical(ctx.role(r).values(f"sweep/head/{metric}"), critical) for r in (model, than)},
        "critical_threshold": critical,
    }
    empty = [r for r in (model, than) if not per[r]["centroid"]]
    if empty:
        seen = "".join(f"; centroid of '{r}' = {np.mean(per[r]['centroid']):.2f}" for r in (model, than)
                       if per[r]["centroid"])
        return CheckResult("layer_centroid_higher", {}, "inconclusive",
                           f"no head's ablation significantly lowers the {metric} of "
                           f"{' or '.join(repr(r) for r in empty)}: there is no layer profile to compare{seen}",
                           None, by, ">=", details=details)
    est = stats.replicate_difference(A["centroid"], B["centroid"], A["within"], B["within"], ctx.role(model).scope,
                                     ctx.role(than).scope, ctx.level)
    outcome = stats.judge(est, by, ">=")
    note = ""
    if expected_heads:
        heads = _validate_heads(ctx, model, expected_heads)
        found = {f"L{layer}H{head}": f"L{layer}H{head}" in details["critical_heads"][model] for layer, head in heads}
        details["expected_heads"] = found
        note = f"; expected heads critical: {sum(found.values())}/{len(found)} (informational)"
    left = ", ".join(f"{n} replicate(s) of '{r}'" for r, n in details["replicates_without_profile"].items() if n)
    msg = (f"layer centroid of '{model}' minus '{than}' ({metric} drops, squared, from two halves) = {est} layers "
           f"(needs > {by:g}); centroids {np.mean(A['centroid']):.2f} vs {np.mean(B['centroid']):.2f}, middle "
           f"layer {(La - 1) / 2:g}{note}" + (f"; left out (no head matters): {left}" if left else "")
           + scope_note(est))
    return CheckResult("layer_centroid_higher", {}, outcome, msg, est, by, ">=",
                       {"label": "no difference", "estimate": 0.0}, details)
