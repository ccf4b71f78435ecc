"""Fine-tuning as a wrapper (Jain et al. 2024): pruning curves by gradient x weight, and linear probes per block.

``pruning_revival``: the claim's `data` is the capability to revive (the *pretraining* task, e.g. counting a),
and `also` names further eval sets -- the claim's task generator with some arguments changed, e.g. the
fine-tuning task ``also: {finetune: {operand: b, correlation: 1.0}}`` -- drawn with the claim's n, split and seed.
For every replicate of every role:

1. every neuron (`mechcheck.interventions.pruning`: each output unit of a Linear / Conv1D of a block) is scored by
   gradient x weight on `n_score` examples of the claim's task drawn from the *other* split (train when the claim
   evaluates on eval), so the neurons are never chosen on the examples they are judged on;
2. for each K of `ks` (K = 0 is always measured: the unpruned model), the top-K neurons are pruned and every eval
   set is answered; the unit stores per example whether the answer is right;
3. with `random` (default), the same after pruning K neurons drawn at random (seeded by the claim's data seed,
   nested in K, none of the top max(ks)): the matched control.

Arrays per replicate: ``curve/acc/<set>`` and ``curve/null/<set>``, (len(ks), n) 0/1, where <set> is ``data``
(the claim's data) or a name of `also`; ``curve/scores``: the top neurons' scores. Meta: `ks`, the neurons'
names (``blocks.L.<module>[i]``) and the null's.

``block_probes``: per replicate, a multinomial linear probe of the eval task's label `label` on the residual
stream at the answer position entering block 0 (the embeddings, block 0) and leaving each block (block l),
trained on a seeded split of the claim's eval data (`train_frac`, the same split for every model of the claim)
and scored on the rest (`mechcheck.interventions.probes`), with the shuffled-label null and the untrained-model
null (a randomly initialised model of the same configuration). Arrays: ``probe/correct``,
``probe/shuffled_correct``, ``probe/untrained_correct`` (n_blocks, n_test) 0/1 on the held-out examples, and
their means ``probe/accuracy``, ``probe/shuffled``, ``probe/untrained`` (n_blocks,); meta: chance (the majority
class share), fits that did not converge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.experiments import DATA, Plan, PlanContext, also_sets, variant_data
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["pruning_revival", "pruning_curve_unit", "block_probes_experiment", "block_probes_unit", "DATA",
           "curve_sets"]

@UNITS.register("pruning_curve", version="1",
                doc="accuracy after pruning the top-K neurons by gradient x weight (and K random ones)")
def pruning_curve_unit(ctx) -> UnitResult:
    from mechcheck.interventions.pruning import pruning_curve, random_neurons
    from mechcheck.recipes import make_task

    a = ctx.args
    other = "train" if ctx.data.split == "eval" else "eval"
    score_batch = make_task(ctx.data.task).sample(a["n_score"], other, ctx.data.seed + 1000)
    batches = {DATA: ctx.batch, **{name: variant_data(ctx.data, o).batch() for name, o in a["also"].items()}}
    curve = pruning_curve(ctx.model, score_batch, batches, a["ks"], batch_size=a["batch_size"])
    arrays = {f"acc/{name}": v for name, v in curve.correct.items()}
    arrays["scores"] = curve.scores.scores[curve.scores.order()[:max(curve.ks)]]
    meta = {"ks": curve.ks, "neurons": [str(n) for n in curve.neurons], "score_loss": curve.scores.loss,
            "score_split": other}
    if a["random"]:
        null = random_neurons(ctx.model, max(curve.ks), seed=ctx.data.seed, exclude=curve.neurons)
        null_curve = pruning_curve(ctx.model, None, batches, curve.ks, neurons=null, batch_size=a["batch_size"])
        arrays.update({f"null/{name}": v for name, v in null_curve.correct.items()})
        meta["null_neurons"] = [str(n) for n in null]
    return UnitResult(arrays, meta)


def curve_sets(data) -> list[str]:
    """The eval sets of a role's pruning curves: ``data`` first, then the `also` names."""
    names = sorted(k[len("curve/acc/"):] for k in data.replicates[0] if k.startswith("curve/acc/"))
    return sorted(names, key=lambda n: n != DATA)


def _curve_summary(meas: Measurements) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "pruning_revival", "args": dict(meas.args), "ks": list(meas.args["ks"]),
                           "models": {}}
    for role, data in meas.roles.items():
        names = curve_sets(data)
        entry: dict[str, Any] = {"fixture": data.fixture, "sets": names}
        for kind in ("acc", "null"):
            if names and f"curve/{kind}/{names[0]}" in data.replicates[0]:
                entry[kind] = {n: [np.asarray(v).mean(axis=1).tolist() for v in data.values(f"curve/{kind}/{n}")]
                               for n in names}
        entry["neurons"] = [m.get("curve", {}).get("neurons") for m in data.meta] if data.meta else []
        out["models"][role] = entry
    return out


