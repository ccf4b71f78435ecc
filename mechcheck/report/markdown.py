"""Markdown rendering of a `RunReport` (`report.md`), embedding the figures that `report.figures` drew."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mechcheck.report.console import (
    format_check_label,
    format_control,
    format_number,
    format_seconds,
    format_threshold,
    one_line,
)
from mechcheck.report.figures import safe_name
from mechcheck.results import OUTCOMES, CheckResult, ClaimResult, ModelRun, RunReport

__all__ = ["render_markdown"]

# --------------------------------------------------------------------------------------------------
# Markdown


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, line breaks turned into <br>)."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _anchor(claim_id: str) -> str:
    return "claim-" + safe_name(claim_id).lower()


def _outcome(outcome: str) -> str:
    return f"**{outcome}**"


def _fence(text: str) -> str:
    # the fence must be longer than any backtick run inside, or a traceback quoting Markdown breaks out
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _format_source(source: Mapping[str, Any]) -> str:
    parts = []
    if source.get("paper"):
        parts.append(str(source["paper"]))
    arxiv = source.get("arxiv")
    if arxiv:
        arxiv = str(arxiv).removeprefix("arXiv:").removeprefix("arxiv:")
        parts.append(f"[arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})")
    for key, value in source.items():
        if key in ("paper", "arxiv") or value in (None, "", [], {}):
            continue
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


_INFO_FORMATS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("steps", lambda v: f"{v} steps"),
    ("epochs", lambda v: f"{v} epochs"),
    ("accuracy", lambda v: f"acc {format_number(v)}"),
    ("acc", lambda v: f"acc {format_number(v)}"),
    ("train_accuracy", lambda v: f"train acc {format_number(v)}"),
    ("eval_accuracy", lambda v: f"eval acc {format_number(v)}"),
    ("final_loss", lambda v: f"loss {format_number(v, 4)}"),
    ("loss", lambda v: f"loss {format_number(v, 4)}"),
    ("seconds", lambda v: format_seconds(v)),
)


def _format_info(info: Mapping[str, Any], max_len: int = 100) -> str:
    """Training/load summary of a model: known keys first in a fixed order, other scalars after."""
    parts = []
    known = {k for k, _ in _INFO_FORMATS}
    for key, fmt in _INFO_FORMATS:
        if info.get(key) is not None:
            parts.append(fmt(info[key]))
    for key, value in info.items():
        if key in known or value is None or isinstance(value, (dict, list)):
            continue
        parts.append(f"{key} {format_number(value, 4) if isinstance(value, float) else value}")
    return one_line(", ".join(parts), max_len) or "—"


def _checks_passed(claim: ClaimResult) -> str:
    if not claim.checks:
        return "—"
    return f"{sum(c.outcome == 'passed' for c in claim.checks)}/{len(claim.checks)}"


def _ci(check: CheckResult) -> str:
    effect = check.effect
    if effect is None:
        return "—"
    level = f"{effect.level:.0%} " if isinstance(effect.level, (int, float)) else ""
    return f"{level}[{format_number(effect.lo)}, {format_number(effect.hi)}]"


def _header(report: RunReport) -> list[str]:
    lines = [f"# mechcheck run `{report.run_id}`", ""]
    counts = report.counts
    summary = ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o))
    verdict = "all claims passed" if report.ok else "not all claims passed"
    lines += [f"**{len(report.claims)} claims: {summary or 'none'}** ({verdict})", ""]
    device = report.device + (f" ({report.threads} threads)" if report.threads else "")
    rows = [
        ("profile", f"`{report.profile}`"),
        ("started", report.started),
        ("finished", report.finished or "— (did not finish)"),
        ("git sha", f"`{report.git_sha}`" if report.git_sha else "—"),
        ("device", device),
    ]
    if report.argv:
        rows.append(("command", "`" + " ".join(report.argv).replace("`", "'") + "`"))
    if report.cache_dir:
        rows.append(("cache", f"`{report.cache_dir}`"))
    rows.append(("schema version", str(report.schema_version)))
    lines += _table(("run", f"`{report.run_id}`"), rows) + [""]
    if report.versions:
        lines += ["## Versions", ""]
        lines += _table(("package", "version"), sorted(report.versions.items())) + [""]
    return lines


def _summary(report: RunReport) -> list[str]:
    lines = ["## Summary", ""]
    if not report.claims:
        return lines + ["No claims were run.", ""]
    rows = [
        (f"[`{c.id}`](#{_anchor(c.id)})", _outcome(c.outcome), _checks_passed(c), format_seconds(c.durations.get("total")))
        for c in report.claims
    ]
    return lines + _table(("claim", "outcome", "checks passed", "time"), rows) + [""]


def _experiment_line(experiment: Mapping[str, Any]) -> str | None:
    name = experiment.get("name")
    if not name:
        return None
    args = experiment.get("args") or {}
    arg_text = ", ".join(f"{k}={v}" for k, v in args.items() if not isinstance(v, (dict, list)))
    return f"- experiment: `{name}`" + (f" ({arg_text})" if arg_text else "")


def _claim_section(claim: ClaimResult) -> list[str]:
    lines = [f'<a id="{_anchor(claim.id)}"></a>', "", f"## `{claim.id}`: {claim.outcome}", ""]
    if claim.statement:
        lines += ["> " + line for line in claim.statement.strip().splitlines()] + [""]
    # continuation lines indented so that a multi-line reason stays inside its list item
    reason = "\n  ".join(claim.reason.strip().splitlines()) if claim.reason else ""
    facts = [f"- outcome: {_outcome(claim.outcome)}" + (f": {reason}" if reason else "")]
    if claim.file:
        facts.append(f"- file: `{claim.file}`")
    if claim.source:
        facts.append(f"- source: {_format_source(claim.source)}")
    facts.append(f"- profile: `{claim.profile}`; seeds: {', '.join(map(str, claim.seeds)) or '—'}")
    exp_line = _experiment_line(claim.experiment)
    if exp_line:
        facts.append(exp_line)
    if claim.durations:
        facts.append("- time: " + ", ".join(f"{k} {format_seconds(v)}" for k, v in claim.durations.items()))
    facts += [f"- **note**: {note}" for note in claim.notes]
    lines += facts + [""]

    if claim.checks:
        rows = [
            (
                f"`{format_check_label(c)}`",
                _outcome(c.outcome),
                format_number(c.effect.estimate) if c.effect else "—",
                _ci(c),
                c.effect.n if c.effect else "—",
                c.effect.n_seeds if c.effect else "—",
                format_threshold(c),
                format_control(c.control, max_len=60),
                c.message or "",
            )
            for c in claim.checks
        ]
        lines += ["### Checks", ""]
        lines += _table(("check", "outcome", "effect", "CI", "n", "seeds", "threshold", "control", "message"), rows)
        lines += [""]

    if claim.models:
        lines += ["### Models", ""]
        lines += _table(("role", "fixture", "seed", "cache key", "cached", "size", "training"), [_model_row(m) for m in claim.models])
        lines += [""]

    if claim.figures:
        lines += ["### Figures", ""]
        for fig in claim.figures:
            lines += [f"![{Path(fig).stem}]({fig})", ""]

    if claim.traceback:
        tb = claim.traceback.rstrip()
        fence = _fence(tb)
        lines += ["<details><summary>Traceback</summary>", "", f"{fence}text", tb, fence, "", "</details>", ""]
    return lines


def _model_row(model: ModelRun) -> tuple[Any, ...]:
    size = f"{model.n_layers}L × {model.n_heads}H" if model.n_layers or model.n_heads else "—"
    return (
        model.role,
        f"`{model.fixture}`",
        model.seed,
        f"`{model.key[:12]}`" if model.key else "—",
        "yes" if model.cached else "no",
        size,
        _format_info(model.info or {}),
    )


def render_markdown(report: RunReport) -> str:
    """The whole run as a Markdown document; figure links are `claim.figures` (relative to the report)."""
    lines = _header(report) + _summary(report)
    for claim in report.claims:
        lines += _claim_section(claim)
    return "\n".join(lines).rstrip() + "\n"
