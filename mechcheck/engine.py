"""The engine: build model fixtures and compute measurement units, each once, in parallel worker processes.

Work is a graph. A unit needs its models built and the units it reads computed; a fine-tune needs its parent.
Whatever the caches already hold is not work: a unit already stored needs nothing, not even its models, and a
model already cached is not trained again. What is left runs on `workers` processes (default: the number of
cores), each single-threaded, so that two workers use two cores and every number is the same bits as a
serial run (training and measuring on one thread is what makes them reproducible on one machine). Ready work
runs in priority order: what the claim being judged next is waiting for first.

Two runs sharing one cache, or pytest-xdist workers, never do the same work at the same time: every build and
every unit is computed under a per-key lock, and looked up again once the lock is held.

Failures stay local: a failed build fails the units that need it (and only the claims that need those), with
the reason; everything else goes on.
"""

from __future__ import annotations

import heapq
import os
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mechcheck.measurements import MeasurementStore, ModelRef, Unit, UnitResult
from mechcheck.worker import Event, UnitContext, Worker, run_in_process, start_process

__all__ = ["Engine", "WorkFailed", "Event", "UnitContext", "default_workers"]


def default_workers() -> int:
    """$MECHCHECK_WORKERS if set, else the number of usable cores."""
    value = os.environ.get("MECHCHECK_WORKERS")
    if value:
        return max(1, int(value))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class WorkFailed(Exception):
    """A build or unit failed (or something it needs did): `category` is "skipped", "spec" or "error"."""

    def __init__(self, message: str, category: str = "error", traceback_text: str | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.traceback = traceback_text


@dataclass
class _Node:
    key: str
    kind: str  # "build" | "unit"
    payload: Any  # ModelRef | Unit
    deps: set[str]
    priority: int
    label: str
    state: str = "waiting"  # waiting | ready | running | done | failed
    error: WorkFailed | None = None
    seconds: float = 0.0


# -------------------------------------------------------------------------------------------- engine


class Engine:
    """Schedules builds and units; `submit` adds work, `wait` runs it until the given keys are done."""

    def __init__(self, build_ctx, store: MeasurementStore, workers: int = 1, threads: int = 1,
                 on_event: Callable[[Event], None] | None = None) -> None:
        self.build_ctx, self.store = build_ctx, store
        self.workers = max(1, int(workers))
        self.threads = threads
        self.on_event = on_event or (lambda e: None)
        self.nodes: dict[str, _Node] = {}
        self._weights: dict[str, str | None] = {}
        self._ready: list[tuple[int, int, str]] = []
        self._seq = 0
        self._pool = None
        self._queue = None
        self._running: dict[Any, str] = {}
        self._local: Worker | None = None
        self.config = {"cache_dir": str(build_ctx.cache.root),
                       "device": build_ctx.device, "train_threads": build_ctx.train_threads, "threads": threads}

    # ---- graph -------------------------------------------------------------------------------------

    def submit(self, units: Iterable[Unit], priority: int = 0) -> list[str]:
        """Add `units` (and what they need that no cache holds yet); returns their keys."""
        keys = []
        for unit in units:
            self._add_unit(unit, priority)
            keys.append(unit.key)
        return keys

    def _add_unit(self, unit: Unit, priority: int) -> None:
        node = self.nodes.get(unit.key)
        if node is not None:
            self._raise(node, priority)
            return
        if self.store.has(unit.key) and not self._stale(unit):
            self.nodes[unit.key] = _Node(unit.key, "unit", unit, set(), priority, unit.label, "done")
            return
        deps = set()
        for d in unit.deps:
            self._add_unit(d, priority)
            deps.add(d.key)
        for m in unit.models:
            if self._add_build(m, priority):
                deps.add(m.key)
        self.nodes[unit.key] = _Node(unit.key, "unit", unit, deps, priority, unit.label)
        self._emit(Event("queued", unit.key, unit.label))
        self._promote(unit.key)

    def _stale(self, unit: Unit) -> bool:
        """Whether a stored unit measured other weights than the cache now holds for its models (then it is
        discarded and computed again). A model not in the cache cannot be compared: the unit stands."""
        from mechcheck.recipes import is_trained

        stored = self.store.get(unit.key)
        recorded = {m.get("key"): m.get("weights_sha256") for m in (stored.meta.get("models") or [])} if stored else {}
        for ref in unit.models:
            if not is_trained(ref.spec):
                continue
            if ref.key not in self._weights:
                hit = self.build_ctx.cache.get(ref.key)
                self._weights[ref.key] = hit[1]["files"].get("model.safetensors") if hit else None
            now = self._weights[ref.key]
            if now is not None and recorded.get(ref.key) not in (None, now):
                self.store.discard(unit.key)
                return True
        return False

    def _add_build(self, ref: ModelRef, priority: int) -> bool:
        """Add the build of `ref` if it trains and is not cached; True if there is a node to wait for."""
        from mechcheck.recipes import is_trained, parents

        node = self.nodes.get(ref.key)
        if node is not None:
            self._raise(node, priority)
            return True
        if not is_trained(ref.spec) or self.build_ctx.cache.get(ref.key) is not None:
            return False
        deps = {p.key for p in parents(ref, self.build_ctx) if self._add_build(p, priority)}
        self.nodes[ref.key] = _Node(ref.key, "build", ref, deps, priority, f"build {ref.label}")
        self._emit(Event("queued", ref.key, f"build {ref.label}"))
        self._promote(ref.key)
        return True

    def _raise(self, node: _Node, priority: int) -> None:
        """Give `node` (and what it waits for) the more urgent of its priority and `priority`."""
        if priority >= node.priority or node.state in ("done", "failed", "running"):
            return
        node.priority = priority
        if node.state == "ready":
            self._push(node)
        for d in node.deps:
            if d in self.nodes:
                self._raise(self.nodes[d], priority)

    def _emit(self, event: Event) -> None:
        """Pass `event` on, with the current priority of its piece of work (which claim it is for)."""
        node = self.nodes.get(event.key)
        if node is not None:
            event.priority = node.priority
        self.on_event(event)

    def _push(self, node: _Node) -> None:
        self._seq += 1
        heapq.heappush(self._ready, (node.priority, self._seq, node.key))

    def _promote(self, key: str) -> None:
        node = self.nodes[key]
        if node.state != "waiting":
            return
        failed = [self.nodes[d] for d in node.deps if self.nodes[d].state == "failed"]
        if failed:
            first = failed[0]
            self._fail(node, WorkFailed(f"{first.label} failed: {first.error}", first.error.category,
                                        first.error.traceback))
        elif all(self.nodes[d].state == "done" for d in node.deps):
            node.state = "ready"
            self._push(node)

    def _fail(self, node: _Node, error: WorkFailed) -> None:
        node.state, node.error = "failed", error
        for other in self.nodes.values():
            if node.key in other.deps and other.state == "waiting":
                self._promote(other.key)

    def _finish(self, node: _Node, outcome: dict[str, Any]) -> None:
        node.seconds = outcome.get("seconds", 0.0)
        if outcome["ok"]:
            node.state = "done"
            self._emit(Event("end", node.key, node.label, seconds=node.seconds,
                             computed=outcome.get("computed", True), fields=outcome.get("facts") or {}))
            for other in self.nodes.values():
                if node.key in other.deps and other.state == "waiting":
                    self._promote(other.key)
        else:
            self._emit(Event("end", node.key, node.label, seconds=node.seconds, computed=False,
                             fields={"error": outcome["message"]}))
            self._fail(node, WorkFailed(outcome["message"], outcome["category"], outcome.get("traceback")))

    # ---- running ----------------------------------------------------------------------------------

    def wait(self, keys: Iterable[str]) -> dict[str, WorkFailed]:
        """Run work until every key in `keys` is done or failed; returns the failures among them."""
        keys = list(keys)
        while any(self.nodes[k].state not in ("done", "failed") for k in keys):
            if self.workers == 1:
                self._step_local()
            else:
                self._step_pool()
        return {k: self.nodes[k].error for k in keys if self.nodes[k].state == "failed"}

    def _pop(self) -> _Node | None:
        while self._ready:
            _, _, key = heapq.heappop(self._ready)
            node = self.nodes[key]
            if node.state == "ready":
                return node
        return None

    def _step_local(self) -> None:
        node = self._pop()
        if node is None:
            raise RuntimeError("engine: nothing is ready but work is waiting (a dependency cycle?)")
        if self._local is None:
            self._local = Worker(self.config, self._emit)
        node.state = "running"
        self._emit(Event("start", node.key, node.label))
        self._finish(node, self._local.run((node.kind, node.key, node.payload)))

    def _step_pool(self) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        if self._pool is None:
            self._start_pool()
        while len(self._running) < self.workers:
            node = self._pop()
            if node is None:
                break
            node.state = "running"
            self._running[self._pool.submit(run_in_process, (node.kind, node.key, node.payload))] = node.key
        if not self._running:
            raise RuntimeError("engine: nothing is ready but work is waiting (a dependency cycle?)")
        done, _ = wait(list(self._running), timeout=0.2, return_when=FIRST_COMPLETED)
        self._drain()
        for future in done:
            node = self.nodes[self._running.pop(future)]
            try:
                outcome = future.result()
            except Exception as exc:  # noqa: BLE001 - a worker that died (e.g. out of memory)
                outcome = {"ok": False, "message": f"worker process failed: {type(exc).__name__}: {exc}",
                           "category": "error", "traceback": traceback.format_exc()}
            self._finish(node, outcome)

    def _drain(self) -> None:
        import queue

        while True:
            try:
                self._emit(self._queue.get_nowait())
            except queue.Empty:
                return

    def _start_pool(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread state
        self._queue = ctx.Queue()
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=start_process,
                                         initargs=(self.config, self._queue))

    def result(self, unit: Unit) -> UnitResult:
        got = self.store.get(unit.key)
        if got is None:
            raise RuntimeError(f"{unit.label}: not in the measurement store (key {unit.key[:12]})")
        return got

    def seconds(self, key: str) -> float:
        node = self.nodes.get(key)
        return node.seconds if node else 0.0

    def close(self, cancel: bool = False) -> None:
        """Stop the worker processes (at once with `cancel`: work in progress is abandoned)."""
        if self._pool is not None:
            if cancel:
                for p in list(getattr(self._pool, "_processes", {}).values()):
                    p.terminate()
            self._pool.shutdown(wait=not cancel, cancel_futures=True)
            self._pool = None
