"""Efficiency checks (experiment `sample_efficiency`): how many training trials a recipe needs.

The ratio N@target(model) / N@target(than) pairs the two roles seed by seed (at one seed both saw the same N
trials) and is judged on the log scale: a t interval over the seeds' log ratios, floored by each seed's own
sampling variance (a bootstrap over eval examples, N@target recomputed in every draw), exponentiated back into
a geometric-mean ratio. Censored values (a role that never reached the target in the grid, or reached it at
the smallest N) stand in as the grid's end and make the ratio a bound; a bound on the wrong side of the
threshold makes the verdict inconclusive, never a pass.
"""

from __future__ import annotations

import math

import numpy as np

from mechcheck import stats
from mechcheck.checks import CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.experiments.sample_efficiency import curves, grid_of, n_at_target
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult, Estimate

__all__ = ["samples_ratio_at_most", "accuracy_at_n_at_least", "ratio_verdict"]


def _role(ctx: CheckContext, role: str) -> None:
    if role not in ctx.meas.roles:
        raise ctx.error(f"model '{role}' was not measured by sample_efficiency (measured: "
                        f"{', '.join(ctx.meas.roles)}; only roles whose recipe trains have a training-set size to "
                        "vary)", allowed=tuple(ctx.meas.roles))


def _grid(ctx: CheckContext) -> np.ndarray:
    return np.asarray(grid_of(ctx.meas), dtype=float)  # ascending, as `curves` stacks the accuracies


def _grid_text(ctx: CheckContext) -> str:
    return "[" + ", ".join(str(int(n)) for n in _grid(ctx)) + "]"


def _n_text(values: list[tuple[float, str | None]]) -> str:
    def one(v: float, c: str | None) -> str:
        return f">{v:.0f}" if c == "above" else f"<={v:.0f}" if c == "below" else f"{v:.0f}"

    return ", ".join(one(v, c) for v, c in values)


def _geomean(values: list[float]) -> float:
    return float(math.exp(np.mean(np.log(values))))


def _log_ratio(a: np.ndarray, b: np.ndarray, rows: np.ndarray, grid: np.ndarray, target: float) -> float:
    """log N@target of (G, n) curve a minus that of b, on example rows `rows`."""
    m = n_at_target(grid, a[:, rows].mean(1), target)[0]
    t = n_at_target(grid, b[:, rows].mean(1), target)[0]
    return math.log(m) - math.log(t)


def ratio_verdict(ctx: CheckContext, check: str, model: str, than: str, value: float, logs: list[float],
                  within: list[float], at_m: list[tuple[float, str | None]], at_t: list[tuple[float, str | None]], *,
                  what: str, never: str, first: str, context: str, control: dict, details: dict,
                  n: int = 0) -> CheckResult:
    """The verdict on "what(model) / what(than) <= value" from per-seed log ratios (`logs`, with their
    within-seed sampling variances) and each seed's censored values (`at_m`, `at_t`: (value, censoring)).

    The interval is a t interval over the seeds' log ratios, exponentiated into a geometric-mean ratio.
    Censoring makes a ratio a bound: a numerator that never reached the target (or a denominator reached at
    the first point) makes it a lower bound, the other two an upper bound; a bound on the wrong side of the
    threshold makes the verdict inconclusive, never a pass or a fail. `never` / `first` say where the
    measurement ends and starts ("by N=1024", "at the smallest N=32"); `context` ends the message.
    """
    scope = ctx.role(model).scope
    log_est = stats.replicate_estimate(logs, within, scope, ctx.level)
    est = Estimate(math.exp(log_est.estimate), math.exp(log_est.lo) if math.isfinite(log_est.lo) else math.nan,
                   math.exp(log_est.hi) if math.isfinite(log_est.hi) else math.nan, n, log_est.n_seeds,
                   log_est.level, "geometric mean ratio: " + log_est.method + " on log ratios", log_est.se,
                   log_est.df, scope, [math.exp(v) for v in logs], [], log_est.insufficient)
    outcome = stats.judge(log_est, math.log(value), "<=") if value > 0 else "error"
    low = sum(cm == "above" or ct == "below" for (_, cm), (_, ct) in zip(at_m, at_t))
    high = sum(cm == "below" or ct == "above" for (_, cm), (_, ct) in zip(at_m, at_t))
    notes = []
    n_seeds = len(at_m)
    never_m = sum(c == "above" for _, c in at_m)
    never_t = sum(c == "above" for _, c in at_t)
    if never_t:
        notes.append(f"'{than}' never reached the target {never} in {never_t} of {n_seeds} seeds "
                     "(counted as its last point: the ratio is an upper bound)")
    if never_m:
        notes.append(f"'{model}' never reached the target {never} in {never_m} of {n_seeds} seeds "
                     "(it cannot pass)")
    if any(c == "below" for _, c in at_m + at_t):
        notes.append(f"reached already {first} in some seeds")
    if outcome == "passed" and low:
        outcome = "inconclusive"  # a lower bound below the threshold says nothing about the true ratio
    if outcome == "failed" and high:
        outcome = "inconclusive"  # an upper bound above the threshold says nothing either
    msg = (f"{what} of '{model}' / '{than}' = {est} (geometric mean over {n_seeds} seeds, needs < {value:g}); "
           f"{what}: '{model}' {_n_text(at_m)}, '{than}' {_n_text(at_t)}; {context}{scope_note(est)}")
    if notes:
        msg += " — " + "; ".join(notes)
    details = {**details, "censored": {model: [c for _, c in at_m], than: [c for _, c in at_t]},
               "bound": "upper" if high and not low else "lower" if low and not high else
               "mixed" if low and high else "exact"}
    return CheckResult(check, {}, outcome, msg, est, value, "<=", control, details)


