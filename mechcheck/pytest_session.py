"""What one pytest session of claims holds: the validated suite, the runner, the results, the report.

The pytest plugin (`mechcheck.pytest_plugin`) keeps one `ClaimSession` per pytest config; its nodes ask it for
the claims of a file (validating the whole suite once) and for a claim's result (running it once), and its
session hooks have it write the report, or, on a pytest-xdist worker, hand the results to the controller.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from mechcheck.errors import SpecError, SpecErrors

__all__ = ["ClaimSession", "ClaimCollectError", "ClaimHarnessError", "is_claim_file", "WORKER_KEY"]

WORKER_KEY = "mechcheck_report"  # what an xdist worker sends the controller (a RunReport as JSON)


class ClaimHarnessError(pytest.fail.Exception):
    """Raised in set-up when a claim or a check ended as `error`.

    pytest renders set-up errors with `Item._repr_failure_py`, not `repr_failure`; a `pytest.fail` exception
    with ``pytrace=False`` is the public way to get the one-line reason there instead of a traceback.
    """


def _base(config: pytest.Config) -> Path:
    """What `mechcheck_paths` are relative to: the rootdir when an ini file (or --rootdir) sets it; without
    one pytest takes the common ancestor of the arguments (``claims/`` itself for ``pytest claims/``), so
    then the directory pytest was started in."""
    if config.inipath is not None or config.getoption("rootdir", None):
        return config.rootpath.absolute()
    return config.invocation_params.dir.absolute()


def _roots(config: pytest.Config) -> list[Path]:
    return [_base(config) / p for p in config.getini("mechcheck_paths")]


def is_claim_file(config: pytest.Config, path: Path) -> bool:
    """A YAML file below a configured path (not in a hidden or fixtures/ folder) with fixtures/ of its own."""
    if path.suffix not in (".yaml", ".yml"):
        return False
    from mechcheck.spec import find_fixtures_dir

    path = path.absolute()
    for root in _roots(config):
        if path == root:
            break
        if path.is_relative_to(root) and not any(
                d.startswith(".") or d == "fixtures" for d in path.relative_to(root).parts[:-1]):
            break
    else:
        return False
    fixtures = find_fixtures_dir(path)
    return fixtures is not None and fixtures.parent.is_relative_to(_base(config))


def _shown(path: Path) -> str:
    """How a claim file is named in errors and the report: relative to the working directory when below it."""
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


class ClaimCollectError(Exception):
    """A claim file that does not validate (shown as the one-line spec errors)."""


class ClaimSession:
    """Per session: the validated suite, the runner, the results of the claims that ran, worker reports."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.profile = config.getoption("--mechcheck-profile")
        self._suite: tuple[dict[Path, list], dict[Path, list[SpecError]]] | None = None
        self.runner = None
        self.report = None  # started when the first claim runs
        self.results: dict[str, Any] = {}  # claim id -> ClaimResult, in the order they ran
        self.worker_reports: list[Any] = []  # xdist controller: what the workers sent
        self.written: dict[str, Path] = {}

    # -- the suite

    def claims_of(self, path: Path) -> list:
        """The claims of claim file `path`; raises `ClaimCollectError` with its problems."""
        if self._suite is None:
            self._suite = self._validate()
        claims, errors = self._suite
        key = path.absolute()
        if key in errors:
            found = sorted(errors[key], key=lambda e: (e.file or "", e.line or 0))
            raise ClaimCollectError("\n".join(str(e) for e in found))
        return claims.get(key, [])

    def _validate(self) -> tuple[dict[Path, list], dict[Path, list[SpecError]]]:
        from mechcheck.spec import discover

        files = [p for p in discover([r for r in _roots(self.config) if r.exists()])
                 if is_claim_file(self.config, p)]
        shown = {_shown(p): p.absolute() for p in files}
        claims: dict[Path, list] = {p: [] for p in shown.values()}
        errors: dict[Path, list[SpecError]] = {}
        try:
            loaded = self._load(list(shown))
        except SpecErrors as exc:
            for e in exc.errors:
                if e.file in shown:
                    errors.setdefault(shown[e.file], []).append(e)
            # A file without problems of its own is loaded alone: it may still depend on a broken fixture
            # file, or the profile may be unknown, and those problems are then shown on it.
            for name, path in shown.items():
                if path not in errors:
                    try:
                        claims[path] = self._load([name])
                    except SpecErrors as alone:
                        errors[path] = alone.errors
            return claims, errors
        for claim in loaded:
            claims[shown[claim.file]].append(claim)
        return claims, errors

    def _load(self, names: list[str]) -> list:
        from mechcheck.spec import load_claims

        try:
            return load_claims(names, profile=self.profile)
        except SpecErrors as exc:
            for e in exc.errors:
                if e.file is None and e.field_path == "profile":  # it came from --mechcheck-profile
                    e.file = "<command line>"
            raise
        except SpecError as exc:  # e.g. a malformed profile name
            exc.file = exc.file or "<command line>"
            raise SpecErrors([exc]) from None

    # -- running

    def options(self):
        from mechcheck.runner import RunOptions, default_threads

        config = self.config
        cache = config.getoption("--mechcheck-cache-dir")
        workers = config.getoption("--mechcheck-workers")
        if workers is None and hasattr(config, "workerinput"):  # a pytest-xdist worker: xdist uses the cores
            workers = 1
        return RunOptions(profile=self.profile, device=config.getoption("--mechcheck-device"),
                          cache_dir=Path(cache) if cache else None, threads=default_threads(),
                          seeds=config.getoption("--mechcheck-seeds"), workers=workers)

    def run(self, claim):
        """The claim's result, running it the first time it is asked for."""
        if claim.id in self.results:
            return self.results[claim.id]
        if self.runner is None:
            from mechcheck.runner import Runner, new_report

            options = self.options()
            try:
                runner = Runner(options)
            except ValueError as exc:  # e.g. --mechcheck-device names no device here
                raise ClaimHarnessError(f"{claim.id}: error: --mechcheck-device: {exc}", pytrace=False) from None
            self.runner = runner
            self.config.add_cleanup(runner.close)
            self.report = new_report(options, self._argv(), Path.cwd(), runner.device, runner.workers)
            self.report.cache_dir = str(runner.build.cache.root)
        result = self.runner.run_claim(claim)
        self.results[claim.id] = result
        return result

    def _argv(self) -> list[str]:
        return ["pytest", *self.config.invocation_params.args]

    # -- the report

    def finish(self) -> None:
        """Write the report of the claims that ran (an xdist worker hands its results to the controller)."""
        from mechcheck.report import write_report
        from mechcheck.runner import new_report

        config = self.config
        if hasattr(config, "workerinput"):
            if self.report is not None:
                self._stamp(self.report, list(self.results.values()))
                config.workeroutput[WORKER_KEY] = json.dumps(self.report.to_dict())
            return
        if self.report is not None:
            report = self.report
            claims = list(self.results.values())
        elif self.worker_reports:
            first = self.worker_reports[0]
            report = new_report(self.options(), self._argv(), Path.cwd(), first.device,
                                sum(r.workers for r in self.worker_reports))
            report.started = min(r.started for r in self.worker_reports)
            report.threads, report.cache_dir = first.threads, first.cache_dir
            seen: dict[str, Any] = {}
            for r in self.worker_reports:
                for c in r.claims:
                    seen.setdefault(c.id, c)  # a claim split across workers was judged by each: keep one
            claims = list(seen.values())
        else:
            return  # no claim ran: write nothing (a plain `pytest tests/` must leave no reports/)
        self._stamp(report, claims)
        out = Path(config.getoption("--mechcheck-report-dir")) / report.run_id
        self.written = write_report(report, out)

    @staticmethod
    def _stamp(report, claims: list) -> None:
        report.claims = sorted(claims, key=lambda c: c.file)  # the order of `mechcheck run` (files sorted)
        report.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
