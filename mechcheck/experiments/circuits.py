"""Circuit experiments: is a stated circuit faithful in each model, and better than random circuits of its shape?

`circuit_faithfulness` measures, for every replicate of every role, on the claim's eval data:

- the clean model's per-example accuracy (over the task's candidates);
- its accuracy with only the circuit left (`mechcheck.interventions.keep_only`: every head's output replaced by
  its position-specific mean over a reference set, except the circuit's heads at their group's positions);
- the same for `n_random` random circuits with the circuit's groups, positions and sizes (the null).

The means are each model's own (a circuit found in a base model is evaluated inside a fine-tuned one with the
fine-tuned model's means), over a reference set of the same task drawn with another seed — or the task's own
reference set when its generator defines one (entity tracking randomises the query label there, so that the means
carry no answer). The circuit is written in the claim (`circuit: {group: {position: last, heads: [[l, h], ...]}}`)
so that it is data: a circuit found by discovery, by a paper or by hand is judged the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck.experiments import Plan, PlanContext
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.registry import EXPERIMENTS, TASKS, UNITS, Param

__all__ = ["circuit_faithfulness", "faithfulness_unit", "discovery_unit", "reference_batch", "cross_model_patching", "cmap_unit",
           "circuit_overlap"]

#: the reference set is drawn with the eval seed plus this, so it never coincides with the eval examples' draw
REFERENCE_SEED_OFFSET = 7919


def reference_batch(data, n: int):
    """`n` prompts of `data`'s task for position-specific means: the generator's own reference set if it
    registers one (``meta["reference"](args, n, seed, split)``), else a fresh draw with another seed."""
    from mechcheck.recipes import make_task

    seed = data.seed + REFERENCE_SEED_OFFSET
    make = TASKS.get(data.task.generator).meta.get("reference")
    if make:
        return make(dict(data.task.args), n, seed, data.split)
    return make_task(data.task).sample(n, data.split, seed)


@UNITS.register("faithfulness", version="1",
                doc="accuracy of the clean model, with only a circuit left, and with random circuits of its shape")
def faithfulness_unit(ctx) -> UnitResult:
    from mechcheck.interventions import Circuit, circuit_reference
    from mechcheck.interventions import faithfulness as measure

    a = ctx.args
    circuit = Circuit.from_dict(a["circuit"] if a["circuit"] is not None else ctx.deps[0].meta["circuit"])
    ref = circuit_reference(ctx.model, reference_batch(ctx.data, a["n_reference"]), batch_size=a["batch_size"])
    got = measure(ctx.model, circuit, ctx.batch, ref, n_random=a["n_random"], seed=a["seed"],
                  batch_size=a["batch_size"], avoid=circuit.heads if a["random_excludes_circuit"] else ())
    return UnitResult({"model": got.model.astype(np.float64), "circuit": got.circuit.astype(np.float64),
                       "random": got.random.astype(np.float64)},
                      {"random_circuits": [c.to_dict() for c in got.random_circuits], "circuit": circuit.to_dict()})


@UNITS.register("discovery", version="1", doc="a circuit found by iterative path patching on counterfactual prompts")
def discovery_unit(ctx) -> UnitResult:
    from mechcheck.interventions import discover_circuit
    from mechcheck.interventions.discovery import steps_from

    a = ctx.args
    make = TASKS.get(ctx.data.task.generator).meta.get("counterfactual")
    if make is None:
        raise ValueError(f"task generator '{ctx.data.task.generator}' defines no counterfactual prompts: circuit "
                         "discovery by path patching needs them")
    if a.get("correct_only"):
        clean, corrupt, corrupt_positions = _solved_pairs(ctx, make, a["n"], a["batch_size"])
    else:
        clean, corrupt, corrupt_positions = make(dict(ctx.data.task.args), a["n"], ctx.data.seed + 104729,
                                                 ctx.data.split)
    steps = steps_from(a["steps"])
    got = discover_circuit(ctx.model, clean, corrupt, steps, corrupt_positions=corrupt_positions,
                           over=a["over"], batch_size=a["batch_size"])
    meta = {"circuit": got.circuit.to_dict(), "forward_passes": got.forward_passes,
            "senders": [list(h) for h in got.senders]}
    if a.get("minimal"):
        from mechcheck.interventions import circuit_reference
        from mechcheck.interventions.minimality import minimal_circuit

        ref = circuit_reference(ctx.model, reference_batch(ctx.data, a["n"]), batch_size=a["batch_size"])
        pruned = minimal_circuit(ctx.model, got.circuit, clean, ref, batch_size=a["batch_size"])
        meta.update({"discovered": meta["circuit"], "circuit": pruned.circuit.to_dict(),
                     "minimality": {f"{g}:{h[0]},{h[1]}": v for (g, h), v in pruned.scores.items()}})
    return UnitResult(got.to_arrays(), meta)


def _solved_pairs(ctx, make, n: int, batch_size: int):
    """`n` counterfactual pairs whose clean prompt the model answers correctly (over the candidates), from a
    draw of 4n. The paper's score, (p_patch - p_org) / p_org averaged over prompts, is dominated by prompts
    where p_org is near 0 (a relative change of a tiny probability) when the model is only moderately
    accurate; `correct_only` (ours) keeps the prompts where the mechanism is at work."""
    from mechcheck.interventions import run

    clean, corrupt, positions = make(dict(ctx.data.task.args), 4 * n, ctx.data.seed + 104729, ctx.data.split)
    solved = np.flatnonzero(run(ctx.model, clean, batch_size=batch_size).metrics["accuracy"] > 0.5)
    if len(solved) < min(n, 20):
        raise ValueError(f"correct_only: the model solves {len(solved)} of {4 * n} counterfactual prompts; "
                         f"discovery needs {min(n, 20)} at least")
    keep = solved[:n]
    kept = None if positions is None else {k: np.asarray(v)[keep] for k, v in positions.items()}
    return clean.subset(keep), corrupt.subset(keep), kept


def _discovery(ctx: PlanContext, discover: dict, batch_size: int):
    """The discovery unit that `discover: {model, steps, n, over}` asks for (on the first replicate of `model`)."""
    unknown = set(discover) - {"model", "steps", "n", "over", "minimal", "correct_only"}
    if unknown or "model" not in discover or "steps" not in discover:
        raise ValueError("experiment argument 'discover' is {model: ROLE, steps: {group: {position, k, into, via}}, "
                         f"n: prompts, over: vocab | candidates}}; got keys {sorted(discover)}")
    on = discover["model"]
    if on not in ctx.roles:
        raise ValueError(f"discover.model: no role {on!r} in the claim's models ({', '.join(ctx.roles)})")
    steps = discover["steps"]
    if not isinstance(steps, dict):
        raise ValueError("discover.steps is a mapping: group -> {position, k, into, via}, in discovery order")
    return ctx.unit("discovery", (ctx.roles[on][0],), steps=ordered_steps(steps), n=int(discover.get("n", 100)),
                    over=discover.get("over", "vocab"), batch_size=batch_size,
                    **({"minimal": True} if discover.get("minimal") else {}),
                    **({"correct_only": True} if discover.get("correct_only") else {}))


def ordered_steps(steps: dict) -> list[dict[str, Any]]:
    """The claim's `steps` mapping (group -> {position, k, into, via}, in discovery order) as a validated list:
    unit arguments are canonicalised (mappings sorted by key) for cache keys, so the order must be a list's."""
    from mechcheck.interventions.discovery import steps_from

    listed = [{"name": k, **v} for k, v in steps.items()]
    steps_from(listed)  # validated now, before anything runs
    return listed


