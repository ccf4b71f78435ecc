"""Measurements as data: units of work with content keys, their stored arrays, and what checks read.

A *unit* is one measurement of one or more models on one data set: "the clean metrics of cdm-scratch seed 1
on 1000 cdm-words eval prompts", "the mean-ablation sweep of that model on those prompts", "the decoders fitted
on those activations". Its key is a hash of everything its numbers depend on: the unit kind and its code
version, the cache keys of its models (which cover their whole recipe graph), the data set (task generator,
its version and arguments, n, split, seed), the unit's arguments, the keys of the units it reads, and where
it was computed (device type, threads). Two claims that need the same unit compute it once; a run on a warm
cache computes nothing; a changed threshold is re-judged from stored numbers without a model.

Units are stored beside the model cache, one entry per key: the arrays as safetensors (never pickled) and a
JSON of metadata, written atomically and verified on every read like model entries.

`Measurements` is what a check sees: per role, the replicate seeds, model keys, scope (a claim about a
training *recipe*, or about one *checkpoint*) and one dict of named arrays per replicate, plus facts about
the eval data. It is plain data: it holds no model and runs no forward pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MEASURE_FORMAT", "ModelRef", "DataRef", "Unit", "UnitResult", "Request", "MeasurementStore", "RoleData",
    "Measurements", "make_unit", "data_ref", "digest",
]

#: Bump when the layout of a stored unit or the meaning of a unit key changes (it is part of every key).
MEASURE_FORMAT = 1


def digest(payload: Any) -> str:
    """SHA-256 of the canonical JSON of `payload` (sorted keys, no whitespace)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """One replicate of one model fixture: the spec, the seed it is built with, and its cache key."""

    spec: Any  # mechcheck.spec.ModelSpec
    seed: int
    key: str

    @property
    def label(self) -> str:
        return f"{self.spec.name} (seed {self.seed})" if self.spec.recipe != "load" else self.spec.name


@dataclass(frozen=True)
class DataRef:
    """A data set: `n` examples of a task fixture's `split`, drawn with `seed`."""

    task: Any  # mechcheck.spec.TaskSpec
    n: int
    split: str
    seed: int
    key: str

    def batch(self):
        from mechcheck.recipes import make_task

        return make_task(self.task).sample(self.n, self.split, self.seed)


def data_ref(task_spec, n: int, split: str, seed: int) -> DataRef:
    from mechcheck.recipes import task_payload

    return DataRef(task_spec, n, split, seed, digest({"task": task_payload(task_spec), "n": n, "split": split,
                                                     "seed": seed}))


@dataclass(frozen=True)
class Unit:
    """A measurement to compute once: kind, models, data, arguments (JSON-able), units it reads, key."""

    kind: str
    models: tuple[ModelRef, ...]
    data: DataRef | None
    args: str  # canonical JSON, so the unit stays hashable
    deps: tuple[Unit, ...]
    key: str

    @property
    def arguments(self) -> dict[str, Any]:
        return json.loads(self.args)

    @property
    def label(self) -> str:
        who = ", ".join(m.label for m in self.models) or "(no model)"
        return f"{self.kind} of {who}"


def make_unit(kind: str, models: tuple[ModelRef, ...] = (), data: DataRef | None = None,
              deps: tuple[Unit, ...] = (), env: Mapping[str, Any] | None = None, **args: Any) -> Unit:
    """A `Unit` with its key: a hash of kind, unit code version, model keys, data, args, deps and `env`."""
    from mechcheck.registry import UNITS

    entry = UNITS.get(kind)
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), default=_jsonable)
    payload = {"kind": kind, "version": entry.meta.get("version", "1"), "models": [m.key for m in models],
               "data": data.key if data else None, "args": json.loads(canonical), "deps": [d.key for d in deps],
               "env": dict(env or {}) if entry.meta.get("uses_model", True) else {}, "format": MEASURE_FORMAT}
    return Unit(kind, tuple(models), data, canonical, tuple(deps), digest(payload))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"unit arguments must be JSON data, got {type(value).__name__}")


