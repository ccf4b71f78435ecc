"""Sample efficiency: how many training trials does each recipe need to reach a target accuracy?

For every trained role of the claim, every replicate seed and every training-set size N of the grid, the role's
fixture is rebuilt with ``train.n_train = N`` (a fixed training set of N trials drawn from the train split with
the replicate seed, so at one seed every role sees the very same N trials) and, optionally, a common step budget
(``steps``) so that every N gets the same number of optimiser steps. Each variant is an ordinary fixture build:
it is cached under its own key as soon as it is trained (a run killed midway keeps every model finished before),
and a fine-tune variant starts from the same parent replicate as the role's own fixture. Each variant's
per-example accuracy on the claim's eval batch gives one point of the accuracy-vs-N curve.

Definitions (docs/methods/README.md):

  N@target  the smallest N at which the replicate's accuracy reaches `target`, interpolated linearly in
            log2 N between the last grid point below the target and the first one at or above it (the
            first crossing: a curve that dips back below later does not move it). Censored values are kept,
            never dropped: never reached -> "above" (the true value is > max N; max N stands in for it);
            reached already at the smallest N -> "below" (the true value is <= min N; min N stands in).
  AUC       the area under accuracy vs log2 N divided by the log2 span of the grid: the mean accuracy over
            the grid on a log scale, in [0, 1] (for a one-point grid, the accuracy there).

Units: every variant is a model like any fixture (built by the engine, in parallel, cached under its own key)
and its point is a ``clean`` unit on it; each role's own fixture gives a ``clean`` unit too ("reference",
shared with any other claim that evaluates that fixture on the same data).

The checks (`samples_ratio_at_most`, `accuracy_at_n_at_least`, in `mechcheck.checks.efficiency`) compare
roles; which role is pretrained is for the claim to say, nothing here assumes it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mechcheck.experiments import Plan, PlanContext
from mechcheck.measurements import Measurements
from mechcheck.registry import EXPERIMENTS, Param

__all__ = ["auc_log2", "n_at_target", "sample_efficiency", "variant_spec", "curves", "grid_of"]


# ------------------------------------------------------------------------------------------ definitions


def n_at_target(grid: np.ndarray, accuracy: np.ndarray, target: float) -> tuple[float, str | None]:
    """(N@target, censoring) of one accuracy curve over the ascending `grid` (see the module docstring).

    censoring: None (interpolated inside the grid), "below" (reached at the first point: value = min N, an
    upper bound) or "above" (never reached: value = max N, a lower bound).
    """
    grid = np.asarray(grid, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    reached = np.flatnonzero(accuracy >= target)
    if reached.size == 0:
        return float(grid[-1]), "above"
    k = int(reached[0])
    if k == 0:
        return float(grid[0]), "below"
    a0, a1 = accuracy[k - 1], accuracy[k]
    x0, x1 = math.log2(grid[k - 1]), math.log2(grid[k])
    # a0 < target <= a1, so the fraction lies in (0, 1]
    return float(2.0 ** (x0 + (target - a0) / (a1 - a0) * (x1 - x0))), None


def auc_log2(grid: np.ndarray, accuracy: np.ndarray) -> float:
    """Area under accuracy vs log2 N over the grid, divided by the grid's log2 span (the accuracy at a lone N)."""
    x = np.log2(np.asarray(grid, dtype=float))
    y = np.asarray(accuracy, dtype=float)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def variant_spec(spec, n: int, steps: int | None, batch_size: int | None):
    """`spec` trained on a fixed set of `n` trials (and, if given, `steps` steps of `batch_size`)."""
    train = dataclasses.replace(spec.train, n_train=n, **({"steps": steps} if steps else {}),
                                **({"batch_size": batch_size} if batch_size else {}))
    # The name only labels progress output; cache keys are built from the recipe, not the name.
    return dataclasses.replace(spec, name=f"{spec.name}@n{n}", train=train)


