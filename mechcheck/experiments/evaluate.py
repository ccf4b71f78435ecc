"""Evaluate: each model's per-example answer metrics on the eval data, nothing else.

For claims about behaviour rather than mechanism ("both models solve the task"): the checks that read clean
metrics (`accuracy_at_least`) work on it exactly as on a `head_ablation` result, without paying for a sweep.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.experiments import ExperimentContext
from mechcheck.metrics import METRICS
from mechcheck.registry import EXPERIMENTS, Param

__all__ = ["evaluate", "EvaluateResult"]


class EvaluateResult:
    """Per role and replicate: clean per-example metrics."""

    def __init__(self, args: dict[str, Any], batch, fixtures: dict[str, str], handles: dict[str, list[Any]],
                 clean: dict[str, list[dict[str, np.ndarray]]]) -> None:
        self.args, self.batch, self.fixtures, self.handles, self._clean = args, batch, fixtures, handles, clean

    @property
    def metric(self) -> str:
        return "accuracy"

    def shape(self, role: str) -> tuple[int, int]:
        h = self.handles[role][0]
        return h.n_layers, h.n_heads

    def n_replicates(self, role: str) -> int:
        return len(self._clean[role])

    def clean(self, role: str, metric: str) -> list[np.ndarray]:
        return [c[metric] for c in self._clean[role]]

    def summary(self) -> dict[str, Any]:
        models = {role: {"fixture": self.fixtures.get(role, role),
                         "clean": {m: [float(c[m].mean()) for c in runs] for m in METRICS}}
                  for role, runs in self._clean.items()}
        return {"name": "evaluate", "args": dict(self.args), "n": len(self.batch), "models": models}


@EXPERIMENTS.register("evaluate", params=(
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
))
def evaluate(ctx: ExperimentContext, batch_size: int = 500) -> EvaluateResult:
    """Per-example accuracy and logit difference of every model on the eval data."""
    from mechcheck.experiments.head_ablation import forward_metrics

    clean = {role: [forward_metrics(h, ctx.batch, batch_size=batch_size) for h in handles]
             for role, handles in ctx.models.items()}
    return EvaluateResult({"batch_size": batch_size}, ctx.batch, dict(ctx.fixtures), ctx.models, clean)
