"""Run claims: resolve fixtures -> build the eval data -> run the experiment -> judge the checks.

Each phase is timed and named. What goes wrong is classified the way pytest does it: a claim whose set-up or
harness breaks ends as `error` (with the reason on one line and the traceback in the JSON), a claim that
cannot run here ends as `skipped` with the reason, and only a measurement that misses its threshold is
`failed`. One claim's error never stops the others.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mechcheck.errors import ClaimSkipped, SpecError
from mechcheck.results import ClaimResult, ModelRun, RunReport, combine_outcomes

__all__ = ["RunOptions", "Runner", "new_report", "versions"]


@dataclass
class RunOptions:
    """How to run: where models are cached, on which device, with how many threads, and how many seeds."""

    profile: str = "ci"
    device: str | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    #: torch threads while training; 1 makes trained replicates bit-identical across processes
    train_threads: int = 1
    #: overrides the claims' `seeds:` (e.g. 1 for a quick look); None keeps each claim's own
    seeds: int | None = None
    n_boot: int = 2000
    console: Any = None


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose behaviour a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("mechcheck", "torch", "transformers", "transformer-lens", "numpy", "scipy", "scikit-learn"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_sha(where: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    sha = out.stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def new_report(options: RunOptions, argv: list[str], where: Path, device: str) -> RunReport:
    """An empty `RunReport` stamped with the environment (versions, git sha, device, threads)."""
    import torch

    now = datetime.now(timezone.utc)
    return RunReport(
        run_id=now.strftime("%Y%m%d-%H%M%S") + f"-{options.profile}",
        started=now.isoformat(timespec="seconds"),
        profile=options.profile,
        argv=list(argv),
        versions=versions(),
        git_sha=_git_sha(where),
        device=device,
        threads=torch.get_num_threads(),
    )


@dataclass
class Runner:
    """Runs validated `ClaimSpec`s one at a time, sharing built models across claims of one run."""

    options: RunOptions
    _ctx: Any = None
    device: str = "cpu"
    on_result: Callable[[ClaimResult], None] | None = None

    def __post_init__(self) -> None:
        import torch

        from mechcheck.cache import ModelCache
        from mechcheck.fixtures import BuildContext
        from mechcheck.models import choose_device, pin_mkl_threads

        pin_mkl_threads()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        self.device = choose_device(self.options.device)
        self._ctx = BuildContext(ModelCache(self.options.cache_dir), self.device, self.options.console,
                                 self.options.train_threads)

    def run_claim(self, claim) -> ClaimResult:
        """Evaluate one claim; never raises for problems of the claim itself."""
        seeds = self.options.seeds or claim.seeds
        result = ClaimResult(id=claim.id, file=claim.file, statement=claim.statement, outcome="error",
                             source=dict(claim.source), profile=claim.profile, seeds=list(range(seeds)),
                             spec=_spec_dict(claim))
        t0 = time.perf_counter()
        phase = "build"
        try:
            handles = self._build(claim, seeds, result)
            result.durations["build"] = round(time.perf_counter() - t0, 2)
            phase = "experiment"
            t1 = time.perf_counter()
            experiment = self._experiment(claim, handles)
            result.experiment = experiment.summary()
            result.durations["experiment"] = round(time.perf_counter() - t1, 2)
            phase = "checks"
            t2 = time.perf_counter()
            result.checks = self._checks(claim, experiment)
            result.durations["checks"] = round(time.perf_counter() - t2, 2)
            result.outcome = combine_outcomes([c.outcome for c in result.checks])
            failing = [c for c in result.checks if c.outcome != "passed"]
            result.reason = failing[0].message if failing else ""
        except ClaimSkipped as exc:
            result.outcome, result.reason = "skipped", str(exc)
        except SpecError as exc:
            result.outcome, result.reason = "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - any other failure is a harness/set-up error of this claim
            result.outcome = "error"
            result.reason = f"{phase} failed: {type(exc).__name__}: {exc}".splitlines()[0]
            result.traceback = traceback.format_exc()
        result.durations["total"] = round(time.perf_counter() - t0, 2)
        if self.on_result:
            self.on_result(result)
        return result

    # ------------------------------------------------------------------------------------------ phases

    def _build(self, claim, seeds: int, result: ClaimResult):
        from mechcheck.fixtures import build_model, replicates
        from mechcheck.models import CheckpointError, wrap

        handles: dict[str, list[Any]] = {}
        for role, spec in claim.models.items():
            # An untrained (loaded) or fixed-seed model is the same for every seed: one replicate, not n copies
            # of it, so that the CI does not pretend to have seen seed-to-seed variation.
            handles[role] = []
            for seed in range(replicates(spec, seeds)):
                try:
                    built = build_model(spec, seed, self._ctx)
                except CheckpointError as exc:
                    where = _failing_load(spec)
                    raise SpecError(str(exc), file=where.file or claim.file, line=where.source_line,
                                    field_path=where.source_field or f"models.{role}") from exc
                handle = wrap(built.model, self.device)
                handles[role].append(handle)
                result.models.append(ModelRun(role, spec.name, seed if spec.seed is None else spec.seed, built.key, built.recipe, built.cached,
                                              handle.n_layers, handle.n_heads, _brief(built.info)))
        return handles

    def _experiment(self, claim, handles):
        from mechcheck.experiments import ExperimentContext
        from mechcheck.fixtures import make_task
        from mechcheck.registry import EXPERIMENTS

        task = make_task(claim.data.task)
        for role, hs in handles.items():
            vocab = hs[0].hf.config.vocab_size
            if task.vocab_size > vocab:
                raise SpecError(f"the eval task '{claim.data.task.name}' uses {task.vocab_size} token ids but model "
                                f"'{role}' has a vocabulary of {vocab}: they were not built for the same task",
                                file=claim.file, field_path="data.task")
        batch = task.sample(claim.data.n, claim.data.split, claim.data.seed)
        ctx = ExperimentContext(handles, {r: s.name for r, s in claim.models.items()}, batch,
                                seed=claim.data.seed, console=self.options.console, specs=dict(claim.models),
                                build=self._ctx, n_seeds=self.options.seeds or claim.seeds)
        entry = EXPERIMENTS.get(claim.experiment.name)
        return entry.func(ctx, **entry.with_defaults(dict(claim.experiment.args)))

    def _checks(self, claim, experiment):
        from mechcheck.checks import CheckContext, run_check
        from mechcheck.results import CheckResult

        out = []
        for i, check in enumerate(claim.expect):
            ctx = CheckContext(experiment, claim_file=claim.file, line=check.line,
                               field_path=f"expect[{i}].{check.name}", seed=claim.data.seed, n_boot=self.options.n_boot)
            try:
                out.append(run_check(ctx, check.name, dict(check.args)))
            except SpecError as exc:  # e.g. a head index beyond this model: this check is an error, others run
                out.append(CheckResult(check.name, dict(check.args), "error", str(exc)))
        return out


def _failing_load(spec):
    """The `load` fixture at the root of `spec`'s `from` chain (the one whose checkpoint is read)."""
    while spec.parent is not None:
        spec = spec.parent
    return spec


def _spec_dict(claim) -> dict[str, Any]:
    """The normalised claim as plain data, for the report (so a run can be read without the YAML)."""
    import dataclasses

    from mechcheck.results import _clean

    return _clean(dataclasses.asdict(claim))


def _brief(info: dict[str, Any]) -> dict[str, Any]:
    """Training/load info without the per-step history (kept in the cache entry, not in every report)."""
    return {k: v for k, v in info.items() if k != "history"}


def default_threads() -> int | None:
    """MECHCHECK_THREADS if set (see NOTES: one thread can beat two when the other core is busy)."""
    value = os.environ.get("MECHCHECK_THREADS")
    return int(value) if value else None