def _circuit_arg(value: Any) -> dict[str, Any]:
    """The claim's `circuit` mapping, validated and normalised (a `Circuit` round trip)."""
    from mechcheck.interventions import Circuit

    return Circuit.from_dict(value).to_dict()


def _summary(meas: Measurements) -> dict[str, Any]:
    out: dict[str, Any] = {"name": "circuit_faithfulness", "args": dict(meas.args), "n": meas.n, "models": {}}
    for role, data in meas.roles.items():
        model = [float(v.mean()) for v in data.values("faithfulness/model")]
        circ = [float(v.mean()) for v in data.values("faithfulness/circuit")]
        rand = [v.mean(axis=1).tolist() for v in data.values("faithfulness/random")]
        out["models"][role] = {"fixture": data.fixture, "model_accuracy": model, "circuit_accuracy": circ,
                               "random_accuracy": rand, "shape": [data.n_layers, data.n_heads]}
        meta = data.meta[0].get("faithfulness", {}) if data.meta else {}
        if "circuit" in meta:
            out["circuit"] = meta["circuit"]
    if "circuit" not in out and meas.args.get("circuit"):
        out["circuit"] = meas.args["circuit"]
    return out


@EXPERIMENTS.register("circuit_faithfulness", params=(
    Param("circuit", "mapping",
          doc="groups -> {position: last | query_label | prev_label | all | <label>, heads: [[layer, head], ...]}"),
    Param("discover", "mapping",
          doc="instead of `circuit`: {model: ROLE, steps: {group: {position, k, into, via}}, n: 100, minimal: "
              "false, correct_only: false} — found by iterative path patching on the first replicate of ROLE "
              "(minimal: then pruned by the minimality rule; correct_only: on prompts the model answers correctly)"),
    Param("n_random", "int", default=20, min=0, doc="random circuits of the same shape (the null; >= 20 for p < 0.05)"),
    Param("random_excludes_circuit", "bool", default=False,
          doc="draw random circuits from the heads outside the circuit (default: from all heads, as the paper)"),
    Param("n_reference", "int", default=500, min=2, doc="reference prompts for the position-specific means"),
    Param("batch_size", "int", default=250, min=1, doc="examples per forward pass"),
), summary=_summary)
def circuit_faithfulness(ctx: PlanContext, circuit: dict | None = None, discover: dict | None = None,
                         n_random: int = 20, random_excludes_circuit: bool = False, n_reference: int = 500,
                         batch_size: int = 250) -> Plan:
    """Accuracy of every model with only the circuit left (given, or discovered on one role), against the clean
    model and random circuits of its shape."""
    from mechcheck.interventions import Circuit

    if (circuit is None) == (discover is None):
        raise ValueError("circuit_faithfulness needs exactly one of 'circuit' (the heads) or 'discover' (find them)")
    deps: tuple = ()
    normalised = None
    if circuit is not None:
        try:
            normalised = _circuit_arg(circuit)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"experiment argument 'circuit': {exc}") from exc
        for role, (L, H) in ctx.shapes.items():
            Circuit.from_dict(normalised).check(L, H)
    else:
        deps = (_discovery(ctx, discover, batch_size),)
    return ctx.per_replicate(lambda role, i, ref: {"faithfulness": ctx.unit(
        "faithfulness", (ref,), deps, circuit=normalised, n_random=n_random,
        random_excludes_circuit=random_excludes_circuit, n_reference=n_reference, seed=ctx.seed,
        batch_size=batch_size)})


