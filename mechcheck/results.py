"""The result types of a run: `Estimate` -> `CheckResult` -> `ClaimResult` -> `RunReport`.

`RunReport` serialised as JSON is the source of truth of a run (versioned by `SCHEMA_VERSION`); the
console table, the Markdown report and the plots are renderings of it. Every type here is plain data
that survives a JSON round trip (``RunReport.from_dict(r.to_dict()) == r``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "OUTCOMES",
    "Estimate",
    "CheckResult",
    "ModelRun",
    "ClaimResult",
    "RunReport",
    "combine_outcomes",
]

#: Bump when a field changes meaning or is removed; adding optional fields keeps the version.
#: 2: estimates carry se, df, scope and per-replicate values; "interrupted" claims; measurement keys.
SCHEMA_VERSION = 2

#: verdicts, then "interrupted": a claim the run did not finish (the run was stopped or killed)
OUTCOMES = ("passed", "failed", "inconclusive", "error", "skipped", "interrupted")


def combine_outcomes(outcomes: list[str]) -> str:
    """A claim's outcome from its checks' outcomes: error > failed > inconclusive > skipped > passed.

    An empty list (a claim that checked nothing) is an error, never a pass.
    """
    if not outcomes:
        return "error"
    for worst in ("error", "failed", "inconclusive", "skipped"):
        if worst in outcomes:
            return worst
    return "passed"


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, tuples become lists, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return _clean(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its confidence interval and the sample sizes behind it."""

    estimate: float
    lo: float
    hi: float
    #: examples per replicate the estimate was computed on (0: a per-replicate statistic)
    n: int
    #: independently trained replicates (1 for a loaded or fixed-seed model)
    n_seeds: int
    level: float = 0.95
    method: str = ""
    #: standard error and effective degrees of freedom of the interval (inf, null in JSON: normal)
    se: float | None = None
    df: float | None = None
    #: "recipe" (replicates are trainings of one recipe) or "checkpoint" (about one fixed model)
    scope: str = "recipe"
    #: the statistic in each replicate (for a difference: of the first role; `replicates_other`: the second)
    replicates: list[float] = field(default_factory=list)
    replicates_other: list[float] = field(default_factory=list)
    #: why no interval could be given (then the verdict is inconclusive); "" when there is one
    insufficient: str = ""

    def __str__(self) -> str:
        if self.insufficient:
            return f"{self.estimate:.3f} [no interval]"
        return f"{self.estimate:.3f} [{self.lo:.3f}, {self.hi:.3f}]"


@dataclass
class CheckResult:
    """The verdict of one expectation (`expect:` entry) of a claim."""

    name: str
    args: dict[str, Any]
    outcome: str
    #: one line a reader can act on: what was measured against what
    message: str = ""
    effect: Estimate | None = None
    threshold: float | None = None
    #: ">=" means the check passes when the whole CI lies at or above the threshold; "<=" the reverse
    direction: str = ">="
    #: the matched control ("random heads of the same count", a chance level, ...)
    control: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelRun:
    """One built replicate of one model role of a claim."""

    role: str
    fixture: str
    seed: int
    key: str
    recipe: str
    cached: bool = False
    n_layers: int = 0
    n_heads: int = 0
    #: training summary (steps, final loss, accuracy, seconds) or load summary (path / hub id)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClaimResult:
    """Everything a run learned about one claim."""

    id: str
    file: str
    statement: str
    outcome: str
    reason: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    profile: str = "ci"
    seeds: list[int] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    models: list[ModelRun] = field(default_factory=list)
    #: experiment name, normalised args, and per-role summaries (e.g. head x layer effect matrices)
    experiment: dict[str, Any] = field(default_factory=dict)
    #: paths of figures, relative to the report directory
    figures: list[str] = field(default_factory=list)
    #: seconds per phase (build, data, experiment, checks, total)
    durations: dict[str, float] = field(default_factory=dict)
    #: traceback of an `error` outcome (kept in the JSON, not printed on the console)
    traceback: str | None = None
    #: the claim as it ran: the validated spec with the profile applied and every default filled in
    spec: dict[str, Any] = field(default_factory=dict)
    #: what a reader must know to read the verdicts (e.g. a checkpoint overridden in place of a recipe)
    notes: list[str] = field(default_factory=list)


@dataclass
class RunReport:
    """A whole `mechcheck run`: the environment it ran in and one `ClaimResult` per claim."""

    run_id: str
    started: str
    profile: str
    finished: str | None = None
    schema_version: int = SCHEMA_VERSION
    argv: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    git_sha: str | None = None
    device: str = "cpu"
    #: torch threads per worker while measuring, and worker processes
    threads: int = 0
    workers: int = 1
    cache_dir: str = ""
    claims: list[ClaimResult] = field(default_factory=list)
    #: set in a stored baseline (`mechcheck.baseline`): the run id it summarises
    baseline_of: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        return {o: sum(c.outcome == o for c in self.claims) for o in OUTCOMES}

    @property
    def ok(self) -> bool:
        """True only when there is at least one claim and every claim passed."""
        return bool(self.claims) and all(c.outcome == "passed" for c in self.claims)

    def to_dict(self) -> dict[str, Any]:
        data = _clean(dataclasses.asdict(self))
        data["counts"] = self.counts
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"report schema version {version!r} is not supported (this mechcheck reads {SCHEMA_VERSION})")
        data = {k: v for k, v in data.items() if k != "counts"}
        claims = []
        for c in data.pop("claims", []):
            checks = []
            for ch in c.pop("checks", []):
                eff = ch.pop("effect", None)
                checks.append(CheckResult(effect=Estimate(**eff) if eff else None, **ch))
            models = [ModelRun(**m) for m in c.pop("models", [])]
            claims.append(ClaimResult(checks=checks, models=models, **c))
        return cls(claims=claims, **data)

    def write_json(self, path: Path) -> None:
        """Write atomically (temp file + rename): a run that dies leaves the previous complete report."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)

    @classmethod
    def read_json(cls, path: Path) -> RunReport:
        return cls.from_dict(json.loads(Path(path).read_text()))
