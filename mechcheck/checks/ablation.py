"""Ablation checks: which heads a model needs and what they attend to (where they sit: `checks.layers`).

Selection. A check that names heads by rank (`top_head`, `top_3`) picks them on one half of the eval examples
(the halves are fixed by the claim's data seed) and measures them on the other half only, so "the most
important head" is not inflated by the noise that made it win (the winner's curse). Using both halves in turn
(cross-fitting) was measured to be overconfident: the same head tends to win both halves, so the two
measurements are not independent. Ties in the ranking are broken at random under the claim's seed (or shared
as fractional credit), never by position: heads with an effect of exactly 0 must not fill a top-k in layer
order.

A claim about `top_3` is about the model's three most important heads, and a noisy choice can pick others.
Chosen on one half and measured on the other, a wrong pick can only understate the top heads' effect: that
protects a pass of a lower bound, but not a fail of it, nor a pass of an upper bound (calibration benchmark,
true top 3 exactly at the threshold, one checkpoint: `effect_at_least` failed 15 % of the time with 16 heads
and 37 % with 144, `effect_at_most` passed 22 %). Chosen and measured on every example, the estimate can only
overstate it (for additive effects it is the largest of all k-sets' estimates, and E max >= max E). So the
effect checks give a rank selector the hull of both intervals: a verdict needs both on its side of the
threshold, each protected against the selection error that would favour it. The point estimate is the
one-half one.

Properties of the top heads other than their effect (`attention_to`) must hold for whichever heads could be
the top k: the interval spans the least and the most attentive set among the top k and every head whose
effect is not significantly below the k-th (Bonferroni over heads). Measuring only the heads the noise
happened to pick passed 26-68 % of the time at the threshold when the true top head was weak.

Comparisons within one model (`effect_higher`): the per-example difference of two sets' effects, measured on
the same examples of the same replicate, so what makes an example or a seed hard for both cancels. A rank
selector on either side gets the same hull (a wrong pick on the `than` side overstates the difference when
measured on one half and understates it when measured everywhere, the mirror of the `heads` side).

Controls: random heads of the same count (for one head, the mean over all other heads; for k heads,
`n_control` random sets ablated jointly), chance for shares, uniform attention for attention; a comparison
reports the effect of its `than` set.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, CheckContext, metric_of
from mechcheck.checks.behaviour import scope_note
from mechcheck.experiments.head_ablation import SIGNIFICANCE
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult, Estimate

__all__ = ["effect_at_least", "effect_at_most", "effect_higher", "attention_to"]

Heads = tuple[tuple[int, int], ...]
_TOP = re.compile(r"^top_(head|\d+)$")
_METRIC = Param("metric", "choice", choices=("accuracy", "logit_diff"),
                doc="per-example metric (default: the experiment's metric)")
#: significance level of the per-head tests behind shares and centroids
_ALPHA = SIGNIFICANCE


# ---------------------------------------------------------------------------------------------- selection


def _k(heads: Any) -> int:
    if isinstance(heads, str):
        m = _TOP.match(heads)
        return 1 if m.group(1) == "head" else int(m.group(1))
    return len(heads)


def _halves(ctx: CheckContext) -> tuple[np.ndarray, np.ndarray]:
    return stats.split_halves(ctx.meas.n, ctx.seed)


def _flat(i: int, H: int) -> tuple[int, int]:
    return int(i // H), int(i % H)


def _validate_heads(ctx: CheckContext, role: str, heads: list[list[int]]) -> Heads:
    data = ctx.role(role)
    L, H = data.n_layers, data.n_heads
    for layer, head in heads:
        if not (0 <= layer < L and 0 <= head < H):
            raise ctx.error(f"head [{layer}, {head}] does not exist in model '{role}' ({L} layers x {H} heads)")
    return tuple((int(layer), int(head)) for layer, head in heads)


def _selection(ctx: CheckContext, role: str, heads: Any, metric: str,
               everywhere: bool = False) -> list[tuple[Heads, np.ndarray]]:
    """Per replicate, (heads, examples they are measured on): named heads on every example; a rank selector
    picks the top k on half A (ties at random) and is measured on half B, or, with `everywhere`, picks and is
    measured on every example (module docstring)."""
    data = ctx.role(role)
    everything = np.arange(ctx.meas.n)
    if not isinstance(heads, str):
        fixed = _validate_heads(ctx, role, heads)
        return [(fixed, everything) for _ in range(data.n_replicates)]
    k = _k(heads)
    L, H = data.n_layers, data.n_heads
    if k > L * H:
        raise ctx.error(f"{heads}: model '{role}' has only {L * H} heads")
    a, b = (everything, everything) if everywhere else _halves(ctx)
    out = []
    for r, eff in enumerate(data.values(f"sweep/head/{metric}")):
        top = stats.top_k(eff[a].mean(0).reshape(-1), k, [ctx.seed, r, 0x70])
        out.append((tuple(sorted(_flat(i, H) for i in top)), b))
    return out


def _set_name(heads: Heads) -> str:
    return "sets:" + ",".join(f"{layer}.{head}" for layer, head in heads)


def _control_sets(ctx: CheckContext, role: str, r: int, heads: Heads) -> list[list[tuple[int, int]]]:
    data = ctx.role(role)
    n_control = int(ctx.meas.args.get("n_control", 10))
    return stats.random_head_sets(data.n_layers, data.n_heads, len(heads), n_control, ctx.seed + r, exclude=heads)


def _effect_requests(ctx: CheckContext, model: str, heads: Any, value: float = 0.0, metric: str | None = None):
    """Joint ablations of the selected set and of its random controls (sets of more than one head); for a rank
    selector also of the set chosen on every example, when it differs (without controls)."""
    if _k(heads) == 1:
        return []
    metric = metric_of(ctx, metric)
    reqs = []
    lower = _selection(ctx, model, heads, metric)
    for r, (hs, _rows) in enumerate(lower):
        sets = [list(map(list, hs))] + [list(map(list, s)) for s in _control_sets(ctx, model, r, hs)]
        reqs.append(ctx.request(model, r, _set_name(hs), "ablation_set", sets=sets))
    if isinstance(heads, str):
        for r, ((hs, _rows), (low, _)) in enumerate(zip(_selection(ctx, model, heads, metric, everywhere=True),
                                                        lower)):
            if hs != low:
                reqs.append(ctx.request(model, r, _set_name(hs), "ablation_set", sets=[list(map(list, hs))]))
    return reqs


def _effect_values(ctx: CheckContext, role: str, metric: str, selection,
                   control: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per replicate, the per-example effect of the selected heads and of the control (if `control`), on the
    measured rows."""
    data = ctx.role(role)
    values, controls = [], []
    for r, (hs, rows) in enumerate(selection):
        if len(hs) == 1:
            eff = data.values(f"sweep/head/{metric}")[r]  # (n, L, H)
            layer, head = hs[0]
            values.append(eff[rows, layer, head])
            if not control:
                continue
            flat = eff[rows].reshape(len(rows), -1)
            others = [i for i in range(flat.shape[1]) if i != layer * data.n_heads + head] or [0]
            controls.append(flat[:, others].mean(1))
        else:
            sets = ctx.extra(role, r, _set_name(hs))[f"set/{metric}"]  # (n, 1 + n_control)
            values.append(sets[rows, 0])
            if control:
                controls.append(sets[rows, 1:].mean(1) if sets.shape[1] > 1 else np.zeros(len(rows)))
    return values, controls