# ------------------------------------------------------------------------------------ cross-model patching

@UNITS.register("cmap", version="1", doc="accuracy of a base model with groups of heads patched from a source model")
def cmap_unit(ctx) -> UnitResult:
    """Models: (base, source), the same architecture. Per group: the base's per-example accuracy with that group's
    head outputs (at the group's position) taken from the source on the same inputs; plus both clean accuracies."""
    from mechcheck.interventions import Circuit, cmap, run

    base, source = ctx.models
    a = ctx.args
    groups = a["groups"]
    if groups is None:  # discovered: the circuit of the discovery unit, the groups named in `patch`
        found = ctx.deps[0].meta["circuit"]
        groups = {g: found[g] for g in (a["patch"] or list(found))}
    arrays = {"base": run(base, ctx.batch, batch_size=a["batch_size"]).metrics["accuracy"],
              "source": run(source, ctx.batch, batch_size=a["batch_size"]).metrics["accuracy"]}
    for name, group in groups.items():
        one = Circuit.from_dict({name: group})
        arrays[f"group/{name}"] = cmap(base, source, ctx.batch, one, site=a["site"],
                                       batch_size=a["batch_size"]).metrics["accuracy"]
    return UnitResult({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}, {"groups": groups})


def _patched_groups(meas: Measurements, role: str) -> list[str]:
    if meas.args.get("groups"):
        return list(meas.args["groups"])
    if meas.args.get("patch"):
        return list(meas.args["patch"])
    data = meas.roles[role]
    return list(data.meta[0].get("cmap", {}).get("groups", {})) if data.meta else []


def _cmap_summary(meas: Measurements) -> dict[str, Any]:
    role = meas.args["source"]
    data = meas.roles[role]
    out = {"base": [float(v.mean()) for v in data.values("cmap/base")],
           "source": [float(v.mean()) for v in data.values("cmap/source")],
           "groups": {g: [float(v.mean()) for v in data.values(f"cmap/group/{g}")] for g in _patched_groups(meas, role)}}
    out_groups = data.meta[0].get("cmap", {}).get("groups") if data.meta else None
    return {"name": "cross_model_patching", "args": dict(meas.args), "n": meas.n, "into": meas.args["into"],
            "from": role, "accuracy": out, **({"circuit": out_groups} if out_groups else {})}


