"""Behaviour checks: what the clean model does (no intervention), on the claim's data or on an `also` set.

`accuracy_at_least` and `accuracy_at_most` bound one model's accuracy on one eval set (0/1 per example: the
crossed interval over replicates x examples; one checkpoint: the exact binomial interval), `accuracy_higher`
compares two models on the same examples of one set (`mechcheck.stats.difference_estimate`: paired by example,
each role's replicates in its own scope, so a pretrained checkpoint can be compared with a fine-tuning recipe).
`task` names the set: ``data`` (the claim's data, the only set `head_ablation` measures) or a name of
`evaluate`'s `also`. Control: chance, one over the set's answer candidates.
"""

from __future__ import annotations

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, THAN, CheckContext
from mechcheck.experiments import DATA
from mechcheck.experiments.evaluate import clean_key, eval_sets
from mechcheck.measurements import RoleData
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult, Estimate

__all__ = ["accuracy_at_least", "accuracy_at_most", "accuracy_higher", "accuracy_estimate", "scope_note"]

# keyless: accuracy_at_least had no `task` when the shipped baseline was recorded; its check ids stay the same
TASK = Param("task", "str", default=DATA, keyless=True, within="also",
             doc="eval set: 'data' (the claim's data) or a name of the experiment's `also` (evaluate)")
_VALUE = Param("value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold")


def _values(ctx: CheckContext, model: str, task: str) -> tuple[RoleData, list[np.ndarray]]:
    """The role's data and, per replicate, its 0/1 correctness on eval set `task` (an error naming the sets)."""
    data = ctx.role(model)
    sets = eval_sets(data)
    if task not in sets:
        others = ("the others are the experiment's `also`" if ctx.meas.experiment == "evaluate" else
                  f"experiment '{ctx.meas.experiment}' measures no other: more sets need evaluate's `also`")
        raise ctx.error(f"task: no eval set {task!r} (measured: {', '.join(sets)}; 'data' is the claim's data, "
                        f"{others})", allowed=tuple(sets))
    return data, data.values(clean_key(task))


def accuracy_estimate(ctx: CheckContext, model: str, task: str = DATA) -> Estimate:
    """The accuracy of `model` on eval set `task`, with its interval (cut to [0, 1])."""
    data, values = _values(ctx, model, task)
    return stats.bounded(stats.mean_estimate(values, data.scope, ctx.level, proportion=True), 0.0, 1.0)


def _chance(ctx: CheckContext, model: str, task: str) -> float:
    """One over the answer candidates of eval set `task` (an `also` set may have other candidates than the
    claim's data: their number is read off its stored candidate logits, (n, candidates))."""
    logits = ctx.role(model).replicates[0].get(clean_key(task, "candidate_logits")) if task != DATA else None
    if logits is not None and np.ndim(logits) == 2 and np.shape(logits)[1] > 0:
        return 1.0 / np.shape(logits)[1]
    return 1.0 / ctx.meas.n_candidates


def _on(task: str) -> str:
    return "" if task == DATA else f" on '{task}'"


def _bound(ctx: CheckContext, name: str, model: str, value: float, task: str, direction: str) -> CheckResult:
    est = accuracy_estimate(ctx, model, task)
    need = f"needs {'>' if direction == '>=' else '<'} {value}"
    return CheckResult(name, {}, stats.judge(est, value, direction),
                       f"accuracy of '{model}'{_on(task)} = {est} ({need}){scope_note(est)}", est, value, direction,
                       {"label": "chance", "estimate": _chance(ctx, model, task)})


@CHECKS.register("accuracy_at_least", params=(MODEL, _VALUE, TASK), experiments=("evaluate", "head_ablation"))
def accuracy_at_least(ctx: CheckContext, model: str, value: float, task: str = DATA) -> CheckResult:
    """The model's clean accuracy on the eval set `task` is at least `value`."""
    return _bound(ctx, "accuracy_at_least", model, value, task, ">=")


@CHECKS.register("accuracy_at_most", params=(MODEL, _VALUE, TASK), experiments=("evaluate",))
def accuracy_at_most(ctx: CheckContext, model: str, value: float, task: str = DATA) -> CheckResult:
    """The model's clean accuracy on the eval set `task` is at most `value` (it does not do that task)."""
    return _bound(ctx, "accuracy_at_most", model, value, task, "<=")


@CHECKS.register("accuracy_higher", params=(
    MODEL, THAN, Param("by", "float", default=0.0, min=-1.0, max=1.0, doc="margin (accuracy)"), TASK,
), experiments=("evaluate",))
def accuracy_higher(ctx: CheckContext, model: str, than: str, by: float = 0.0, task: str = DATA) -> CheckResult:
    """The accuracy of `model` on eval set `task` minus that of `than`, on the same examples, is more than `by`."""
    if model == than:
        raise ctx.error(f"model and than are both '{model}': a role compared with itself says nothing")
    a, va = _values(ctx, model, task)
    b, vb = _values(ctx, than, task)
    est = stats.bounded(stats.difference_estimate(va, vb, a.scope, b.scope, ctx.level), -1.0, 1.0)
    acc_a, acc_b = accuracy_estimate(ctx, model, task), accuracy_estimate(ctx, than, task)
    msg = (f"accuracy of '{model}'{_on(task)} minus that of '{than}' = {est} (needs > {by:g}; '{model}' "
           f"{acc_a.estimate:.3f}, '{than}' {acc_b.estimate:.3f}){scope_note(est)}")
    control = {"label": f"accuracy of '{than}'", "estimate": acc_b.estimate, "lo": acc_b.lo, "hi": acc_b.hi}
    details = {"accuracy": {model: acc_a.estimate, than: acc_b.estimate}, "chance": _chance(ctx, model, task),
               "task": task}
    return CheckResult("accuracy_higher", {}, stats.judge(est, by, ">="), msg, est, by, ">=", control, details)


def scope_note(est) -> str:
    """What a reader must know about an estimate's scope: no interval (and why), or one checkpoint only."""
    if est.insufficient:
        return f" — inconclusive: {est.insufficient}"
    if est.scope == "checkpoint":
        return " (one checkpoint: the interval covers the eval examples, not seed-to-seed variation)"
    return ""