def _heads_text(heads: Any) -> str:
    return heads if isinstance(heads, str) else ", ".join(f"L{layer}H{head}" for layer, head in heads)


def _selected(selection) -> list[list[str]]:
    return [[f"L{layer}H{head}" for layer, head in hs] for hs, _ in selection]


# -------------------------------------------------------------------------------------------- effect checks


def _hull(half: Estimate, everywhere: Estimate) -> Estimate:
    """The interval of a rank selector: from the lower of the two intervals' ends to the higher (the point
    estimate and its sampling facts are the one-half estimate's)."""
    if half.insufficient or everywhere.insufficient:
        return half if half.insufficient else everywhere
    ends = [half.lo, half.hi, everywhere.lo, everywhere.hi]
    lo, hi = (math.nan, math.nan) if any(math.isnan(v) for v in ends) else (min(ends), max(ends))
    return dataclasses.replace(half, lo=lo, hi=hi, method=f"hull of {half.method}, chosen on one half and measured "
                               f"on the other, and of the same, chosen and measured on every example")


def _effect_check(ctx: CheckContext, name: str, model: str, heads: Any, value: float, metric: str | None,
                  direction: str) -> CheckResult:
    metric = metric_of(ctx, metric)
    data = ctx.role(model)
    sel = _selection(ctx, model, heads, metric)
    values, controls = _effect_values(ctx, model, metric, sel)
    est = stats.mean_estimate(values, data.scope, ctx.level)
    details: dict[str, Any] = {"selected_heads": _selected(sel), "metric": metric}
    how = ""
    if isinstance(heads, str):
        sel_all = _selection(ctx, model, heads, metric, everywhere=True)
        est_all = stats.mean_estimate(_effect_values(ctx, model, metric, sel_all, control=False)[0], data.scope,
                                      ctx.level)
        details["one_half"] = {"estimate": est.estimate, "lo": est.lo, "hi": est.hi}
        details["everywhere"] = {"estimate": est_all.estimate, "lo": est_all.lo, "hi": est_all.hi,
                                 "selected_heads": _selected(sel_all)}
        est = _hull(est, est_all)
        how = (f" (chosen on one half of the examples, measured on the other; the interval also spans the top "
               f"heads chosen and measured on every example: {est_all})")
    if metric == "accuracy":  # a change of accuracy lies in [-1, 1]
        est = stats.bounded(est, -1.0, 1.0)
    outcome = stats.judge(est, value, direction)
    ctl = stats.mean_estimate(controls, data.scope, ctx.level)
    k = len(sel[0][0])
    label = "mean over all other heads" if k == 1 else \
        f"{int(ctx.meas.args.get('n_control', 10))} random sets of {k} heads"
    bound = ">" if direction == ">=" else "<"
    msg = (f"{metric} drop when ablating {_heads_text(heads)} in '{model}' = {est} (needs {bound} {value}; "
           f"control {label}: {ctl.estimate:.3f}){how}{scope_note(est)}")
    return CheckResult(name, {}, outcome, msg, est, value, direction,
                       {"label": label, "estimate": ctl.estimate, "lo": ctl.lo, "hi": ctl.hi}, details)


