"""Pruning checks (read `pruning_revival`): does removing a few neurons revive a capability, or break one?

The per-example value is the change of correctness on an eval set when the top-K neurons (by gradient x weight on
the claim's task, chosen on examples of the other split) are pruned: ``correct(K) - correct(0)`` in {-1, 0, 1},
on the same examples in every replicate. `pruning_revives_at_least` judges its mean (the accuracy gained) and
`pruning_drops_at_least` the mean of ``correct(0) - correct(K)`` (the accuracy lost) with the interval of an
ablation effect (`mechcheck.stats.mean_estimate`: crossed replicates x examples; one checkpoint: the t interval
over examples widened to the score interval of a {-1, 0, 1} mean). Two checks rather than one with a sign, so
that a claim reads as the paper's sentence ("pruning revives counting a", "... and breaks counting b") and each
threshold is a positive amount of accuracy.

Control: the same change after pruning K random neurons (none of the top ones), reported with its interval;
``neurons: random`` judges that null curve instead (a claim that random neurons revive it too should fail).
"""

from __future__ import annotations

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.experiments.pruning import DATA, _ks, curve_sets
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["pruning_revives_at_least", "pruning_drops_at_least"]

_EXP = ("pruning_revival",)
_ARGS = (
    Param("k", "int", required=True, min=0, within="ks",
          doc="number of top neurons pruned (one of the experiment's ks)"),
    Param("value", "float", required=True, min=0.0, max=1.0, doc="accuracy change threshold"),
    Param("task", "str", default=DATA, within="also",
          doc="eval set: 'data' (the claim's data) or a name of the experiment's `also`"),
    Param("neurons", "choice", default="top", choices=("top", "random"),
          doc="judge the top-K neurons by gradient x weight, or the K random ones of the null"),
)


def _changes(ctx: CheckContext, model: str, task: str, k: int, kind: str, sign: float) -> list[np.ndarray]:
    """Per replicate, sign * (correct after pruning K of `kind` ('acc' or 'null') - correct at K = 0)."""
    data = ctx.role(model)
    ks = _ks(ctx.meas.args.get("ks"))
    if k not in ks:
        raise ctx.error(f"k: {k} is not one of the experiment's ks {ks}", allowed=tuple(map(str, ks)))
    sets = curve_sets(data)
    if task not in sets:
        raise ctx.error(f"task: no eval set {task!r} (measured: {', '.join(sets)}; 'data' is the claim's data, "
                        "the others are the experiment's `also`)", allowed=tuple(sets))
    key = f"curve/{kind}/{task}"
    if key not in data.replicates[0]:
        raise ctx.error("the experiment measured no random-neuron null (random: false): neurons: random and the "
                        "control need it")
    i, i0 = ks.index(k), ks.index(0)
    return [sign * (np.asarray(c)[i] - np.asarray(c)[i0]) for c in data.values(key)]


def _change_check(ctx: CheckContext, name: str, model: str, k: int, value: float, task: str, neurons: str,
                  sign: float) -> CheckResult:
    data = ctx.role(model)
    kind = "acc" if neurons == "top" else "null"
    est = stats.bounded(stats.mean_estimate(_changes(ctx, model, task, k, kind, sign), data.scope, ctx.level),
                        -1.0, 1.0)
    verb = "gains" if sign > 0 else "loses"
    which = f"the top {k} neurons by gradient x weight" if neurons == "top" else f"{k} random neurons"
    control = None
    ctl_text = ""
    if neurons == "top" and f"curve/null/{task}" in data.replicates[0]:
        c = stats.mean_estimate(_changes(ctx, model, task, k, "null", sign), data.scope, ctx.level)
        control = {"label": f"{k} random neurons pruned", "estimate": c.estimate, "lo": c.lo, "hi": c.hi}
        ctl_text = f"; {k} random neurons: {c.estimate:+.3f}"
    acc0 = float(np.mean([np.asarray(v)[_ks(ctx.meas.args.get("ks")).index(0)].mean()
                          for v in data.values(f"curve/acc/{task}")]))
    msg = (f"pruning {which} of '{model}', accuracy on '{task}' {verb} {est} (from {acc0:.3f} unpruned; needs > "
           f"{value:g}{ctl_text}){scope_note(est)}")
    return CheckResult(name, {}, stats.judge(est, value, ">="), msg, est, value, ">=", control,
                       {"unpruned_accuracy": acc0, "task": task, "neurons": neurons})


@CHECKS.register("pruning_revives_at_least", params=(MODEL, *_ARGS), experiments=_EXP)
def pruning_revives_at_least(ctx: CheckContext, model: str, k: int, value: float, task: str = DATA,
                             neurons: str = "top") -> CheckResult:
    """Pruning the top-k neurons raises the accuracy on `task` by more than `value` (a wrapper hid it)."""
    return _change_check(ctx, "pruning_revives_at_least", model, k, value, task, neurons, 1.0)


@CHECKS.register("pruning_drops_at_least", params=(MODEL, *_ARGS), experiments=_EXP)
def pruning_drops_at_least(ctx: CheckContext, model: str, k: int, value: float, task: str = DATA,
                           neurons: str = "top") -> CheckResult:
    """Pruning the top-k neurons lowers the accuracy on `task` (e.g. the fine-tuning task) by more than `value`."""
    return _change_check(ctx, "pruning_drops_at_least", model, k, value, task, neurons, -1.0)