@CHECKS.register("samples_ratio_at_most", params=(
    Param("model", "model", required=True, doc="role that should need fewer samples"),
    Param("than", "model", required=True, doc="role it is compared with (e.g. the one trained from scratch)"),
    Param("value", "float", required=True, min=0.0, doc="largest ratio N@target(model) / N@target(than)"),
), experiments=("sample_efficiency",))
def samples_ratio_at_most(ctx: CheckContext, model: str, than: str, value: float) -> CheckResult:
    """N@target(model) / N@target(than) (geometric mean over paired seeds) is below `value`."""
    _role(ctx, model)
    _role(ctx, than)
    if model == than:
        raise ctx.error(f"model and than are both '{model}': a role compared with itself says nothing")
    a, b = curves(ctx.meas, model), curves(ctx.meas, than)  # (R, G, n)
    if a.shape[0] != b.shape[0]:
        raise ctx.error(f"'{model}' has {a.shape[0]} replicates and '{than}' {b.shape[0]}: the ratio pairs them seed "
                        "by seed (same training trials at each seed), so both must be trained per seed")
    grid, target = _grid(ctx), float(ctx.meas.args["target"])
    n = a.shape[2]
    everything = np.arange(n)
    logs = [_log_ratio(a[i], b[i], everything, grid, target) for i in range(a.shape[0])]
    within = [stats.bootstrap_variance(lambda rows, i=i: _log_ratio(a[i], b[i], rows, grid, target), n, ctx.n_boot,
                                       ctx.seed + i) for i in range(a.shape[0])]
    at_m = [n_at_target(grid, c, target) for c in a.mean(2)]
    at_t = [n_at_target(grid, c, target) for c in b.mean(2)]
    curve_t = b.mean(2).mean(0)
    control = {"label": f"'{than}' N@{target:g} (geometric mean)", "estimate": _geomean([v for v, _ in at_t]),
               "curve": {str(int(g)): round(float(c), 4) for g, c in zip(grid, curve_t)}}
    details = {"n_at_target": {model: [v for v, _ in at_m], than: [v for v, _ in at_t]},
               "geomean_n_at_target": {model: _geomean([v for v, _ in at_m]), than: control["estimate"]},
               "grid": [int(g) for g in grid], "target": target}
    return ratio_verdict(ctx, "samples_ratio_at_most", model, than, value, logs, within, at_m, at_t,
                         what=f"N@{target:g}", never=f"by N={grid[-1]:.0f}",
                         first=f"at the smallest N={grid[0]:.0f} (extend the grid downwards)",
                         context=f"grid {_grid_text(ctx)}", control=control, details=details, n=n)


@CHECKS.register("accuracy_at_n_at_least", params=(
    Param("model", "model", required=True, doc="role of the model in the claim's `models`"),
    Param("n", "int", required=True, min=1, within="n_train",
          doc="training-set size; must be a point of the experiment's grid"),
    Param("value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold"),
    Param("than", "model", doc="role whose accuracy at the same N is reported as the control"),
), experiments=("sample_efficiency",))
def accuracy_at_n_at_least(ctx: CheckContext, model: str, n: int, value: float, than: str | None = None) -> CheckResult:
    """Eval accuracy of `model` trained on `n` trials is more than `value`."""
    _role(ctx, model)
    grid = [int(g) for g in _grid(ctx)]
    if n not in grid:
        raise ctx.error(f"n: {n} is not a point of the experiment's grid {grid}", allowed=tuple(map(str, grid)))
    data = ctx.role(model)
    est = stats.bounded(stats.mean_estimate(data.values(f"n{n}/accuracy"), data.scope, ctx.level, proportion=True),
                        0.0, 1.0)
    outcome = stats.judge(est, value, ">=")
    control = {"label": "chance", "estimate": 1.0 / ctx.meas.n_candidates}
    if than is not None:
        _role(ctx, than)
        other = ctx.role(than)
        c = stats.mean_estimate(other.values(f"n{n}/accuracy"), other.scope, ctx.level)
        control = {"label": f"'{than}' at N={n}", "estimate": c.estimate, "lo": c.lo, "hi": c.hi}
    msg = (f"accuracy of '{model}' trained on N={n} trials = {est} ({est.n_seeds} seeds; needs > {value:g}; "
           f"{control['label']}: {control['estimate']:.3f}); grid {_grid_text(ctx)}{scope_note(est)}")
    return CheckResult("accuracy_at_n_at_least", {}, outcome, msg, est, value, ">=", control,
                       {"curve": np.round(curves(ctx.meas, model).mean(2).mean(0), 4).tolist(), "grid": grid})