def _effect_params(bound: str) -> tuple[Param, ...]:
    return (MODEL,
            Param("heads", "heads", required=True, doc="[[layer, head], ...], 'top_head' or 'top_<k>' (ablated jointly)"),
            Param("value", "float", required=True, doc=f"{bound} effect (clean minus ablated metric)"),
            _METRIC)


@CHECKS.register("effect_at_least", params=_effect_params("smallest"), experiments=("head_ablation",),
                 requests=_effect_requests)
def effect_at_least(ctx: CheckContext, model: str, heads: Any, value: float, metric: str | None = None) -> CheckResult:
    """Ablating `heads` together lowers the metric by more than `value`."""
    return _effect_check(ctx, "effect_at_least", model, heads, value, metric, ">=")


@CHECKS.register("effect_at_most", params=_effect_params("largest"), experiments=("head_ablation",),
                 requests=_effect_requests)
def effect_at_most(ctx: CheckContext, model: str, heads: Any, value: float, metric: str | None = None) -> CheckResult:
    """Ablating `heads` together lowers the metric by less than `value` (the heads do not matter)."""
    return _effect_check(ctx, "effect_at_most", model, heads, value, metric, "<=")


def _pair_requests(ctx: CheckContext, model: str, heads: Any, than: Any, by: float = 0.0,
                   metric: str | None = None) -> list:
    """Joint ablations of both sets of more than one head (no random controls: `than` is the comparison), for a
    rank selector also of the set chosen on every example."""
    metric = metric_of(ctx, metric)
    reqs, seen = [], set()
    for side in (heads, than):
        if _k(side) == 1:
            continue
        ways = (False, True) if isinstance(side, str) else (False,)
        for everywhere in ways:
            for r, (hs, _rows) in enumerate(_selection(ctx, model, side, metric, everywhere)):
                if (r, hs) not in seen:
                    seen.add((r, hs))
                    reqs.append(ctx.request(model, r, _set_name(hs), "ablation_set", sets=[list(map(list, hs))]))
    return reqs