@EXPERIMENTS.register("cross_model_patching", params=(
    Param("source", "model", required=True, doc="role whose head activations are patched in (the fine-tuned model)"),
    Param("into", "model", required=True, doc="role that runs with them (the base model)"),
    Param("groups", "mapping",
          doc="groups patched one at a time: name -> {position, heads: [[layer, head], ...]} (a circuit's groups)"),
    Param("discover", "mapping",
          doc="instead of `groups`: {model: ROLE, steps: {...}, n} (see circuit_faithfulness); the discovered "
              "circuit's groups are patched"),
    Param("patch", "strings", doc="with `discover`: the groups to patch, one at a time (default: all of them)"),
    Param("site", "choice", default="z", choices=("z", "q", "k", "v"),
          doc="z: the heads' outputs; q / k / v: their query, key or value inputs"),
    Param("batch_size", "int", default=250, min=1, doc="examples per forward pass"),
), summary=_cmap_summary)
def cross_model_patching(ctx: PlanContext, source: str, into: str, groups: dict | None = None,
                         discover: dict | None = None, patch: list | None = None, site: str = "z",
                         batch_size: int = 250) -> Plan:
    """Base model `into` run on the eval data with each group's heads patched from model `source` (CMAP): one unit
    per replicate of `source` (each patched into the first replicate of `into`, a fixed base checkpoint)."""
    from mechcheck.interventions import Circuit

    for name in (source, into):
        if name not in ctx.roles:
            raise ValueError(f"cross_model_patching: no role {name!r} in the claim's models ({', '.join(ctx.roles)})")
    if ctx.shapes[source] != ctx.shapes[into]:
        raise ValueError(f"cross_model_patching: '{source}' has {ctx.shapes[source]} (layers, heads) and '{into}' "
                         f"{ctx.shapes[into]}: CMAP needs two models of one architecture")
    if (groups is None) == (discover is None):
        raise ValueError("cross_model_patching needs exactly one of 'groups' (the heads) or 'discover' (find them)")
    if patch and discover is None:
        raise ValueError("cross_model_patching: 'patch' names groups of a discovered circuit; it needs 'discover'")
    deps: tuple = ()
    normalised = None
    if groups is not None:
        normalised = {}
        for name, group in groups.items():
            one = Circuit.from_dict({name: group})
            one.check(*ctx.shapes[into])
            normalised.update(one.to_dict())
    else:
        deps = (_discovery(ctx, discover, batch_size),)
        steps = set(discover.get("steps", {}))
        unknown = [g for g in (patch or []) if g not in steps]
        if unknown:
            raise ValueError(f"cross_model_patching: patch names {unknown}, not steps of discover "
                             f"({', '.join(steps)})")
    base = ctx.roles[into][0]
    units = [{"cmap": ctx.unit("cmap", (base, ref), deps, groups=normalised, patch=list(patch or []), site=site,
                               batch_size=batch_size)}
             for ref in ctx.roles[source]]
    return {source: units}  # stored under the source role: its replicates are what the claim is about


# ---------------------------------------------------------------------------------------------- overlap

def _overlap_summary(meas: Measurements) -> dict[str, Any]:
    return {"name": "circuit_overlap", "args": dict(meas.args),
            "circuits": {role: [m.get("discovery", {}).get("circuit") for m in data.meta]
                         for role, data in meas.roles.items()},
            "shapes": {role: [data.n_layers, data.n_heads] for role, data in meas.roles.items()}}


@EXPERIMENTS.register("circuit_overlap", params=(
    Param("steps", "mapping", required=True,
          doc="discovery steps, as in circuit_faithfulness's discover: {group: {position, k, into, via}}"),
    Param("n", "int", default=100, min=2, doc="counterfactual prompt pairs for path patching"),
    Param("over", "choice", default="vocab", choices=("vocab", "candidates"), doc="probabilities over"),
    Param("correct_only", "bool", default=False, doc="path patching on prompts each model answers correctly"),
    Param("batch_size", "int", default=250, min=1, doc="examples per forward pass"),
), summary=_overlap_summary)
def circuit_overlap(ctx: PlanContext, steps: dict, n: int = 100, over: str = "vocab", correct_only: bool = False,
                    batch_size: int = 250) -> Plan:
    """The circuit of every replicate of every role, discovered with the same steps (for `circuit_contains`)."""
    listed = ordered_steps(steps)
    return ctx.per_replicate(lambda role, i, ref: {"discovery": ctx.unit(
        "discovery", (ref,), steps=listed, n=n, over=over, batch_size=batch_size,
        **({"correct_only": True} if correct_only else {}))})
