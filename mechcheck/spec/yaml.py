"""Reading YAML with lines: files -> `YMap` / `YList` / scalars that remember where each value was written.

YAML is only *composed* with the safe loader (a node tree, nothing constructed) and turned into values here, so
tags such as ``!!python/object`` are reported, never built. Every problem goes to an error sink (`_F`) bound to
one file, as a `SpecError` with the 1-based line and the field path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mechcheck.errors import SpecError

# YAML 1.1 reads an unquoted `1e-4` (no dot) as a string; nobody writing a learning rate means that.
_EXP_FLOAT_RE = re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")


class YMap(dict):
    """A YAML mapping that remembers the 1-based lines of its keys and values (`line`: where it starts)."""

    def __init__(self, line: int = 1) -> None:
        super().__init__()
        self.line = line
        self.lines: dict[str, tuple[int, int]] = {}

    def put(self, key: str, value: Any, key_line: int, val_line: int) -> None:
        """Set `key` with the lines of the key and of its value."""
        self[key] = value
        self.lines[key] = (key_line, val_line)

    def key_line(self, key: str) -> int:
        """Line of `key` (the mapping's own line if absent)."""
        return self.lines.get(key, (self.line, 0))[0]

    def val_line(self, key: str) -> int:
        """Line of the value of `key` (a nested mapping or list: its key's line)."""
        return self.lines.get(key, (0, self.line))[1]


class YList(list):
    """A YAML list that remembers the 1-based line of each item in `lines`."""

    def __init__(self, line: int = 1) -> None:
        super().__init__()
        self.line = line
        self.lines: list[int] = []


def _item_line(v: Any, i: int, default: int) -> int:
    """Line of item `i` of the list `v`."""
    return v.lines[i] if isinstance(v, YList) else default


@dataclass
class _F:
    """Error sink bound to one file; all files of a load append to one list."""
    errors: list[SpecError]
    file: str

    def err(self, line: int | None, path: str, message: str, allowed: Sequence[Any] = (),
            suggestion: str | None = None) -> None:
        """Record an error at `line` / `path` of this file."""
        self.errors.append(SpecError(message, self.file, line, path, tuple(str(a) for a in allowed), suggestion))


_BAD = object()  # "invalid, already reported"
_TAG = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_TAG + t for t in ("null", "bool", "int", "float", "str")}
_MAX_NODES = 100_000  # aliases can expand a tiny file exponentially ("billion laughs")


class _TooLarge(Exception):
    pass


class _Converter:
    """Turns a composed node tree into YMap / YList / scalars, reporting (never constructing) other tags."""

    def __init__(self, f: _F) -> None:
        self.f, self.count, self.active = f, 0, set()
        self.scalars = yaml.SafeLoader("")  # only its safe scalar constructors are used

    def convert(self, node: yaml.Node, path: str, line: int) -> Any:
        """The value of `node`; `line` is where it is introduced (its key's or list item's line)."""
        self.count += 1
        if self.count > _MAX_NODES:
            raise _TooLarge
        nline = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _TAG + "str" and node.style is None and _EXP_FLOAT_RE.match(node.value):
                return float(node.value)
            if node.tag == _TAG + "timestamp":
                return node.value  # no field wants a date: keep what was written
            if node.tag in _PLAIN_TAGS:
                try:
                    return self.scalars.construct_object(node)
                except (yaml.YAMLError, ValueError) as e:
                    self.f.err(nline, path, f"invalid {node.tag[len(_TAG):]} value: {e}")
                    return _BAD
        elif id(node) in self.active:
            self.f.err(nline, path, "recursive YAML alias")
            return _BAD
        elif node.tag in (_TAG + "seq", _TAG + "map"):
            self.active.add(id(node))
            try:
                return self._seq(node, path, line) if node.tag == _TAG + "seq" else self._map(node, path, line)
            finally:
                self.active.discard(id(node))
        tag = "!!" + node.tag[len(_TAG):] if node.tag.startswith(_TAG) else node.tag
        self.f.err(nline, path, f"unsupported YAML tag '{tag}' (only plain mappings, lists, strings, numbers, "
                   "booleans and null)")
        return _BAD  # reported: later checks skip it

    def _seq(self, node: yaml.SequenceNode, path: str, line: int) -> YList:
        out = YList(line)
        for i, item in enumerate(node.value):
            out.lines.append(item.start_mark.line + 1)
            out.append(self.convert(item, f"{path}[{i}]", out.lines[-1]))
        return out

    def _map(self, node: yaml.MappingNode, path: str, line: int) -> YMap:
        out = YMap(line)
        for knode, vnode in node.value:
            kline = knode.start_mark.line + 1
            if not (isinstance(knode, yaml.ScalarNode) and knode.tag == _TAG + "str"):
                shown = knode.value if isinstance(knode, yaml.ScalarNode) else "a collection"
                hint = "merge keys are not supported" if knode.tag == _TAG + "merge" else "quote it"
                self.f.err(kline, path, f"mapping keys must be strings, got {shown!r} ({hint})")
                continue
            key, kpath = knode.value, _p(path, knode.value)
            if key in out:
                self.f.err(kline, kpath, f"duplicate key '{key}' (first at line {out.key_line(key)})")
                continue
            vline = vnode.start_mark.line + 1 if isinstance(vnode, yaml.ScalarNode) else kline
            out.put(key, self.convert(vnode, kpath, kline), kline, vline)
        return out


