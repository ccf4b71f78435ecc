"""Console rendering of a `RunReport`: one rich table row per check, then a line of counts.

The formatting helpers here (`format_estimate`, `format_threshold`, `format_control`, ...) are shared
with the Markdown report so that both renderings of a run show the same numbers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mechcheck.results import OUTCOMES, CheckResult, ClaimResult, Estimate, RunReport

__all__ = [
    "outcome_style",
    "format_number",
    "format_estimate",
    "format_threshold",
    "format_control",
    "format_seconds",
    "format_check_label",
    "check_labels",
    "one_line",
    "format_counts",
    "render_table",
    "print_summary",
]

_STYLES = {
    "passed": "bold green",
    "failed": "bold red",
    "inconclusive": "bold yellow",
    "error": "bold magenta",
    "skipped": "dim",
}

#: a check passes when its whole interval is strictly beyond the threshold (`stats.judge`)
_DIRECTIONS = {">=": ">", "<=": "<", ">": ">", "<": "<", "==": "="}

#: keys a check may use in its `control` dict, most specific first (checks are written by other modules,
#: so the renderer accepts the plausible spellings instead of one fixed schema)
_CONTROL_LABEL_KEYS = ("label", "kind", "name", "type", "description")
_CONTROL_COUNT_KEYS = ("n_heads", "k", "count", "size", "n")
_CONTROL_VALUE_KEYS = ("estimate", "effect", "value", "mean", "chance", "level")


def outcome_style(outcome: str) -> str:
    """The rich style of an outcome word (unknown outcomes render unstyled)."""
    return _STYLES.get(outcome, "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_number(value: Any, digits: int = 3) -> str:
    """A float with `digits` decimals; None and NaN (both mean "not measured") render as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if not _is_number(value):
        return str(value)
    return f"{value:.{digits}f}"


def format_estimate(effect: Estimate | None, with_ci: bool = True) -> str:
    """``0.142 [0.081, 0.203]`` (or just the point estimate); an em dash without an estimate."""
    if effect is None:
        return "—"
    point = format_number(effect.estimate)
    if not with_ci:
        return point
    return f"{point} [{format_number(effect.lo)}, {format_number(effect.hi)}]"


def _format_threshold_value(value: float) -> str:
    # Two decimals read best for the usual thresholds (0.10, 0.50); fall back to 3 significant digits
    # when two decimals would hide part of the value (0.005, 0.125).
    if round(value, 2) == value:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_threshold(check: CheckResult) -> str:
    """The threshold with the side the whole interval must lie on, e.g. ``> 0.10``; an em dash when none."""
    if check.threshold is None or not _is_number(check.threshold):
        return "—"
    arrow = _DIRECTIONS.get(check.direction, check.direction)
    return f"{arrow} {_format_threshold_value(float(check.threshold))}"


def _control_value(value: Any) -> str | None:
    if isinstance(value, Mapping):
        # a serialised Estimate: show its point estimate only, the table cell is short
        value = value.get("estimate")
    if value is None or not _is_number(value):
        return None
    return format_number(value)


def format_control(control: Mapping[str, Any] | None, max_len: int = 40) -> str:
    """A short description of a check's matched control, e.g. ``random 3: 0.012``."""
    if not control:
        return "—"
    label = next((str(control[k]) for k in _CONTROL_LABEL_KEYS if control.get(k) not in (None, "")), "")
    count = next((control[k] for k in _CONTROL_COUNT_KEYS if _is_number(control.get(k))), None)
    value = next((v for k in _CONTROL_VALUE_KEYS if (v := _control_value(control.get(k))) is not None), None)
    if label or value is not None:
        head = " ".join(p for p in (label, "" if count is None else str(count)) if p)
        text = f"{head}: {value}" if value is not None and head else (value or head)
    else:
        # unknown shape: a compact key=value listing still beats hiding the control
        text = ", ".join(f"{k}={v}" for k, v in control.items() if not isinstance(v, (dict, list)))
    return one_line(text, max_len) or "—"


def format_seconds(seconds: Any) -> str:
    """``0.4 s``, ``12 s``, ``3m 05s``; an em dash when unknown."""
    if not _is_number(seconds) or not math.isfinite(seconds):
        return "—"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m {secs:02d}s"


