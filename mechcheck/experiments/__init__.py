"""Registered experiments: what a claim runs on its models (``experiment: {name: args}``).

An experiment is a function ``experiment(ctx: ExperimentContext, **args) -> result`` registered in
`mechcheck.registry.EXPERIMENTS`. The result keeps per-example / per-replicate arrays for the checks and
has a ``summary()`` with a JSON-able dict (``{"name": ..., "args": ..., ...}``) for the report; the report
draws figures for it through `mechcheck.report.markdown.figure_drawer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mechcheck.tasks import TaskBatch

__all__ = ["ExperimentContext"]


@dataclass
class ExperimentContext:
    """What an experiment runs on.

    models:   per role, one `ModelHandle` per replicate (replicate i was built with seed i)
    fixtures: per role, the fixture name (for reports)
    batch:    the claim's eval data
    seed:     for anything random the experiment draws (control head sets, CV folds, ...)
    specs:    per role, the `ModelSpec` it was built from, for experiments that build variants of a
              fixture (e.g. the same recipe on fewer training examples)
    build:    the `BuildContext` (cache, device, training threads) those variants are built with
    n_seeds:  how many replicates each trained role has
    """

    models: dict[str, list[Any]]
    fixtures: dict[str, str]
    batch: TaskBatch
    seed: int = 0
    console: Any = None
    specs: dict[str, Any] | None = None
    build: Any = None
    n_seeds: int = 1
