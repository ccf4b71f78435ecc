"""Registered experiments: what a claim runs on its models (``experiment: {name: args}``).

An experiment is a *plan*, not a computation: ``experiment(ctx: PlanContext, **args) -> Plan`` returns, per
role and replicate, the measurement units the claim's checks will read (``{"clean": unit, "sweep": unit}``).
The engine computes each unit once (two claims that plan the same unit share it) and the runner assembles
the stored arrays into `Measurements`, named ``"<plan name>/<array name>"`` (e.g. ``"sweep/head/accuracy"``).

Registration (`mechcheck.registry.EXPERIMENTS`) declares, besides the parameters:
  summary=  fn(Measurements) -> JSON-able dict for the report and its figures
  request=  fn(ctx, args, Request, ModelRef) -> Unit: the unit that fulfils a check's `Request` (e.g. a
            joint ablation of the heads a check selected), for experiments whose checks ask for more

Units (`mechcheck.registry.UNITS`) are the computations: ``unit(ctx: UnitContext) -> UnitResult``, registered
with a code ``version`` that is part of their key (bump it when the same inputs would give other numbers).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mechcheck.measurements import DataRef, ModelRef, Unit, make_unit

__all__ = ["PlanContext", "Plan", "TRAINED"]

#: the recipes that train a model here (the others load one)
TRAINED = ("scratch", "pretrain", "finetune")

#: role -> per replicate, plan name -> unit
Plan = dict[str, list[dict[str, Unit]]]


@dataclass
class PlanContext:
    """What an experiment plans with.

    roles:  per role, one `ModelRef` per replicate (replicate i of a trained role is built with seed i)
    data:   the claim's eval data; `batch` is that data, generated (for sizes, labels and token groups)
    seed:   the claim's data seed, for anything random the plan fixes (folds, UMAP)
    env:    where units compute (device type, threads): part of every unit key
    shapes: per role, (n_layers, n_heads)
    specs:  per role, the `ModelSpec`, for experiments that build variants of a fixture
    build:  the `BuildContext`, for the keys of those variants
    """

    roles: dict[str, list[ModelRef]]
    data: DataRef
    batch: Any
    seed: int = 0
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    specs: dict[str, Any] = field(default_factory=dict)
    build: Any = None

    def unit(self, kind: str, models: tuple[ModelRef, ...] = (), deps: tuple[Unit, ...] = (),
             data: DataRef | None = None, **args: Any) -> Unit:
        """A unit of `kind` on `models`, on the claim's data unless `data` is given."""
        return make_unit(kind, tuple(models), data or self.data, tuple(deps), self.env, **args)

    def replicates(self) -> Iterator[tuple[str, int, ModelRef]]:
        for role, refs in self.roles.items():
            for i, ref in enumerate(refs):
                yield role, i, ref

    def trained_roles(self, models: list[str] | None, experiment: str, why: str) -> list[str]:
        """The roles `models` names (default: every role whose recipe trains), each checked to be trained here;
        `why` ends the error for one that is not ("so it has no ...")."""
        from mechcheck.errors import SpecError

        roles = list(models) if models else [r for r, s in self.specs.items() if s.recipe in TRAINED]
        for role in roles:
            if role not in self.specs:
                raise SpecError(f"{experiment}: models: unknown role '{role}'", field_path="experiment",
                                allowed=tuple(self.specs))
            spec = self.specs[role]
            if spec.recipe not in TRAINED or spec.train is None:
                raise SpecError(f"{experiment}: role '{role}' (recipe '{spec.recipe}') is not trained, {why}",
                                field_path="experiment")
        if not roles:
            raise SpecError(f"{experiment}: the claim has no trained role (recipe scratch, pretrain or finetune)",
                            field_path="experiment")
        return roles

    def per_replicate(self, fn) -> Plan:
        """The plan ``{role: [fn(role, i, ref) for each replicate]}``."""
        return {role: [fn(role, i, ref) for i, ref in enumerate(refs)] for role, refs in self.roles.items()}
