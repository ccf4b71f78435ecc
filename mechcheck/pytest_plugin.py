"""pytest plugin: `pytest claims/` runs the project's claims as tests, one test item per check.

**What is collected.** Only YAML files below the paths of the ini option ``mechcheck_paths`` (default
``claims``; hidden and ``fixtures/`` folders below them are skipped), and of those only the ones whose
nearest ``fixtures/`` above them (`mechcheck.spec.find_fixtures_dir`) lies in the project. Paths are relative
to the rootdir, or, when no ini file sets one, to the directory pytest was started in (pytest's rootdir is
then just the common ancestor of the arguments). Installing mechcheck therefore never makes pytest read the
YAML of an unrelated project, even one with a ``claims/`` folder; ``-p no:mechcheck`` turns the plugin off.

**Validation.** At collection the whole suite (every claim file under the configured paths) is validated
together with `load_claims`, as ``mechcheck run`` does, so a claim id used in two files is an error. A file
with problems is a collection error showing the one-line spec errors, no traceback.

**Nodes.** ``ClaimFile`` (the YAML file) -> ``ClaimNode`` (the claim, named by its id) -> ``CheckItem`` (one
per ``expect:`` entry, named ``expect<i>-<check>[<args written>]``), so ``-k`` and JUnit show which check
failed. The claim runs once, when its first selected check is set up (the session's `Runner` shares models and
measurements across claims); each check item then reports its own outcome: passed -> passed; failed and
inconclusive -> failed (an inconclusive check is not a pass); error -> error; skipped -> skipped. A failure
shows the check's message, effect, CI and threshold, not a traceback. A claim that ends as error or skipped
before its checks ran errors (or skips) every one of its check items with the reason. JUnit gets the
mechcheck outcome, effect, CI and threshold of each check as testcase properties.

**Markers.** A claim's ``tags`` become markers of its items (registered, so ``--strict-markers`` accepts
them): ``pytest claims/ -m ablation``. ``-k`` matches tags too, and claim ids and file names as usual.

**Report.** At the end of the session the claims that ran are written as the report ``mechcheck run``
writes (report.json, report.md, figures) to ``--mechcheck-report-dir/<run id>/`` (default ``reports``,
relative to the directory pytest was started in); nothing is written when no claim ran.

**pytest-xdist** (``pytest -n 2 claims/``): each xdist worker runs its claims with one engine worker process
of its own (the xdist workers already use the cores), sharing the model and measurement caches safely
(per-key locks). Each worker sends its results to the controller, which writes **one** report for the whole
session. Use ``--dist loadscope`` to keep the checks of a claim on one worker; with the default ``--dist
load`` a claim whose checks land on two workers is judged by both (its measurements are still computed
once, through the shared cache, and the report keeps one result).

Options: --mechcheck-profile, --mechcheck-seeds, --mechcheck-device, --mechcheck-cache-dir,
--mechcheck-workers, --mechcheck-report-dir. The session's state (suite, runner, results, report) lives in
`mechcheck.pytest_session`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from mechcheck.pytest_session import (
    WORKER_KEY, ClaimCollectError, ClaimHarnessError, ClaimSession, is_claim_file,
)

__all__ = ["ClaimFile", "ClaimNode", "CheckItem"]

_STATE = pytest.StashKey[ClaimSession]()
#: tags that can be pytest markers (registered as ``name: help`` lines, used in ``-m`` expressions)
_MARKER_NAME = re.compile(r"^[^\W_][\w.+-]*$")
_NAME_ARGS = 60  # characters of a check's arguments shown in its item name


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mechcheck", "mechcheck claims")
    group.addoption("--mechcheck-profile", default="ci", help="profile of the claims to run (default ci)")
    group.addoption("--mechcheck-seeds", type=int, default=None, help="override every claim's seeds")
    group.addoption("--mechcheck-device", default="auto", help="auto, cpu, cuda, cuda:N")
    group.addoption("--mechcheck-cache-dir", default=None, help="model cache directory")
    group.addoption("--mechcheck-workers", type=int, default=None,
                    help="worker processes for training and measuring (default: the cores; 1 under xdist)")
    group.addoption("--mechcheck-report-dir", default="reports",
                    help="the report of the claims that ran goes to DIR/<run id>/ (default reports)")
    parser.addini("mechcheck_paths", type="args", default=["claims"],
                  help="where claim files are collected, relative to the rootdir (default: claims)")


def pytest_configure(config: pytest.Config) -> None:
    for flag in ("seeds", "workers"):
        value = config.getoption(f"--mechcheck-{flag}")
        if value is not None and value < 1:
            raise pytest.UsageError(f"--mechcheck-{flag} must be at least 1")
    config.stash[_STATE] = ClaimSession(config)


# ---------------------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if is_claim_file(parent.config, file_path):
        return ClaimFile.from_parent(parent, path=file_path)
    return None


class ClaimFile(pytest.File):
    """One claim file; its claim comes from the validation of the whole suite."""

    def collect(self):
        claims = self.config.stash[_STATE].claims_of(self.path)
        for claim in claims:
            yield ClaimNode.from_parent(self, name=claim.id, claim=claim)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ClaimCollectError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


class CheckNotPassed(Exception):
    """Raised by a check item whose check ended failed or inconclusive."""


class ClaimNode(pytest.Collector):
    """One claim: runs it when its first selected check is set up; its checks are its items."""

    def __init__(self, *, claim, **kwargs) -> None:
        super().__init__(**kwargs)
        self.claim = claim
        self.result = None
        for tag in claim.tags:
            self.extra_keyword_matches.add(tag)  # -k finds tags whatever their spelling
            if _MARKER_NAME.match(tag) and tag not in ("and", "or", "not"):
                if not any(line.split(":")[0].strip() == tag for line in self.config.getini("markers")):
                    self.config.addinivalue_line("markers", f"{tag}: mechcheck claims tagged '{tag}'")
                self.add_marker(tag)

    def collect(self):
        for i, check in enumerate(self.claim.expect):
            yield CheckItem.from_parent(self, name=_check_name(i, check), index=i)

    def setup(self) -> None:
        self.result = self.config.stash[_STATE].run(self.claim)
        if self.result.outcome == "error" and not self.result.checks:
            raise ClaimHarnessError(f"{self.claim.id}: error: {self.result.reason}", pytrace=False)
        if self.result.outcome == "skipped" and not self.result.checks:
            pytest.skip(f"{self.claim.id}: {self.result.reason}")

    def reportinfo(self):
        return self.path, None, f"claim {self.claim.id}"


def _check_name(i: int, check) -> str:
    """``expect<i>-<check>[arg=value,...]`` with the arguments the claim wrote (not the defaults filled in).

    pytest reads everything from the first ``[`` of a name to its final ``]`` as parameters (JUnit, node ids
    given on the command line), so the arguments go there, as a parametrized test's do, and nothing before.
    """
    written = [k for k in check.lines if "[" not in k and k in check.args]
    args = ",".join(f"{k}={_compact(check.args[k])}" for k in written).replace("::", ":")
    if len(args) > _NAME_ARGS:
        args = args[:_NAME_ARGS - 3] + "..."
    return f"expect{i}-{check.name}" + (f"[{args}]" if args else "")


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)


class CheckItem(pytest.Item):
    """One check of a claim: its outcome is the check's, read from the claim's result."""

    def __init__(self, *, index: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.check = None

    @property
    def claim(self):
        return self.parent.claim

    def setup(self) -> None:
        result = self.parent.result
        if self.index >= len(result.checks):  # the claim ended without this check's verdict
            raise ClaimHarnessError(f"{self.claim.id}: {result.outcome}: {result.reason}", pytrace=False)
        self.check = check = result.checks[self.index]
        self.user_properties.extend(_properties(check))
        if check.outcome == "error":
            raise ClaimHarnessError(f"{self.claim.id} {self.name}: error: {check.message}", pytrace=False)
        if check.outcome == "skipped":
            pytest.skip(f"{self.claim.id} {self.name}: {check.message}")

    def runtest(self) -> None:
        if self.check.outcome != "passed":
            raise CheckNotPassed(self.check.outcome)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckNotPassed) and self.check is not None:
            return _failure_text(self.claim, self.name, self.check)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        line = self.claim.expect[self.index].line
        return self.path, (line - 1) if line else None, f"claim {self.claim.id} {self.name}"


def _properties(check) -> list[tuple[str, str]]:
    """JUnit testcase properties: the verdict in mechcheck's words (inconclusive is not failed) and numbers."""
    props = [("mechcheck_outcome", check.outcome)]
    if check.effect is not None:
        e = check.effect
        props += [("effect", f"{e.estimate:.6g}"), ("ci", "none" if e.insufficient else f"[{e.lo:.6g}, {e.hi:.6g}]")]
    if check.threshold is not None:
        props.append(("threshold", f"{check.direction} {check.threshold:g}"))
    return props


