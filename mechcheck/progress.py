"""Progress of long work (training, sweeps, grids, a whole run): rich bars on a terminal, plain lines off one.

On a terminal the bars redraw in place. Off a terminal (CI logs, nohup, pipes) nothing can redraw, so a run
prints a plain line per piece of work in progress at most every `interval` seconds — the claim it is for,
what it does, how far it is, and an estimate of what is left where the step rate tells — and one line per
model trained, so a log shows where a cold run spends its time without a line per measurement.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["progress_bar", "WorkProgress", "DEFAULT_INTERVAL", "format_duration"]

#: seconds between two progress reports off a terminal (unless $MECHCHECK_PROGRESS_EVERY says otherwise)
DEFAULT_INTERVAL = 15.0
#: pieces in progress reported per line batch; the rest are counted
_MAX_LINES = 4


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


def format_duration(seconds: float) -> str:
    """`H:MM:SS`, as a log reader expects a duration (no fractions: a heartbeat is not a benchmark)."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class _Piece:
    """One piece of work in progress, as seen from its events."""

    label: str
    priority: int | None
    started: float
    done: int = 0
    total: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    #: (clock, done) at the first advance seen: the step rate is measured from there (a resumed training
    #: starts at its saved step, which is not progress of this run)
    first: tuple[float, int] | None = None
    latest: tuple[float, int] | None = None

    def left(self) -> float | None:
        """Seconds left at the step rate seen so far; None until two advances have been seen."""
        if self.first is None or self.latest is None or not self.total:
            return None
        (t0, d0), (t1, d1) = self.first, self.latest
        if d1 <= d0 or t1 <= t0:
            return None
        return (self.total - d1) * (t1 - t0) / (d1 - d0)