def grid_of(meas: Measurements) -> list[int]:
    """The grid of N, ascending: a claim may list `n_train` in any order (the plan sorts it, and N@target
    interpolates between neighbours of the ascending grid)."""
    return sorted(int(n) for n in meas.args["n_train"])


def curves(meas: Measurements, role: str) -> np.ndarray:
    """(n_replicates, len(grid), n_examples) per-example accuracy of each replicate's variant at each N
    (ascending, `grid_of`)."""
    grid = grid_of(meas)
    data = meas.role(role)
    return np.stack([np.stack([rep[f"n{n}/accuracy"] for n in grid]) for rep in data.replicates])


def _summary(meas: Measurements) -> dict[str, Any]:
    """Every curve, N@target with censoring, AUC and the variants' training facts."""
    grid = np.asarray(grid_of(meas), dtype=float)
    target = float(meas.args["target"])
    models = {}
    for role, data in meas.roles.items():
        acc = curves(meas, role).mean(axis=2)  # (R, G)
        at = [n_at_target(grid, c, target) for c in acc]
        variants = [[_variant_info(meta.get(f"n{int(n)}", {})) for n in grid] for meta in data.meta]
        models[role] = {
            "fixture": data.fixture, "recipe": data.recipe, "accuracy": np.round(acc, 5).tolist(),
            "n_at_target": [round(v, 2) for v, _ in at], "censored": [c for _, c in at],
            "auc": [round(auc_log2(grid, c), 5) for c in acc],
            "reference_accuracy": [round(float(v.mean()), 5) for v in data.values("reference/accuracy")],
            "variants": variants,
        }
    return {"name": "sample_efficiency", "args": dict(meas.args), "n": meas.n,
            "grid": [int(n) for n in grid], "target": target, "chance": 1.0 / meas.n_candidates, "models": models}


def _variant_info(meta: dict[str, Any]) -> dict[str, Any]:
    model = (meta.get("models") or [{}])[0]
    return {"key": model.get("key"), "cached": model.get("cached"), "seconds": model.get("seconds"),
            "train_accuracy": model.get("train_accuracy"), "weights_sha256": model.get("weights_sha256")}


@EXPERIMENTS.register("sample_efficiency", params=(
    Param("n_train", "ints", required=True, min=1,
          doc="grid of training-set sizes N (trials), e.g. [32, 64, 128, 256, 512]"),
    Param("target", "float", default=0.9, min=0.0, max=1.0, doc="accuracy whose N is reported (N@target)"),
    Param("steps", "int", min=1, doc="training steps for every N (default: each fixture's own steps)"),
    Param("batch_size", "int", min=1, doc="training batch size for every N (default: each fixture's own)"),
    Param("models", "strings", doc="roles to measure (default: every role whose recipe trains)"),
    Param("eval_batch_size", "int", default=500, min=1, doc="examples per forward pass when measuring"),
), summary=_summary)
def sample_efficiency(ctx: PlanContext, n_train: list[int], target: float = 0.9, steps: int | None = None,
                      batch_size: int | None = None, models: list[str] | None = None,
                      eval_batch_size: int = 500) -> Plan:
    """Train each role's fixture on N trials for every N of the grid and seed; measure eval accuracy."""
    from mechcheck.recipes import model_ref

    grid = sorted(int(n) for n in n_train)
    roles = ctx.trained_roles(models, "sample_efficiency", "so it has no training-set size to vary")
    plan: Plan = {}
    for role in roles:
        spec = ctx.specs[role]
        plan[role] = []
        for ref in ctx.roles[role]:
            units = {"reference": ctx.unit("clean", (ref,), batch_size=eval_batch_size)}
            for n in grid:
                variant = model_ref(variant_spec(spec, n, steps, batch_size), ref.seed, ctx.build)
                units[f"n{n}"] = ctx.unit("clean", (variant,), batch_size=eval_batch_size)
            plan[role].append(units)
    return plan
