"""Learning curves: how fast did each role's fixture learn its training task? (reverse fine-tuning, Jain et al.)

A trained fixture records, while it trains, its accuracy on a fixed held-out batch of its *training* task every
`eval_every` steps (`mechcheck.train`: `HELD_OUT` examples of the task's train partition, never trained on), and
stops early when a `stop_at` accuracy is reached. This experiment reads that record: the curve is part of how
the model was built, so it is exactly the curve of the weights the claim's other experiments measure, and it
costs no training. A reverse fine-tune (a fine-tune whose data is the parent's pretraining task) and its
baselines (Scr.+FT, Scr.) are ordinary fixtures, so "reverse fine-tuning revives counting a in far fewer steps"
is a comparison of their curves.

Definitions:

  steps@target  the first training step at which held-out accuracy reaches `target`, interpolated in log steps
                between the last evaluation below it and the first at or above it (`n_at_target` of
                `mechcheck.experiments.sample_efficiency`, on the evaluation steps). Censored values are kept,
                never dropped: never reached by the last step trained -> "above" (the true value is larger; the
                last step stands in); reached at the first evaluation -> "below" (the true value is smaller).

A run that stops at its `stop_at` before it reaches `target` would be censored for no reason, so `target` may
not exceed any measured fixture's `stop_at` (a plan-time error).

Units: ``curve``, one ``training_curve`` per replicate: arrays ``curve/step``, ``curve/accuracy``,
``curve/loss`` (one value per evaluation); meta ``steps`` (trained), ``max_steps``, ``stop_at``,
``stopped_at_accuracy``, ``held_out`` (the batch size behind each accuracy), ``seconds``. The unit reads the
fixture's cache entry; the claim's data plays no part in it.

The checks (`steps_ratio_at_most`, `curve_accuracy_higher`, in `mechcheck.checks.learning`) compare roles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.errors import SpecError
from mechcheck.experiments import Plan, PlanContext
from mechcheck.experiments.sample_efficiency import n_at_target
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["learning_curves", "training_curve_unit", "curve_of", "steps_at_target", "accuracy_at_step"]


@UNITS.register("training_curve", version="1",
                doc="the held-out learning curve a trained fixture recorded while it was trained")
def training_curve_unit(ctx) -> UnitResult:
    from mechcheck.train import HELD_OUT

    info = ctx.infos[0] if ctx.infos else {}
    history = info.get("history") or []
    if not history:
        raise RuntimeError("the model has no training history (it was loaded, or trained before histories were "
                           "recorded): a learning curve needs a fixture trained by mechcheck")
    arrays = {k: np.asarray([float(h[k]) for h in history], dtype=np.float64) for k in ("step", "accuracy", "loss")}
    steps = int(info.get("steps", history[-1]["step"]))
    meta = {"steps": steps, "max_steps": int(info.get("max_steps", steps)), "stop_at": ctx.args["stop_at"],
            "stopped_at_accuracy": bool(info.get("stopped_at_accuracy", False)), "held_out": HELD_OUT,
            "train_seconds": info.get("seconds")}
    return UnitResult(arrays, meta)


def curve_of(meas: Measurements, role: str, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(evaluation steps, held-out accuracy, unit meta) of replicate `i` of `role`."""
    data = meas.roles[role]
    rep = data.replicates[i]
    return rep["curve/step"], rep["curve/accuracy"], (data.meta[i].get("curve", {}) if data.meta else {})


def steps_at_target(step: np.ndarray, accuracy: np.ndarray, target: float) -> tuple[float, str | None]:
    """(steps@target, censoring) of one curve (see the module docstring)."""
    return n_at_target(step, accuracy, target)


def accuracy_at_step(step: np.ndarray, accuracy: np.ndarray, at: int) -> tuple[float, int]:
    """(accuracy, evaluation step) of the last evaluation at or before step `at` (the curve's last point when
    the run ended earlier: it stopped at its `stop_at`)."""
    k = int(np.searchsorted(step, at, side="right")) - 1
    if k < 0:
        raise ValueError(f"no evaluation at or before step {at} (the first is at step {int(step[0])})")
    return float(accuracy[k]), int(step[k])


def _summary(meas: Measurements) -> dict[str, Any]:
    target = float(meas.args["target"])
    models = {}
    for role, data in meas.roles.items():
        curves, at, facts = [], [], []
        for i in range(data.n_replicates):
            step, acc, meta = curve_of(meas, role, i)
            curves.append({"step": [int(s) for s in step], "accuracy": np.round(acc, 4).tolist()})
            at.append(steps_at_target(step, acc, target))
            facts.append({k: meta.get(k) for k in ("steps", "max_steps", "stopped_at_accuracy", "train_seconds")})
        models[role] = {"fixture": data.fixture, "recipe": data.recipe, "seeds": list(data.seeds), "curves": curves,
                        "steps_at_target": [round(v, 2) for v, _ in at], "censored": [c for _, c in at],
                        "training": facts}
    return {"name": "learning_curves", "args": dict(meas.args), "target": target, "models": models}


@EXPERIMENTS.register("learning_curves", params=(
    Param("target", "float", default=0.95, min=0.0, max=1.0,
          doc="held-out accuracy whose first crossing is reported (steps@target)"),
    Param("models", "strings", doc="roles to read (default: every role whose recipe trains)"),
), summary=_summary)
def learning_curves(ctx: PlanContext, target: float = 0.95, models: list[str] | None = None) -> Plan:
    """Each trained role's held-out learning curve on its training task, as recorded when it was trained."""
    roles = ctx.trained_roles(models, "learning_curves", "so it has no learning curve")
    for role in roles:
        stop_at = ctx.specs[role].train.stop_at
        if stop_at is not None and target > stop_at:
            raise SpecError(f"learning_curves: target {target:g} is above the stop_at {stop_at:g} of role "
                            f"'{role}' ({ctx.specs[role].name}): its training stops before it can reach the target, "
                            "so steps@target would be censored for no reason; use target <= stop_at",
                            field_path="experiment")
    return {role: [{"curve": ctx.unit("training_curve", (ref,), stop_at=ctx.specs[role].train.stop_at)}
                   for ref in ctx.roles[role]] for role in roles}
