"""Compare two runs check by check: did a mechanism break between a baseline and a new checkpoint?

Checks are matched by a stable id (`check_id`): the claim id, the check's index in `expect:` and its normalised
arguments (with defaults filled in), so a check whose arguments were edited is a new check, not a changed one.
For every matched check the comparison gives the old and new effect, their difference with an interval, and the
outcome change, and says whether the check **regressed**:

- its outcome got worse (passed > inconclusive, skipped > failed > error: a gate that could not judge a check it
  judged before does not pass), or
- its effect moved *against the claim* (down for a `>=` check, up for a `<=` one) by more than the noise allows.

The noise allowance (tolerance) is calibrated, not guessed (an estimate that saw no variation at all is given
the resolution of one example, 1/n, as its standard error). The difference of two estimates of the same
mechanism varies by both runs' standard errors, each of which covers what its interval covers: the seed-to-seed
variation when the run trained several replicates of a recipe, the example-level error always. A new run of
*one* checkpoint carries no seed-to-seed variation of its own (its interval is about that checkpoint), yet it is
one draw from the recipe the baseline sampled; its difference from the baseline is then widened by the
baseline's between-replicate variance, estimated from the baseline's per-replicate values. The tolerance is the
half-width of the resulting interval of the difference (t quantiles of each component's own degrees of freedom,
combined as in `mechcheck.stats`), so a drift that seed variation explains is not a regression. An explicit
`tolerance` (in the effect's units) replaces it: then a check regresses when its point estimate moved against
the claim by more than that.

Two runs of the same code, seeds and checkpoints give identical numbers on one machine, hence no regression;
a broken mechanism moves its effect far beyond the tolerance and usually flips its outcome.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mechcheck.results import CheckResult, Estimate, RunReport, _clean

__all__ = ["OUTCOME_RANK", "check_id", "CheckDiff", "Comparison", "compare_reports"]

#: how bad an outcome is, for "the outcome got worse"
OUTCOME_RANK = {"passed": 0, "inconclusive": 1, "skipped": 1, "failed": 2, "error": 3, "interrupted": 3}


def check_id(claim_id: str, index: int, check: CheckResult) -> str:
    """`claim/expect[i]/name/<hash of the normalised arguments>`: the same check in two runs has the same id."""
    args = json.dumps(_clean(check.args), sort_keys=True, separators=(",", ":"))
    return f"{claim_id}/expect[{index}]/{check.name}/{hashlib.sha256(args.encode()).hexdigest()[:10]}"


@dataclass
class CheckDiff:
    """One check in two runs."""

    id: str
    claim: str
    index: int
    name: str
    args: dict[str, Any]
    #: "regressed", "improved", "unchanged", "new" (not in the baseline) or "missing" (not in the new run)
    status: str
    old_outcome: str | None = None
    new_outcome: str | None = None
    old: Estimate | None = None
    new: Estimate | None = None
    direction: str = ">="
    threshold: float | None = None
    #: new - old, its interval, and the tolerance the move against the claim was judged by
    diff: float | None = None
    lo: float | None = None
    hi: float | None = None
    tolerance: float | None = None
    #: "calibrated" (from both runs' noise) or "explicit" (--tolerance)
    tolerance_from: str = ""
    reasons: list[str] = field(default_factory=list)
    #: for sorting worst first: outcome steps worse, then how many tolerances the effect moved against the claim
    severity: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


@dataclass
class Comparison:
    """Every check of two runs, worst first."""

    old_run: str
    new_run: str
    checks: list[CheckDiff]
    level: float = 0.95
    tolerance: float | None = None

    @property
    def regressions(self) -> list[CheckDiff]:
        return [c for c in self.checks if c.status == "regressed"]

    @property
    def regressed(self) -> bool:
        return bool(self.regressions)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.checks:
            out[c.status] = out.get(c.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"old_run": self.old_run, "new_run": self.new_run, "level": self.level, "tolerance": self.tolerance,
                "regressed": self.regressed, "counts": self.counts, "checks": [c.to_dict() for c in self.checks]}


def _se(est: Estimate | None, level: float) -> float | None:
    """The standard error of `est`: its own, else from its interval's half-width; None without an interval."""
    if est is None or est.insufficient or est.estimate is None or not math.isfinite(est.estimate):
        return None
    if est.se is not None and math.isfinite(est.se):
        se = float(est.se)
    elif est.lo is None or est.hi is None:
        return None
    else:
        from mechcheck.stats.intervals import _t_quantile

        se = (est.hi - est.lo) / (2 * _t_quantile(level, est.df if est.df is not None else math.inf))
    # No variation observed (every example scored the same, e.g. an accuracy of 1.000) is not a known value: the
    # estimate cannot resolve less than one example's worth (1/n), so a drop by one example is not a regression.
    return max(se, 1.0 / est.n) if est.n else se


def _df(est: Estimate) -> float:
    return float(est.df) if est.df is not None and math.isfinite(est.df) else math.inf


def _between_variance(est: Estimate) -> tuple[float, float] | None:
    """(sample variance of the per-replicate values, its df) of a recipe estimate with >= 2 replicates."""
    values = [v for v in est.replicates if v is not None and math.isfinite(v)]
    if est.scope != "recipe" or len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1), float(len(values) - 1)