def one_line(text: str | None, max_len: int = 80) -> str:
    """The first non-empty line of `text` with whitespace collapsed, cut to `max_len` characters."""
    if not text:
        return ""
    line = next((ln for ln in str(text).splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    if len(line) > max_len:
        line = line[: max_len - 1].rstrip() + "…"
    return line


def _format_arg(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_arg(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def format_check_label(check: CheckResult, max_len: int | None = None) -> str:
    """The check name with its arguments, e.g. ``effect_at_least(model=target, heads=top_3, value=0.1)``."""
    # Unset optional arguments (None: "use the experiment's default") are noise in a one-line label.
    args = ", ".join(f"{k}={_format_arg(v)}" for k, v in (check.args or {}).items() if v is not None)
    label = f"{check.name}({args})" if args else check.name
    return one_line(label, max_len) if max_len else label


#: arguments naming a model role: shown first, since they say which model a check is about
_ROLE_ARGS = ("model", "than")


def check_labels(checks: Sequence[CheckResult], max_len: int | None = None, max_lines: int = 1) -> list[str]:
    """Labels that tell a claim's checks apart: ``accuracy_at_least model=scratch value=0.9``.

    The name, then the arguments whose values differ between checks of the same name, then the roles, then
    the rest, and last those every check of the claim has alike (the first to go). Over `max_len`, whole
    arguments go onto up to `max_lines` lines (continuations indented by two spaces), and what does not fit
    is dropped from the end, marked "…": a label never ends inside a value, where ``value=0.9`` cut to
    ``value=0.`` would misread as another threshold.
    """
    shown = [{k: _format_arg(v) for k, v in (c.args or {}).items() if v is not None} for c in checks]
    shared = set(shown[0].items()).intersection(*map(dict.items, shown[1:])) if len(shown) > 1 else set()
    labels = []
    for check, args in zip(checks, shown):
        twins = [a for c, a in zip(checks, shown) if c.name == check.name]
        telling = {k for k, v in args.items() if len(twins) > 1 and any(t.get(k) != v for t in twins)}
        ordered = sorted(args.items(), key=lambda kv: (kv in shared, kv[0] not in telling,
                                                       kv[0] not in _ROLE_ARGS))
        tokens = [check.name] + ["=".join((k, " ".join(v.split()))) for k, v in ordered]
        labels.append("\n".join(_fit(tokens, max_len, max_lines)))
    return labels


def _fit(tokens: list[str], max_len: int | None, max_lines: int = 1) -> list[str]:
    """`tokens` joined by spaces into at most `max_lines` lines of `max_len`, continuations indented two
    spaces; tokens that do not fit are dropped from the end and "…" marks it. The first token (the check's
    name) always stays, whole."""
    if max_len is None:
        return [" ".join(tokens)]
    lines = [tokens[0]]
    for i, token in enumerate(tokens[1:], start=1):
        if len(lines[-1]) + 1 + len(token) <= max_len:
            lines[-1] += " " + token
        elif len(lines) < max_lines and 2 + len(token) <= max_len:
            lines.append("  " + token)
        else:
            # the rest does not fit: drop it, and make room for the mark by dropping more if need be
            while len(lines[-1]) + 2 > max_len and " " in lines[-1].strip():
                lines[-1] = lines[-1].rsplit(" ", 1)[0]
            lines[-1] += " …"
            break
    return lines


def _outcome_text(outcome: str) -> Text:
    return Text(outcome, style=outcome_style(outcome))


#: below this console width the table drops the control / seeds / n / time columns and the check arguments
COMPACT_BELOW = 140


#: the check column's width in the full table
_WIDE_LABEL = 60


def render_table(report: RunReport, compact: bool = False, width: int | None = None) -> Table:
    """One row per check (claim id on its first row only); claims without checks show their reason.

    `compact` (narrow terminals): a bold row per claim (outcome, seeds, time), then one indented row per
    check with its outcome, effect, threshold, and as many of its telling arguments as fit in `width`
    (default 80) columns; controls and n are in report.md.
    """
    table = Table(
        title=f"mechcheck run {report.run_id} (profile {report.profile})",
        title_justify="left",
        show_lines=False,
    )
    if compact:
        table.add_column("claim / check", overflow="fold")
        table.add_column("outcome", no_wrap=True)
        table.add_column("effect ± CI", justify="right", no_wrap=True)
        table.add_column("threshold", justify="right", no_wrap=True)
    else:
        table.add_column("claim", style="bold", no_wrap=True)
        table.add_column("check", overflow="fold")
        table.add_column("outcome", no_wrap=True)
        table.add_column("effect ± CI", justify="right", no_wrap=True)
        table.add_column("threshold", justify="right", no_wrap=True)
        table.add_column("control", overflow="fold")
        table.add_column("seeds", justify="right")
        table.add_column("n", justify="right")
        table.add_column("time", justify="right", no_wrap=True)

    budget = _compact_budget(report, width or 80) if compact else _WIDE_LABEL
    for index, claim in enumerate(report.claims):
        # a rule between claims keeps multi-check claims visually grouped
        end_section = index < len(report.claims) - 1
        rows = _compact_rows(claim, budget) if compact else _claim_rows(claim)
        for i, row in enumerate(rows):
            table.add_row(*row, end_section=end_section and i == len(rows) - 1)
    return table


def _compact_budget(report: RunReport, width: int) -> int:
    """Characters a compact check label may take: what `width` leaves beside the other columns' widest cells
    (4 columns: 5 rules and 2 spaces of padding each) and the label's indent; at least 24."""
    checks = [c for claim in report.claims for c in claim.checks]
    outcome = max([len("outcome")] + [len(c.outcome) for claim in report.claims for c in claim.checks] +
                  [len(claim.outcome) for claim in report.claims])
    effect = max([len("effect ± CI")] + [len(format_estimate(c.effect)) for c in checks])
    threshold = max([len("threshold")] + [len(format_threshold(c)) for c in checks])
    return max(24, width - 13 - outcome - effect - threshold - 2)


def _compact_rows(claim: ClaimResult, budget: int = 60) -> list[tuple[Any, ...]]:
    seeds = f"{len(claim.seeds)} seed{'s' if len(claim.seeds) != 1 else ''}" if claim.seeds else ""
    time = format_seconds(claim.durations.get("total"))
    rows: list[tuple[Any, ...]] = [(Text(claim.id, style="bold"), _outcome_text(claim.outcome),
                                    Text(", ".join(x for x in (seeds, time) if x), style="dim"), "")]
    if not claim.checks:
        rows.append((Text("  " + (one_line(claim.reason, 80) or "no checks"), style="italic"), "", "", ""))
    for check, label in zip(claim.checks, check_labels(claim.checks, budget, max_lines=2)):
        rows.append(("\n".join("  " + line for line in label.splitlines()), _outcome_text(check.outcome), format_estimate(check.effect),
                     format_threshold(check)))
    return rows


def _claim_rows(claim: ClaimResult) -> list[tuple[Any, ...]]:
    """Table cells for one claim: a row per check, or a single reason row when nothing was checked."""
    time = format_seconds(claim.durations.get("total"))
    if not claim.checks:
        reason = one_line(claim.reason, 80) or f"({claim.outcome}, no checks)"
        n_seeds = str(len(claim.seeds)) if claim.seeds else "—"
        return [(claim.id, Text(reason, style="italic"), _outcome_text(claim.outcome), "—", "—", "—", n_seeds, "—", time)]
    rows = []
    for i, (check, label) in enumerate(zip(claim.checks, check_labels(claim.checks, _WIDE_LABEL, max_lines=2))):
        effect = check.effect
        rows.append((
            claim.id if i == 0 else "",
            label,
            _outcome_text(check.outcome),
            format_estimate(effect),
            format_threshold(check),
            format_control(check.control),
            str(effect.n_seeds) if effect is not None else "—",
            str(effect.n) if effect is not None else "—",
            time if i == 0 else "",
        ))
    return rows


def format_counts(report: RunReport) -> Text:
    """``3 claims: 2 passed, 1 failed, ...`` with each outcome in its colour (zero counts dimmed)."""
    counts = report.counts
    total = len(report.claims)
    line = Text(f"{total} claim{'s' if total != 1 else ''}: ")
    for i, outcome in enumerate(OUTCOMES):
        if i:
            line.append(", ")
        n = counts.get(outcome, 0)
        line.append(f"{n} {outcome}", style=outcome_style(outcome) if n else "dim")
    return line


def print_summary(report: RunReport, console: Console, report_path: Path | str | None = None) -> None:
    """Print the table, the per-outcome counts and (when given) where the full report was written."""
    console.print(render_table(report, compact=console.width < COMPACT_BELOW, width=console.width))
    console.print(format_counts(report))
    if report_path is not None:
        console.print(Text("report: ", style="dim") + Text(str(report_path)))
