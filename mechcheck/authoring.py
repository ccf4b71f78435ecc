"""Authoring aids: a JSON Schema of claim and fixture files, and commented claim skeletons (`mechcheck new`).

The schema is generated from the registry (experiments, checks, task generators, recipes and their `Param`s) and
from the loader's own field declarations, so a YAML language server completes and checks the same names the
loader accepts. It is never stricter than the loader for a file that validates under each profile it defines:

- `required` is relaxed for a field that some `profiles:` overlay sets (the merged file may be complete);
  values inside overlays are checked for names and types, not completeness (they are deep-merged into the base).
- Looser than the loader (needs another section, the file's name or a model): a fixture's `name` against its
  file name, `n_embd` divisible by `n_head`, check arguments that name roles, token groups or labels of *this*
  claim (only the registered names are offered), `within` and index rules (`mechcheck.spec.cross`), `pkg:`
  paths, duplicate claim ids, and a field set both in the base and an overlay where only one is allowed.
- One corner the other way: a base value that *every* profile's overlay replaces is never read by the loader,
  but the schema still checks its names and types.

`skeleton` (a commented claim file for one experiment) lives in `mechcheck.skeleton` and is re-exported here.
"""

from __future__ import annotations

from typing import Any

from mechcheck.registry import CHECKS, EXPERIMENTS, RECIPES, TASKS, Param, Registry
from mechcheck.skeleton import _num, describe, skeleton
from mechcheck.spec.fields import (
    ARCH_FIELDS, CLAIM_OVERLAY, DATA_FIELDS, FIXTURE_RE, ID_RE, MODEL_OVERLAY, RECIPE_RULES, ROLE_RE, SOURCE_FIELDS,
    TASK_OVERLAY, TRAIN_FIELDS, TRAINED,
)
from mechcheck.spec.profiles import _PROFILE_RE

__all__ = ["KINDS", "json_schema", "skeleton"]

#: what `json_schema` can describe: one kind of file, or "all" (dispatching on `recipe` / `generator`)
KINDS = ("claim", "model", "task", "all")
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_NULL = {"type": "null"}
_HEAD = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}
# `mechcheck.spec.kinds._SELECTOR_RE` plus its "k >= 1" rule, in one pattern (tests compare the two)
_SELECTOR = r"^top_(head|0*[1-9][0-9]*)$"


def _union_meta(key: str) -> list[str] | None:
    """Every name a task generator declares under `key`; None if some generator does not declare it."""
    names: list[str] = []
    for g in TASKS.names():
        declared = TASKS.get(g).meta.get(key)
        if declared is None and key == "labels":
            return None  # the loader does not check label names against such a task
        names += [x for x in declared or () if x not in names]
    return names


def _one_or_list(one: dict[str, Any], items: dict[str, Any]) -> dict[str, Any]:
    """`one` (a string) or a non-empty list of distinct `items`, told apart by type (no anyOf: errors stay exact)."""
    s = {"type": ["string", "array"], "items": items, "minItems": 1, "uniqueItems": True}
    rest = {k: v for k, v in one.items() if k != "type"}
    return s | ({"if": {"type": "string"}, "then": rest} if rest else {})


def _kind(p: Param) -> dict[str, Any]:
    """The schema of one value of `p`'s kind (null not included)."""
    k, s = p.kind, {}
    bounds = {key: _num(v) for key, v in (("minimum", p.min), ("maximum", p.max)) if v is not None}
    if k in ("int", "float"):
        s = {"type": "integer" if k == "int" else "number", **bounds}
    elif k in ("str", "bool", "mapping"):
        s = {"type": {"str": "string", "bool": "boolean", "mapping": "object"}[k]}
    elif k == "choice":
        s = {"enum": list(p.choices)}
    elif k == "model":
        s = {"type": "string", "pattern": ROLE_RE.pattern}
    elif k in ("tokens", "label", "labels"):
        names = _union_meta("token_groups" if k == "tokens" else "labels")
        one = {"type": "string", **({"enum": names} if names is not None else {})}
        s = one if k != "labels" else _one_or_list(one, one)
    elif k == "layers":
        s = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
    elif k == "ints":
        s = {"type": "array", "items": {"type": "integer", **bounds}, "minItems": 1, "uniqueItems": True}
    elif k == "floats":
        s = {"type": "array", "items": {"type": "number", **bounds}, "minItems": 1}
    elif k == "strings":
        one = {"type": "string", **({"enum": list(p.choices)} if p.choices else {})}
        s = _one_or_list(one, one)
    elif k == "head":
        s = dict(_HEAD)
    elif k == "heads":
        s = _one_or_list({"type": "string", "pattern": _SELECTOR}, _HEAD)
    return s


