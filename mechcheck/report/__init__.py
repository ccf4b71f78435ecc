"""Renderings of a `RunReport`: report.json (the source of truth), figures, report.md and the console table."""

from __future__ import annotations

import warnings
from pathlib import Path

from mechcheck.report.console import outcome_style, print_summary, render_table
from mechcheck.report.figures import safe_name, write_figures
from mechcheck.report.markdown import render_markdown
from mechcheck.results import RunReport

__all__ = [
    "write_report",
    "render_table",
    "print_summary",
    "outcome_style",
    "render_markdown",
    "write_figures",
    "safe_name",
]


def write_report(report: RunReport, report_dir: Path) -> dict[str, Path]:
    """Write figures, ``report.json`` and ``report.md`` under `report_dir`; returns the paths written.

    Each claim's `figures` is set (paths relative to `report_dir`) before the JSON is written, so the
    JSON names the figures next to it. Figures that already exist under `report_dir` and are listed on a
    claim (drawn by something else) are kept. Keys of the result: ``"json"``, ``"markdown"`` and each
    figure's relative path.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = report_dir / "figures"
    written: dict[str, Path] = {}

    for claim in report.claims:
        try:
            paths = write_figures(claim, fig_dir)
        except Exception as exc:  # noqa: BLE001 - a plotting bug must not cost the run its report
            warnings.warn(f"{claim.id}: figures failed: {type(exc).__name__}: {exc}", stacklevel=2)
            paths = []
        new = [p.relative_to(report_dir).as_posix() for p in paths]
        kept = [f for f in claim.figures if f not in new and (report_dir / f).is_file()]
        claim.figures = kept + new
        for rel, path in zip(new, paths):
            written[rel] = path

    json_path = report_dir / "report.json"
    report.write_json(json_path)
    written["json"] = json_path

    md_path = report_dir / "report.md"
    tmp = md_path.with_name(md_path.name + ".tmp")
    tmp.write_text(render_markdown(report), encoding="utf-8")
    tmp.replace(md_path)
    written["markdown"] = md_path
    return written