def parse(path: Path, errors: list[SpecError]) -> YMap | None:
    """Read and compose one YAML file into a YMap, or record why it cannot be (None)."""
    f = _F(errors, str(path))
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
        if node is None:
            return f.err(1, "", "empty file: expected a mapping of fields")
        doc = _Converter(f).convert(node, "", node.start_mark.line + 1)
    except (OSError, UnicodeDecodeError) as e:
        return f.err(None, "", f"cannot read file: {e}")
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        return f.err(mark.line + 1 if mark else None, "", f"invalid YAML: {e.problem or e.context}")
    except yaml.YAMLError as e:
        return f.err(None, "", f"invalid YAML: {e}")
    except _TooLarge:
        return f.err(None, "", f"document too large (more than {_MAX_NODES} values after alias expansion)")
    if not isinstance(doc, YMap):
        return f.err(node.start_mark.line + 1, "", f"the top level must be a mapping of fields, got {_show(doc)}")
    return doc


#: mappings that are one whole (a circuit's groups, discovery steps in order): an overlay replaces them
WHOLE = ("circuit", "groups", "steps")


def merge(base: Any, over: Any, single: Sequence[str] = ()) -> Any:
    """`over` deep-merged into `base`: mappings merge recursively, anything else is replaced.

    Keys in `single` hold a one-key mapping ({name: args}): naming another name there replaces it. Mappings under
    the keys in `WHOLE` are replaced, not merged: a circuit or a sequence of discovery steps written in an overlay
    is the whole of it (merging would keep the base's other groups and their order).
    """
    if not (isinstance(base, YMap) and isinstance(over, YMap)):
        return over
    out = YMap(base.line)
    for k, v in base.items():
        out.put(k, v, *base.lines[k])
    for k, v in over.items():
        b = base.get(k)
        switched = k in single and isinstance(b, dict) and isinstance(v, dict) and set(b) != set(v)
        out.put(k, v if switched or k not in base or k in WHOLE else merge(b, v), *over.lines[k])
    return out


def _plain(v: Any) -> Any:
    """`v` with YMap / YList turned into plain dicts and lists."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, list) else v


def _show(v: Any) -> str:
    """A short description of a value for error messages."""
    if v is _BAD:
        return "an unsupported value"
    if v is None or isinstance(v, bool):
        return "null" if v is None else f"{str(v).lower()} (a boolean)"
    text = repr(_plain(v))
    return text if len(text) <= 40 else text[:36] + " ..."


def _p(prefix: str, key: str) -> str:
    """The field path `prefix.key`."""
    return f"{prefix}.{key}" if prefix else key

