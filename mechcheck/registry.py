"""Name -> function registries for tasks, experiments, checks and model recipes.

A claim file names behaviour by a registered name plus plain arguments; the registry is what turns the
name back into a function, and what `mechcheck validate` uses to check the arguments *without* importing
torch or touching a model. Each entry declares its parameters (`Param`) so that a typo in a claim file is
caught with the field path, the allowed names and the nearest valid one.

Extend by registering a function, never by subclassing. A plugin is a module that registers entries when
it is imported, named in the ``mechcheck.plugins`` entry point group; the built-ins are such a module too
(`mechcheck.builtins`), loaded the same way, first.

Kinds: tasks (data generators), experiments (what a claim runs: a plan of measurement units), units (one
measurement: its compute function and code version), checks (expectations judged on measurements), recipes
(how a model fixture is built) and figures (drawers of an experiment's report figures).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Param", "Entry", "Registry", "TASKS", "EXPERIMENTS", "CHECKS", "RECIPES", "UNITS", "FIGURES",
           "load_builtins", "BUILTINS"]

#: Parameter kinds understood by the spec validator (`mechcheck.spec`):
#: int, float (ints accepted), str, bool, choice (one of `choices`), layers (list of ints),
#: head ([layer, head]), heads (list of [layer, head], or a selector string: "top_head", "top_<k>"),
#: model (a role named in the claim's `models`), tokens (a token-group name of the task), mapping (free dict),
#: ints (non-empty list of distinct ints within min/max), floats (non-empty list of numbers within min/max,
#: repeats allowed, e.g. a probability vector), strings (non-empty list of distinct names; one of
#: `choices` each when choices are given; a single name is accepted as a list of one),
#: label (one label of the claim's eval task), labels (non-empty list of distinct labels of the eval task; a
#: single name is accepted as a list of one).
PARAM_KINDS = (
    "int", "float", "str", "bool", "choice", "layers", "head", "heads", "model", "tokens", "mapping", "ints",
    "floats", "strings", "label", "labels",
)
#: What `Param.limit` may name: "heads" = at most the number of heads (n_layers x n_heads) of the check's model.
PARAM_LIMITS = ("heads",)


@dataclass(frozen=True)
class Param:
    """One argument a registered function accepts in a claim or fixture file."""

    name: str
    kind: str
    required: bool = False
    default: Any = None
    choices: tuple[Any, ...] = ()
    doc: str = ""
    #: for numbers: inclusive bounds (None = unbounded)
    min: float | None = None
    max: float | None = None
    #: for a check's argument: the name of an argument of the claim's experiment whose value(s) this value must
    #: be one of (after the experiment's defaults), e.g. a decoding check's `variable` within `variables`
    within: str | None = None
    #: for an int: a bound that depends on the check's model (one of PARAM_LIMITS), checked against the shape
    #: the model declares at validation and against the built model before any experiment runs
    limit: str | None = None
    #: an argument added after claims were judged without it: at its default it is left out of the normalised
    #: arguments (`Entry.with_defaults`), so the recorded arguments of every claim that does not use it, and the
    #: check ids a baseline is compared by, stay as they were (the registered function has the default itself)
    keyless: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PARAM_KINDS:
            raise ValueError(f"Param {self.name!r}: unknown kind {self.kind!r} (allowed: {', '.join(PARAM_KINDS)})")
        if self.limit is not None and (self.limit not in PARAM_LIMITS or self.kind != "int"):
            raise ValueError(f"Param {self.name!r}: limit {self.limit!r} needs kind 'int' and one of "
                             f"{', '.join(PARAM_LIMITS)}")


@dataclass(frozen=True)
class Entry:
    """A registered function and the parameters it accepts."""

    name: str
    func: Callable[..., Any]
    params: tuple[Param, ...]
    doc: str = ""
    #: extra facts a registry kind needs (e.g. a task generator's `version` and `token_groups`)
    meta: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def with_defaults(self, args: dict[str, Any]) -> dict[str, Any]:
        """`args` completed with the declared defaults (the normalised form recorded in reports and cache keys);
        a `keyless` argument at its default is left out, whether written or not."""
        out = {p.name: p.default for p in self.params if not p.required and not p.keyless}
        out.update(args)
        for p in self.params:
            if p.keyless and p.name in out and out[p.name] == p.default:
                del out[p.name]
        return out


class Registry:
    """A named collection of `Entry`s of one kind ("task", "experiment", "check", "recipe")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, params: tuple[Param, ...] = (), doc: str = "", **meta: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register `func` under `name`. Registering a name twice is an error.

        Keywords other than `params` and `doc` are kept in the entry's `meta`. The validator reads:
        checks: ``experiments=(...)``, the experiments whose measurements the check reads (absent: any);
        tasks: ``token_groups=(...)`` and ``labels=(...)``, what every batch of the task marks (absent labels:
        unknown, not checked); ``version``, ``keyless_defaults`` (cache keys).
        """
        for key in ("experiments", "labels", "token_groups"):
            if key in meta:  # a bare string would be read as a list of its characters
                if isinstance(meta[key], str) or not all(isinstance(x, str) for x in meta[key]):
                    raise ValueError(f"{self.kind} {name!r}: {key} must be a tuple of names, got {meta[key]!r}")
                meta[key] = tuple(meta[key])

        def deco(func: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name].func is not func:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].func!r}")
            first_doc_line = (doc or (func.__doc__ or "")).strip().splitlines()
            self._entries[name] = Entry(name, func, tuple(params), first_doc_line[0] if first_doc_line else "", meta)
            return func

        return deco

    def get(self, name: str) -> Entry:
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}") from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries


TASKS = Registry("task")
EXPERIMENTS = Registry("experiment")
UNITS = Registry("measurement unit")
CHECKS = Registry("check")
RECIPES = Registry("recipe")
FIGURES = Registry("figure")

#: the plugin module of the built-in entries (loaded first, as any plugin is)
BUILTINS = "mechcheck.builtins"
_loaded = False


def _load_plugin(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - say which plugin broke, not just the import error
        raise ImportError(f"mechcheck plugin {module!r} ({where}) failed to load: {type(exc).__name__}: {exc}") from exc


def load_builtins() -> None:
    """Load the built-in plugin, then every ``mechcheck.plugins`` entry point (each once).

    Plugin modules import torch lazily, inside their functions, so validation stays fast and model-free.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    _load_plugin(BUILTINS, "built-in")
    from importlib.metadata import entry_points

    for ep in entry_points(group="mechcheck.plugins"):
        _load_plugin(ep.value.split(":")[0], f"entry point {ep.name!r}")