def _difference(old: Estimate, new: Estimate, level: float) -> tuple[float, float, float] | None:
    """(new - old, half-width of its interval, se) or None when either side has no interval."""
    from mechcheck.stats.intervals import _combine

    se_old, se_new = _se(old, level), _se(new, level)
    if se_old is None or se_new is None:
        return None
    components = [(se_old ** 2, _df(old)), (se_new ** 2, _df(new))]
    if new.scope == "checkpoint" and old.scope == "recipe":
        # one checkpoint against a recipe: it is one draw of the recipe, so its distance from the recipe's mean
        # includes the seed-to-seed variance its own interval cannot see (per new replicate: n_seeds of them)
        between = _between_variance(old)
        if between is not None:
            components.append((between[0] / max(new.n_seeds, 1), between[1]))
    se, half, _ = _combine(components, level)
    if not math.isfinite(half):
        return None
    return new.estimate - old.estimate, half, se


def _diff_check(cid: str, claim: str, index: int, old: CheckResult, new: CheckResult, level: float,
                tolerance: float | None) -> CheckDiff:
    d = CheckDiff(cid, claim, index, new.name, dict(new.args), "unchanged", old.outcome, new.outcome, old.effect,
                  new.effect, new.direction, new.threshold)
    steps = OUTCOME_RANK.get(new.outcome, 3) - OUTCOME_RANK.get(old.outcome, 3)
    if steps > 0:
        d.reasons.append(f"outcome {old.outcome} -> {new.outcome}")
    against = 0.0
    if old.effect is not None and new.effect is not None:
        got = _difference(old.effect, new.effect, level)
        sign = 1.0 if new.direction == ">=" else -1.0
        if got is not None or tolerance is not None:
            diff = new.effect.estimate - old.effect.estimate
            half = got[1] if got is not None else None
            d.diff = diff
            if half is not None:
                d.lo, d.hi = diff - half, diff + half
            d.tolerance, d.tolerance_from = (tolerance, "explicit") if tolerance is not None else (half, "calibrated")
            moved = -sign * diff  # > 0: moved against the claim
            if d.tolerance is not None and moved > d.tolerance:
                d.reasons.append(f"effect moved against the claim by {moved:.3g} (tolerance {d.tolerance:.3g}, "
                                 f"{d.tolerance_from})")
            if d.tolerance:
                against = moved / d.tolerance
            elif moved > 0:
                against = math.inf
    if d.reasons:
        d.status = "regressed"
    elif steps < 0 or (d.tolerance is not None and d.diff is not None and
                       (1.0 if new.direction == ">=" else -1.0) * d.diff > d.tolerance):
        d.status = "improved"
    d.severity = (float(steps), against if math.isfinite(against) else 1e9)
    return d


def compare_reports(old: RunReport, new: RunReport, tolerance: float | None = None, level: float = 0.95) -> Comparison:
    """Every check of `old` and `new` matched by `check_id`, worst first (regressions by severity, then the rest)."""
    if tolerance is not None and not (tolerance >= 0):
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    before = {check_id(c.id, i, ch): (c, i, ch) for c in old.claims for i, ch in enumerate(c.checks)}
    diffs: list[CheckDiff] = []
    seen = set()
    old_claims = {c.id: c for c in old.claims}
    for claim in new.claims:
        if not claim.checks and claim.id in old_claims and not old_claims[claim.id].checks:
            # judged in neither run (error, skipped): compare the claims' outcomes
            oc = old_claims[claim.id]
            d = _diff_check(f"{claim.id}/claim", claim.id, -1, CheckResult("(claim)", {}, oc.outcome, oc.reason),
                            CheckResult("(claim)", {}, claim.outcome, claim.reason), level, tolerance)
            seen.add(d.id)
            diffs.append(d)
            continue
        if not claim.checks and claim.id in old_claims:
            # the claim ended before its checks (error, skipped): every check it had in the baseline is not judged
            for cid, (oc, i, och) in before.items():
                if oc.id == claim.id:
                    seen.add(cid)
                    gone = CheckResult(och.name, och.args, claim.outcome, claim.reason, None, och.threshold,
                                       och.direction)
                    diffs.append(_diff_check(cid, claim.id, i, och, gone, level, tolerance))
            continue
        for i, ch in enumerate(claim.checks):
            cid = check_id(claim.id, i, ch)
            if cid in before:
                seen.add(cid)
                diffs.append(_diff_check(cid, claim.id, i, before[cid][2], ch, level, tolerance))
            else:
                diffs.append(CheckDiff(cid, claim.id, i, ch.name, dict(ch.args), "new", None, ch.outcome, None,
                                       ch.effect, ch.direction, ch.threshold))
    for cid, (oc, i, och) in before.items():
        if cid not in seen:
            diffs.append(CheckDiff(cid, oc.id, i, och.name, dict(och.args), "missing", och.outcome, None, och.effect,
                                   None, och.direction, och.threshold,
                                   reasons=["not in the new run (not selected, or its arguments changed)"]))
    order = {"regressed": 0, "improved": 1, "new": 2, "unchanged": 3, "missing": 4}
    diffs.sort(key=lambda d: (order[d.status], -d.severity[0], -d.severity[1], d.claim, d.index))
    return Comparison(old.run_id, new.run_id, diffs, level, tolerance)
