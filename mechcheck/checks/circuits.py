"""Circuit checks: faithfulness, the circuit inside another model against a full model, random circuits.

All read the `faithfulness` unit of `circuit_faithfulness`: per replicate, per example, the clean model's accuracy
`m`, the accuracy with only the circuit left `c`, and the accuracy of each random circuit `r[j]`.

Faithfulness F(circuit) / F(model) is a ratio of two means on the same examples. "Faithfulness > v" is the same
statement as "mean(c - v m) > 0", a mean of per-example values, so it is judged with the project's interval for
means (crossed replicates x examples; examples only for one checkpoint) and keeps that interval's calibration. The
reported interval of the ratio is the set of v that this test does not reject (a Fieller-type inversion, found by
bisection): its lower end is above v exactly when the check passes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, THAN, CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult, Estimate

__all__ = ["faithfulness_at_least", "circuit_beats_model", "random_circuits_below", "cmap_recovers_at_least",
           "cmap_recovers_at_most", "circuit_contains"]

_EXP = ("circuit_faithfulness",)


def _arrays(ctx: CheckContext, role: str, name: str) -> list[np.ndarray]:
    return ctx.role(role).values(f"faithfulness/{name}")


def _ratio_interval(c: list[np.ndarray], m: list[np.ndarray], scope: str, level: float) -> tuple[float, float]:
    """[v_lo, v_hi]: the v for which the interval of mean(c - v m) contains 0 (bisection on [-1, 3])."""

    def interval(v: float) -> Estimate:
        return stats.mean_estimate([ci - v * mi for ci, mi in zip(c, m)], scope, level)

    def solve(side: str) -> float:
        lo, hi = -1.0, 3.0  # mean(c - v m) falls as v grows (m >= 0): lo(v) and hi(v) cross 0 once
        value = (lambda e: e.lo) if side == "lo" else (lambda e: e.hi)
        if value(interval(lo)) <= 0:
            return lo
        if value(interval(hi)) > 0:
            return hi
        for _ in range(32):  # 4 / 2^32: ~1e-9
            mid = (lo + hi) / 2
            if value(interval(mid)) > 0:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    return solve("lo"), solve("hi")


def faithfulness_estimate(ctx: CheckContext, model: str) -> tuple[Estimate, Estimate]:
    """(the ratio with its inverted interval, the interval of mean(c - v m) at v = the ratio's estimate's test)."""
    data = ctx.role(model)
    c, m = _arrays(ctx, model, "circuit"), _arrays(ctx, model, "model")
    full = float(np.mean([x.mean() for x in m]))
    if full == 0:
        raise ValueError(f"model '{model}' answers no eval example correctly: faithfulness is undefined")
    ratio = float(np.mean([x.mean() for x in c])) / full
    probe = stats.mean_estimate([ci - mi for ci, mi in zip(c, m)], data.scope, ctx.level)
    if probe.insufficient:
        return stats.insufficient(probe.insufficient, ratio, probe.n, probe.n_seeds, data.scope), probe
    lo, hi = _ratio_interval(c, m, data.scope, ctx.level)
    est = Estimate(ratio, lo, hi, probe.n, probe.n_seeds, ctx.level, "ratio of means; interval by inverting the "
                   "test of mean(circuit - v * model) > 0", scope=data.scope,
                   replicates=[float(ci.mean() / mi.mean()) if mi.mean() else math.nan for ci, mi in zip(c, m)])
    return est, probe


@CHECKS.register("faithfulness_at_least", params=(
    MODEL, Param("value", "float", required=True, min=0.0, max=2.0, doc="faithfulness threshold (paper: 0.95)"),
), experiments=_EXP)
def faithfulness_at_least(ctx: CheckContext, model: str, value: float) -> CheckResult:
    """F(circuit) / F(model) in `model` is at least `value` (accuracies over the candidates, same examples)."""
    data = ctx.role(model)
    est, _ = faithfulness_estimate(ctx, model)
    if est.insufficient:
        outcome = "inconclusive"
    else:
        # judged by the test itself (the interval's ends are found by bisection to ~1e-9)
        test = stats.mean_estimate([ci - value * mi for ci, mi in zip(_arrays(ctx, model, "circuit"),
                                                                       _arrays(ctx, model, "model"))],
                                   data.scope, ctx.level)
        outcome = stats.judge(test, 0.0, ">=")
    full = float(np.mean([x.mean() for x in _arrays(ctx, model, "model")]))
    circ = float(np.mean([x.mean() for x in _arrays(ctx, model, "circuit")]))
    rand = _arrays(ctx, model, "random")
    control = {"label": "random circuits of the same shape",
               "estimate": float(np.mean([r.mean() for r in rand])) / full if rand and rand[0].size else math.nan}
    return CheckResult("faithfulness_at_least", {}, outcome,
                       f"faithfulness of the circuit in '{model}' = {est} (circuit accuracy {circ:.3f} / model "
                       f"{full:.3f}; needs > {value}){scope_note(est)}", est, value, ">=", control,
                       {"model_accuracy": full, "circuit_accuracy": circ})


@CHECKS.register("circuit_beats_model", params=(
    MODEL, THAN, Param("by", "float", default=0.0, doc="margin in accuracy"),
), experiments=_EXP)
def circuit_beats_model(ctx: CheckContext, model: str, than: str, by: float = 0.0) -> CheckResult:
    """Accuracy of `model` with only the circuit left exceeds the clean accuracy of the whole model `than` by more
    than `by` (paired by example: both are measured on the same eval examples)."""
    a, b = ctx.role(model), ctx.role(than)
    est = stats.difference_estimate(_arrays(ctx, model, "circuit"), _arrays(ctx, than, "model"), a.scope, b.scope,
                                    ctx.level)
    outcome = stats.judge(est, by, ">=")
    return CheckResult("circuit_beats_model", {}, outcome,
                       f"circuit accuracy in '{model}' minus the accuracy of the whole '{than}' = {est} (needs > "
                       f"{by}){scope_note(est)}", est, by, ">=")


@CHECKS.register("random_circuits_below", params=(
    MODEL,
    Param("value", "float", required=True, min=0.0, max=1.0,
          doc="accuracy the random circuits' mean must stay below (e.g. chance)"),
    Param("alpha", "float", default=0.05, min=0.0, max=1.0,
          doc="the circuit must beat the random circuits with empirical p below this"),
), experiments=_EXP)
def random_circuits_below(ctx: CheckContext, model: str, value: float, alpha: float = 0.05) -> CheckResult:
    """Random circuits with the circuit's groups, positions and sizes score below `value` (the upper end of the
    interval of their mean accuracy over draws), and the circuit beats them: empirical p = (1 + #draws at least as
    accurate as the circuit) / (draws + 1) < `alpha` (so `alpha` 0.05 needs at least 20 draws)."""
    rand, circ = _arrays(ctx, model, "random"), _arrays(ctx, model, "circuit")
    draws = rand[0].shape[0] if rand else 0
    if draws < 2:
        raise ctx.error(f"random_circuits_below needs at least 2 random circuits (experiment n_random), got {draws}")
    # a draw's accuracy, averaged over replicates (each replicate measures the same random circuits)
    per_draw = np.mean([r.mean(axis=1) for r in rand], axis=0)
    circuit_acc = float(np.mean([x.mean() for x in circ]))
    p = (1 + int((per_draw >= circuit_acc).sum())) / (draws + 1)
    est = stats.replicate_estimate(per_draw.tolist(), scope="checkpoint", level=ctx.level)
    est = stats.bounded(dataclasses.replace(est, method=f"t interval over {draws} random circuits",
                                            n_seeds=len(circ)), 0.0, 1.0)
    below = stats.judge(est, value, "<=")
    enough = 1 / (draws + 1) < alpha
    if below == "passed" and p < alpha:
        outcome = "passed"
    elif below == "failed" or (enough and p >= alpha):
        outcome = "failed"
    else:
        outcome = "inconclusive"
    possible = "" if (1 / (draws + 1)) < alpha else f"; {draws} draws cannot give p < {alpha}"
    return CheckResult("random_circuits_below", {}, outcome,
                       f"random circuits in '{model}': mean accuracy {est} (needs < {value}); the circuit "
                       f"({circuit_acc:.3f}) beats them with empirical p = {p:.3f} (needs < {alpha}){possible}",
                       est, value, "<=", {"label": "the circuit", "estimate": circuit_acc},
                       {"empirical_p": p, "draws": draws, "circuit_accuracy": circuit_acc})


# ------------------------------------------------------------------------------------ cross-model patching

_CMAP = ("cross_model_patching",)


def _recovered(ctx: CheckContext, model: str, group: str, value: float, direction: str) -> CheckResult:
    name = f"cmap_recovers_at_{'least' if direction == '>=' else 'most'}"
    data = ctx.role(model)
    if f"cmap/group/{group}" not in data.replicates[0]:
        have = sorted(k.split("/", 2)[2] for k in data.replicates[0] if k.startswith("cmap/group/"))
        raise ctx.error(f"no group {group!r} was patched (the experiment's groups: {', '.join(have)})")
    base, source = data.values("cmap/base"), data.values("cmap/source")
    patched = data.values(f"cmap/group/{group}")
    num = [p - b for p, b in zip(patched, base)]
    den = [s - b for s, b in zip(source, base)]
    gap = float(np.mean([d.mean() for d in den]))
    gain = float(np.mean([x.mean() for x in num]))
    probe = stats.mean_estimate(den, data.scope, ctx.level)
    facts = {"base_accuracy": float(np.mean([b.mean() for b in base])),
             "source_accuracy": float(np.mean([s.mean() for s in source])),
             "patched_accuracy": float(np.mean([p.mean() for p in patched])), "gap": gap}
    if probe.insufficient or not probe.lo > 0:
        why = probe.insufficient or (f"the source is not reliably more accurate than the base (gap {probe}): "
                                     "there is no gap to recover")
        est = stats.insufficient(why, gain / gap if gap else math.nan, probe.n, probe.n_seeds, data.scope)
        outcome = "inconclusive"
    else:
        lo, hi = _ratio_interval(num, den, data.scope, ctx.level)
        est = Estimate(gain / gap, lo, hi, probe.n, probe.n_seeds, ctx.level, "share of the accuracy gap recovered; "
                       "interval by inverting the test of mean(patched - base - v * (source - base)) > 0",
                       scope=data.scope)
        test = stats.mean_estimate([x - value * d for x, d in zip(num, den)], data.scope, ctx.level)
        outcome = stats.judge(test, 0.0, direction)
    bound = "needs > " if direction == ">=" else "needs < "
    return CheckResult(name, {}, outcome,
                       f"patching group '{group}' of '{model}' into '{ctx.meas.args.get('into')}' recovers {est} of "
                       f"the accuracy gap (base {facts['base_accuracy']:.3f}, patched {facts['patched_accuracy']:.3f}, "
                       f"source {facts['source_accuracy']:.3f}; {bound}{value}){scope_note(est)}", est, value,
                       direction, {"label": "base accuracy", "estimate": facts["base_accuracy"]}, facts)


_CMAP_PARAMS = (
    Param("model", "model", required=True, doc="the source role of the experiment (whose heads are patched in)"),
    Param("group", "str", required=True, doc="one of the experiment's groups"),
)


@CHECKS.register("cmap_recovers_at_least", params=(
    *_CMAP_PARAMS, Param("value", "float", required=True, doc="share of the base-to-source accuracy gap (0..1)"),
), experiments=_CMAP)
def cmap_recovers_at_least(ctx: CheckContext, model: str, group: str, value: float) -> CheckResult:
    """Patching `group` from the source model into the base recovers more than `value` of their accuracy gap:
    (patched - base) / (source - base) > value, all on the same examples."""
    return _recovered(ctx, model, group, value, ">=")


@CHECKS.register("cmap_recovers_at_most", params=(
    *_CMAP_PARAMS, Param("value", "float", required=True, doc="share of the base-to-source accuracy gap (0..1)"),
), experiments=_CMAP)
def cmap_recovers_at_most(ctx: CheckContext, model: str, group: str, value: float) -> CheckResult:
    """Patching `group` alone recovers less than `value` of the gap (the group does not carry the improvement)."""
    return _recovered(ctx, model, group, value, "<=")


# ---------------------------------------------------------------------------------------------- overlap

def _circuit_of(meta: dict) -> dict:
    return meta.get("discovery", {}).get("circuit", {})


@CHECKS.register("circuit_contains", params=(
    MODEL, THAN,
    Param("value", "float", required=True, min=0.0, max=1.0,
          doc="share of the `than` circuit's heads (at their positions) that `model`'s circuit also has"),
    Param("group", "str", doc="one group (default: all groups together)"),
), experiments=("circuit_overlap",))
def circuit_contains(ctx: CheckContext, model: str, than: str, value: float, group: str | None = None) -> CheckResult:
    """`model`'s discovered circuit contains more than `value` of the circuit of `than` (its first replicate): the
    precision |C_than ∩ C_model| / |C_than| of (group, head) components, per replicate of `model`, with a t
    interval over replicates. Control: the precision a random circuit of `model`'s size would have."""
    data, other = ctx.role(model), ctx.role(than)
    reference = _circuit_of(other.meta[0]) if other.meta else {}
    groups = [group] if group is not None else sorted(reference)
    for g in groups:
        if g not in reference:
            raise ctx.error(f"no group {g!r} in the discovered circuits (groups: {', '.join(sorted(reference))})")
    ref = {(g, tuple(h)) for g in groups for h in reference[g]["heads"]}
    if not ref:
        raise ctx.error(f"the circuit of '{than}' has no heads in {', '.join(groups)}: nothing to contain")
    total = data.n_layers * data.n_heads
    precisions, chance = [], []
    for meta in data.meta:
        mine = _circuit_of(meta)
        comps = {(g, tuple(h)) for g in groups for h in mine.get(g, {}).get("heads", [])}
        precisions.append(len(ref & comps) / len(ref))
        chance.append(np.mean([len(mine.get(g, {}).get("heads", [])) / total for g in groups]))
    if len(precisions) == 1:
        est = stats.insufficient("one discovered circuit has no interval: discovery on one model is one draw of "
                                 "the prompts (train several seeds of the recipe)", precisions[0], 0, 1, data.scope)
    else:
        est = stats.bounded(stats.replicate_estimate(precisions, scope=data.scope, level=ctx.level), 0.0, 1.0)
    return CheckResult("circuit_contains", {}, stats.judge(est, value, ">="),
                       f"share of the '{than}' circuit ({len(ref)} components) in the circuit of '{model}' = {est} "
                       f"(needs > {value}; per replicate {', '.join(f'{p:.2f}' for p in precisions)}){scope_note(est)}",
                       est, value, ">=", {"label": "a random circuit of the same size", "estimate": float(np.mean(chance))},
                       {"precision": precisions, "reference_size": len(ref)})