def _ks(ks) -> list[int]:
    return sorted({0, *(int(k) for k in (range(16) if ks is None else ks))})


@EXPERIMENTS.register("pruning_revival", params=(
    Param("ks", "ints", default=list(range(16)), min=0,
          doc="numbers of neurons to prune (K = 0, the unpruned model, is always added)"),
    Param("also", "mapping", default={}, doc="set name -> task arguments to change: more eval sets, e.g. the "
          "fine-tuning task {finetune: {operand: b, correlation: 1.0}} (the claim's own data is the set 'data')"),
    Param("n_score", "int", default=256, min=1, doc="examples of the claim's task (other split) the neurons are "
          "scored on"),
    Param("random", "bool", default=True, doc="also the curve after pruning K random neurons (the control)"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
), summary=_curve_summary)
def pruning_revival(ctx: PlanContext, ks: list | None = None, also: dict | None = None, n_score: int = 256,
                    random: bool = True, batch_size: int = 500) -> Plan:
    """Accuracy on the claim's task and on each `also` set after pruning the top-K neurons by gradient x weight
    on the claim's task (and K random ones), for each K, in every replicate of every role."""
    ks = _ks(ks)
    if ks[0] < 0:
        raise ValueError(f"pruning_revival: ks must be numbers of neurons >= 0, got {ks}")
    also = also_sets("pruning_revival", ctx.data.task, also)
    return ctx.per_replicate(lambda role, i, ref: {"curve": ctx.unit(
        "pruning_curve", (ref,), ks=ks, also=also, n_score=n_score, random=bool(random), batch_size=batch_size)})


@UNITS.register("block_probes", version="1", doc="linear probes of a label per block, with their two nulls")
def block_probes_unit(ctx) -> UnitResult:
    from mechcheck.interventions.probes import block_probes

    a = ctx.args
    r = block_probes(ctx.model, ctx.batch, a["label"], train_frac=a["train_frac"], seed=ctx.data.seed,
                     untrained=a["untrained"], batch_size=a["batch_size"])
    arrays = {"accuracy": r.accuracy, "shuffled": r.shuffled, "correct": r.correct,
              "shuffled_correct": r.shuffled_correct, "test": r.test}
    if r.untrained is not None:
        arrays["untrained"] = r.untrained
        arrays["untrained_correct"] = r.untrained_correct
    return UnitResult(arrays, {"chance": r.chance, "not_converged": r.not_converged})


def _probe_summary(meas: Measurements) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "block_probes", "args": dict(meas.args), "models": {}}
    for role, data in meas.roles.items():
        entry: dict[str, Any] = {"fixture": data.fixture}
        for k in ("accuracy", "shuffled", "untrained"):
            if f"probe/{k}" in data.replicates[0]:
                entry[k] = [np.asarray(v).tolist() for v in data.values(f"probe/{k}")]
        entry["chance"] = [m.get("probe", {}).get("chance") for m in data.meta] if data.meta else []
        entry["not_converged"] = [m.get("probe", {}).get("not_converged") for m in data.meta] if data.meta else []
        out["models"][role] = entry
    return out


@EXPERIMENTS.register("block_probes", params=(
    Param("label", "label", required=True, doc="the label of the eval task to probe (one integer per example)"),
    Param("train_frac", "float", default=0.5, min=0.01, max=0.99,
          doc="share of the eval examples the probes are trained on (the rest are scored)"),
    Param("untrained", "bool", default=True, doc="also probe a randomly initialised model of the same configuration"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
), summary=_probe_summary)
def block_probes_experiment(ctx: PlanContext, label: str, train_frac: float = 0.5, untrained: bool = True,
                            batch_size: int = 500) -> Plan:
    """Held-out accuracy of a linear probe of `label` at every block, with the shuffled-label and untrained-model
    nulls, in every replicate of every role."""
    if label not in ctx.batch.labels:
        raise ValueError(f"block_probes: the claim's data has no label {label!r} (labels: "
                         f"{', '.join(ctx.batch.labels) or 'none'})")
    if not 0 < train_frac < 1:
        raise ValueError(f"block_probes: train_frac must be strictly between 0 and 1, got {train_frac}")
    return ctx.per_replicate(lambda role, i, ref: {"probe": ctx.unit(
        "block_probes", (ref,), label=label, train_frac=float(train_frac), untrained=bool(untrained),
        batch_size=batch_size)})
