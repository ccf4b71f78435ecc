"""Decoding checks (experiment `linear_decoding`): what a linear read-out recovers, against its null.

Per-example out-of-fold correctness is a mean over the shared eval examples (crossed-design interval). The
shuffled-label null is judged per replicate: a t prediction interval for one more draw of the null (accuracies
of many 0/1 predictions are close to normal, and with 10-20 shuffles an empirical rank p-value cannot go below
1/21), Holm over the decoded layers, and the observed accuracy must also beat every shuffle. The share of
mixed-selective units is a per-replicate statistic compared between roles (its within-replicate variance is
the binomial variance over units).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, THAN, CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.experiments.decoding import majority, p_values
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["decoding_accuracy_at_least", "decoding_above_null", "mixed_selectivity_higher"]

_MAX_LAYER = 127


def _layers(ctx: CheckContext, role: str) -> list[int]:
    meta = ctx.role(role).meta
    return list(meta[0].get("decode", {}).get("layers", [])) if meta else []


def _layer_index(ctx: CheckContext, role: str, layer: Any) -> int:
    layers = _layers(ctx, role)
    if layer == "last":
        return len(layers) - 1
    if layer not in layers:
        raise ctx.error(f"layer: {layer} was not decoded in model '{role}' (decoded layers: {layers}; "
                        f"the experiment's `layers: all` decodes every layer)")
    return layers.index(layer)


def _decoded(ctx: CheckContext, variable: str) -> None:
    if variable not in ctx.meas.args["variables"]:
        raise ctx.error(f"variable: {variable!r} was not decoded (the experiment's `variables`)",
                        allowed=tuple(ctx.meas.args["variables"]))


@CHECKS.register("decoding_accuracy_at_least", params=(
    MODEL,
    Param("variable", "label", required=True, within="variables", doc="a decoded label, e.g. context"),
    Param("value", "float", required=True, min=0.0, max=1.0, doc="smallest cross-validated accuracy"),
    Param("layer", "choice", default="last", choices=("last", *range(_MAX_LAYER + 1)),
          doc="'last' or a decoded layer index"),
), experiments=("linear_decoding",))
def decoding_accuracy_at_least(ctx: CheckContext, model: str, variable: str, value: float,
                               layer: Any = "last") -> CheckResult:
    """The linear decoder's cross-validated accuracy for `variable` is at least `value`."""
    _decoded(ctx, variable)
    data = ctx.role(model)
    j = _layer_index(ctx, model, layer)
    correct = [c[:, j] for c in data.values(f"decode/correct/{variable}")]
    if any(np.isnan(c).any() for c in correct):
        raise ctx.error(f"'{variable}' could not be cross-validated in '{model}' (a class with fewer than 2 "
                        "examples): there is no decoding accuracy")
    est = stats.bounded(stats.mean_estimate(correct, data.scope, ctx.level, proportion=True), 0.0, 1.0)
    outcome = stats.judge(est, value, ">=")
    null = data.values(f"decode/null_acc/{variable}")
    chance = majority(ctx.meas.labels[variable])
    if null[0].size:
        ctl = stats.mean_estimate([e[:, j] for e in data.values(f"decode/null_example/{variable}")], data.scope,
                                  ctx.level)
        p95 = float(np.mean([np.quantile(a[:, j], 0.95) for a in null]))
        control = {"label": f"shuffled labels ({null[0].shape[0]} permutations)", "estimate": ctl.estimate,
                   "lo": ctl.lo, "hi": ctl.hi, "p95": p95, "chance": chance}
        ctl_text = f"shuffled-label null {ctl.estimate:.3f} (95th pct {p95:.3f})"
    else:
        control = {"label": "chance (majority class)", "estimate": chance}
        ctl_text = f"chance {chance:.3f}"
    at = _layers(ctx, model)[j]
    args = ctx.meas.args
    msg = (f"{args['classifier']} decoding of '{variable}' from {args['site']} layer {at} of '{model}' = "
           f"{est} (needs > {value}; {ctl_text}){scope_note(est)}")
    return CheckResult("decoding_accuracy_at_least", {}, outcome, msg, est, value, ">=", control,
                       {"layer": at, "site": args["site"]})


