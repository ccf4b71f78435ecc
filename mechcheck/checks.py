"""Registered expectations: a claim's `expect:` entries, each judged with statistics.

A check is a plain function ``check(ctx, **args) -> CheckResult`` registered in `CHECKS` with the parameters
it accepts. Every check returns an effect with a 95 % CI (hierarchical bootstrap over replicates, then
examples) and judges it against its threshold: the whole CI beyond the threshold passes, the whole CI short
of it fails, a CI straddling it is inconclusive.

Selection and multiple comparisons. A check that names heads by rank (`top_head`, `top_3`) would, if it used
the same examples to pick the heads and to measure them, report the winner's curse instead of an effect. So
heads are picked on one half of the eval examples and measured on the other (and vice versa): the cross-fitted
estimate is unbiased whatever the number of heads it was picked from. `top_heads_in_layers`, which singles
heads out of all L x H, also tests every head (sign test or t-test on the paired per-example changes) with a
Holm correction over all heads, and does not pass unless the top heads it counts are significant.

Controls. Every check that says heads matter reports a matched control: the same measurement for random heads
of the same count (for one head, exactly the mean over all other heads; for k heads, `n_control` random sets).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.errors import SpecError
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult, Estimate

__all__ = ["CheckContext", "run_check"]

Heads = tuple[tuple[int, int], ...]
_TOP = re.compile(r"^top_(head|\d+)$")


@dataclass
class CheckContext:
    """What a check sees: the experiment's result and where the check was written (for error messages)."""

    result: Any  # an experiment result, e.g. HeadAblationResult
    claim_file: str = ""
    line: int | None = None
    field_path: str = ""
    seed: int = 0
    n_boot: int = 2000

    def error(self, message: str, **kw: Any) -> SpecError:
        return SpecError(message, file=self.claim_file, line=self.line, field_path=self.field_path, **kw)

    def bootstrap(self, per_seed: list[np.ndarray], statistic=None) -> Estimate:
        return stats.hierarchical_bootstrap(per_seed, statistic=statistic, n_boot=self.n_boot, seed=self.seed)


def run_check(ctx: CheckContext, name: str, args: dict[str, Any]) -> CheckResult:
    """Run the registered check `name` with `args` (already validated and completed with defaults)."""
    entry = CHECKS.get(name)
    result: CheckResult = entry.func(ctx, **args)
    result.args = dict(args)
    return result


# ----------------------------------------------------------------------------------------------- helpers


def _metric(ctx: CheckContext, metric: str | None) -> str:
    return metric or ctx.result.metric


def _validate_heads(ctx: CheckContext, role: str, heads: list[list[int]]) -> Heads:
    L, H = ctx.result.shape(role)
    out = []
    for layer, head in heads:
        if not (0 <= layer < L and 0 <= head < H):
            raise ctx.error(f"head [{layer}, {head}] does not exist in model '{role}' ({L} layers x {H} heads: "
                            f"layers 0..{L - 1}, heads 0..{H - 1})")
        out.append((int(layer), int(head)))
    return tuple(out)


