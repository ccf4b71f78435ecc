"""Desiderata-patching checks (read `desiderata_patching`): what a group's DCM-selected heads carry.

The per-example values are 0/1 (the model says the desideratum's target after patching, or not) on held-out
pairs, so the intervals are those of accuracies (`accuracy_at_least`'s). A group "has the role" of a desideratum
when patching its selected heads makes the model follow it often (`patching_accuracy_at_least`), and not that of
another when it rarely does (`patching_accuracy_at_most`); `patching_accuracy_higher` compares two models on the
same pairs (fine-tuning sharpens a role).
"""

from __future__ import annotations

from mechcheck import stats
from mechcheck.checks import MODEL, THAN, CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["patching_accuracy_at_least", "patching_accuracy_at_most", "patching_accuracy_higher"]

_EXP = ("desiderata_patching",)
_WHAT = (Param("group", "str", required=True, doc="a group of the experiment's circuit"),
         Param("desideratum", "str", required=True, doc="one of the experiment's desiderata"))


def _values(ctx: CheckContext, model: str, group: str, desideratum: str):
    data = ctx.role(model)
    key = f"dcm/acc/{group}/{desideratum}"
    if key not in data.replicates[0]:
        have = sorted(k[len("dcm/acc/"):] for k in data.replicates[0] if k.startswith("dcm/acc/"))
        raise ctx.error(f"no measurement for group {group!r} and desideratum {desideratum!r} (measured: "
                        f"{', '.join(have)})")
    return data, data.values(key)


def _bound(ctx, model, group, desideratum, value, direction) -> CheckResult:
    data, values = _values(ctx, model, group, desideratum)
    est = stats.bounded(stats.mean_estimate(values, data.scope, ctx.level, proportion=True), 0.0, 1.0)
    name = "patching_accuracy_at_least" if direction == ">=" else "patching_accuracy_at_most"
    need = f"needs {'>' if direction == '>=' else '<'} {value}"
    return CheckResult(name, {}, stats.judge(est, value, direction),
                       f"patching the '{group}' heads DCM selects for {desideratum} in '{model}' gives the target "
                       f"{est} of the time ({need}){scope_note(est)}", est, value, direction)


@CHECKS.register("patching_accuracy_at_least", params=(MODEL, *_WHAT, Param(
    "value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold")), experiments=_EXP)
def patching_accuracy_at_least(ctx: CheckContext, model: str, group: str, desideratum: str,
                               value: float) -> CheckResult:
    """Patching the group's selected heads makes the model follow the desideratum more than `value` of the time."""
    return _bound(ctx, model, group, desideratum, value, ">=")


@CHECKS.register("patching_accuracy_at_most", params=(MODEL, *_WHAT, Param(
    "value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold")), experiments=_EXP)
def patching_accuracy_at_most(ctx: CheckContext, model: str, group: str, desideratum: str,
                              value: float) -> CheckResult:
    """... less than `value` of the time (the group does not carry that information)."""
    return _bound(ctx, model, group, desideratum, value, "<=")


@CHECKS.register("patching_accuracy_higher", params=(MODEL, THAN, *_WHAT, Param(
    "by", "float", default=0.0, doc="margin")), experiments=_EXP)
def patching_accuracy_higher(ctx: CheckContext, model: str, than: str, group: str, desideratum: str,
                             by: float = 0.0) -> CheckResult:
    """The desideratum's patching accuracy is higher in `model` than in `than` by more than `by` (same pairs)."""
    a, va = _values(ctx, model, group, desideratum)
    b, vb = _values(ctx, than, group, desideratum)
    est = stats.difference_estimate(va, vb, a.scope, b.scope, ctx.level)
    return CheckResult("patching_accuracy_higher", {}, stats.judge(est, by, ">="),
                       f"{desideratum} patching accuracy of '{group}' in '{model}' minus in '{than}' = {est} (needs > "
                       f"{by}){scope_note(est)}", est, by, ">=")
