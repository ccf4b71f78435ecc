"""The worker side of the engine: what one process needs to build models and compute units.

A `Worker` holds a build context, the measurement store and a few loaded models. The engine runs one in its
own process when `--workers 1`, or one per spawned process otherwise (`start_process`, `run_in_process`);
either way a piece of work is ``(kind, key, payload)`` and its outcome a plain dict, never an exception, so
the engine decides what a failure means for the claims that need it. Progress goes back as `Event`s.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mechcheck.measurements import MeasurementStore, ModelRef, Unit, UnitResult

__all__ = ["Event", "UnitContext", "Worker", "start_process", "run_in_process"]


@dataclass
class Event:
    """Progress of one piece of work: queued, started, advanced (done of total, fields) or finished.

    `priority` is the engine's (the index of the first claim that needs the work; -1: a check's request of
    the claim being judged), filled in by the engine for every event it passes on.
    """

    what: str  # "queued" | "start" | "advance" | "end"
    key: str
    label: str = ""
    done: int = 0
    total: int = 0
    fields: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    computed: bool = True
    priority: int | None = None


class Worker:
    """What one process needs to do work: the build context, the measurement store, loaded models."""

    def __init__(self, config: dict[str, Any], emit: Callable[[Event], None]) -> None:
        import torch

        from mechcheck.cache import ModelCache
        from mechcheck.models import pin_mkl_threads
        from mechcheck.recipes import BuildContext

        pin_mkl_threads()
        if config.get("threads"):
            torch.set_num_threads(config["threads"])
        self.config = config
        self.emit = emit
        self.build = BuildContext(ModelCache(config["cache_dir"]), config["device"], None, config["train_threads"])
        self.store = MeasurementStore(config["cache_dir"])
        self.handles: dict[str, Any] = {}
        #: model key -> what a unit records of the model it measured (weights' hash, training facts)
        self.models: dict[str, dict[str, Any]] = {}
        #: model key -> everything building it recorded (`Built.info`: training summary and history)
        self.infos: dict[str, dict[str, Any]] = {}

    def handle(self, ref: ModelRef):
        """The model of `ref`, built or loaded once per process (a few are kept)."""
        from mechcheck.models import prepare
        from mechcheck.recipes import build_model

        if ref.key not in self.handles:
            if len(self.handles) >= 6:  # keep memory bounded: drop the oldest
                old = next(iter(self.handles))
                self.handles.pop(old)
                self.infos.pop(old, None)
                self.build.memo.pop(old, None)
            built = build_model(ref.spec, ref.seed, self.build)
            self.handles[ref.key] = prepare(built.model, self.build.device)
            info = built.info or {}
            self.infos[ref.key] = info
            self.models[ref.key] = {"key": ref.key, "weights_sha256": info.get("weights_sha256") or
                                    info.get("fingerprint"), "seconds": info.get("seconds"),
                                    "train_accuracy": info.get("train_accuracy")}
        return self.handles[ref.key]

    def run(self, node: tuple[str, str, Any]) -> dict[str, Any]:
        """Do one piece of work; never raises (a failure is returned, with its category and traceback)."""
        kind, key, payload = node
        t0 = time.perf_counter()
        try:
            facts: dict[str, Any] = {}
            computed = self._build(key, payload, facts) if kind == "build" else self._unit(key, payload)
            return {"ok": True, "seconds": time.perf_counter() - t0, "computed": computed, "facts": facts}
        except BaseException as exc:  # noqa: BLE001 - reported to the main process, which decides
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"ok": False, "message": f"{type(exc).__name__}: {exc}", "category": _category(exc),
                    "traceback": traceback.format_exc(), "seconds": time.perf_counter() - t0}

    def _progress(self, key: str, label: str):
        last = [0.0]

        def report(done: int, total: int, fields: dict[str, Any] | None = None) -> None:
            now = time.perf_counter()
            if now - last[0] >= 0.25 or done >= total:
                last[0] = now
                self.emit(Event("advance", key, label, done, total, dict(fields or {})))

        return report

    def _build(self, key: str, ref: ModelRef, facts: dict[str, Any]) -> bool:
        from mechcheck.recipes import build_model

        self.build.on_progress = self._progress(key, ref.label)
        try:
            built = build_model(ref.spec, ref.seed, self.build)
        finally:
            self.build.on_progress = None
        if built.info.get("resumed_from_step"):
            facts["resumed_from_step"] = built.info["resumed_from_step"]
        return not built.cached

    def _unit(self, key: str, unit: Unit) -> bool:
        from mechcheck.registry import UNITS

        if self.store.has(key):
            return False
        with self.store.lock(key, on_wait=lambda who: self.emit(Event("advance", key, f"waiting for {who}"))):
            if self.store.has(key):  # another process computed it while we waited
                return False
            models = [self.handle(m) for m in unit.models]
            deps = [self.store.get(d.key) for d in unit.deps]
            if any(d is None for d in deps):
                raise RuntimeError(f"{unit.label}: a unit it reads is missing from the store")
            batch = unit.data.batch() if unit.data is not None else None
            t0 = time.perf_counter()
            ctx = UnitContext(models, batch, unit.arguments, deps, self._progress(key, unit.label),
                              self.build.device, unit.data, [self.infos[m.key] for m in unit.models])
            result = UNITS.get(unit.kind).func(ctx)
            result.meta.setdefault("seconds", round(time.perf_counter() - t0, 3))
            # which bits were measured: a unit found later for the same model key but other weights (a cache
            # carried to another machine, where training gives other bits) is stale and computed again
            result.meta["models"] = [self.models[m.key] for m in unit.models]
            self.store.put(key, result, {"kind": unit.kind, "label": unit.label, "args": unit.arguments,
                                         "models": [m.key for m in unit.models],
                                         "deps": [d.key for d in unit.deps]})
        return True


@dataclass
class UnitContext:
    """What a unit's compute function gets: loaded models, the data, its arguments, the units it reads."""

    models: list[Any]
    batch: Any
    args: dict[str, Any]
    deps: list[UnitResult]
    progress: Callable[..., None]
    device: str = "cpu"
    #: the unit's `DataRef` (task spec, n, split, seed), for units that draw more data of the same task
    data: Any = None
    #: per model, what building it recorded (for a trained fixture: its training summary and history)
    infos: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self):
        return self.models[0]


def _category(exc: BaseException) -> str:
    from mechcheck.errors import ClaimSkipped, SpecError
    from mechcheck.models import CheckpointError

    if isinstance(exc, ClaimSkipped):
        return "skipped"
    if isinstance(exc, (SpecError, CheckpointError)):
        return "spec"
    return "error"


_STATE: Worker | None = None


def start_process(config: dict[str, Any], queue) -> None:
    global _STATE
    import signal

    # Ctrl-C goes to the whole process group: the main process decides; a worker in training saves its
    # resumable state when interrupted (train.py), then the pool is shut down.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _STATE = Worker(config, lambda event: queue.put(event))


def run_in_process(node):
    _STATE.emit(Event("start", node[1], _label(node)))
    return _STATE.run(node)


def _label(node) -> str:
    kind, _, payload = node
    return f"build {payload.label}" if kind == "build" else payload.label
