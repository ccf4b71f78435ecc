"""Probe checks (read `block_probes`): can a linear probe read a label at a block, beyond what no training gives?

The per-example values are 0/1 (the held-out probe's prediction is right), on the same held-out examples in every
replicate and every model of the claim (the split is seeded by the claim's data seed):

- `probe_accuracy_at_least`: the probe's accuracy at a block, with the interval of an accuracy
  (`mechcheck.stats.mean_estimate` with ``proportion=True``: crossed replicates x examples; one checkpoint: the
  exact binomial interval); control: the shuffled-label null and chance.
- `probe_above_null`: the probe's accuracy minus a null's (`against`), paired by example (``correct - null_correct`` in
  {-1, 0, 1}, the interval of an ablation effect). `shuffled`: the same probe fitted to permuted labels (no
  relation between activations and label); `untrained`: the same probe on a randomly initialised model of the
  same configuration (what the architecture and the input carry without training).
- `probe_accuracy_close`: |accuracy(model) - accuracy(than)| at a block is below `within`
  (`mechcheck.stats.difference_estimate`, paired by example). The interval of |d| is the image of d's interval
  (from 0 when it straddles 0), so the check passes only when d's whole interval lies inside (-within, within)
  and fails only when it lies wholly outside: an equivalence test whose false passes at |d| = within are those
  of one end of the two-sided interval.
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

__all__ = ["probe_accuracy_at_least", "probe_above_null", "probe_accuracy_close"]

_EXP = ("block_probes",)
_BLOCK = Param("block", "int", required=True, min=0,
               doc="residual stream read: 0 = the embeddings (entering block 0), l = leaving block l - 1")


def _rows(ctx: CheckContext, model: str, block: int, what: str = "correct") -> list[np.ndarray]:
    data = ctx.role(model)
    key = f"probe/{what}"
    if key not in data.replicates[0]:
        raise ctx.error(f"the experiment measured no {what.split('_')[0]} null (untrained: false)")
    out = []
    for v in data.values(key):
        v = np.asarray(v)
        if not 0 <= block < v.shape[0]:
            raise ctx.error(f"block {block} does not exist in model '{model}' (blocks 0..{v.shape[0] - 1}: 0 is the "
                            "embeddings, l the output of layer l - 1)")
        out.append(v[block])
    return out


def _nulls(ctx: CheckContext, model: str, block: int) -> tuple[dict, str]:
    data = ctx.role(model)
    shuffled = float(np.mean([np.asarray(v)[block] for v in data.values("probe/shuffled")]))
    parts = {"shuffled": shuffled}
    if "probe/untrained" in data.replicates[0]:
        parts["untrained"] = float(np.mean([np.asarray(v)[block] for v in data.values("probe/untrained")]))
    chance = [m.get("probe", {}).get("chance") for m in data.meta if m.get("probe")] if data.meta else []
    if chance:
        parts["chance"] = float(np.mean(chance))
    return parts, ", ".join(f"{k} {v:.3f}" for k, v in parts.items())


def _label(ctx: CheckContext) -> str:
    return str(ctx.meas.args.get("label", "?"))


@CHECKS.register("probe_accuracy_at_least", params=(MODEL, _BLOCK, Param(
    "value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold")), experiments=_EXP)
def probe_accuracy_at_least(ctx: CheckContext, model: str, block: int, value: float) -> CheckResult:
    """A linear probe of the label at `block` is right on more than `value` of the held-out examples."""
    data = ctx.role(model)
    est = stats.bounded(stats.mean_estimate(_rows(ctx, model, block), data.scope, ctx.level, proportion=True),
                        0.0, 1.0)
    parts, text = _nulls(ctx, model, block)
    msg = (f"probe of '{_label(ctx)}' at block {block} of '{model}': held-out accuracy {est} (needs > {value:g}; "
           f"nulls: {text}){scope_note(est)}")
    return CheckResult("probe_accuracy_at_least", {}, stats.judge(est, value, ">="), msg, est, value, ">=",
                       {"label": "shuffled-label probe", "estimate": parts["shuffled"]}, {"nulls": parts})


@CHECKS.register("probe_above_null", params=(MODEL, _BLOCK, Param(
    "against", "choice", default="shuffled", choices=("shuffled", "untrained"), doc="the null compared with"), Param(
    "by", "float", default=0.0, min=-1.0, max=1.0, doc="margin of accuracy over the null")), experiments=_EXP)
def probe_above_null(ctx: CheckContext, model: str, block: int, against: str = "shuffled",
                     by: float = 0.0) -> CheckResult:
    """The probe at `block` beats the null probe `against` (same held-out examples) by more than `by`."""
    data = ctx.role(model)
    null = against
    probe, base = _rows(ctx, model, block), _rows(ctx, model, block, f"{null}_correct")
    est = stats.bounded(stats.mean_estimate([p - b for p, b in zip(probe, base)], data.scope, ctx.level), -1.0, 1.0)
    null_acc = float(np.mean([b.mean() for b in base]))
    msg = (f"probe of '{_label(ctx)}' at block {block} of '{model}' minus the {null} null ({null_acc:.3f}) = {est} "
           f"(needs > {by:g}){scope_note(est)}")
    return CheckResult("probe_above_null", {}, stats.judge(est, by, ">="), msg, est, by, ">=",
                       {"label": f"{null} null", "estimate": null_acc},
                       {"probe_accuracy": float(np.mean([p.mean() for p in probe]))})


def _absolute(d: Estimate) -> Estimate:
    """The estimate of |d| whose interval is the image of d's (module docstring)."""
    if d.insufficient or math.isnan(d.lo) or math.isnan(d.hi):
        return dataclasses.replace(d, estimate=abs(d.estimate))
    ends = (abs(d.lo), abs(d.hi))
    lo = 0.0 if d.lo <= 0.0 <= d.hi else min(ends)
    return dataclasses.replace(d, estimate=abs(d.estimate), lo=lo, hi=max(ends),
                               method=f"absolute value of a {d.method}")


@CHECKS.register("probe_accuracy_close", params=(MODEL, THAN, _BLOCK, Param(
    "within", "float", required=True, min=0.0, max=1.0, doc="largest |accuracy difference|")), experiments=_EXP)
def probe_accuracy_close(ctx: CheckContext, model: str, than: str, block: int, within: float) -> CheckResult:
    """The probe accuracy at `block` of `model` is within `within` of that of `than` (same held-out examples)."""
    if model == than:
        raise ctx.error(f"model and than are both '{model}': a role compared with itself says nothing")
    a, b = ctx.role(model), ctx.role(than)
    diff = stats.difference_estimate(_rows(ctx, model, block), _rows(ctx, than, block), a.scope, b.scope, ctx.level)
    est = _absolute(diff)
    acc_b = float(np.mean([r.mean() for r in _rows(ctx, than, block)]))
    msg = (f"probe of '{_label(ctx)}' at block {block}: |accuracy of '{model}' - '{than}' ({acc_b:.3f})| = {est} "
           f"(signed {diff.estimate:+.3f}; needs < {within:g}){scope_note(est)}")
    return CheckResult("probe_accuracy_close", {}, stats.judge(est, within, "<="), msg, est, within, "<=",
                       {"label": f"'{than}' probe accuracy", "estimate": acc_b},
                       {"difference": {"estimate": diff.estimate, "lo": diff.lo, "hi": diff.hi}})
