"""Progress of a run: plain, periodic lines off a terminal (CI logs), an overall counter on one.

A fake clock drives time and a rich Console writes to a StringIO, so nothing here sleeps or trains.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from mechcheck.engine import Engine, Event
from mechcheck.measurements import MeasurementStore, make_unit
from mechcheck.progress import WorkProgress, format_duration

CLAIMS = ["toy.first", "lin2024.minilm_finetuned_vs_scratch", "toy.third"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=80, color_system=None), out


def _view(interval: float = 15.0):
    console, out = plain_console()
    clock = Clock()
    return WorkProgress(console, claims=CLAIMS, interval=interval, clock=clock), clock, out


def test_off_a_terminal_a_line_at_most_every_interval_with_claim_step_and_estimate():
    view, clock, out = _view()
    with view:
        for key in ("b1", "u1", "u2"):
            view.event(Event("queued", key, priority=1))
        view.event(Event("start", "b1", "build cdm-minilm-ft (seed 0)", priority=1))
        clock.now += 10
        view.event(Event("advance", "b1", "cdm-minilm-ft (seed 0)", 100, 300, {"loss": 0.41234}, priority=1))
        assert out.getvalue() == ""  # 10 s: not due yet
        clock.now += 120
        view.event(Event("advance", "b1", "cdm-minilm-ft (seed 0)", 150, 300, {"loss": 0.3}, priority=1))
        text = out.getvalue()
        assert text.count("\n") == 1, text
        # 50 steps in 120 s, 150 to go: 360 s left
        assert text.strip() == ("[claims 0/3 judged, work 0/3] lin2024.minilm_finetuned_vs_scratch: training "
                                "cdm-minilm-ft seed 0, step 150/300, loss 0.3, 0:02:10, about 0:06:00 left")
        clock.now += 5
        view.event(Event("advance", "b1", "cdm-minilm-ft (seed 0)", 160, 300, priority=1))
        assert out.getvalue() == text  # 5 s after the last line: nothing new
    # one line per interval, however many events came in between


def test_counters_move_with_claims_judged_and_work_done():
    view, clock, out = _view(interval=1.0)
    with view:
        view.event(Event("queued", "u1", priority=0))
        view.event(Event("queued", "u2", priority=2))
        view.event(Event("start", "u1", "clean of tiny (seed 0)", priority=0))
        view.event(Event("end", "u1", "clean of tiny (seed 0)", priority=0))
        view.claim_done(SimpleNamespace(id="toy.first"))
        view.event(Event("start", "u2", "sweep of tiny (seed 1)", priority=2))
        clock.now += 2
        view.event(Event("advance", "u2", "sweep of tiny (seed 1)", 3, 8, priority=2))
        # a check's request (priority -1) belongs to the claim being judged: the second one now
        view.event(Event("queued", "r1", priority=-1))
        view.event(Event("start", "r1", "ablation_set of tiny (seed 0)", priority=-1))
        clock.now += 2
        view.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[claims 1/3 judged, work 1/2] toy.third: measuring sweep of tiny (seed 1), 3/8, 0:00:02"
    # the most urgent first: what the claim being judged waits for
    assert lines[1] == ("[claims 1/3 judged, work 1/3] lin2024.minilm_finetuned_vs_scratch: measuring "
                        "ablation_set of tiny (seed 0), 0:00:02")
    assert lines[2] == "[claims 1/3 judged, work 1/3] toy.third: measuring sweep of tiny (seed 1), 3/8, 0:00:04"


def test_nothing_in_progress_says_which_claim_is_judged_and_many_pieces_are_counted():
    view, clock, out = _view(interval=1.0)
    with view:
        clock.now += 1
        view.tick()
        view.event(Event("queued", "u0", priority=0))
        clock.now += 1
        view.tick()
        for i in range(6):
            view.event(Event("start", f"u{i}", f"clean of m{i}", priority=2))
        clock.now += 1
        view.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[claims 0/3 judged] toy.first: judging"
    assert lines[1] == "[claims 0/3 judged, work 0/1] toy.first: 1 piece of work waiting to start"
    assert len(lines) == 2 + 4 + 1, lines
    assert lines[-1].endswith("] and 2 more in progress")


def test_trained_and_failed_pieces_get_their_own_line_at_once():
    view, clock, out = _view()
    with view:
        view.event(Event("start", "b", "build tiny (seed 0)", priority=0))
        view.event(Event("end", "b", "build tiny (seed 0)", seconds=42.0, computed=True,
                         fields={"resumed_from_step": 100}, priority=0))
        view.event(Event("end", "c", "clean of tiny (seed 0)", computed=False, fields={"error": "boom"}))
    assert out.getvalue().splitlines() == ["  trained tiny (seed 0) in 42 s (resumed from step 100)",
                                           "  failed: clean of tiny (seed 0): boom"]


def test_the_background_thread_reports_while_no_event_comes():
    import time

    console, out = plain_console()
    with WorkProgress(console, claims=CLAIMS, interval=0.05) as view:
        view.event(Event("start", "b", "build tiny (seed 0)", priority=0))
        deadline = time.monotonic() + 5
        while "training tiny seed 0" not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "toy.first: training tiny seed 0" in out.getvalue()


def test_on_a_terminal_the_overall_bar_counts_claims_and_work():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    view = WorkProgress(console, claims=CLAIMS, clock=Clock())
    with view:
        view.event(Event("queued", "u1", priority=0))
        view.event(Event("queued", "u2", priority=0))
        view.event(Event("start", "u1", "clean of tiny (seed 0)", priority=0))
        view.event(Event("end", "u1", "clean of tiny (seed 0)", priority=0))
        view.claim_done()
        task = view.progress.tasks[0]
        assert task.description == "claims 1/3 judged, work 1/2"
        assert (task.completed, task.total) == (1, 2)


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 130, 3600 * 2 + 61)] == ["0:00:00", "0:01:00", "0:02:10",
                                                                            "2:01:01"]


def test_the_engine_tells_what_is_queued_and_for_which_claim(tmp_path: Path):
    events: list[Event] = []
    ctx = SimpleNamespace(cache=SimpleNamespace(root=tmp_path), device="cpu", train_threads=1)
    engine = Engine(ctx, MeasurementStore(tmp_path), on_event=events.append)
    first, second = make_unit("clean", n=1), make_unit("clean", n=2)
    engine.submit([first], priority=3)
    engine.submit([second, first], priority=1)  # `first` is now needed sooner: its priority rises
    assert [(e.what, e.key, e.priority) for e in events] == [("queued", first.key, 3), ("queued", second.key, 1)]
    engine._emit(Event("advance", first.key, "x", 1, 2))
    assert events[-1].priority == 1
    assert re.fullmatch(r"clean of \(no model\)", events[0].label)


def test_the_interval_comes_from_the_environment(monkeypatch):
    import pytest

    from mechcheck.errors import SpecError

    console, _ = plain_console()
    monkeypatch.setenv("MECHCHECK_PROGRESS_EVERY", "2.5")
    assert WorkProgress(console).interval == 2.5
    monkeypatch.setenv("MECHCHECK_PROGRESS_EVERY", "soon")
    with pytest.raises(SpecError, match="MECHCHECK_PROGRESS_EVERY='soon'"):
        WorkProgress(console)
    monkeypatch.delenv("MECHCHECK_PROGRESS_EVERY")
    assert WorkProgress(console).interval == 15.0