def _paired(ctx: CheckContext, model: str, heads: Any, than: Any, metric: str, everywhere: bool = False):
    """(selection of heads, selection of than, their per-example effects per replicate), both sides measured on
    the same rows: the half a rank selector did not choose on, when either side is one."""
    sa = _selection(ctx, model, heads, metric, everywhere)
    sb = _selection(ctx, model, than, metric, everywhere)
    rows = [ra if ra.size <= rb.size else rb for (_, ra), (_, rb) in zip(sa, sb)]
    sa = [(hs, r) for (hs, _), r in zip(sa, rows)]
    sb = [(hs, r) for (hs, _), r in zip(sb, rows)]
    return (sa, sb, _effect_values(ctx, model, metric, sa, control=False)[0],
            _effect_values(ctx, model, metric, sb, control=False)[0])


@CHECKS.register("effect_higher", params=(
    MODEL,
    Param("heads", "heads", required=True,
          doc="[[layer, head], ...], 'top_head' or 'top_<k>': the set that should matter more (ablated jointly)"),
    Param("than", "heads", required=True, doc="the set it is compared with, in the same model (ablated jointly)"),
    Param("by", "float", default=0.0, doc="smallest difference of the two effects"),
    _METRIC,
), experiments=("head_ablation",), requests=_pair_requests)
def effect_higher(ctx: CheckContext, model: str, heads: Any, than: Any, by: float = 0.0,
                  metric: str | None = None) -> CheckResult:
    """Ablating `heads` together lowers the metric by more than ablating `than` together, by more than `by`.

    The statistic is the per-example difference effect(heads) - effect(than), paired over examples and
    replicates, with the interval of `effect_at_least` applied to it."""
    if not isinstance(heads, str) and not isinstance(than, str) and \
            {tuple(h) for h in heads} == {tuple(h) for h in than}:
        raise ctx.error("heads and than name the same heads: their difference is 0 by construction")
    metric = metric_of(ctx, metric)
    data = ctx.role(model)
    sa, sb, va, vb = _paired(ctx, model, heads, than, metric)
    est = stats.mean_estimate([a - b for a, b in zip(va, vb)], data.scope, ctx.level)
    details: dict[str, Any] = {"selected_heads": _selected(sa), "than_heads": _selected(sb), "metric": metric}
    how = ""
    if isinstance(heads, str) or isinstance(than, str):
        sa_all, sb_all, va_all, vb_all = _paired(ctx, model, heads, than, metric, everywhere=True)
        est_all = stats.mean_estimate([a - b for a, b in zip(va_all, vb_all)], data.scope, ctx.level)
        details["one_half"] = {"estimate": est.estimate, "lo": est.lo, "hi": est.hi}
        details["everywhere"] = {"estimate": est_all.estimate, "lo": est_all.lo, "hi": est_all.hi,
                                 "selected_heads": _selected(sa_all), "than_heads": _selected(sb_all)}
        est = _hull(est, est_all)
        how = (f" (top heads chosen on one half of the examples, both sets measured on the other; the interval "
               f"also spans the same chosen and measured on every example: {est_all})")
    if metric == "accuracy":  # a difference of two changes of accuracy lies in [-2, 2]
        est = stats.bounded(est, -2.0, 2.0)
    outcome = stats.judge(est, by, ">=")
    own = stats.mean_estimate(va, data.scope, ctx.level)
    other = stats.mean_estimate(vb, data.scope, ctx.level)
    details["effects"] = {"heads": own.estimate, "than": other.estimate}
    msg = (f"{metric} drop when ablating {_heads_text(heads)} minus when ablating {_heads_text(than)} in "
           f"'{model}' = {est} (needs > {by}; the drops: {own.estimate:.3f} vs {other.estimate:.3f}){how}"
           f"{scope_note(est)}")
    return CheckResult("effect_higher", {}, outcome, msg, est, by, ">=",
                       {"label": f"effect of {_heads_text(than)}", "estimate": other.estimate, "lo": other.lo,
                        "hi": other.hi}, details)


