"""A claim's plan as the runner makes it (`Runner._plan` without the runner): the units an experiment asks for,
with their keys, before anything is built or measured."""

from __future__ import annotations


def plan_of(claim, cache, experiment=None):
    """(plan, PlanContext, BuildContext) of `claim` (or of `experiment` = (name, args) on its models and data)."""
    from mechcheck.cache import ModelCache
    from mechcheck.experiments import PlanContext
    from mechcheck.interventions import shape_of_config
    from mechcheck.measurements import data_ref
    from mechcheck.recipes import BuildContext, model_config, model_ref, replicates
    from mechcheck.registry import EXPERIMENTS

    build = BuildContext(ModelCache(cache))
    roles = {role: [model_ref(spec, s, build) for s in range(replicates(spec, claim.seeds))]
             for role, spec in claim.models.items()}
    shapes = {role: shape_of_config(model_config(refs[0], build)) for role, refs in roles.items()}
    data = data_ref(claim.data.task, claim.data.n, claim.data.split, claim.data.seed)
    ctx = PlanContext(roles, data, data.batch(), claim.data.seed, shapes, {"device": "cpu", "threads": 1},
                      dict(claim.models), build)
    name, args = experiment or (claim.experiment.name, dict(claim.experiment.args))
    entry = EXPERIMENTS.get(name)
    return entry.func(ctx, **entry.with_defaults(args)), ctx, build
