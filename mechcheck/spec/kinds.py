"""Argument kinds: one value checked against its `Param` (kind, bounds, choices, what it may name).

The registry's `Param` doubles as the declaration of a fixed field (`_get`, `_fields`), so claim sections,
fixture fields and the arguments of experiments, checks and task generators are all validated here. What a value
may *name* (a model role, a token group or a label of the eval task) comes in `_Refs`; None there means "unknown
here": only the type is checked. Rules that need another section's value (a check's `within`, head indices
against a model's shape) are in `mechcheck.spec.cross`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mechcheck.errors import nearest
from mechcheck.registry import Param
from mechcheck.spec.yaml import _BAD, YMap, _F, _item_line, _p, _plain, _show

_SELECTOR_RE = re.compile(r"^top_(head|[0-9]+)$")


@dataclass(frozen=True)
class _Refs:
    """What `model` / `tokens` / `label(s)` arguments may name (None: unknown here, only the type is checked)."""
    roles: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    task: str = ""  # how errors name the eval task: "task 'cdm-words' (generator cdm)"
    labels: tuple[str, ...] | None = None


def _unknown_label(name: str, refs: _Refs) -> str:
    """The message for a label the eval task does not have."""
    return f"unknown label '{name}' of {refs.task or 'the eval task'}" + ("" if refs.labels else " (it has no labels)")


def _is_int(v: Any) -> bool:
    """True for an int that is not a bool (YAML true/false must not pass as 1/0)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _head(v: Any, line: int, path: str, f: _F) -> Any:
    """A `[layer, head]` pair as a list, or `_BAD`."""
    if isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 0 for x in v):
        return [v[0], v[1]]
    f.err(line, path, f"expected a head as [layer, head] (two integers >= 0), got {_show(v)}")
    return _BAD


def _value(v: Any, p: Param, line: int, path: str, f: _F, refs: _Refs) -> Any:
    """`v` checked against `p` and normalised, or `_BAD` once the error is recorded."""
    if v is _BAD:
        return _BAD  # reported while parsing
    if v is None and not p.required and p.default is None:
        return None  # an explicit null means "not set"

    def bad(message: str, allowed: Sequence[Any] = (), suggestion: str | None = None) -> object:
        f.err(line, path, message, allowed, suggestion)
        return _BAD

    k, number = p.kind, isinstance(v, (int, float)) and not isinstance(v, bool)
    if k == "int" and not _is_int(v):
        return bad(f"expected an integer, got {_show(v)}")
    if k == "float":
        if not number or v != v:
            return bad(f"expected a number, got {_show(v)}")
        v = float(v)
    if k in ("str", "model", "tokens", "label") and not isinstance(v, str):
        return bad(f"expected a string, got {_show(v)}" + (" (quote it)" if number else ""))
    if k == "bool" and not isinstance(v, bool):
        return bad(f"expected true or false, got {_show(v)}")
    if k == "choice" and (not isinstance(v, (str, int, float)) or isinstance(v, bool) or v not in p.choices):
        return bad(f"invalid value {_show(v)}", p.choices, nearest(str(v), [str(c) for c in p.choices]))
    if k == "model" and refs.roles is not None and v not in refs.roles:
        return bad(f"unknown model role '{v}': not a role of the claim's `models`", refs.roles,
                   nearest(v, refs.roles))
    if k == "tokens" and refs.groups is not None and v not in refs.groups:
        return bad(f"unknown token group '{v}' of {refs.task or 'the eval task'}", refs.groups,
                   nearest(v, refs.groups))
    if k == "label" and refs.labels is not None and v not in refs.labels:
        return bad(_unknown_label(v, refs), refs.labels, nearest(v, refs.labels))
    if k == "mapping":
        if not isinstance(v, dict):
            return bad(f"expected a mapping, got {_show(v)}")
        v = _plain(v)
    if k == "layers":
        if not isinstance(v, list) or not v:
            return bad(f"expected a non-empty list of layer indices, got {_show(v)}")
        for i, x in enumerate(v):
            if not (_is_int(x) and x >= 0):
                f.err(_item_line(v, i, line), f"{path}[{i}]", f"expected a layer index (integer >= 0), got {_show(x)}")
                return _BAD
        v = list(v)
    if k == "ints":
        if not isinstance(v, list) or not v:
            return bad(f"expected a non-empty list of integers, got {_show(v)}")
        for i, x in enumerate(v):
            if not _is_int(x) or (p.min is not None and x < p.min) or (p.max is not None and x > p.max):
                bounds = "" if p.min is None else f" >= {p.min:g}"
                f.err(_item_line(v, i, line), f"{path}[{i}]", f"expected an integer{bounds}, got {_show(x)}")
                return _BAD
        if len(set(v)) != len(v):
            return bad(f"duplicate values in {_show(v)}")
        return list(v)
    if k == "floats":
        if not isinstance(v, list) or not v:
            return bad(f"expected a non-empty list of numbers, got {_show(v)}")
        for i, x in enumerate(v):
            ok = isinstance(x, (int, float)) and not isinstance(x, bool) and x == x
            if not ok or (p.min is not None and x < p.min) or (p.max is not None and x > p.max):
                bounds = " and ".join(b for b in ("" if p.min is None else f">= {p.min:g}",
                                                  "" if p.max is None else f"<= {p.max:g}") if b)
                f.err(_item_line(v, i, line), f"{path}[{i}]",
                      f"expected a number{' ' + bounds if bounds else ''}, got {_show(x)}")
                return _BAD
        return [float(x) for x in v]
    if k == "strings":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            return bad(f"expected a non-empty list of names, got {_show(v)}")
        for i, x in enumerate(v):
            if not isinstance(x, str) or (p.choices and x not in p.choices):
                f.err(_item_line(v, i, line), f"{path}[{i}]", f"invalid value {_show(x)}", p.choices,
                      nearest(str(x), [str(c) for c in p.choices]) if p.choices else None)
                return _BAD
        if len(set(v)) != len(v):
            return bad(f"duplicate names in {_show(v)}")
        return list(v)
    if k == "labels":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            return bad(f"expected a non-empty list of labels, got {_show(v)}")
        ok = True
        for i, x in enumerate(v):
            at, ipath = _item_line(v, i, line), f"{path}[{i}]"
            if not isinstance(x, str):
                f.err(at, ipath, f"expected a label name, got {_show(x)}")
                ok = False
            elif refs.labels is not None and x not in refs.labels:
                f.err(at, ipath, _unknown_label(x, refs), refs.labels, nearest(x, refs.labels))
                ok = False
        if not ok:
            return _BAD
        if len(set(v)) != len(v):
            return bad(f"duplicate labels in {_show(v)}")
        return list(v)
    if k == "head":
        return _head(v, line, path, f)
    if k == "heads":
        if isinstance(v, str):
            sel = _SELECTOR_RE.match(v)
            if not sel or (sel.group(1) != "head" and int(sel.group(1)) < 1):
                return bad(f"invalid heads selector {v!r}: expected 'top_head', 'top_<k>' with k >= 1, or a list "
                           "of [layer, head] pairs")
            return v
        if not isinstance(v, list) or not v:
            return bad(f"expected a non-empty list of [layer, head] pairs or 'top_head' / 'top_<k>', got {_show(v)}")
        heads = [_head(x, _item_line(v, i, line), f"{path}[{i}]", f) for i, x in enumerate(v)]
        if _BAD in heads:
            return _BAD
        dupes = sorted({tuple(h) for h in heads if heads.count(h) > 1})
        return bad(f"duplicate heads {', '.join(str(list(d)) for d in dupes)}") if dupes else heads
    if number and p.min is not None and v < p.min:
        return bad(f"must be >= {p.min:g}, got {v}")
    if number and p.max is not None and v > p.max:
        return bad(f"must be <= {p.max:g}, got {v}")
    return v


