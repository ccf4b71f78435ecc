"""Evaluate: each model's per-example answer metrics on the eval data, nothing else.

For claims about behaviour rather than mechanism ("both models solve the task"). Its unit, ``clean``, is the
same unit every other experiment plans for clean metrics, so a model's clean accuracy on a data set is
measured once however many claims read it.

``also`` adds eval sets by name, each the claim's task generator with some arguments changed and drawn with the
claim's n, split and seed (`mechcheck.experiments.also_sets`), e.g. a counter fine-tuned with a spurious
correlation, on the fine-tuning task with the correlation (the claim's data), without it
(``also: {uncorrelated: {correlation: 0.0}}``) and on the pretraining task (``pretrain: {operand: a}``). Each set
is one more ordinary ``clean`` unit per replicate, on that set's data, planned as ``clean@<set>``: its key is
that of any other claim's clean unit of the same model on the same data, and the claim's own ``clean`` unit is
the one it has without `also`. Arrays: ``clean/<metric>`` (the claim's data, the set named ``data``) and
``clean@<set>/<metric>``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.experiments import DATA, Plan, PlanContext, also_sets, variant_data
from mechcheck.measurements import Measurements, RoleData, UnitResult
from mechcheck.metrics import METRICS
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["evaluate", "clean_unit", "clean_summary", "eval_sets", "clean_key"]

_SET = "clean@"


@UNITS.register("clean", version="2", doc="per-example answer metrics and candidate logits of the clean model")
def clean_unit(ctx) -> UnitResult:
    from mechcheck.interventions import run

    out = run(ctx.model, ctx.batch, batch_size=ctx.args["batch_size"])
    return UnitResult({**out.metrics, "candidate_logits": out.candidate_logits})


def clean_key(name: str, array: str = "accuracy") -> str:
    """The name of a clean array of eval set `name` in `Measurements`: ``clean/<array>`` for the claim's data,
    ``clean@<set>/<array>`` for a set of `evaluate`'s `also`."""
    return f"clean/{array}" if name == DATA else f"{_SET}{name}/{array}"


def eval_sets(data: RoleData) -> list[str]:
    """The eval sets measured for a role: 'data' (the claim's data), then the `also` sets in the claim's order
    (only 'data' for the experiments without `also`)."""
    tail = "/accuracy"
    return [DATA] + [k[len(_SET):-len(tail)] for k in data.replicates[0] if k.startswith(_SET) and k.endswith(tail)]


def clean_summary(meas: Measurements) -> dict[str, Any]:
    """Per role: fixture and each replicate's mean clean metrics."""
    return {role: {"fixture": data.fixture,
                   "clean": {m: [float(v.mean()) for v in data.values(f"clean/{m}")] for m in METRICS}}
            for role, data in meas.roles.items()}


def _summary(meas: Measurements) -> dict[str, Any]:
    """`clean_summary`, and per role and eval set each replicate's mean clean metrics (``by_set``; 'data' is the
    same as ``clean``), the sets in the claim's order (``sets``)."""
    models = clean_summary(meas)
    for role, data in meas.roles.items():
        sets = eval_sets(data)
        models[role]["sets"] = sets
        models[role]["by_set"] = {s: {m: mean_of(data.values(clean_key(s, m))) for m in METRICS} for s in sets}
    sets = eval_sets(next(iter(meas.roles.values()))) if meas.roles else [DATA]
    return {"name": "evaluate", "args": dict(meas.args), "n": meas.n, "sets": sets, "models": models}


@EXPERIMENTS.register("evaluate", params=(
    Param("also", "mapping", default={}, keyless=True, doc="set name -> task arguments to change: more eval sets, "
          "e.g. {uncorrelated: {correlation: 0.0}} (the claim's own data is the set 'data')"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
), summary=_summary)
def evaluate(ctx: PlanContext, also: dict | None = None, batch_size: int = 500) -> Plan:
    """Per-example accuracy and logit difference of every model on the eval data and on each `also` set."""
    sets = {name: variant_data(ctx.data, o) for name, o in also_sets("evaluate", ctx.data.task, also).items()}

    def units(role, i, ref):
        plan = {"clean": ctx.unit("clean", (ref,), batch_size=batch_size)}
        plan.update({f"{_SET}{name}": ctx.unit("clean", (ref,), data=d, batch_size=batch_size)
                     for name, d in sets.items()})
        return plan
    return ctx.per_replicate(units)


def mean_of(values: list[np.ndarray]) -> list[float]:
    return [float(np.mean(v)) for v in values]
