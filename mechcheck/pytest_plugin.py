"""pytest plugin: `pytest claims/` collects every claim file as a test item (pytest's YAML-test recipe).

Outcomes map onto pytest's: passed -> passed; failed and inconclusive -> failed (an inconclusive claim is not
a pass); error -> an *error* in set-up (the claim ran into a harness or set-up problem); skipped -> skipped.
A failure shows the effect, its CI and the threshold of every check, not a traceback.

Only YAML files below a directory named ``claims`` are collected, so the plugin never touches other YAML.
Options: --mechcheck-profile, --mechcheck-seeds, --mechcheck-device, --mechcheck-cache-dir,
--mechcheck-workers. Under pytest-xdist (``pytest -n 2 claims/``) each xdist worker runs its claims with one
worker process of its own (the xdist workers already use the cores); the model and measurement caches are
shared safely (per-key locks).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mechcheck.errors import SpecError, SpecErrors

__all__ = ["ClaimFile", "ClaimItem"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mechcheck", "mechcheck claims")
    group.addoption("--mechcheck-profile", default="ci", help="profile of the claims to run (default ci)")
    group.addoption("--mechcheck-seeds", type=int, default=None, help="override every claim's seeds")
    group.addoption("--mechcheck-device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.addoption("--mechcheck-cache-dir", default=None, help="model cache directory")
    group.addoption("--mechcheck-workers", type=int, default=None,
                    help="worker processes for training and measuring (default: the cores; 1 under xdist)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if file_path.suffix in (".yaml", ".yml") and "claims" in file_path.parts[:-1]:
        return ClaimFile.from_parent(parent, path=file_path)
    return None


class ClaimCollectError(Exception):
    """A claim file that does not validate (shown as the one-line spec errors)."""


class ClaimFile(pytest.File):
    def collect(self):
        from mechcheck.spec import load_claims

        try:
            claims = load_claims([self.path], profile=self.config.getoption("--mechcheck-profile"))
        except (SpecErrors, SpecError) as exc:
            raise ClaimCollectError(str(exc)) from None
        for claim in claims:
            yield ClaimItem.from_parent(self, name=claim.id, claim=claim)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimCollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class ClaimNotPassed(Exception):
    """Raised by an item whose claim ended failed or inconclusive."""


class ClaimHarnessError(pytest.fail.Exception):
    """Raised in set-up when a claim ended as `error`.

    pytest renders set-up errors with `Item._repr_failure_py`, not `repr_failure`; a `pytest.fail` exception
    with ``pytrace=False`` is the public way to get the one-line reason there instead of a traceback.
    """


def _runner(config: pytest.Config):
    runner = getattr(config, "_mechcheck_runner", None)
    if runner is None:
        from mechcheck.runner import RunOptions, Runner, default_threads

        cache = config.getoption("--mechcheck-cache-dir")
        workers = config.getoption("--mechcheck-workers")
        if workers is None and hasattr(config, "workerinput"):  # a pytest-xdist worker: xdist uses the cores
            workers = 1
        options = RunOptions(profile=config.getoption("--mechcheck-profile"),
                             device=config.getoption("--mechcheck-device"),
                             cache_dir=Path(cache) if cache else None, threads=default_threads(),
                             seeds=config.getoption("--mechcheck-seeds"), workers=workers)
        runner = Runner(options)
        config._mechcheck_runner = runner  # shared by all items: models and measurements reused per session
        config.add_cleanup(runner.close)
    return runner


class ClaimItem(pytest.Item):
    def __init__(self, *, claim, **kwargs) -> None:
        super().__init__(**kwargs)
        self.claim = claim
        self.result = None

    def setup(self) -> None:
        self.result = _runner(self.config).run_claim(self.claim)
        if self.result.outcome == "error":
            raise ClaimHarnessError(f"{self.claim.id}: error: {self.result.reason}", pytrace=False)
        if self.result.outcome == "skipped":
            pytest.skip(self.result.reason)

    def runtest(self) -> None:
        if self.result.outcome != "passed":
            raise ClaimNotPassed(self.result.outcome)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimHarnessError):
            return str(excinfo.value)
        if isinstance(excinfo.value, ClaimNotPassed) and self.result is not None:
            lines = [f"{self.claim.id}: {self.result.outcome}", f"  claim: {self.claim.statement.strip()}"]
            for c in self.result.checks:
                lines.append(f"  [{c.outcome}] {c.name}: {c.message}")
            return "\n".join(lines)
        if isinstance(excinfo.value, ClaimCollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"claim {self.claim.id}"