def _check_keys(m: YMap, allowed: Sequence[str], f: _F, prefix: str, what: str = "field", owner: str = "") -> bool:
    """Report each key of `m` not in `allowed` (with the nearest allowed name); True if there was none."""
    unknown = [k for k in m if k not in allowed]
    for key in unknown:
        f.err(m.key_line(key), _p(prefix, key), f"unknown {what} '{key}'{owner}", allowed, nearest(key, allowed))
    return not unknown


def _get(m: YMap, p: Param, prefix: str, f: _F, refs: _Refs = _Refs(), what: str = "field") -> Any:
    """Field `p.name` of `m` validated (its default if absent), or `_BAD`."""
    if p.name in m:
        return _value(m[p.name], p, m.val_line(p.name), _p(prefix, p.name), f, refs)
    if p.required:
        f.err(m.line, _p(prefix, p.name), f"missing required {what} '{p.name}'")
        return _BAD
    if p.kind in ("label", "labels") and p.default is not None and refs.labels is not None:
        # a default written for one task (e.g. cdm's variables) does not fit every task: say so before running
        names = [p.default] if isinstance(p.default, str) else list(p.default)
        missing = [x for x in names if x not in refs.labels]
        if missing:
            f.err(m.line, _p(prefix, p.name), f"the default of '{p.name}' names labels that "
                  f"{refs.task or 'the eval task'} does not have ({', '.join(missing)}): set '{p.name}'",
                  refs.labels)
            return _BAD
    return p.default


def _fields(m: Any, line: int, params: Sequence[Param], prefix: str, f: _F, refs: _Refs = _Refs(),
            what: str = "field", owner: str = "", extra: Sequence[str] = ()) -> dict | None:
    """The mapping `m` (null: empty) validated against `params`, every param present; None if invalid.

    `extra` are further keys the caller validates itself.
    """
    if m is None:
        m = YMap(line)
    if not isinstance(m, YMap):
        return f.err(line, prefix, f"expected a mapping, got {_show(m)}")
    ok = _check_keys(m, [*(p.name for p in params), *extra], f, prefix, what, owner)
    out = {p.name: _get(m, p, prefix, f, refs, what) for p in params}
    return out if ok and _BAD not in out.values() else None