@CHECKS.register("decoding_above_null", params=(
    MODEL,
    Param("variable", "label", required=True, within="variables", doc="a decoded label, e.g. context"),
    Param("alpha", "float", default=0.01, min=0.0, max=1.0, doc="significance level (Holm over decoded layers)"),
), experiments=("linear_decoding",))
def decoding_above_null(ctx: CheckContext, model: str, variable: str, alpha: float = 0.01) -> CheckResult:
    """In every replicate the decoder beats its shuffled-label null (at some layer, Holm over layers)."""
    _decoded(ctx, variable)
    if ctx.meas.args["n_shuffle"] < 1:
        raise ctx.error("decoding_above_null needs a shuffled-label null: set the experiment's n_shuffle >= 1")
    data = ctx.role(model)
    layers = _layers(ctx, model)
    correct = data.values(f"decode/correct/{variable}")
    null = data.values(f"decode/null_acc/{variable}")
    null_ex = data.values(f"decode/null_example/{variable}")
    per_rep, beats, diffs = [], 0, []
    for c, na, ne in zip(correct, null, null_ex):
        acc = np.nanmean(c, 0) if not np.isnan(c).all() else np.full(len(layers), np.nan)
        p = p_values(c, na)[0]
        p_holm = np.full(len(layers), np.nan) if np.isnan(p).any() else stats.holm(p)
        ok = (p_holm < alpha) & (acc > na.max(0))
        best = int(np.nanargmin(p_holm)) if not np.isnan(p_holm).all() else 0
        beats += bool(ok.any())
        diffs.append(c[:, best] - ne[:, best])
        per_rep.append({"best_layer": layers[best], "accuracy": [round(float(x), 4) for x in acc],
                        "null_mean": [round(float(x), 4) for x in na.mean(0)],
                        "p_holm": [round(float(x), 6) for x in p_holm], "beats_null": bool(ok.any())})
    n_rep = len(correct)
    est = stats.bounded(stats.mean_estimate(diffs, data.scope, ctx.level), -1.0, 1.0)
    if any(np.isnan(c).all() for c in correct):
        outcome, why = "error", ""
    elif data.scope != "checkpoint" and n_rep < 2:
        outcome, why = "inconclusive", f" — inconclusive: {est.insufficient}"
    else:
        # failing needs evidence, not a missing one: only an interval for accuracy minus null wholly below 0
        # fails (a decoder that does not beat its null in a replicate shows no effect; it shows no absence)
        outcome = "passed" if beats == n_rep else "failed" if est.hi < 0 else "inconclusive"
        why = scope_note(est) if data.scope == "checkpoint" else ""
    where = f"best layer per replicate {[r['best_layer'] for r in per_rep]}" if len(layers) > 1 else f"layer {layers[0]}"
    msg = (f"decoding '{variable}' from '{model}' beats its shuffled-label null in {beats}/{n_rep} replicates "
           f"(p < {alpha}{', Holm over layers' if len(layers) > 1 else ''}, and above every shuffle); "
           f"accuracy minus null = {est} at the {where}{why}")
    control = {"label": f"shuffled labels ({ctx.meas.args['n_shuffle']} permutations)",
               "estimate": float(np.mean([r["null_mean"][layers.index(r["best_layer"])] for r in per_rep])),
               "chance": majority(ctx.meas.labels[variable])}
    return CheckResult("decoding_above_null", {}, outcome, msg, est, 0.0, ">=", control,
                       {"replicates": per_rep, "layers": layers, "significant_replicates": beats})


def _shares(data, variables: list[str] | None = None) -> tuple[list[float], list[float]]:
    """Per replicate, the share of mixed-selective units and its binomial variance over units."""
    shares, within = [], []
    for m in data.values("decode/sel/mixed"):
        p, d = float(m.mean()), max(1, m.size)
        shares.append(p)
        within.append(p * (1 - p) / d)
    return shares, within


def _independent_mixed_share(data) -> float:
    """Expected share of units selective for >= 2 variables if selectivity for each variable were independent."""
    out = []
    for sel in data.values("decode/sel/selective"):
        p = sel.astype(bool).mean(1)
        none = np.prod(1 - p)
        one = sum(p[i] * np.prod(np.delete(1 - p, i)) for i in range(len(p)))
        out.append(1 - none - one)
    return float(np.mean(out)) if out else float("nan")


@CHECKS.register("mixed_selectivity_higher", params=(
    MODEL, THAN,
    Param("by", "float", default=0.0, min=-1.0, max=1.0, doc="smallest difference of mixed-selective shares"),
), experiments=("linear_decoding",))
def mixed_selectivity_higher(ctx: CheckContext, model: str, than: str, by: float = 0.0) -> CheckResult:
    """The share of mixed-selective final-layer units in `model` exceeds that in `than` by more than `by`."""
    A, B = ctx.role(model), ctx.role(than)
    (sa, wa), (sb, wb) = _shares(A), _shares(B)
    est = stats.bounded(stats.replicate_difference(sa, sb, wa, wb, A.scope, B.scope, ctx.level), -1.0, 1.0)
    outcome = stats.judge(est, by, ">=")
    indep = _independent_mixed_share(A)
    msg = (f"share of mixed-selective units (>= 2 of {ctx.meas.args['selectivity']}) in '{model}' minus '{than}' = "
           f"{est} (needs > {by}; {np.mean(sa):.3f} vs {np.mean(sb):.3f}; '{model}' if its units were selective "
           f"independently: {indep:.3f}){scope_note(est)}")
    control = {"label": f"'{model}' expected if selectivity were independent across variables", "estimate": indep,
               "than_share": float(np.mean(sb))}
    details = {role: {"mixed_share": s, "any_selective_share": [float(x.astype(bool).any(0).mean()) for x in
                                                               ctx.role(role).values("decode/sel/selective")]}
               for role, s in ((model, sa), (than, sb))}
    return CheckResult("mixed_selectivity_higher", {}, outcome, msg, est, by, ">=", control, details)
