"""Learning-curve checks (experiment `learning_curves`): how fast a fixture learnt its training task.

`steps_ratio_at_most`: steps@target(model) / steps@target(than), paired seed by seed (replicate i of both roles
was fine-tuned with seed i: the same batches of the same task, from different parents), judged on the log
scale like `samples_ratio_at_most` (`mechcheck.checks.efficiency.ratio_verdict`): a t interval over the seeds'
log ratios, floored by each seed's own sampling variance, exponentiated into a geometric-mean ratio; censored
steps make the ratio a bound, and a bound on the wrong side of the threshold is inconclusive.

The sampling variance of one seed: each point of a curve is an accuracy on `HELD_OUT` examples, so it is
redrawn as a binomial proportion around the recorded one (a parametric bootstrap, `n_boot` draws) and
steps@target is recomputed from the redrawn curves. The recorded curve keeps no per-example answers, which is
why the bootstrap is parametric.

`curve_accuracy_higher`: held-out accuracy after `step` steps of training (the last evaluation at or before it)
of model minus that of than, more than `by`: "after 300 steps randFT's reverse fine-tune counts a better than
Scr.+FT's" when neither reached the criterion. Welch-type interval over the two roles' seeds, each seed's
binomial variance p (1 - p) / HELD_OUT as the floor. A run that stopped at its `stop_at` before `step` is read
at its last evaluation (it had reached `stop_at`), and the message says so.
"""

from __future__ import annotations

import math

import numpy as np

from mechcheck import stats
from mechcheck.checks import MODEL, THAN, CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.checks.efficiency import ratio_verdict
from mechcheck.experiments.learning import accuracy_at_step, curve_of, steps_at_target
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["steps_ratio_at_most", "curve_accuracy_higher"]

_EXP = ("learning_curves",)


def _roles(ctx: CheckContext, model: str, than: str) -> None:
    for role in (model, than):
        if role not in ctx.meas.roles:
            raise ctx.error(f"model '{role}' was not measured by learning_curves (measured: "
                            f"{', '.join(ctx.meas.roles)}; only roles whose recipe trains have a learning curve)",
                            allowed=tuple(ctx.meas.roles))
    if model == than:
        raise ctx.error(f"model and than are both '{model}': a role compared with itself says nothing")


def _held_out(ctx: CheckContext, role: str, i: int) -> int:
    return int(curve_of(ctx.meas, role, i)[2]["held_out"])


