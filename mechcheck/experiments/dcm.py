"""Desiderata patching (DCM): what information each group of a circuit carries, in every model.

For each group of the circuit and each desideratum the task defines (entity tracking: positional,
object_value, box_label_value), on pairs (base prompt, source prompt) drawn from the claim's data task:

1. a mask over the group's heads is learnt on the first half of the pairs (`mechcheck.interventions.dcm`), with
   the best rounded mask chosen on the next quarter;
2. the selected heads (the mask's zeros) are patched from source into base on the last quarter, and the unit
   records per pair whether the model then says the desideratum's target.

So `dcm/acc/<group>/<desideratum>` is a per-example 0/1 array on held-out pairs: a group "carries" a kind of
information when patching its selected heads makes the model follow that desideratum. Each model gets its own
masks (the paper's question is whether roles are the same in base and fine-tuned models).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.experiments import Plan, PlanContext
from mechcheck.experiments.circuits import _circuit_arg, _discovery
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.registry import EXPERIMENTS, TASKS, UNITS, Param

__all__ = ["desiderata_patching", "dcm_unit"]


@UNITS.register("dcm", version="1", doc="DCM masks per circuit group and desideratum, and held-out patching accuracy")
def dcm_unit(ctx) -> UnitResult:
    from mechcheck.interventions import Circuit, positions_of
    from mechcheck.interventions.dcm import describe, patch_accuracy, train_mask

    a = ctx.args
    meta = TASKS.get(ctx.data.task.generator).meta
    circuit = Circuit.from_dict(a["circuit"] if a["circuit"] is not None else ctx.deps[0].meta["circuit"])
    arrays: dict[str, np.ndarray] = {}
    masks: dict[str, Any] = {}
    n = a["n_pairs"]
    cut1, cut2 = n // 2, (3 * n) // 4
    for d_i, kind in enumerate(a["desiderata"]):
        base, source, target = meta["desiderata"](dict(ctx.data.task.args), kind, n, ctx.data.seed + 1000 + d_i,
                                                  ctx.data.split)
        for name, group in circuit.groups.items():
            if a.get("groups") and name not in a["groups"]:
                continue
            bpos = positions_of([group.position], base)[group.position]
            spos = positions_of([group.position], source)[group.position]
            if isinstance(bpos, str):
                raise ValueError(f"DCM group {name!r}: position 'all' cannot be patched head by head")
            got = train_mask(ctx.model, base, source, target, group, bpos, spos, train=range(cut1),
                             val=range(cut1, cut2), lr=a["lr"], epochs=a["epochs"], batch_size=a["batch"],
                             lam=a["lam"], seed=ctx.data.seed)
            arrays[f"acc/{name}/{kind}"] = patch_accuracy(ctx.model, base, source, target, got.selected,
                                                          group.position, bpos, spos, range(cut2, n))
            masks[f"{name}/{kind}"] = describe(got)
            ctx.progress(len(masks), len(a["desiderata"]) * len(a.get("groups") or circuit.groups))
    return UnitResult(arrays, {"masks": masks, "circuit": circuit.to_dict()})


def _summary(meas: Measurements) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "desiderata_patching", "args": dict(meas.args), "models": {}}
    for role, data in meas.roles.items():
        table = {k.split("/", 2)[2]: [float(v.mean()) for v in data.values(k)]
                 for k in data.replicates[0] if k.startswith("dcm/acc/")}
        selected = {k: v["selected"] for k, v in (data.meta[0].get("dcm", {}).get("masks", {}) if data.meta else
                                                  {}).items()}
        out["models"][role] = {"fixture": data.fixture, "accuracy": table, "selected": selected}
    return out


@EXPERIMENTS.register("desiderata_patching", params=(
    Param("circuit", "mapping", doc="groups -> {position, heads}: the groups whose roles are tested"),
    Param("discover", "mapping", doc="instead of `circuit`: {model: ROLE, steps: {...}, n} (see circuit_faithfulness)"),
    Param("desiderata", "strings", doc="desiderata of the task to test (default: all the task defines)"),
    Param("groups", "strings", doc="the circuit's groups to learn masks for (default: all; each costs a mask "
                                   "per desideratum and replicate)"),
    Param("n_pairs", "int", default=400, min=8, doc="pairs per desideratum: 1/2 train, 1/4 validation, 1/4 test"),
    Param("lr", "float", default=0.1, min=0.0, doc="Adam learning rate of the masks"),
    Param("epochs", "int", default=2, min=1, doc="passes over the training pairs"),
    Param("batch", "int", default=32, min=1, doc="pairs per mask update"),
    Param("lam", "float", default=0.01, min=0.0, doc="weight of the sparsity term (heads patched)"),
), summary=_summary)
def desiderata_patching(ctx: PlanContext, circuit: dict | None = None, discover: dict | None = None,
                        desiderata: list | None = None, groups: list | None = None, n_pairs: int = 400, lr: float = 0.1, epochs: int = 2,
                        batch: int = 32, lam: float = 0.01) -> Plan:
    """DCM masks of every group for every desideratum, in every replicate of every role."""
    from mechcheck.interventions import Circuit

    meta = TASKS.get(ctx.data.task.generator).meta
    known = tuple(meta.get("desiderata_names", ()))
    if "desiderata" not in meta:
        raise ValueError(f"task generator '{ctx.data.task.generator}' defines no desiderata datasets")
    chosen = list(desiderata or known)
    bad = [d for d in chosen if d not in known]
    if bad:
        raise ValueError(f"unknown desiderata {bad} for task '{ctx.data.task.generator}' (it has {', '.join(known)})")
    if (circuit is None) == (discover is None):
        raise ValueError("desiderata_patching needs exactly one of 'circuit' or 'discover'")
    deps: tuple = ()
    normalised = None
    if circuit is not None:
        normalised = _circuit_arg(circuit)
        for L, H in ctx.shapes.values():
            Circuit.from_dict(normalised).check(L, H)
    else:
        deps = (_discovery(ctx, discover, 250),)
    names = list(normalised) if normalised is not None else list(discover.get("steps", {}))
    unknown = [g for g in (groups or []) if g not in names]
    if unknown:
        raise ValueError(f"desiderata_patching: groups {unknown} are not groups of the circuit ({', '.join(names)})")
    extra = {"groups": list(groups)} if groups else {}  # unset: the unit key of every existing claim stays
    return ctx.per_replicate(lambda role, i, ref: {"dcm": ctx.unit(
        "dcm", (ref,), deps, circuit=normalised, desiderata=chosen, n_pairs=n_pairs, lr=lr, epochs=epochs,
        batch=batch, lam=lam, **extra)})
