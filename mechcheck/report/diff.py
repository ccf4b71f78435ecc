"""Renderings of a `mechcheck.compare.Comparison`: the console diff table and the Markdown one, worst first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mechcheck.compare import CheckDiff, Comparison
from mechcheck.report.console import format_estimate, format_number, outcome_style
from mechcheck.results import CheckResult

__all__ = ["check_label", "render_diff_table", "print_comparison", "comparison_markdown", "write_comparison"]

_STATUS_STYLE = {"regressed": "bold red", "improved": "green", "unchanged": "", "new": "cyan", "missing": "dim"}


def check_label(d: CheckDiff) -> str:
    """`claim expect[i] name(args)` — the arguments that tell two checks of one claim apart, model first."""
    if d.index < 0:
        return f"{d.claim} (claim)"
    from mechcheck.report.console import check_labels

    return f"{d.claim} [{d.index}] " + check_labels([CheckResult(d.name, d.args, "")])[0]


def _outcomes(d: CheckDiff) -> str:
    return f"{d.old_outcome or '—'} → {d.new_outcome or '—'}"


def _difference(d: CheckDiff) -> str:
    if d.diff is None:
        return "—"
    text = f"{d.diff:+.3f}"
    if d.lo is not None and d.hi is not None:
        text += f" [{d.lo:+.3f}, {d.hi:+.3f}]"
    return text


def _tolerance(d: CheckDiff) -> str:
    if d.tolerance is None:
        return "—"
    return ("±" if d.tolerance_from == "calibrated" else "≤") + format_number(d.tolerance)


def render_diff_table(comp: Comparison, only_changes: bool = False) -> Table:
    table = Table(title=f"compare {comp.old_run} → {comp.new_run}", title_justify="left")
    for col, kw in (("status", {"no_wrap": True}), ("check", {"overflow": "fold"}), ("outcome", {"no_wrap": True}),
                    ("old effect", {"justify": "right"}), ("new effect", {"justify": "right"}),
                    ("new − old [CI]", {"justify": "right"}), ("tolerance", {"justify": "right"})):
        table.add_column(col, **kw)
    for d in comp.checks:
        if only_changes and d.status == "unchanged":
            continue
        table.add_row(Text(d.status, style=_STATUS_STYLE.get(d.status, "")), check_label(d),
                      Text(_outcomes(d), style=outcome_style(d.new_outcome or "")), format_estimate(d.old),
                      format_estimate(d.new), _difference(d), _tolerance(d))
    return table


def _summary(comp: Comparison) -> str:
    counts = comp.counts
    parts = [f"{counts.get(s, 0)} {s}" for s in ("regressed", "improved", "unchanged", "new", "missing")
             if counts.get(s)]
    verdict = "REGRESSION" if comp.regressed else "no regression"
    return f"{verdict}: {len(comp.checks)} checks compared ({', '.join(parts) or 'none'})"


def print_comparison(comp: Comparison, console: Console) -> None:
    console.print(render_diff_table(comp))
    console.print(Text(_summary(comp), style="bold red" if comp.regressed else "bold green"))
    for d in comp.regressions:
        console.print(Text(f"  regressed: {check_label(d)}: {'; '.join(d.reasons)}", style="red"), soft_wrap=True)


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def comparison_markdown(comp: Comparison) -> str:
    """The comparison as a Markdown section (worst first)."""
    tol = ("explicit, " + format_number(comp.tolerance)) if comp.tolerance is not None else \
        "calibrated from both runs' noise (seed-to-seed and example-level)"
    lines = [f"## Compared with baseline `{comp.old_run}`", "", f"**{_summary(comp)}.** Tolerance: {tol}; "
             f"intervals at {comp.level:.0%}.", "",
             "| status | check | outcome | old effect | new effect | new − old [CI] | tolerance | why |",
             "|---|---|---|---|---|---|---|---|"]
    for d in comp.checks:
        lines.append("| " + " | ".join(_md(x) for x in (
            f"**{d.status}**" if d.status == "regressed" else d.status, check_label(d), _outcomes(d),
            format_estimate(d.old), format_estimate(d.new), _difference(d), _tolerance(d),
            "; ".join(d.reasons) or "")) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(comp: Comparison, out_dir: Path) -> dict[str, Path]:
    """comparison.json and comparison.md in `out_dir`."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "comparison.json", "markdown": out_dir / "comparison.md"}
    paths["json"].write_text(json.dumps(comp.to_dict(), indent=2) + "\n")
    paths["markdown"].write_text(comparison_markdown(comp))
    return paths
