"""Judging a check on hand-made `Measurements` in unit tests, and the agreement every verdict must keep with its
interval."""

from __future__ import annotations

from mechcheck.checks import CheckContext, run_check
from mechcheck.registry import CHECKS, load_builtins


def judge(meas, name, **args):
    """The `CheckResult` of check `name` with `args` (completed with its defaults) on `meas`."""
    load_builtins()
    return run_check(CheckContext(meas, claim_file="c.yaml"), name, CHECKS.get(name).with_defaults(args))


def agrees(got, value, direction=">="):
    """The verdict is what its interval says against `value`: passed iff wholly beyond, failed iff wholly short."""
    est = got.effect
    assert est.lo <= est.estimate <= est.hi
    if direction == ">=":
        assert (got.outcome == "passed") == (est.lo > value) and (got.outcome == "failed") == (est.hi < value)
    else:
        assert (got.outcome == "passed") == (est.hi < value) and (got.outcome == "failed") == (est.lo > value)
