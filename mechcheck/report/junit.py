"""JUnit XML of a run, for CI systems: one `<testsuite>` per claim, one `<testcase>` per check.

A claim that ended before its checks ran (error, skipped) is one testcase named after the claim. Outcomes map as
in the pytest plugin: passed -> pass; failed and inconclusive -> `<failure>` (an inconclusive claim is not a
pass); error -> `<error>`; skipped -> `<skipped>`; interrupted -> `<error>`. Each testcase carries the effect,
its interval, the threshold and the outcome as `<properties>`, so a CI dashboard can show numbers, not just
colours. The exit codes of `mechcheck run` do not depend on this file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mechcheck.results import CheckResult, ClaimResult, RunReport

__all__ = ["junit_tree", "write_junit"]


def _case(suite: ET.Element, claim: ClaimResult, name: str, outcome: str, message: str, seconds: float,
          check: CheckResult | None = None) -> str:
    case = ET.SubElement(suite, "testcase", classname=claim.id, name=name, time=f"{seconds:.3f}",
                         file=claim.file)
    props = ET.SubElement(case, "properties")
    ET.SubElement(props, "property", name="outcome", value=outcome)
    if check is not None and check.effect is not None:
        e = check.effect
        for key, value in (("effect", e.estimate), ("ci_lo", e.lo), ("ci_hi", e.hi), ("n", e.n),
                           ("n_seeds", e.n_seeds), ("scope", e.scope)):
            ET.SubElement(props, "property", name=key, value="" if value is None else str(value))
    if check is not None and check.threshold is not None:
        ET.SubElement(props, "property", name="threshold", value=f"{check.direction} {check.threshold}")
    kind = {"failed": "failure", "inconclusive": "failure", "error": "error", "interrupted": "error",
            "skipped": "skipped"}.get(outcome)
    if kind is not None:
        el = ET.SubElement(case, kind, message=f"{outcome}: {message}"[:1000])
        if kind != "skipped":
            el.set("type", outcome)
            el.text = f"{outcome}: {message}"
    return kind or "pass"


def junit_tree(report: RunReport) -> ET.ElementTree:
    """The JUnit XML tree of `report`."""
    root = ET.Element("testsuites", name=f"mechcheck {report.run_id}")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for claim in report.claims:
        seconds = float(claim.durations.get("total", 0.0) or 0.0)
        suite = ET.SubElement(root, "testsuite", name=claim.id, file=claim.file)
        props = ET.SubElement(suite, "properties")
        for key, value in (("statement", " ".join(claim.statement.split())), ("outcome", claim.outcome),
                           ("profile", claim.profile), ("seeds", str(len(claim.seeds)))):
            ET.SubElement(props, "property", name=key, value=value)
        kinds = []
        if claim.checks:
            share = seconds / len(claim.checks)
            from mechcheck.report.console import format_check_label

            for i, check in enumerate(claim.checks):
                kinds.append(_case(suite, claim, f"[{i}] {format_check_label(check)}", check.outcome,
                                   check.message, share, check))
        else:
            kinds.append(_case(suite, claim, "claim", claim.outcome, claim.reason, seconds))
        counts = {"tests": len(kinds), "failures": kinds.count("failure"), "errors": kinds.count("error"),
                  "skipped": kinds.count("skipped")}
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{seconds:.3f}")
    for key, value in totals.items():
        root.set(key, str(value))
    return ET.ElementTree(root)


def write_junit(report: RunReport, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree = junit_tree(report)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)
    return path