class WorkProgress:
    """Progress of a run: the engine's work (fed with `mechcheck.engine.Event`s) and the claims judged.

    `claims`: the ids of the claims in run order; the engine's priority of a piece of work is the index of
    the first claim that needs it (-1: a check's request, for the claim being judged), so each line names
    its claim. `claim_done(result)` is called as each claim is judged. `interval`: seconds between reports
    off a terminal (default $MECHCHECK_PROGRESS_EVERY, else `DEFAULT_INTERVAL`; 0 or less: none); `clock`: a monotonic clock (tests inject one). A background thread reports while a long
    piece of work sends no event; with an injected clock there is none, and `tick()` reports when due.
    """

    def __init__(self, console: Any, claims: Sequence[str] = (), interval: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.console = console
        self.live = console is not None and console.is_terminal
        self.progress = progress_bar(console, "{task.fields[info]}")
        self.claims = list(claims)
        self.interval = _interval() if interval is None else float(interval)
        self.clock = clock or time.monotonic
        self._threaded = clock is None
        self._tasks: dict[str, Any] = {}
        self._pieces: dict[str, _Piece] = {}
        self._overall = None
        self.queued: set[str] = set()
        self.finished = 0
        self.started = 0
        self.judged = 0
        self._last_report = self.clock()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def claims_total(self) -> int:
        return len(self.claims)

    def __enter__(self) -> WorkProgress:
        self.progress.__enter__()
        self._last_report = self.clock()
        if self.live:
            self._overall = self.progress.add_task(self._counter(), total=None, info="")
        elif self.console is not None and self._threaded and self.interval > 0:
            self._thread = threading.Thread(target=self._heartbeat, name="mechcheck-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.progress.__exit__(*exc)

    # ---- feeding ------------------------------------------------------------------------------------

    def event(self, e) -> None:
        """Take one engine event: queued / start / advance / end."""
        with self._lock:
            now = self.clock()
            if e.what == "queued":
                self.queued.add(e.key)
            elif e.what == "start":
                self.started += 1
                self.queued.add(e.key)
                self._pieces.setdefault(e.key, _Piece(e.label, e.priority, now))
                if self.live and e.key not in self._tasks:
                    self._tasks[e.key] = self.progress.add_task(e.label[:70], total=None, info="")
            elif e.what == "advance":
                self._advance(e, now)
            elif e.what == "end":
                self._end(e)
            self._update_overall()
        self.tick()

    def _advance(self, e, now: float) -> None:
        piece = self._pieces.get(e.key)
        if piece is None:  # a piece that started before this view did (or whose start went elsewhere)
            piece = self._pieces[e.key] = _Piece(e.label, e.priority, now)
        if e.priority is not None:
            piece.priority = e.priority
        piece.done, piece.total, piece.fields = e.done, e.total, dict(e.fields)
        if e.total:
            if piece.first is None:
                piece.first = (now, e.done)
            piece.latest = (now, e.done)
        task = self._tasks.get(e.key)
        if task is not None:
            self.progress.update(task, completed=e.done, total=e.total or None, info=_fields(e.fields))

    def _end(self, e) -> None:
        self.finished += 1
        self.queued.add(e.key)
        self._pieces.pop(e.key, None)
        task = self._tasks.pop(e.key, None)
        if task is not None:
            self.progress.remove_task(task)
        if e.fields.get("error"):
            self._say(f"  failed: {e.label}: {e.fields['error']}")
        elif e.computed and e.label.startswith("build "):
            resumed = e.fields.get("resumed_from_step")
            how = f" (resumed from step {resumed})" if resumed else ""
            self._say(f"  trained {e.label[len('build '):]} in {e.seconds:.0f} s{how}")

    def claim_done(self, result: Any = None) -> None:
        """One more claim judged (in run order): the counter moves on, and so does the claim of priority -1."""
        with self._lock:
            self.judged += 1
            self._update_overall()

    # ---- reporting ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Off a terminal, print the report lines if `interval` seconds have passed since the last ones."""
        if self.live or self.console is None or self.interval <= 0:
            return
        with self._lock:
            now = self.clock()
            if now - self._last_report < self.interval:
                return
            self._last_report = now
            lines = self.lines(now)
        for line in lines:
            self._say(line)

    def lines(self, now: float | None = None) -> list[str]:
        """The report as plain lines: one per piece of work in progress (a few), or what is being judged."""
        with self._lock:
            now = self.clock() if now is None else now
            head = self._counter()
            pieces = sorted(self._pieces.values(), key=lambda p: (p.priority if p.priority is not None else 1 << 30,
                                                                  p.started))
            if not pieces:
                claim = self._claim_of(-1)
                waiting = len(self.queued) - self.finished
                what = f"{_pieces_of_work(waiting)} waiting to start" if waiting > 0 else "judging"
                return [f"[{head}] {claim}: {what}" if claim else f"[{head}] {what}"]
            out = [f"[{head}] {self._describe(p, now)}" for p in pieces[:_MAX_LINES]]
            if len(pieces) > _MAX_LINES:
                out.append(f"[{head}] and {len(pieces) - _MAX_LINES} more in progress")
            return out

    def _counter(self) -> str:
        """`claims 2/8 judged, work 12/40` (what is known of each)."""
        parts = []
        if self.claims:
            parts.append(f"claims {self.judged}/{len(self.claims)} judged")
        if self.queued:
            parts.append(f"work {self.finished}/{len(self.queued)}")
        return ", ".join(parts) or "work"

    def _claim_of(self, priority: int | None) -> str | None:
        if priority is None or not self.claims:
            return None
        index = self.judged if priority < 0 else priority
        return self.claims[index] if 0 <= index < len(self.claims) else None

    def _describe(self, piece: _Piece, now: float) -> str:
        """`claim: training fixture seed 0, step 150/300, loss 0.412, 0:02:10, about 0:02:10 left`."""
        claim = self._claim_of(piece.priority)
        training = piece.label.startswith("build ")
        what = f"training {_seedless(piece.label[len('build '):])}" if training else f"measuring {piece.label}"
        parts = [what]
        if piece.total:
            parts.append(f"{'step ' if training else ''}{piece.done}/{piece.total}")
        if piece.fields:
            parts.append(_fields(piece.fields, sep=", "))
        parts.append(format_duration(now - piece.started))
        left = piece.left()
        if left is not None:
            parts.append(f"about {format_duration(left)} left")
        return (f"{claim}: " if claim else "") + ", ".join(parts)

    def _update_overall(self) -> None:
        if self._overall is not None:
            self.progress.update(self._overall, description=self._counter(), completed=self.finished,
                                 total=len(self.queued) or None, info="")

    def _heartbeat(self) -> None:
        step = max(0.05, min(1.0, self.interval / 3))
        while not self._stop.wait(step):
            self.tick()

    def _say(self, text: str) -> None:
        if self.console is None:
            return
        from rich.markup import escape

        target = self.progress.console if self.live else self.console
        target.print(escape(text), highlight=False, soft_wrap=True)


def _interval() -> float:
    """$MECHCHECK_PROGRESS_EVERY (seconds) when set, else `DEFAULT_INTERVAL`; a bad value is one clear error."""
    from mechcheck.errors import SpecError

    raw = os.environ.get("MECHCHECK_PROGRESS_EVERY", "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        return float(raw)
    except ValueError:
        raise SpecError(f"MECHCHECK_PROGRESS_EVERY={raw!r}: expected the seconds between progress lines, a "
                        f"number (0: none; unset it for the default, {DEFAULT_INTERVAL:g} s)",
                        file="<environment>") from None


def _pieces_of_work(n: int) -> str:
    return f"{n} piece{'s' if n != 1 else ''} of work"


def _seedless(label: str) -> str:
    """`fixture (seed 0)` -> `fixture seed 0`: a log line reads better without the brackets."""
    if label.endswith(")") and " (seed " in label:
        name, seed = label[:-1].rsplit(" (seed ", 1)
        return f"{name} seed {seed}"
    return label


def _fields(fields: dict[str, Any], sep: str = "  ") -> str:
    return sep.join(f"{k} {_value(v)}" for k, v in fields.items() if v is not None)


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