def _failure_text(claim, name: str, check) -> str:
    lines = [f"{claim.id} {name}: {check.outcome}",
             f"  claim:     {' '.join(claim.statement.split())}",
             f"  message:   {check.message}"]
    if check.effect is not None:
        e = check.effect
        seeds = f"{e.n_seeds} seed{'s' if e.n_seeds != 1 else ''}"
        ci = f"no interval: {e.insufficient}" if e.insufficient else f"{e.level:.0%} CI [{e.lo:.3f}, {e.hi:.3f}]"
        lines.append(f"  effect:    {e.estimate:.3f}, {ci} (n={e.n}, {seeds})")
    if check.threshold is not None:
        side = "at or above" if check.direction == ">=" else "at or below"
        lines.append(f"  threshold: {check.direction} {check.threshold:g} (passes when the whole CI lies {side} it)")
    if check.outcome == "inconclusive":
        lines.append("  (inconclusive: the interval straddles the threshold; more seeds or examples may decide it)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ session hooks


def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[_STATE].finish()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """pytest-xdist controller: keep the report a worker sent when it finished."""
    from mechcheck.results import RunReport

    data = getattr(node, "workeroutput", {}).get(WORKER_KEY)
    if data:
        node.config.stash[_STATE].worker_reports.append(RunReport.from_dict(json.loads(data)))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    written = config.stash[_STATE].written
    if written:
        terminalreporter.write_line(f"mechcheck report: {written['markdown']} (and report.json beside it)")

