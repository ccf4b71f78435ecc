"""Minimality and completeness of a circuit (Prakash et al. 2024, after Wang et al. 2023).

F(C) is the accuracy with only circuit C left (`circuits.circuit_accuracy`: every other head output at its
position-specific mean). Removing heads K from a circuit means evaluating F(C \\ K).

*Minimality*: a head v of a group earns its place when, with the heads K that hurt most together with it already
removed, removing v too still costs at least `threshold` (relative):

    (F(C \\ K) - F(C \\ (K u {v}))) / F(C \\ (K u {v})) >= threshold      (paper: 0.01)

K is the ceil(share * |group|) other heads of v's group whose joint removal with v (pairwise knock-outs) lowers F
most (paper: share 0.3). Heads that fail are dropped; `minimal_circuit` returns the circuit that is left and
every head's numbers.

*Completeness*: for random subsets K of the circuit (each head in with probability 1/2), compare F(C \\ K) with
F(M \\ K), the whole model with only K mean-ablated: a complete circuit degrades like the model when the same
parts are taken away. `completeness` returns both accuracies per subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.circuits import Circuit, Group, circuit_accuracy, positions_of
from mechcheck.interventions.edits import Ablate, At, Reference
from mechcheck.interventions.run import run
from mechcheck.interventions.sites import Site

__all__ = ["Minimality", "minimal_circuit", "completeness", "without"]

Component = tuple[str, tuple[int, int]]  # (group, head)


def without(circuit: Circuit, removed: set[Component]) -> Circuit:
    """`circuit` with the (group, head) components in `removed` taken out."""
    return Circuit({name: Group(g.position, tuple(h for h in g.heads if (name, h) not in removed))
                    for name, g in circuit.groups.items()})


def _f(model, circuit, batch, reference, positions, batch_size) -> float:
    return float(circuit_accuracy(model, circuit, batch, reference, positions=positions,
                                  batch_size=batch_size).metrics["accuracy"].mean())


@dataclass
class Minimality:
    """The circuit left after pruning, and per component: K, F(C \\ K), F(C \\ (K u {v})), the relative drop."""

    circuit: Circuit
    scores: dict[Component, dict[str, Any]] = field(default_factory=dict)
    forward_passes: int = 0

    @property
    def dropped(self) -> list[Component]:
        return [c for c, s in self.scores.items() if not s["kept"]]


def minimal_circuit(model, circuit: Circuit, batch, reference: Reference, *, threshold: float = 0.01,
                    share: float = 0.3, positions: Mapping[str, Any] | None = None,
                    batch_size: int = 500) -> Minimality:
    """Prune `circuit` by the minimality rule above (each group judged on its own; all decisions are made on the
    full circuit, then applied together, so the order of heads does not matter)."""
    out = Minimality(circuit)
    cache: dict[frozenset, float] = {}

    def f(removed: set[Component]) -> float:
        key = frozenset(removed)
        if key not in cache:
            cache[key] = _f(model, without(circuit, removed), batch, reference, positions, batch_size)
            out.forward_passes += 1
        return cache[key]

    drop: set[Component] = set()
    for name, g in circuit.groups.items():
        comps = [(name, h) for h in g.heads]
        k = math.ceil(share * len(comps))
        for v in comps:
            others = [u for u in comps if u != v]
            # the heads whose removal together with v hurts most (pairwise knock-outs)
            ranked = sorted(others, key=lambda u: (f({v, u}), u[1]))
            K = set(ranked[:k])
            before, after = f(K), f(K | {v})
            rel = (before - after) / after if after > 0 else (math.inf if before > after else 0.0)
            kept = rel >= threshold
            out.scores[v] = {"K": [list(u[1]) for u in sorted(K)], "f_without_K": before, "f_without_K_and_v": after,
                             "relative_drop": rel, "kept": kept}
            if not kept:
                drop.add(v)
    out.circuit = without(circuit, drop)
    return out


def completeness(model, circuit: Circuit, batch, reference: Reference, *, n_subsets: int = 20, seed: int = 0,
                 positions: Mapping[str, Any] | None = None, batch_size: int = 500) -> dict[str, np.ndarray]:
    """For `n_subsets` random subsets K of the circuit's components: F(C \\ K) ("circuit") and F(M \\ K) ("model"),
    (n_subsets,) each, and the subsets' sizes."""
    comps = [(name, h) for name, g in circuit.groups.items() for h in g.heads]
    rng = np.random.default_rng([seed, 0xC0C])
    pos = positions_of([g.position for g in circuit.groups.values()], batch, positions)
    f_c, f_m, sizes = [], [], []
    for _ in range(n_subsets):
        K = {c for c in comps if rng.random() < 0.5}
        f_c.append(_f(model, without(circuit, K), batch, reference, positions, batch_size))
        edits = []
        for name, (layer, head) in sorted(K, key=lambda c: (c[1], c[0])):
            p = pos[circuit.groups[name].position]
            edits.append(Ablate(Site(layer, "z"), (head,), "mean", p if isinstance(p, str) else At(p), reference))
        f_m.append(float(run(model, batch, edits, batch_size=batch_size).metrics["accuracy"].mean()))
        sizes.append(len(K))
    return {"circuit": np.array(f_c), "model": np.array(f_m), "sizes": np.array(sizes)}