def _nullable(s: dict[str, Any]) -> dict[str, Any]:
    """`s` or null, as a type list or enum where it can be (editors complete those best)."""
    if "enum" in s:
        return s | {"enum": [*s["enum"], None]}
    if "type" in s:
        return s | {"type": [*([s["type"]] if isinstance(s["type"], str) else s["type"]), "null"]}
    return {"anyOf": [s, _NULL]}


def _param(p: Param) -> dict[str, Any]:
    """The schema of `p`'s value, with its doc and default; null where the loader reads it as "not set"."""
    s = _kind(p)
    if not p.required and p.default is None:
        s = _nullable(s)
    s["description"] = "; ".join(x for x in (p.doc, describe(p)) if x)
    if p.default is not None:
        s["default"] = p.default
    return s


def _fields(params: tuple[Param, ...], partial: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A mapping of `params` (no other key). Null reads as empty, an error when something is required."""
    props = {p.name: _param(p) for p in params} | (extra or {})
    required = [p.name for p in params if p.required]
    s: dict[str, Any] = {"type": "object" if required else ["object", "null"], "properties": props,
                         "additionalProperties": False}
    if required and not partial:
        s["required"] = required
    return s


def _call(registry: Registry, partial: bool) -> dict[str, Any]:
    """`{name: {arguments}}` of one registered entry, or a bare name where it has no required argument."""
    names = registry.names()
    props = {}
    for n in names:
        e = registry.get(n)
        reads = e.meta.get("experiments")
        props[n] = _fields(e.params, partial) | {"description": e.doc + (f" (reads {', '.join(reads)})"
                                                                          if reads else "")}
    s = {"type": "object", "minProperties": 1, "maxProperties": 1, "propertyNames": {"enum": names},
         "properties": props}
    bare = [n for n in names if partial or not any(p.required for p in registry.get(n).params)]
    return {"if": {"type": "string"}, "then": {"enum": bare}, "else": s} if bare else s


def _ref(kind: str, partial: bool) -> dict[str, Any]:
    """A fixture name (fixtures/<kind>s/<name>.yaml) or an inline definition."""
    return {"description": f"a {kind} fixture name, or an inline {kind} mapping", "if": {"type": "string"},
            "then": {"pattern": FIXTURE_RE.pattern},
            "else": {"$ref": f"#/$defs/{kind}_{'partial' if partial else 'inline'}"}}


def _no_overlay_sets(key: str) -> dict[str, Any]:
    """Matches a mapping none of whose `profiles` overlays sets `key` (also: no `profiles` at all)."""
    return {"properties": {"profiles": {"additionalProperties": {"not": {"type": "object", "required": [key]}}}}}


def _unless_overlaid(key: str, then: dict[str, Any]) -> dict[str, Any]:
    """`then` applies unless some overlay sets `key` (the merged file may then get it from the overlay)."""
    return {"if": _no_overlay_sets(key), "then": then}


def _profiles(overlay: dict[str, Any]) -> dict[str, Any]:
    return {"type": ["object", "null"], "propertyNames": {"pattern": _PROFILE_RE.pattern},
            "additionalProperties": _nullable(overlay),
            "description": "profile name -> overlay deep-merged into this file when the profile is selected"}


def _overlay(props: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {"type": "object", "properties": {k: props[k] for k in keys}, "additionalProperties": False}


def _exactly_one(a: str, b: str, partial: bool) -> list[dict[str, Any]]:
    """Not both `a` and `b`; and (complete files only) one of them, in the base or an overlay."""
    rules: list[dict[str, Any]] = [{"not": {"required": [a, b]}}]
    if not partial:
        rules.append({"anyOf": [{"required": [a]}, {"required": [b]}, {"not": _no_overlay_sets(a)},
                                {"not": _no_overlay_sets(b)}]})
    return rules


def _model(mode: str) -> dict[str, Any]:
    """A model fixture: `mode` "file", "inline" (no `name` needed), "partial" (inside an overlay: nothing needed)."""
    partial = mode == "partial"
    train_extra = {}  # Param bounds are inclusive; the loader wants these two > 0
    for p in (p for p in TRAIN_FIELDS if p.name in ("lr", "grad_clip")):
        s = {k: v for k, v in _param(p).items() if k != "minimum"}
        train_extra[p.name] = s | {"exclusiveMinimum": 0, "description": s["description"].replace(">=", ">")}
    strict = {"architecture": _fields(ARCH_FIELDS, False), "train": _fields(TRAIN_FIELDS, False, train_extra),
              "task": _ref("task", False), "from": _ref("model", False)}
    props: dict[str, Any] = {
        "name": {"type": "string"} if mode == "file" else {"type": ["string", "null"]},
        "description": {"type": "string"},
        "recipe": {"enum": RECIPES.names(), "description": "how the model is built"},
        "architecture": _fields(ARCH_FIELDS, True),
        "task": _ref("task", True),
        "train": _fields(TRAIN_FIELDS, True, train_extra),
        "from": _ref("model", True),
        **{k: {"type": ["string", "null"]} for k in ("path", "hub", "revision", "adapter")},
        "dtype": {"enum": ["float32", "float16", "bfloat16", None], "description": "load: cast the weights"},
        "seed": {"type": ["integer", "null"], "minimum": 0},
    }
    props["profiles"] = _profiles(_overlay(props, MODEL_OVERLAY))
    s: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False,
                         "required": [] if partial else (["name", "recipe"] if mode == "file" else ["recipe"])}
    rules = [] if partial else [_unless_overlaid(k, {"properties": {k: v}}) for k, v in strict.items()]
    for recipe in RECIPES.names():
        if recipe not in (*TRAINED, "load"):
            continue  # a plugin recipe: its fields are its own business
        banned = {k: {"not": {}, "description": f"not allowed for recipe '{recipe}' (only for {', '.join(allowed)})"}
                  for k, (_, allowed) in RECIPE_RULES.items() if recipe not in allowed}
        then: dict[str, Any] = {"properties": {**banned, "profiles": {"additionalProperties": {"properties": banned}}}}
        needed = [k for k, (needed_by, _) in RECIPE_RULES.items() if recipe in needed_by]
        pair = {"scratch": ("architecture", "from"), "load": ("path", "hub")}.get(recipe)
        all_of = (_exactly_one(*pair, partial) if pair else []) + (
            [] if partial else [_unless_overlaid(k, {"required": [k]}) for k in needed])
        if all_of:
            then["allOf"] = all_of
        rules.append({"if": {"properties": {"recipe": {"const": recipe}}, "required": ["recipe"]}, "then": then})
    return s | {"allOf": rules} if rules else s


def _task(mode: str) -> dict[str, Any]:
    """A task fixture (`mode` as for `_model`); its `args` are keyed by the generator."""
    partial = mode == "partial"
    props: dict[str, Any] = {
        "name": {"type": "string"} if mode == "file" else {"type": ["string", "null"]},
        "description": {"type": "string"},
        "generator": {"enum": TASKS.names(), "description": "a registered task generator"},
        "args": {"type": ["object", "null"], "description": "the generator's arguments"},
    }
    props["profiles"] = _profiles(_overlay(props, TASK_OVERLAY))
    rules = []
    for g in TASKS.names():
        params = TASKS.get(g).params
        then: dict[str, Any] = {"properties": {
            "args": _fields(params, True), "profiles": {"additionalProperties": {"properties": {
                "args": _fields(params, True)}}}}}
        if not partial:
            then["allOf"] = [_unless_overlaid("args", {"properties": {"args": _fields(params, False)}})]
            if any(p.required for p in params):
                then["allOf"].append(_unless_overlaid("args", {"required": ["args"]}))
        rules.append({"if": {"properties": {"generator": {"const": g}}, "required": ["generator"]}, "then": then})
    required = [] if partial else (["name", "generator"] if mode == "file" else ["generator"])
    return {"type": "object", "properties": props, "additionalProperties": False, "required": required,
            "allOf": rules}


def _claim() -> dict[str, Any]:
    """A claim file; `models`, `data`, `experiment` and `expect` may come from an overlay."""
    def parts(partial: bool) -> dict[str, Any]:
        data = _fields(DATA_FIELDS, partial, {"task": _ref("task", partial)})
        data["type"] = "object"
        if not partial:
            data["required"] = ["task"]
        models = {"type": "object", "propertyNames": {"pattern": ROLE_RE.pattern},
                  "additionalProperties": _ref("model", partial), "description": "role -> model fixture"}
        expect = {"type": "array", "items": {"$ref": "#/$defs/check" + ("_partial" if partial else "")},
                  "description": "the checks"}
        if not partial:
            models["minProperties"] = expect["minItems"] = 1
        return {"models": models, "data": data, "seeds": {"type": "integer", "minimum": 1, "default": 1},
                "experiment": {"$ref": "#/$defs/experiment" + ("_partial" if partial else "")}, "expect": expect}

    loose, strict = parts(True), parts(False)
    props: dict[str, Any] = {
        "id": {"type": "string", "pattern": ID_RE.pattern},
        "statement": {"type": "string", "description": "the hypothesis, in words"},
        "source": _fields(SOURCE_FIELDS, False),
        # the loader reads `tags` as `value or []`: any false-like value is an empty list
        "tags": {"if": {"type": "array"}, "then": {"items": {"type": "string"}},
                 "else": {"enum": [None, False, 0, "", {}]}},
        **loose,
    }
    # an overlay replaces `expect` whole: its checks must be complete
    props["profiles"] = _profiles(_overlay({**loose, "expect": strict["expect"]}, CLAIM_OVERLAY))
    rules = [_unless_overlaid(k, {"required": [k], "properties": {k: strict[k]}})
             for k in ("models", "data", "experiment", "expect")]
    return {"type": "object", "properties": props, "additionalProperties": False, "required": ["id", "statement"],
            "allOf": rules}


def json_schema(kind: str = "all") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one kind of file ("claim", "model", "task"), or of any of them ("all")."""
    if kind not in KINDS:
        raise ValueError(f"unknown schema kind {kind!r} (allowed: {', '.join(KINDS)})")
    defs = {"claim": _claim(), "experiment": _call(EXPERIMENTS, False), "experiment_partial": _call(EXPERIMENTS, True),
            "check": _call(CHECKS, False), "check_partial": _call(CHECKS, True),
            "model_file": _model("file"), "task_file": _task("file"),
            **{f"{k}_{m}": (_model if k == "model" else _task)(m) for k in ("model", "task")
               for m in ("inline", "partial")}}
    root: dict[str, Any] = {"$ref": "#/$defs/" + {"claim": "claim", "model": "model_file", "task": "task_file"}
                            .get(kind, "claim")}
    if kind == "all":  # model fixtures have `recipe`, task fixtures `generator`, claims neither
        root = {"if": {"required": ["recipe"]}, "then": {"$ref": "#/$defs/model_file"},
                "else": {"if": {"required": ["generator"]}, "then": {"$ref": "#/$defs/task_file"},
                         "else": {"$ref": "#/$defs/claim"}}}
    title = {"claim": "mechcheck claim file", "model": "mechcheck model fixture", "task": "mechcheck task fixture",
             "all": "mechcheck claim or fixture file"}[kind]
    return {"$schema": _DIALECT, "title": title, **root, "$defs": defs}
