"""The one progress bar of long work (training, sweeps, grids): rich, and only on a terminal.

Off a terminal (CI logs, pytest, pipes) it draws nothing, so logs keep one line per claim.
"""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(console: Any, fields: str | None = None):
    """A transient `rich.progress.Progress` (description, bar, n/total, elapsed), disabled off a terminal.

    `fields`: an extra text column over task fields, e.g. "loss {task.fields[loss]}".
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns.append(TextColumn(fields))
    columns.append(TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True,
                    disable=console is None or not console.is_terminal)
