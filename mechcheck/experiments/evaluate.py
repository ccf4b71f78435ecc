"""Evaluate: each model's per-example answer metrics on the eval data, nothing else.

For claims about behaviour rather than mechanism ("both models solve the task"). Its unit, ``clean``, is the
same unit every other experiment plans for clean metrics, so a model's clean accuracy on a data set is
measured once however many claims read it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.experiments import Plan, PlanContext
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.metrics import METRICS
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["evaluate", "clean_unit", "clean_summary"]


@UNITS.register("clean", version="2", doc="per-example answer metrics and candidate logits of the clean model")
def clean_unit(ctx) -> UnitResult:
    from mechcheck.interventions import run

    out = run(ctx.model, ctx.batch, batch_size=ctx.args["batch_size"])
    return UnitResult({**out.metrics, "candidate_logits": out.candidate_logits})


def clean_summary(meas: Measurements) -> dict[str, Any]:
    """Per role: fixture and each replicate's mean clean metrics."""
    return {role: {"fixture": data.fixture,
                   "clean": {m: [float(v.mean()) for v in data.values(f"clean/{m}")] for m in METRICS}}
            for role, data in meas.roles.items()}


def _summary(meas: Measurements) -> dict[str, Any]:
    return {"name": "evaluate", "args": dict(meas.args), "n": meas.n, "models": clean_summary(meas)}


@EXPERIMENTS.register("evaluate", params=(
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
), summary=_summary)
def evaluate(ctx: PlanContext, batch_size: int = 500) -> Plan:
    """Per-example accuracy and logit difference of every model on the eval data."""
    return ctx.per_replicate(lambda role, i, ref: {"clean": ctx.unit("clean", (ref,), batch_size=batch_size)})


def mean_of(values: list[np.ndarray]) -> list[float]:
    return [float(np.mean(v)) for v in values]