@CHECKS.register("attention_to", params=(
    MODEL,
    Param("heads", "heads", required=True, doc="[[layer, head], ...], 'top_head' or 'top_<k>'"),
    Param("tokens", "tokens", required=True, doc="token group of the task, e.g. numbers"),
    Param("at_least", "float", required=True, min=0.0, max=1.0, doc="smallest share of attention"),
), experiments=("head_ablation",))
def attention_to(ctx: CheckContext, model: str, heads: Any, tokens: str, at_least: float) -> CheckResult:
    """Share of attention from the answer position to the `tokens` group, averaged over `heads`."""
    meas = ctx.meas
    if tokens not in meas.groups:
        raise ctx.error(f"tokens: the task marks no token group {tokens!r}", allowed=tuple(sorted(meas.groups)))
    data = ctx.role(model)
    metric = meas.args.get("metric", "accuracy")
    sel = _selection(ctx, model, heads, metric)
    att = data.values(f"attention/{tokens}")
    values, others, worst, best = [], [], [], []
    plausible_sets = []
    for r, (hs, rows) in enumerate(sel):
        a = att[r][rows]  # (m, L, H)
        mask = np.zeros(a.shape[1:], dtype=bool)
        for layer, head in hs:
            mask[layer, head] = True
        values.append(a[:, mask].mean(1))
        others.append(a[:, ~mask].mean(1) if (~mask).any() else a.reshape(len(rows), -1).mean(1))
        if isinstance(heads, str):  # the attention of any set of k heads that could be the top k
            flat = a.reshape(len(rows), -1)
            plausible = _plausible_top(data.values(f"sweep/head/{metric}")[r], _halves(ctx)[0], len(hs),
                                       [ctx.seed, r, 0x70])
            by_attention = plausible[np.argsort(flat[:, plausible].mean(0), kind="stable")]
            worst.append(flat[:, by_attention[: len(hs)]].mean(1))
            best.append(flat[:, by_attention[-len(hs):]].mean(1))
            plausible_sets.append([f"L{i // data.n_heads}H{i % data.n_heads}" for i in sorted(plausible)])
    est = stats.mean_estimate(values, data.scope, ctx.level)
    how = ""
    if isinstance(heads, str):
        low = stats.mean_estimate(worst, data.scope, ctx.level)
        high = stats.mean_estimate(best, data.scope, ctx.level)
        if not (est.insufficient or low.insufficient or high.insufficient):
            est = dataclasses.replace(est, lo=min(est.lo, low.lo), hi=max(est.hi, high.hi),
                                      method=est.method + "; the interval spans every set of heads that could be "
                                                          "the top k (not significantly below the k-th)")
        sizes = sorted({len(p) for p in plausible_sets})
        how = (f" (chosen on one half, measured on the other; the interval spans the least and the most attentive "
               f"of the heads that could be the top {len(sel[0][0])}: {'/'.join(map(str, sizes))} per replicate)")
    ctl = stats.mean_estimate(others, data.scope, ctx.level)
    # what attention spread evenly over the visible positions would give
    T = meas.groups[tokens].shape[1]
    visible = np.arange(T)[None, :] <= meas.answer_pos[:, None]
    uniform = float((meas.groups[tokens] & visible).sum(1).mean() / visible.sum(1).mean())
    est = stats.bounded(est, 0.0, 1.0)  # a share of attention
    outcome = stats.judge(est, at_least, ">=")
    msg = (f"attention from the answer position to '{tokens}' in {_heads_text(heads)} of '{model}' = {est} "
           f"(needs > {at_least}; other heads: {ctl.estimate:.3f}; uniform attention: {uniform:.3f}){how}"
           f"{scope_note(est)}")
    return CheckResult("attention_to", {}, outcome, msg, est, at_least, ">=",
                       {"label": "all other heads", "estimate": ctl.estimate, "lo": ctl.lo, "hi": ctl.hi,
                        "uniform": uniform},
                       {"selected_heads": _selected(sel), "plausible_top_heads": plausible_sets})


def _plausible_top(eff: np.ndarray, rows: np.ndarray, k: int, seed) -> np.ndarray:
    """Flat indices of the heads that could be among the top k by mean effect on `rows`: the top k, and every
    head whose effect is not significantly below the k-th's (one-sided paired tests, 5 % Bonferroni-corrected
    over the heads: the k-th was picked on the same rows, so single tests would exclude a true top head too
    often). eff: (n, L, H).

    A check that reads a property of "the top heads" other than their effect (their attention) must hold for
    whichever of these heads the selection happened to pick: with weak or near-tied effects the pick is noise,
    and the property of a noise pick is not the property of the top heads."""
    flat = eff[rows].reshape(len(rows), -1)
    top = stats.top_k(flat.mean(0), k, seed)
    kth = top[-1]
    p = stats.paired_pvalues(flat[:, [kth]] - flat)  # is the k-th head's effect larger than each head's?
    return np.union1d(top, np.flatnonzero(~(p < _ALPHA / flat.shape[1])))
