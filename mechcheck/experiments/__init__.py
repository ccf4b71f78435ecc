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

Further eval sets (`evaluate`'s and `pruning_revival`'s ``also``): ``{set name: {task argument: value}}``, each
the claim's task generator with those arguments changed, drawn with the claim's n, split and seed
(`also_sets` checks them, `variant_data` makes the data set); the claim's own data is the set `DATA`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mechcheck.measurements import DataRef, ModelRef, Unit, data_ref, make_unit
from mechcheck.spec.fields import TRAINED

__all__ = ["PlanContext", "Plan", "TRAINED", "DATA", "also_sets", "variant_data"]

#: role -> per replicate, plan name -> unit
Plan = dict[str, list[dict[str, Unit]]]

#: the name of the claim's own data among an experiment's eval sets (the others are named by its `also`)
DATA = "data"


def also_sets(experiment: str, task: Any, also: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """An experiment's `also` as ``{set name: {argument: value}}``, checked against the generator of the claim's
    task fixture `task`: ValueError (naming `experiment`) for a set called 'data' (the claim's own data), for
    overrides that are not a mapping, and for an argument the generator does not have."""
    from mechcheck.registry import TASKS

    known = {p.name for p in TASKS.get(task.generator).params}
    sets: dict[str, dict[str, Any]] = {}
    for name, overrides in (also or {}).items():
        name = str(name)
        if name == DATA:
            raise ValueError(f"{experiment}: '{DATA}' names the claim's own data; call the others otherwise")
        if not isinstance(overrides, Mapping):
            raise ValueError(f"{experiment}: also.{name} must map task arguments to values, got "
                             f"{type(overrides).__name__} {overrides!r}")
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"{experiment}: also.{name}: task generator '{task.generator}' has no argument "
                             f"{', '.join(bad)} (it has {', '.join(sorted(known))})")
        sets[name] = dict(overrides)
    return sets


def variant_data(data: DataRef, overrides: Mapping[str, Any]) -> DataRef:
    """The data set `data` with its task generator's arguments `overrides` changed: same n, split and seed, and
    the key of any other data set with those arguments (a unit measured on it is shared)."""
    from mechcheck.spec import TaskSpec

    spec = data.task
    variant = TaskSpec(spec.name, spec.generator, {**spec.args, **overrides}, spec.file, spec.description)
    return data_ref(variant, data.n, data.split, data.seed)


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