def _top_k(effect_mean: np.ndarray, k: int) -> Heads:
    """The k heads with the largest mean effect; effect_mean is (L, H). Ties broken by (layer, head) order."""
    flat = effect_mean.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    H = effect_mean.shape[1]
    return tuple((int(i // H), int(i % H)) for i in order)


def _selection_pieces(ctx: CheckContext, role: str, heads: Any, metric: str) -> list[list[tuple[np.ndarray, Heads]]]:
    """Per replicate, a list of (example indices, heads measured on them).

    Named heads: one piece with every example. A rank selector: two cross-fitted pieces (heads picked on one
    half, measured on the other).
    """
    res = ctx.result
    n = len(res.batch)
    if isinstance(heads, str):
        m = _TOP.match(heads)
        k = 1 if m.group(1) == "head" else int(m.group(1))
        L, H = res.shape(role)
        if k > L * H:
            raise ctx.error(f"{heads}: model '{role}' has only {L * H} heads")
        a, b = stats.split_halves(n, ctx.seed)
        pieces = []
        for eff in res.head_effects(role, metric):
            pieces.append([(b, _top_k(eff[a].mean(0), k)), (a, _top_k(eff[b].mean(0), k))])
        return pieces
    fixed = _validate_heads(ctx, role, heads)
    return [[(np.arange(n), fixed)] for _ in range(res.n_replicates(role))]


def _effect_values(ctx: CheckContext, role: str, rep: int, idx: np.ndarray, heads: Heads, metric: str) -> np.ndarray:
    res = ctx.result
    if len(heads) == 1:  # a single head was already measured by the sweep
        layer, head = heads[0]
        return res.head_effects(role, metric)[rep][idx, layer, head]
    return res.joint_effect(role, rep, heads, metric)[idx]


def _effect_control(ctx: CheckContext, role: str, pieces, metric: str) -> dict[str, Any]:
    """Effect of random heads of the same count as the selection (see module docstring)."""
    res = ctx.result
    L, H = res.shape(role)
    k = len(pieces[0][0][1])
    per_seed = []
    for rep, rep_pieces in enumerate(pieces):
        chosen = {h for _, hs in rep_pieces for h in hs}
        if k == 1:
            eff = res.head_effects(role, metric)[rep].reshape(len(res.batch), -1)
            keep = [i for i in range(L * H) if (i // H, i % H) not in chosen] or list(range(L * H))
            per_seed.append(eff[:, keep].mean(1))
        else:
            sets = stats.random_head_sets(L, H, k, res.args.get("n_control", 10), ctx.seed + rep, exclude=chosen)
            per_seed.append(np.mean([res.joint_effect(role, rep, tuple(s), metric) for s in sets], axis=0))
    est = ctx.bootstrap(per_seed)
    label = "mean over all other heads" if k == 1 else f"{res.args.get('n_control', 10)} random sets of {k} heads"
    return {"label": label, "estimate": est.estimate, "lo": est.lo, "hi": est.hi}


def _heads_text(heads: Any) -> str:
    return heads if isinstance(heads, str) else ", ".join(f"L{layer}H{head}" for layer, head in heads)


def _selected(pieces) -> list[list[str]]:
    return [sorted({f"L{layer}H{head}" for _, hs in rep for layer, head in hs}) for rep in pieces]


# ------------------------------------------------------------------------------------------------ checks

_METRIC = Param("metric", "choice", choices=("accuracy", "logit_diff"),
                doc="per-example metric (default: the experiment's metric)")
_MODEL = Param("model", "model", required=True, doc="role of the model in the claim's `models`")


@CHECKS.register("accuracy_at_least", params=(
    _MODEL, Param("value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold"),
), experiments=("evaluate", "head_ablation"))
def accuracy_at_least(ctx: CheckContext, model: str, value: float) -> CheckResult:
    """The model's clean accuracy on the eval set is at least `value`."""
    est = ctx.bootstrap(ctx.result.clean(model, "accuracy"))
    outcome = stats.judge(est, value, ">=")
    chance = 1.0 / len(ctx.result.batch.candidates)
    return CheckResult("accuracy_at_least", {}, outcome, f"accuracy of '{model}' = {est} (needs >= {value})",
                       est, value, ">=", {"label": "chance", "estimate": chance})


@CHECKS.register("top_heads_in_layers", params=(
    _MODEL,
    Param("top", "int", required=True, min=1, limit="heads", doc="how many of the most important heads to look at"),
    Param("layers", "layers", required=True, doc="the layers they should lie in"),
    Param("at_least", "float", default=0.5, min=0.0, max=1.0, doc="share of the top heads that must lie there"),
    _METRIC,
), experiments=("head_ablation",))
def top_heads_in_layers(ctx: CheckContext, model: str, top: int, layers: list[int], at_least: float = 0.5,
                        metric: str | None = None) -> CheckResult:
    """The `top` heads with the largest ablation effect lie (mostly) in `layers`."""
    metric = _metric(ctx, metric)
    res = ctx.result
    L, H = res.shape(model)
    if top > L * H:
        raise ctx.error(f"top: {top} is more than the {L * H} heads of model '{model}'")
    bad = [layer for layer in layers if not 0 <= layer < L]
    if bad:
        raise ctx.error(f"layers: {bad} do not exist in model '{model}' (layers 0..{L - 1})")
    in_layers = np.zeros(L * H, dtype=bool)
    for layer in layers:
        in_layers[layer * H:(layer + 1) * H] = True
    per_seed = [eff.reshape(len(res.batch), -1) for eff in res.head_effects(model, metric)]

    def share(arrays: list[np.ndarray]) -> float:
        tops = [np.argsort(-a.mean(0), kind="stable")[:top] for a in arrays]
        return float(np.mean([in_layers[t].mean() for t in tops]))

    est = ctx.bootstrap(per_seed, statistic=share)
    outcome = stats.judge(est, at_least, ">=")
    # Significance of every head within each replicate, Holm-corrected over all L x H heads.
    replicates, significant_seeds = [], 0
    for a in per_seed:
        p_adj = stats.holm(np.array([stats.paired_pvalue(a[:, i]) for i in range(L * H)]))
        top_idx = np.argsort(-a.mean(0), kind="stable")[:top]
        heads = [{"head": f"L{i // H}H{i % H}", "effect": float(a[:, i].mean()), "p_holm": float(p_adj[i]),
                  "in_layers": bool(in_layers[i])} for i in top_idx]
        replicates.append(heads)
        significant_seeds += any(h["in_layers"] and h["p_holm"] < 0.05 for h in heads)
    reason = ""
    if outcome == "passed" and significant_seeds * 2 <= len(per_seed):
        outcome = "inconclusive"
        reason = " — but in most replicates no top head in these layers survives the Holm correction"
    chance = len(set(layers)) / L
    msg = (f"share of the top {top} heads of '{model}' (by {metric} drop) in layers {list(layers)} = {est} "
           f"(needs >= {at_least}; random heads: {chance:.2f}){reason}")
    return CheckResult("top_heads_in_layers", {}, outcome, msg, est, at_least, ">=",
                       {"label": f"random {top} heads (expected share)", "estimate": chance},
                       {"top_heads": replicates, "significant_replicates": significant_seeds, "metric": metric})


def _effect_check(ctx: CheckContext, name: str, model: str, heads: Any, value: float, metric: str | None,
                  direction: str) -> CheckResult:
    metric = _metric(ctx, metric)
    pieces = _selection_pieces(ctx, model, heads, metric)
    per_seed = [np.concatenate([_effect_values(ctx, model, rep, idx, hs, metric) for idx, hs in rep_pieces])
                for rep, rep_pieces in enumerate(pieces)]
    est = ctx.bootstrap(per_seed)
    outcome = stats.judge(est, value, direction)
    control = _effect_control(ctx, model, pieces, metric)
    how = " (cross-fitted: chosen on one half of the examples, measured on the other)" if isinstance(heads, str) else ""
    msg = (f"{metric} drop when ablating {_heads_text(heads)} in '{model}' = {est} (needs {direction} {value}; "
           f"control {control['label']}: {control['estimate']:.3f}){how}")
    return CheckResult(name, {}, outcome, msg, est, value, direction, control,
                       {"selected_heads": _selected(pieces), "metric": metric})


def _effect_params(bound: str) -> tuple[Param, ...]:
    return (_MODEL,
            Param("heads", "heads", required=True, doc="[[layer, head], ...], 'top_head' or 'top_<k>' (ablated jointly)"),
            Param("value", "float", required=True, doc=f"{bound} effect (clean minus ablated metric)"),
            _METRIC)


@CHECKS.register("effect_at_least", params=_effect_params("smallest"), experiments=("head_ablation",))
def effect_at_least(ctx: CheckContext, model: str, heads: Any, value: float, metric: str | None = None) -> CheckResult:
    """Ablating `heads` together lowers the metric by at least `value`."""
    return _effect_check(ctx, "effect_at_least", model, heads, value, metric, ">=")


@CHECKS.register("effect_at_most", params=_effect_params("largest"), experiments=("head_ablation",))
def effect_at_most(ctx: CheckContext, model: str, heads: Any, value: float, metric: str | None = None) -> CheckResult:
    """Ablating `heads` together lowers the metric by at most `value` (the heads do not matter)."""
    return _effect_check(ctx, "effect_at_most", model, heads, value, metric, "<=")


@CHECKS.register("attention_to", params=(
    _MODEL,
    Param("heads", "heads", required=True, doc="[[layer, head], ...], 'top_head' or 'top_<k>'"),
    Param("tokens", "tokens", required=True, doc="token group of the task, e.g. numbers"),
    Param("at_least", "float", required=True, min=0.0, max=1.0, doc="smallest share of attention"),
), experiments=("head_ablation",))
def attention_to(ctx: CheckContext, model: str, heads: Any, tokens: str, at_least: float) -> CheckResult:
    """Share of attention from the answer position to the `tokens` group, averaged over `heads`."""
    res = ctx.result
    batch = res.batch
    if tokens not in batch.groups:
        raise ctx.error(f"tokens: the task marks no token group {tokens!r}", allowed=tuple(sorted(batch.groups)))
    metric = res.metric
    pieces = _selection_pieces(ctx, model, heads, metric)
    att = res.attention(model, tokens)
    per_seed, control_seed = [], []
    for rep, rep_pieces in enumerate(pieces):
        vals, ctrl = [], []
        for idx, hs in rep_pieces:
            a = att[rep][idx]  # (m, L, H)
            sel = np.zeros(a.shape[1:], dtype=bool)
            for layer, head in hs:
                sel[layer, head] = True
            vals.append(a[:, sel].mean(1))
            ctrl.append(a[:, ~sel].mean(1) if (~sel).any() else a.reshape(len(idx), -1).mean(1))
        per_seed.append(np.concatenate(vals))
        control_seed.append(np.concatenate(ctrl))
    est = ctx.bootstrap(per_seed)
    ctrl = ctx.bootstrap(control_seed)
    # What attention spread evenly over the visible positions would give (a uniform-attention baseline).
    visible = np.arange(batch.tokens.shape[1])[None, :] <= batch.answer_pos[:, None]
    uniform = float((batch.groups[tokens] & visible).sum(1).mean() / visible.sum(1).mean())
    outcome = stats.judge(est, at_least, ">=")
    msg = (f"attention from the answer position to '{tokens}' in {_heads_text(heads)} of '{model}' = {est} "
           f"(needs >= {at_least}; other heads: {ctrl.estimate:.3f}; uniform attention: {uniform:.3f})")
    return CheckResult("attention_to", {}, outcome, msg, est, at_least, ">=",
                       {"label": "all other heads", "estimate": ctrl.estimate, "lo": ctrl.lo, "hi": ctrl.hi,
                        "uniform": uniform},
                       {"selected_heads": _selected(pieces)})


# ------------------------------------------------------------------------------------- layer profiles


def layer_profile(effect_mean: np.ndarray) -> np.ndarray:
    """LP(l) = sum over heads of the positive mean effects of layer l (METHODS.md §1.3); (L, H) -> (L,).

    Only drops count as importance: a head whose ablation *helps* is not "relied on" less than nothing.
    """
    return np.clip(effect_mean, 0.0, None).sum(axis=1)


def layer_centroid(effect_mean: np.ndarray) -> float:
    """Importance-weighted mean layer sum_l l LP(l) / sum_l LP(l); NaN when no head matters at all."""
    lp = layer_profile(effect_mean)
    total = lp.sum()
    return float((np.arange(len(lp)) * lp).sum() / total) if total > 0 else float("nan")


def _centroid_of(arrays: list[np.ndarray]) -> float:
    """Mean over replicates of the centroid of each replicate's mean (L, H) effect (replicates where no head
    matters at all have no centroid and are left out; NaN when none has one)."""
    values = [layer_centroid(a.mean(0)) for a in arrays]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _critical(per_seed: list[np.ndarray], tau: float) -> list[str]:
    """Heads whose mean effect is >= tau in at least 2/3 of the replicates (METHODS.md §1.6)."""
    means = np.stack([a.mean(0) for a in per_seed])  # (R, L, H)
    share = (means >= tau).mean(0)
    L, H = share.shape
    return [f"L{i // H}H{i % H}" for i in np.flatnonzero(share.reshape(-1) >= 2 / 3 - 1e-9)]


@CHECKS.register("layer_centroid_higher", params=(
    _MODEL,
    Param("than", "model", required=True, doc="the model whose heads should sit in earlier layers"),
    Param("by", "float", default=0.0, doc="how many layers higher the centroid must at least be"),
    Param("critical", "float", default=0.05, min=0.0, doc="effect from which a head counts as critical (listed)"),
    Param("expected_heads", "heads", doc="heads a paper names for `model`: reported as critical or not, never judged"),
    _METRIC,
), experiments=("head_ablation",))
def layer_centroid_higher(ctx: CheckContext, model: str, than: str, by: float = 0.0, critical: float = 0.05,
                          expected_heads: Any = None, metric: str | None = None) -> CheckResult:
    """`model` relies on later layers than `than`: its importance-weighted layer centroid is higher by > `by`."""
    metric = _metric(ctx, metric)
    res = ctx.result
    if not hasattr(res, "head_effects"):
        raise ctx.error("layer_centroid_higher needs the head_ablation experiment")
    La, Lb = res.shape(model)[0], res.shape(than)[0]
    if La != Lb:
        raise ctx.error(f"'{model}' has {La} layers and '{than}' {Lb}: layer centroids are only comparable "
                        "between models of the same depth")
    # A replicate in which no head's ablation lowers the metric (e.g. one that stayed at chance) has no layer
    # profile: it is left out of the comparison, and the report says how many were.
    kept, dropped = {}, {}
    for role in (model, than):
        arrs = res.head_effects(role, metric)
        kept[role] = [e for e in arrs if layer_profile(e.mean(0)).sum() > 0]
        dropped[role] = len(arrs) - len(kept[role])
    a, b = kept[model], kept[than]
    flat = [role for role, arrs in ((model, a), (than, b)) if not arrs]
    if flat:  # a model that needs no head (e.g. one at chance) has no layer profile to compare
        other = {r: round(_centroid_of(arrs), 3) for r, arrs in ((model, a), (than, b)) if arrs}
        seen = "".join(f"; centroid of '{r}' = {c:.2f}" for r, c in other.items())
        return CheckResult("layer_centroid_higher", {}, "inconclusive",
                           f"no head's ablation lowers the {metric} of {' or '.join(repr(r) for r in flat)}: "
                           f"there is no layer profile to compare{seen}", None, by, ">=",
                           details={"metric": metric, "centroids": other, "replicates_without_profile": dropped})
    est = stats.bootstrap_difference(a, b, _centroid_of, n_boot=ctx.n_boot, seed=ctx.seed)
    outcome = stats.judge(est, by, ">=")
    if outcome == "error":  # some resamples drew only examples on which no head matters
        outcome = "inconclusive"
    means = {role: [e.mean(0) for e in arrs] for role, arrs in kept.items()}  # per replicate (L, H)
    profile = {role: np.round(np.mean([layer_profile(m) for m in ms], axis=0), 4).tolist() for role, ms in means.items()}
    centroids = {role: [round(layer_centroid(m), 3) for m in ms] for role, ms in means.items()}
    left_out = ", ".join(f"{n} replicate(s) of '{r}'" for r, n in dropped.items() if n)
    details: dict[str, Any] = {"metric": metric, "layer_profile": profile, "centroids": centroids,
                               "replicates_without_profile": dropped,
                               "critical_heads": {model: _critical(a, critical), than: _critical(b, critical)},
                               "critical_threshold": critical}
    note = ""
    if expected_heads:
        heads = _validate_heads(ctx, model, expected_heads)
        found = {f"L{layer}H{head}": f"L{layer}H{head}" in details["critical_heads"][model] for layer, head in heads}
        details["expected_heads"] = found
        note = f"; expected heads critical: {sum(found.values())}/{len(found)} (informational)"
    middle = (La - 1) / 2
    msg = (f"layer centroid of '{model}' minus '{than}' ({metric} drops) = {est} layers (needs >= {by:g}); "
           f"centroids {np.mean(centroids[model]):.2f} vs {np.mean(centroids[than]):.2f}, middle layer "
           f"{middle:g}{note}" + (f"; left out (no head matters): {left_out}" if left_out else ""))
    return CheckResult("layer_centroid_higher", {}, outcome, msg, est, by, ">=",
                       {"label": "no difference", "estimate": 0.0}, details)
