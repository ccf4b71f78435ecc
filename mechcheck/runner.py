"""Run claims: plan every claim's measurements, let the engine compute what is missing, judge the checks.

For each claim, in order:

1. *prepare*: resolve each role to one `ModelRef` per replicate (fixture, seed, cache key: nothing is built),
   read the models' configs to check head and layer indices against the real shapes, generate the eval data,
   and ask the experiment for its plan of measurement units;
2. all claims' units go to the `Engine` at once (in claim order of priority), which builds missing models and
   computes missing units in parallel worker processes; a unit two claims share is computed once;
3. *judge*, claim by claim as soon as its units are there: assemble `Measurements` from the store, have the
   units computed that the checks request (joint ablations of the heads they selected), run the checks.

What goes wrong is classified the way pytest does it: a claim whose set-up or harness breaks ends as `error`
(the reason on one line, the traceback in the JSON), a claim that cannot run here ends as `skipped` with the
reason, and only a measurement that misses its threshold is `failed`. One claim's error never stops the others.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechcheck.errors import ClaimSkipped, SpecError
from mechcheck.provenance import new_report, versions
from mechcheck.results import ClaimResult, ModelRun, combine_outcomes

__all__ = ["RunOptions", "Runner", "new_report", "versions", "pending_result"]


@dataclass
class RunOptions:
    """How to run: cache, device, parallelism, threads, and how many seeds."""

    profile: str = "ci"
    device: str | None = None
    cache_dir: Path | None = None
    #: torch threads per worker while measuring (1: numbers are the same bits whatever the worker count)
    threads: int | None = None
    #: torch threads while training; 1 makes trained replicates bit-identical across processes
    train_threads: int = 1
    #: overrides the claims' `seeds:` (e.g. 1 for a quick look); None keeps each claim's own
    seeds: int | None = None
    #: worker processes for builds and measurements (None: $MECHCHECK_WORKERS or the number of cores)
    workers: int | None = None
    #: resamples of the within-replicate bootstraps behind per-replicate statistics
    n_boot: int = 200
    console: Any = None


def pending_result(claim) -> ClaimResult:
    """The placeholder a report holds for a claim until it is judged: if the run dies, it stays `interrupted`."""
    return ClaimResult(id=claim.id, file=claim.file, statement=claim.statement, outcome="interrupted",
                       reason="the run stopped before this claim was judged", source=dict(claim.source),
                       profile=claim.profile, spec=_spec_dict(claim))


@dataclass
class _Prepared:
    claim: Any
    result: ClaimResult
    t0: float
    plan: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ctx: Any = None
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: bool = False  # already ended at preparation (error / skipped)

    @property
    def units(self) -> list[Any]:
        return [u for reps in self.plan.values() for rep in reps for u in rep.values()]


class Runner:
    """Runs validated `ClaimSpec`s; models, measurements and worker processes are shared by every claim."""

    def __init__(self, options: RunOptions, on_result: Callable[[ClaimResult], None] | None = None) -> None:
        from mechcheck.cache import ModelCache
        from mechcheck.engine import Engine, default_workers
        from mechcheck.measurements import MeasurementStore
        from mechcheck.models import choose_device, pin_mkl_threads
        from mechcheck.recipes import BuildContext

        pin_mkl_threads()
        self.options = options
        self.device = choose_device(options.device)
        workers = options.workers or default_workers()
        if self.device.startswith("cuda") and options.workers is None:
            workers = 1  # one GPU: one process drives it
        self.build = BuildContext(ModelCache(options.cache_dir), self.device, options.console, options.train_threads)
        self.store = MeasurementStore(options.cache_dir)
        self.engine = Engine(self.build, self.store, workers, options.threads or 1, on_event=self._on_event)
        self.on_result = on_result
        self.on_event: Callable[[Any], None] | None = None
        self.trained: set[str] = set()
        self._facts: dict[str, dict[str, Any]] = {}  # model key -> `_model_facts` (reading it hashes the weights)

    @property
    def workers(self) -> int:
        return self.engine.workers

    @property
    def env(self) -> dict[str, Any]:
        """Where measurements are computed: part of every unit's key (other hardware gives other bits)."""
        return {"device": self.device.split(":")[0], "threads": self.options.threads or 1}

    def _on_event(self, event) -> None:
        if event.what == "end" and event.computed and event.label.startswith("build "):
            self.trained.add(event.key)
        if self.on_event:
            self.on_event(event)

    def close(self, cancel: bool = False) -> None:
        self.engine.close(cancel)

    # ---------------------------------------------------------------------------------------- running

    def run_claim(self, claim) -> ClaimResult:
        """Evaluate one claim; never raises for problems of the claim itself."""
        return self.run_claims([claim])[0]

    def run_claims(self, claims) -> list[ClaimResult]:
        """Evaluate `claims`, sharing all work between them; `on_result` is called as each one is judged."""
        prepared = [self._prepare(claim) for claim in claims]
        for i, p in enumerate(prepared):
            if not p.done:
                self.engine.submit(p.units, priority=i)
        results = []
        for p in prepared:
            if not p.done:
                self._judge(p)
            p.result.durations["total"] = round(time.perf_counter() - p.t0, 2)
            if self.on_result:
                self.on_result(p.result)
            results.append(p.result)
        return results

    def _prepare(self, claim) -> _Prepared:
        seeds = self.options.seeds or claim.seeds
        result = ClaimResult(id=claim.id, file=claim.file, statement=claim.statement, outcome="error",
                             source=dict(claim.source), profile=claim.profile, seeds=list(range(seeds)),
                             spec=_spec_dict(claim))
        p = _Prepared(claim, result, time.perf_counter())
        try:
            self._plan(p, seeds)
        except Exception as exc:  # noqa: BLE001 - classified below; other claims go on
            _fail(result, exc, "prepare")
            p.done = True
        result.durations["prepare"] = round(time.perf_counter() - p.t0, 2)
        return p

    def _plan(self, p: _Prepared, seeds: int) -> None:
        from mechcheck.experiments import PlanContext
        from mechcheck.interventions.sites import shape_of_config
        from mechcheck.measurements import data_ref
        from mechcheck.models import CheckpointError
        from mechcheck.recipes import is_fixed, make_task, model_config, model_ref, replicates
        from mechcheck.registry import EXPERIMENTS
        from mechcheck.spec import shape_errors

        claim = p.claim
        roles, shapes = {}, {}
        task = make_task(claim.data.task)
        for role, spec in claim.models.items():
            try:
                # An untrained (loaded) or fixed-seed model is the same for every seed: one replicate, not n
                # copies of it, so that no interval pretends to have seen seed-to-seed variation.
                refs = [model_ref(spec, seed, self.build) for seed in range(replicates(spec, seeds))]
                config = model_config(refs[0], self.build)
            except CheckpointError as exc:
                where = _failing_load(spec)
                raise SpecError(str(exc), file=where.file or claim.file, line=where.source_line,
                                field_path=where.source_field or f"models.{role}") from exc
            shapes[role] = shape_of_config(config)
            vocab = int(config.get("vocab_size", 0))
            if task.vocab_size > vocab:
                raise SpecError(f"the eval task '{claim.data.task.name}' uses {task.vocab_size} token ids but model "
                                f"'{role}' has a vocabulary of {vocab}: they were not built for the same task",
                                file=claim.file, field_path="data.task")
            fixed = is_fixed(spec)
            roles[role] = {"refs": refs, "scope": "checkpoint" if fixed else "recipe", "spec": spec}
            if spec.replaces and fixed and seeds > 1:
                p.result.notes.append(
                    f"model '{role}' is one checkpoint ({spec.description.removeprefix('--override of ')}) in "
                    f"place of a {spec.replaces}: its intervals no longer cover seed-to-seed variation; give "
                    "one checkpoint per replicate (a {i} pattern) to keep the claim about the recipe")
        errors = shape_errors(claim, shapes)
        if errors:
            raise errors[0]
        data = data_ref(claim.data.task, claim.data.n, claim.data.split, claim.data.seed)
        batch = data.batch()
        ctx = PlanContext(roles={r: v["refs"] for r, v in roles.items()}, data=data, batch=batch,
                          seed=claim.data.seed, env=self.env, shapes=shapes, specs=dict(claim.models),
                          build=self.build)
        entry = EXPERIMENTS.get(claim.experiment.name)
        p.plan = entry.func(ctx, **entry.with_defaults(dict(claim.experiment.args)))
        p.ctx, p.roles = ctx, roles
        p.result.models = [ModelRun(role, v["spec"].name, ref.seed, ref.key, v["spec"].recipe, True, *shapes[role])
                           for role, v in roles.items() for ref in v["refs"]]

    def _judge(self, p: _Prepared) -> None:
        from mechcheck.checks import CheckContext, run_check
        from mechcheck.registry import EXPERIMENTS
        from mechcheck.results import CheckResult

        claim, result = p.claim, p.result
        t1 = time.perf_counter()
        phase = "measure"
        try:
            failures = self.engine.wait([u.key for u in p.units])
            if failures:
                _fail_work(result, next(iter(failures.values())))
                return
            meas = self._assemble(p)
            result.durations["measure"] = round(time.perf_counter() - t1, 2)
            phase = "checks"
            t2 = time.perf_counter()
            entry = EXPERIMENTS.get(claim.experiment.name)
            contexts = [CheckContext(meas, claim.file, check.line, f"expect[{i}].{check.name}", i,
                                     n_boot=self.options.n_boot) for i, check in enumerate(claim.expect)]
            self._requests(p, meas, entry, contexts)
            checks = []
            for ctx, check in zip(contexts, claim.expect):
                try:
                    checks.append(run_check(ctx, check.name, dict(check.args)))
                except SpecError as exc:  # e.g. a head index beyond this model: this check is an error
                    checks.append(CheckResult(check.name, dict(check.args), "error", str(exc)))
            result.checks = checks
            result.experiment = entry.meta["summary"](meas) if entry.meta.get("summary") else {
                "name": claim.experiment.name, "args": dict(meas.args)}
            result.durations["checks"] = round(time.perf_counter() - t2, 2)
            result.outcome = combine_outcomes([c.outcome for c in checks])
            failing = [c for c in checks if c.outcome != "passed"]
            result.reason = failing[0].message if failing else ""
        except Exception as exc:  # noqa: BLE001 - a harness problem of this claim
            _fail(result, exc, phase)
        finally:
            self._model_info(p)

    def _requests(self, p: _Prepared, meas, entry, contexts) -> None:
        """Have the units computed that the checks request, and attach them to the measurements."""
        from mechcheck.checks import check_requests

        wanted = []
        for ctx, check in zip(contexts, p.claim.expect):
            for req in check_requests(ctx, check.name, dict(check.args)):
                make = entry.meta.get("request")
                if make is None:
                    raise RuntimeError(f"check '{check.name}' asks for a {req.kind!r} unit, which experiment "
                                       f"'{p.claim.experiment.name}' cannot provide")
                ref = p.roles[req.role]["refs"][req.replicate]
                wanted.append((req, make(p.ctx, meas.args, req, ref)))
        if not wanted:
            return
        self.engine.submit([u for _, u in wanted], priority=-1)
        failures = self.engine.wait([u.key for _, u in wanted])
        if failures:
            raise RuntimeError(f"a unit a check asked for failed: {next(iter(failures.values()))}")
        for req, unit in wanted:
            meas.roles[req.role].extra[req.replicate][req.name] = self.store.get(unit.key).arrays

    def _assemble(self, p: _Prepared):
        from mechcheck.measurements import Measurements, RoleData
        from mechcheck.registry import EXPERIMENTS

        claim, batch = p.claim, p.ctx.batch
        roles = {}
        for role, reps in p.plan.items():
            info = p.roles[role]
            arrays, metas = [], []
            for rep in reps:
                merged, meta = {}, {}
                for name, unit in rep.items():
                    got = self.store.get(unit.key)
                    if got is None:
                        raise RuntimeError(f"{unit.label}: missing from the measurement store after it was computed")
                    merged.update({f"{name}/{k}": v for k, v in got.arrays.items()})
                    # the facts of the unit's models too: a summary may report them (sample_efficiency's
                    # variants are models of no role, so they appear nowhere else in the report)
                    meta[name] = {**got.meta, "models": [self._model_facts(m) for m in unit.models]}
                arrays.append(merged)
                metas.append(meta)
            L, H = p.ctx.shapes[role]
            roles[role] = RoleData(info["spec"].name, info["spec"].recipe, info["scope"], L, H,
                                   [r.seed for r in info["refs"]], [r.key for r in info["refs"]], arrays,
                                   [{} for _ in reps], metas)
        args = EXPERIMENTS.get(claim.experiment.name).with_defaults(dict(claim.experiment.args))
        return Measurements(claim.experiment.name, args, roles, len(batch), len(batch.candidates),
                            {k: v.copy() for k, v in batch.labels.items()}, dict(batch.groups), batch.answer_pos.copy(),
                            claim.data.seed)

    def _model_facts(self, ref) -> dict[str, Any]:
        """Key, whether it came from the cache, and the training facts and weights' hash its cache entry holds
        (read once per run: a cache read verifies the weights' hash)."""
        if ref.key in self._facts:
            return dict(self._facts[ref.key])
        facts: dict[str, Any] = {"key": ref.key, "cached": ref.key not in self.trained}
        hit = self.build.cache.get(ref.key) if ref.spec.recipe != "load" else None
        if hit is not None:
            _, entry = hit
            facts.update({k: v for k, v in entry.get("info", {}).items() if k != "history"})
            facts["weights_sha256"] = entry["files"].get("model.safetensors")
        elif ref.spec.recipe == "load":
            facts.update(self._load_facts(ref.spec, ref.seed))
        if hit is not None or ref.spec.recipe == "load":  # else a later claim of this run may still build it
            self._facts[ref.key] = facts
        return dict(facts)

    def _model_info(self, p: _Prepared) -> None:
        """Training / load facts and the weights' hash of every replicate, from the model cache (no loading)."""
        for run in p.result.models:
            run.cached = run.recipe != "load" and run.key not in self.trained
            hit = self.build.cache.get(run.key) if run.recipe != "load" else None
            spec = p.roles[run.role]["spec"]
            if hit is not None:
                _, meta = hit
                run.info = {k: v for k, v in meta.get("info", {}).items() if k != "history"}
                run.info["weights_sha256"] = meta["files"].get("model.safetensors")
                if spec.parent is not None:
                    run.info["parent" if spec.recipe == "finetune" else "config_from"] = spec.parent.name
            elif run.recipe == "load":
                run.info = self._load_facts(spec, run.seed)
            else:
                run.info = {"note": "not in the model cache: the measurements came from the measurement store"}


    def _load_facts(self, spec, seed: int) -> dict[str, Any]:
        from mechcheck.loading import load_facts

        try:
            return load_facts(spec, seed, self.build)
        except Exception as exc:  # noqa: BLE001 - a checkpoint that vanished: say so, the claim says why
            return {"source": spec.path or f"hub:{spec.hub}", "note": f"not readable: {exc}"}


def _fail(result: ClaimResult, exc: BaseException, phase: str) -> None:
    if isinstance(exc, ClaimSkipped):
        result.outcome, result.reason = "skipped", str(exc)
    elif isinstance(exc, SpecError):
        result.outcome, result.reason = "error", str(exc)
    else:
        result.outcome = "error"
        result.reason = f"{phase} failed: {type(exc).__name__}: {exc}".splitlines()[0]
        result.traceback = traceback.format_exc()


def _fail_work(result: ClaimResult, failure) -> None:
    result.outcome = "skipped" if failure.category == "skipped" else "error"
    text = str(failure)
    result.reason = text.splitlines()[0] if text else "a build or measurement failed"
    result.traceback = failure.traceback


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


def default_threads() -> int | None:
    """MECHCHECK_THREADS if set: torch threads per worker while measuring."""
    value = os.environ.get("MECHCHECK_THREADS")
    return int(value) if value else None