def _redrawn(rng: np.random.Generator, acc: np.ndarray, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, len(acc)) binomial redraws of a curve of accuracies on `n` examples each."""
    return rng.binomial(n, np.clip(acc, 0.0, 1.0), size=(n_boot, acc.size)) / n


def _last_step(ctx: CheckContext, role: str, i: int) -> int:
    step, _, meta = curve_of(ctx.meas, role, i)
    return int(meta.get("steps") or step[-1])


@CHECKS.register("steps_ratio_at_most", params=(
    Param("model", "model", required=True, doc="role that should reach the target in fewer steps (e.g. reFT)"),
    Param("than", "model", required=True, doc="role it is compared with (e.g. the Scr.+FT baseline)"),
    Param("value", "float", required=True, min=0.0, doc="largest ratio steps@target(model) / steps@target(than)"),
), experiments=_EXP)
def steps_ratio_at_most(ctx: CheckContext, model: str, than: str, value: float) -> CheckResult:
    """steps@target(model) / steps@target(than) (geometric mean over paired seeds) is below `value`."""
    _roles(ctx, model, than)
    R_m, R_t = ctx.meas.roles[model].n_replicates, ctx.meas.roles[than].n_replicates
    if R_m != R_t:
        raise ctx.error(f"'{model}' has {R_m} replicates and '{than}' {R_t}: the ratio pairs them seed by seed "
                        "(the same fine-tuning batches at each seed), so both must have the same seeds")
    target = float(ctx.meas.args["target"])
    logs, within, at_m, at_t = [], [], [], []
    for i in range(R_m):
        (s_m, a_m, _), (s_t, a_t, _) = curve_of(ctx.meas, model, i), curve_of(ctx.meas, than, i)
        at_m.append(steps_at_target(s_m, a_m, target))
        at_t.append(steps_at_target(s_t, a_t, target))
        logs.append(math.log(at_m[-1][0]) - math.log(at_t[-1][0]))
        rng = np.random.default_rng([ctx.seed, i, 0x57E9])
        d_m = _redrawn(rng, a_m, _held_out(ctx, model, i), ctx.n_boot)
        d_t = _redrawn(rng, a_t, _held_out(ctx, than, i), ctx.n_boot)
        draws = [math.log(steps_at_target(s_m, x, target)[0]) - math.log(steps_at_target(s_t, y, target)[0])
                 for x, y in zip(d_m, d_t)]
        within.append(float(np.var(draws, ddof=1)) if len(draws) > 1 else 0.0)
    last_m = [_last_step(ctx, model, i) for i in range(R_m)]
    last_t = [_last_step(ctx, than, i) for i in range(R_t)]
    control = {"label": f"'{than}' steps to {target:g} (geometric mean)",
               "estimate": float(math.exp(np.mean([math.log(v) for v, _ in at_t])))}
    details = {"steps_at_target": {model: [v for v, _ in at_m], than: [v for v, _ in at_t]},
               "steps_trained": {model: last_m, than: last_t}, "target": target}
    return ratio_verdict(ctx, "steps_ratio_at_most", model, than, value, logs, within, at_m, at_t,
                         what=f"steps to {target:g}", never="within its training",
                         first="at the first evaluation (evaluate more often)",
                         context=f"held-out accuracy of each fixture's training task; steps trained: '{model}' "
                                 f"{', '.join(map(str, last_m))}, '{than}' {', '.join(map(str, last_t))}",
                         control=control, details=details)


@CHECKS.register("curve_accuracy_higher", params=(MODEL, THAN, Param(
    "step", "int", required=True, min=1, doc="training step at which the two curves are compared"), Param(
    "by", "float", default=0.0, min=-1.0, max=1.0, doc="margin of accuracy")), experiments=_EXP)
def curve_accuracy_higher(ctx: CheckContext, model: str, than: str, step: int, by: float = 0.0) -> CheckResult:
    """Held-out accuracy of `model` after `step` training steps exceeds that of `than` by more than `by`."""
    _roles(ctx, model, than)
    values, within, read, early = {}, {}, {}, []
    for role in (model, than):
        values[role], within[role], read[role] = [], [], []
        for i in range(ctx.meas.roles[role].n_replicates):
            s, a, meta = curve_of(ctx.meas, role, i)
            try:
                acc, at = accuracy_at_step(s, a, step)
            except ValueError as exc:
                raise ctx.error(f"step: '{role}' seed {ctx.meas.roles[role].seeds[i]}: {exc}") from None
            if at < step and meta.get("stopped_at_accuracy"):
                early.append(f"'{role}' seed {ctx.meas.roles[role].seeds[i]} stopped at step {at} (reached its "
                             "stop_at), read there")
            values[role].append(acc)
            within[role].append(acc * (1 - acc) / _held_out(ctx, role, i))
            read[role].append(at)
    dm, dt = ctx.meas.roles[model], ctx.meas.roles[than]
    est = stats.bounded(stats.replicate_difference(values[model], values[than], within[model], within[than],
                                                   dm.scope, dt.scope, ctx.level), -1.0, 1.0)
    outcome = stats.judge(est, by, ">=")
    mean_m, mean_t = float(np.mean(values[model])), float(np.mean(values[than]))
    msg = (f"held-out accuracy after {step} steps: '{model}' {mean_m:.3f} - '{than}' {mean_t:.3f} = {est} (needs > "
           f"{by:g}){scope_note(est)}")
    if early:
        msg += " — " + "; ".join(early)
    control = {"label": f"'{than}' after {step} steps", "estimate": mean_t}
    return CheckResult("curve_accuracy_higher", {}, outcome, msg, est, by, ">=", control,
                       {"accuracy": {model: values[model], than: values[than]}, "read_at_step": read})