@dataclass
class UnitResult:
    """A computed unit: named arrays and JSON metadata (e.g. seconds it took, counts of failed fits)."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """What a check needs beyond the experiment's measurements, for one replicate of one role: a unit of
    `kind` with `args` (e.g. a joint ablation of the heads it selected), stored under `name`."""

    role: str
    replicate: int
    name: str
    kind: str
    args: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, role: str, replicate: int, name: str, kind: str, **args: Any) -> Request:
        return cls(role, replicate, name, kind, tuple(sorted((k, _freeze(v)) for k, v in args.items())))

    @property
    def arguments(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.args}


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    return v


def _thaw(v: Any) -> Any:
    return [_thaw(x) for x in v] if isinstance(v, tuple) else v


class MeasurementStore:
    """Computed units by key, next to the model cache: safetensors arrays + metadata, atomic, verified."""

    def __init__(self, root: Path | str | None = None) -> None:
        from mechcheck.cache import Store, default_cache_dir

        self.store = Store(Path(root).expanduser() if root else default_cache_dir(), "measurements")

    @property
    def root(self) -> Path:
        return self.store.root

    def get(self, key: str) -> UnitResult | None:
        hit = self.store.get(key)
        if hit is None:
            return None
        path, meta = hit
        from safetensors.numpy import load_file

        arrays = load_file(str(path / "arrays.safetensors")) if (path / "arrays.safetensors").exists() else {}
        return UnitResult(dict(arrays), meta.get("meta", {}))

    def has(self, key: str) -> bool:
        return self.store.get(key) is not None

    def discard(self, key: str) -> None:
        """Remove the entry of `key` (a stale measurement), so that it is computed and stored again."""
        import shutil

        shutil.rmtree(self.store.entry(key), ignore_errors=True)

    def put(self, key: str, result: UnitResult, describe: Mapping[str, Any]) -> None:
        from safetensors.numpy import save_file

        def write(tmp: Path) -> None:
            arrays = {k: np.ascontiguousarray(v) for k, v in result.arrays.items()}
            if arrays:
                save_file(arrays, str(tmp / "arrays.safetensors"))

        self.store.put(key, write, {"meta": result.meta, "unit": dict(describe)})

    def lock(self, key: str, on_wait: Callable[[str], None] | None = None):
        return self.store.lock(key, on_wait)


@dataclass
class RoleData:
    """The measurements of one role: one dict of named arrays per replicate, and where they came from."""

    fixture: str
    recipe: str
    #: "recipe": replicates are independent trainings and the claim is about the training recipe;
    #: "checkpoint": one fixed model (loaded, or trained with a fixed seed), the claim is about it
    scope: str
    n_layers: int
    n_heads: int
    seeds: list[int]
    keys: list[str]
    replicates: list[dict[str, np.ndarray]]
    #: per replicate, what checks asked for on top of the experiment (name -> arrays)
    extra: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)
    #: per replicate, the units' metadata (e.g. decoders that did not converge)
    meta: list[dict[str, Any]] = field(default_factory=list)

    def values(self, name: str) -> list[np.ndarray]:
        """Per replicate, the array `name` (KeyError naming what exists)."""
        out = []
        for rep in self.replicates:
            if name not in rep:
                raise KeyError(f"no measurement {name!r} (have: {', '.join(sorted(rep))})")
            out.append(rep[name])
        return out

    @property
    def n_replicates(self) -> int:
        return len(self.replicates)


@dataclass
class Measurements:
    """Everything a claim's checks read: per role `RoleData`, the experiment and its arguments, and the
    eval data's facts (size, number of answer candidates, labels, token-group masks, answer positions)."""

    experiment: str
    args: dict[str, Any]
    roles: dict[str, RoleData]
    n: int
    n_candidates: int
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    answer_pos: np.ndarray | None = None
    #: the claim's data seed: everything random a check draws (halves, control sets) is drawn from it
    seed: int = 0

    def role(self, name: str) -> RoleData:
        return self.roles[name]
