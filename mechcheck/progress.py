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


class WorkProgress:
    """Progress of the engine's work (builds and measurements), fed with `mechcheck.engine.Event`s.

    On a terminal: an overall bar of finished pieces of work and one line per piece in progress (training
    shows its step, loss and accuracy). Off a terminal: one line per model trained, so a CI log shows where
    a cold run spends its time without a line per measurement.
    """

    def __init__(self, console: Any) -> None:
        self.console = console
        self.live = console is not None and console.is_terminal
        self.progress = progress_bar(console, "{task.fields[info]}")
        self._tasks: dict[str, Any] = {}
        self._overall = None
        self.finished = 0
        self.started = 0

    def __enter__(self) -> WorkProgress:
        self.progress.__enter__()
        if self.live:
            self._overall = self.progress.add_task("work", total=None, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, e) -> None:
        if e.what == "start":
            self.started += 1
            if self.live and e.key not in self._tasks:
                self._tasks[e.key] = self.progress.add_task(e.label[:70], total=None, info="")
        elif e.what == "advance" and self.live:
            task = self._tasks.get(e.key)
            if task is not None:
                fields = "  ".join(f"{k} {v}" for k, v in e.fields.items())
                self.progress.update(task, completed=e.done, total=e.total or None, info=fields)
        elif e.what == "end":
            self.finished += 1
            task = self._tasks.pop(e.key, None)
            if task is not None:
                self.progress.remove_task(task)
            if self._overall is not None:
                self.progress.update(self._overall, description=f"work: {self.finished} done", info="")
            if e.fields.get("error"):
                self._say(f"  failed: {e.label}: {e.fields['error']}")
            elif e.computed and e.label.startswith("build "):
                resumed = e.fields.get("resumed_from_step")
                how = f" (resumed from step {resumed})" if resumed else ""
                self._say(f"  trained {e.label[len('build '):]} in {e.seconds:.0f} s{how}")

    def _say(self, text: str) -> None:
        if self.console is None:
            return
        from rich.markup import escape

        target = self.progress.console if self.live else self.console
        target.print(escape(text), highlight=False, soft_wrap=True)
