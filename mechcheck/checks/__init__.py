"""Registered expectations: a claim's `expect:` entries, each judged on measurements with statistics.

A check is a pure function of `Measurements` (`mechcheck.measurements`): ``check(ctx, **args) -> CheckResult``,
registered in `CHECKS` with its parameters and the experiments whose measurements it reads. It never runs a
model. What it needs beyond the experiment's units (a joint ablation of the heads it selected, random control
sets) it declares with ``requests=fn(ctx, **args) -> [Request]``; the runner has those units computed (once,
cached) before the check is judged, and the check reads them with `CheckContext.extra`.

Every check returns an effect with a 95 % interval from `mechcheck.stats` and judges it against its threshold:
the whole interval beyond the threshold passes, the whole interval short of it fails, anything else is
inconclusive. Every check that says "X matters" reports a matched control.

Modules: behaviour (clean accuracy), ablation (heads and layers), decoding, geometry, efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck.errors import SpecError
from mechcheck.measurements import Measurements, Request, RoleData
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["CheckContext", "run_check", "check_requests", "MODEL", "THAN"]

MODEL = Param("model", "model", required=True, doc="role of the model in the claim's `models`")
THAN = Param("than", "model", required=True, doc="role of the model it is compared with")


@dataclass
class CheckContext:
    """What a check sees: the measurements, where the check was written (for errors), and its index in the
    claim's `expect` (its requests are named under it, so two checks never read each other's)."""

    meas: Measurements
    claim_file: str = ""
    line: int | None = None
    field_path: str = ""
    index: int = 0
    level: float = 0.95
    #: resamples of the within-replicate bootstraps (per-replicate statistics)
    n_boot: int = 200

    @property
    def seed(self) -> int:
        return self.meas.seed

    def error(self, message: str, **kw: Any) -> SpecError:
        return SpecError(message, file=self.claim_file, line=self.line, field_path=self.field_path, **kw)

    def role(self, name: str) -> RoleData:
        try:
            return self.meas.roles[name]
        except KeyError:
            raise self.error(f"model '{name}' has no measurements from experiment '{self.meas.experiment}' "
                             f"(measured: {', '.join(self.meas.roles)})", allowed=tuple(self.meas.roles)) from None

    def request(self, role: str, replicate: int, name: str, kind: str, **args: Any) -> Request:
        return Request.of(role, replicate, f"{self.index}:{name}", kind, **args)

    def extra(self, role: str, replicate: int, name: str) -> dict[str, np.ndarray]:
        """The arrays of this check's request `name` for that replicate (computed before judging)."""
        got = self.role(role).extra[replicate].get(f"{self.index}:{name}") if self.role(role).extra else None
        if got is None:
            raise RuntimeError(f"check request {name!r} for '{role}' replicate {replicate} was not computed")
        return got


def run_check(ctx: CheckContext, name: str, args: dict[str, Any]) -> CheckResult:
    """Judge the registered check `name` with `args` (already validated and completed with defaults)."""
    entry = CHECKS.get(name)
    result: CheckResult = entry.func(ctx, **args)
    result.args = dict(args)
    return result


def check_requests(ctx: CheckContext, name: str, args: dict[str, Any]) -> list[Request]:
    """What check `name` needs computed beyond the experiment's measurements (often nothing)."""
    fn = CHECKS.get(name).meta.get("requests")
    return list(fn(ctx, **args)) if fn else []


def metric_of(ctx: CheckContext, metric: str | None) -> str:
    """The metric a check uses: its own `metric`, else the experiment's."""
    return metric or ctx.meas.args.get("metric", "accuracy")
