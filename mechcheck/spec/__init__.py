"""Claim and fixture files (YAML) -> frozen, validated specs: the spec dataclasses and the public API.

The package's modules: `yaml` (reading YAML with lines), `kinds` (validation of one value by its `Param`
kind), `profiles` (profile overlays), `loader` (claims and fixtures), `cross` (the rules that span sections:
checks against their experiment, head and layer indices against the models' shapes).
Validation never imports torch or touches a model. Format reference: docs/claim-format.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "TaskSpec", "TrainSpec", "ModelSpec", "DataSpec", "ExperimentSpec", "CheckSpec", "ClaimSpec",
    "discover", "find_fixtures_dir", "load_claims", "load_model_fixture", "load_task_fixture", "list_fixtures",
    "declared_shape", "declared_shapes", "shape_errors",
]


@dataclass(frozen=True)
class TaskSpec:
    """A task generator bound to its validated arguments (defaults filled in)."""
    name: str
    generator: str
    args: dict
    file: str
    description: str = ""


@dataclass(frozen=True)
class TrainSpec:
    """How a trained model fixture is optimised."""
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    loss: str = "answer"
    n_train: int | None = None
    eval_every: int = 25
    grad_clip: float = 1.0
    #: intermediate read-out supervision (`mechcheck.train`): {layer, weight}; None: none. Left out of cache keys
    #: when None, so fixtures written before it keep their keys.
    hints: dict | None = None
    #: stop at the first evaluation (every `eval_every` steps) whose held-out accuracy reaches this; None: train
    #: all `steps`. Left out of cache keys when None.
    stop_at: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model fixture: a recipe and what it needs (architecture, task, training, parent, where to load)."""
    name: str
    recipe: str
    file: str
    description: str = ""
    architecture: dict | None = None
    task: TaskSpec | None = None
    train: TrainSpec | None = None
    parent: ModelSpec | None = None
    path: str | None = None
    hub: str | None = None
    revision: str | None = None
    #: `load` only: the weights' dtype (default: as saved) and a LoRA adapter (hub id or directory, via `peft`)
    #: merged into them
    dtype: str | None = None
    adapter: str | None = None
    #: where `path` / `hub` is written (file `file`), for errors only a model can reveal (missing checkpoint)
    source_line: int | None = None
    source_field: str = ""
    #: a fixed training seed: one replicate shared by every seed of a claim (like a published checkpoint
    #: that several fine-tuning seeds start from); None = replicate i is trained with seed i
    seed: int | None = None
    #: set when `--override` put this `load` fixture in place of another: what it replaced (recipe and file)
    replaces: str | None = None


@dataclass(frozen=True)
class DataSpec:
    """The evaluation data of a claim."""
    task: TaskSpec
    n: int = 512
    split: str = "eval"
    seed: int = 0


@dataclass(frozen=True)
class ExperimentSpec:
    """The one experiment a claim runs, with its arguments (defaults filled in)."""
    name: str
    args: dict


@dataclass(frozen=True)
class CheckSpec:
    """One expectation of a claim; `line` is where it stands in the claim file, `lines` where its arguments do."""
    name: str
    args: dict
    line: int | None = None
    #: argument -> line, and "argument[i]" -> line of item i of a list argument (only the arguments written),
    #: so that errors found later (a head beyond a built model) point at the value
    lines: dict = field(default_factory=dict)

    def line_of(self, path: str) -> int | None:
        """Line of argument `path` ("heads", "heads[0]"): the item's, else its argument's, else the check's."""
        return self.lines.get(path, self.lines.get(path.split("[", 1)[0], self.line))


@dataclass(frozen=True)
class ClaimSpec:
    """A validated claim with the selected profile applied (`profiles`: the names its file defines)."""
    id: str
    statement: str
    file: str
    models: dict[str, ModelSpec]
    data: DataSpec
    experiment: ExperimentSpec
    expect: tuple[CheckSpec, ...]
    seeds: int = 1
    profile: str = "ci"
    source: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()



# The loader builds the dataclasses above, so it is imported after them (it imports them from this package).
from mechcheck.spec.cross import declared_shape, declared_shapes, shape_errors  # noqa: E402
from mechcheck.spec.loader import (  # noqa: E402
    discover, find_fixtures_dir, list_fixtures, load_claims, load_model_fixture, load_task_fixture,
)
