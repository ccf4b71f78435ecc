"""Behaviour checks: what the clean model does (no intervention)."""

from __future__ import annotations

from mechcheck import stats
from mechcheck.checks import MODEL, CheckContext
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["accuracy_at_least"]


@CHECKS.register("accuracy_at_least", params=(
    MODEL, Param("value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold"),
), experiments=("evaluate", "head_ablation"))
def accuracy_at_least(ctx: CheckContext, model: str, value: float) -> CheckResult:
    """The model's clean accuracy on the eval set is at least `value`."""
    data = ctx.role(model)
    est = stats.bounded(stats.mean_estimate(data.values("clean/accuracy"), data.scope, ctx.level, proportion=True),
                        0.0, 1.0)
    outcome = stats.judge(est, value, ">=")
    chance = 1.0 / ctx.meas.n_candidates
    return CheckResult("accuracy_at_least", {}, outcome,
                       f"accuracy of '{model}' = {est} (needs > {value}){scope_note(est)}", est, value, ">=",
                       {"label": "chance", "estimate": chance})


def scope_note(est) -> str:
    """What a reader must know about an estimate's scope: no interval (and why), or one checkpoint only."""
    if est.insufficient:
        return f" — inconclusive: {est.insufficient}"
    if est.scope == "checkpoint":
        return " (one checkpoint: the interval covers the eval examples, not seed-to-seed variation)"
    return ""
