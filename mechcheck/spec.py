"""Claim and fixture files (YAML) -> frozen, validated specs.

A claim file names a model fixture per role, a task, one experiment and a list of checks; fixture files
(``fixtures/models/<name>.yaml``, ``fixtures/tasks/<name>.yaml``) say how a model is built and how a task is
generated. Everything is validated before anything runs: each problem becomes a `SpecError` with the file,
the 1-based line and the field path of the offending value, and `load_claims` raises all of them at once.

YAML is only *composed* with the safe loader (a node tree, nothing constructed) and turned into values
here, so tags such as ``!!python/object`` are reported, never built. Format reference: docs/claim-format.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mechcheck.errors import SpecError, SpecErrors, nearest
from mechcheck.paths import is_pkg_path, pkg_path_problem
from mechcheck.registry import CHECKS, EXPERIMENTS, RECIPES, TASKS, Param, Registry

__all__ = [
    "TaskSpec", "TrainSpec", "ModelSpec", "DataSpec", "ExperimentSpec", "CheckSpec", "ClaimSpec",
    "discover", "find_fixtures_dir", "load_claims", "load_model_fixture", "load_task_fixture", "list_fixtures",
]


@dataclass(frozen=True)
class TaskSpec:
    """A task generator bound to its validated arguments (defaults filled in)."""
    name: str
    generator: str
    args: dict
    file: str
    description: str = ""


@dataclass(frozen=True)
class TrainSpec:
    """How a trained model fixture is optimised."""
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    loss: str = "answer"
    n_train: int | None = None
    eval_every: int = 25
    grad_clip: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A model fixture: a recipe and what it needs (architecture, task, training, parent, where to load)."""
    name: str
    recipe: str
    file: str
    description: str = ""
    architecture: dict | None = None
    task: TaskSpec | None = None
    train: TrainSpec | None = None
    parent: ModelSpec | None = None
    path: str | None = None
    hub: str | None = None
    revision: str | None = None
    #: where `path` / `hub` is written (file `file`), for errors only a model can reveal (missing checkpoint)
    source_line: int | None = None
    source_field: str = ""
    #: a fixed training seed: one replicate shared by every seed of a claim (like a published checkpoint
    #: that several fine-tuning seeds start from); None = replicate i is trained with seed i
    seed: int | None = None


@dataclass(frozen=True)
class DataSpec:
    """The evaluation data of a claim."""
    task: TaskSpec
    n: int = 512
    split: str = "eval"
    seed: int = 0


@dataclass(frozen=True)
class ExperimentSpec:
    """The one experiment a claim runs, with its arguments (defaults filled in)."""
    name: str
    args: dict


@dataclass(frozen=True)
class CheckSpec:
    """One expectation of a claim; `line` is where it stands in the claim file."""
    name: str
    args: dict
    line: int | None = None


@dataclass(frozen=True)
class ClaimSpec:
    """A validated claim with the selected profile applied (`profiles`: the names its file defines)."""
    id: str
    statement: str
    file: str
    models: dict[str, ModelSpec]
    data: DataSpec
    experiment: ExperimentSpec
    expect: tuple[CheckSpec, ...]
    seeds: int = 1
    profile: str = "ci"
    source: dict = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()


# ---- schemas of the fixed sections (the registry's `Param` doubles as a field declaration) -------------

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_ROLE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_PROFILE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_FIXTURE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # no "/": a name never leaves fixtures/<kind>/
_SELECTOR_RE = re.compile(r"^top_(head|[0-9]+)$")
# YAML 1.1 reads an unquoted `1e-4` (no dot) as a string; nobody writing a learning rate means that.
_EXP_FLOAT_RE = re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")

_CLAIM_KEYS = ("id", "statement", "source", "tags", "models", "data", "seeds", "experiment", "expect", "profiles")
_CLAIM_OVERLAY = ("models", "data", "seeds", "experiment", "expect")
_MODEL_KEYS = ("name", "description", "recipe", "architecture", "task", "train", "from", "path", "hub", "revision",
               "seed", "profiles")
_MODEL_OVERLAY = tuple(k for k in _MODEL_KEYS if k not in ("name", "recipe", "profiles"))
_TASK_KEYS = ("name", "description", "generator", "args", "profiles")
_TASK_OVERLAY = ("args", "description")

_SOURCE = tuple(Param(k, "str") for k in ("paper", "arxiv", "section", "url", "notes"))
_DATA = (Param("n", "int", default=512, min=1), Param("split", "choice", default="eval", choices=("eval", "train")),
         Param("seed", "int", default=0, min=0))
_ARCH = (
    Param("type", "choice", default="gpt2", choices=("gpt2",)),
    *(Param(k, "int", required=True, min=1) for k in ("n_layer", "n_head", "n_embd")),
    Param("n_positions", "int", min=1), Param("n_inner", "int", min=1), Param("activation_function", "str"),
    *(Param(k, "float", min=0.0, max=1.0) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")),
    Param("layer_norm_epsilon", "float", min=0.0), Param("tie_word_embeddings", "bool"),
    # a larger embedding than the task needs, e.g. to give a scratch model the vocabulary of its pretrained twin
    Param("vocab_size", "int", min=1),
)
_TRAIN = (
    Param("steps", "int", required=True, min=1), Param("batch_size", "int", default=64, min=1),
    Param("lr", "float", default=1e-3, min=0.0), Param("weight_decay", "float", default=0.01, min=0.0),
    Param("warmup_steps", "int", default=0, min=0),
    Param("loss", "choice", choices=("answer", "lm")),  # default depends on the recipe
    Param("n_train", "int", min=1), Param("eval_every", "int", default=25, min=1),
    Param("grad_clip", "float", default=1.0, min=0.0),
)
_TRAINED = ("scratch", "pretrain", "finetune")
# field -> (recipes that require it, recipes that allow it); plugin recipes are left unconstrained
_RECIPE_RULES = {
    # scratch: exactly one of `architecture` / `from` (a parent whose config is copied; checked below)
    "architecture": (("pretrain",), ("scratch", "pretrain")),
    "task": (_TRAINED, (*_TRAINED, "load")),
    "train": (_TRAINED, _TRAINED),
    "from": (("finetune",), ("finetune", "scratch")),
    "path": ((), ("load",)), "hub": ((), ("load",)), "revision": ((), ("load",)),
    "seed": ((), _TRAINED),
}


# ---- YAML -> values that remember their lines --------------------------------------------------------

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


def _parse(path: Path, errors: list[SpecError]) -> YMap | None:
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


def _merge(base: Any, over: Any, single: Sequence[str] = ()) -> Any:
    """`over` deep-merged into `base`: mappings merge recursively, anything else is replaced.

    Keys in `single` hold a one-key mapping ({name: args}): naming another name there replaces it.
    """
    if not (isinstance(base, YMap) and isinstance(over, YMap)):
        return over
    out = YMap(base.line)
    for k, v in base.items():
        out.put(k, v, *base.lines[k])
    for k, v in over.items():
        b = base.get(k)
        switched = k in single and isinstance(b, dict) and isinstance(v, dict) and set(b) != set(v)
        out.put(k, v if switched or k not in base else _merge(b, v), *over.lines[k])
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


# ---- generic validation by Param kind ------------------------------------------------------------------

@dataclass(frozen=True)
class _Refs:
    """What `model` / `tokens` arguments may name (None: unknown here, only the type is checked)."""
    roles: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    task: str = ""


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
    if k in ("str", "model", "tokens") and not isinstance(v, str):
        return bad(f"expected a string, got {_show(v)}" + (" (quote it)" if number else ""))
    if k == "bool" and not isinstance(v, bool):
        return bad(f"expected true or false, got {_show(v)}")
    if k == "choice" and (not isinstance(v, (str, int, float)) or isinstance(v, bool) or v not in p.choices):
        return bad(f"invalid value {_show(v)}", p.choices, nearest(str(v), [str(c) for c in p.choices]))
    if k == "model" and refs.roles is not None and v not in refs.roles:
        return bad(f"unknown model role '{v}': not a role of the claim's `models`", refs.roles,
                   nearest(v, refs.roles))
    if k == "tokens" and refs.groups is not None and v not in refs.groups:
        return bad(f"unknown token group '{v}' of task '{refs.task}'", refs.groups, nearest(v, refs.groups))
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


# ---- loading: one `_Loader` per load, so a fixture shared by many claims is parsed and reported once ---

class _Loader:
    """Validates claims and the fixtures they reference under one profile, collecting every error."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.errors: list[SpecError] = []
        self._docs: dict[Path, YMap | None] = {}
        self._fixtures: dict[Path, Any] = {}
        self._resolving: list[tuple[Path, str]] = []  # named fixtures being built, to catch `from` cycles

    def doc(self, path: Path) -> YMap | None:
        """File `path` parsed (once per load)."""
        key = path.resolve()
        if key not in self._docs:
            self._docs[key] = _parse(path, self.errors)
        return self._docs[key]

    def profiled(self, m: YMap, keys: Sequence[str], overlay_keys: Sequence[str], f: _F, prefix: str,
                 single: Sequence[str] = ()) -> tuple[YMap, tuple[str, ...]]:
        """Check `m`'s keys and `profiles`; return `m` merged with the selected overlay, and the profile names."""
        _check_keys(m, keys, f, prefix)
        profs, ppath = m.get("profiles"), _p(prefix, "profiles")
        if profs is None:
            return m, ()
        if not isinstance(profs, YMap):
            f.err(m.val_line("profiles"), ppath, f"expected a mapping of profile name -> overlay, got {_show(profs)}")
            return m, ()
        for name, overlay in profs.items():
            if not _PROFILE_RE.match(name):
                f.err(profs.key_line(name), _p(ppath, name),
                      f"invalid profile name '{name}' (lowercase letters, digits, '_', '-'; starting with a letter)")
            if isinstance(overlay, YMap):
                _check_keys(overlay, overlay_keys, f, _p(ppath, name), "overlay field")
            elif overlay is not None:
                f.err(profs.val_line(name), _p(ppath, name), f"expected an overlay mapping, got {_show(overlay)}")
        overlay = profs.get(self.profile)
        if isinstance(overlay, YMap):
            kept = YMap(overlay.line)  # unknown overlay fields are already reported: keep them out
            for k in overlay:
                if k in overlay_keys:
                    kept.put(k, overlay[k], *overlay.lines[k])
            m = _merge(m, kept, single)
        return m, tuple(profs)

    def ref(self, kind: str, v: Any, f: _F, line: int | None, path: str, default_name: str,
            fx: Path | None) -> Any:
        """A ModelSpec / TaskSpec (`kind` "models" / "tasks") from a fixture name or an inline mapping, or None."""
        build = self.model_map if kind == "models" else self.task_map
        what = kind[:-1]
        if isinstance(v, YMap):
            return build(v, f, path, default_name, None, fx)
        if not isinstance(v, str) or not _FIXTURE_RE.match(v):
            return f.err(line, path, f"expected a {what} fixture name or an inline {what} mapping, got {_show(v)}")
        if fx is None:
            return f.err(line, path, f"{what} fixture '{v}' is named, but there is no fixtures/ directory above "
                         f"{f.file}")
        fp = next((q for q in (fx / kind / (v + ".yaml"), fx / kind / (v + ".yml")) if q.is_file()), None)
        if fp is None:
            known = list_fixtures(fx)[kind]
            return f.err(line, path, f"unknown {what} fixture '{v}': no {fx / kind / v}.yaml", known,
                         nearest(v, known))
        key = fp.resolve()
        if key in self._fixtures:
            return self._fixtures[key]
        keys = [k for k, _ in self._resolving]
        if key in keys:
            cycle = [n for _, n in self._resolving[keys.index(key):]] + [v]
            return f.err(line, path, "cycle in `from`: " + " -> ".join(cycle))
        self._resolving.append((key, v))
        try:
            doc = self.doc(fp)
            self._fixtures[key] = None if doc is None else build(doc, _F(self.errors, str(fp)), "", v, v, fx)
        finally:
            self._resolving.pop()
        return self._fixtures[key]

    def name(self, m: YMap, f: _F, prefix: str, default: str, stem: str | None) -> Any:
        """The fixture's `name`: in a file required and equal to the file's stem; inline optional."""
        name = _get(m, Param("name", "str", required=stem is not None), prefix, f)
        if stem is not None and isinstance(name, str) and name != stem:
            f.err(m.val_line("name"), _p(prefix, "name"), f"name '{name}' must equal the file name '{stem}'")
            return _BAD
        return default if name is None else name

    def task_map(self, m: YMap, f: _F, prefix: str, default_name: str, stem: str | None,
                 fx: Path | None = None) -> TaskSpec | None:
        """A task from its mapping (a fixture file's top level or inline)."""
        n0 = len(self.errors)
        m, _ = self.profiled(m, _TASK_KEYS, _TASK_OVERLAY, f, prefix)
        name = self.name(m, f, prefix, default_name, stem)
        description = _get(m, Param("description", "str", default=""), prefix, f)
        entry = self.entry(TASKS, _get(m, Param("generator", "str", required=True), prefix, f), m, "generator",
                           prefix, f, "task generator")
        args = entry and _fields(m.get("args"), m.val_line("args"), entry.params, _p(prefix, "args"), f,
                                 what="argument", owner=f" of task generator '{entry.name}'")
        if args is None or len(self.errors) > n0:
            return None
        return TaskSpec(name, entry.name, entry.with_defaults(args), f.file, description or "")

    def entry(self, registry: Registry, name: Any, m: YMap, key: str, prefix: str, f: _F, what: str) -> Any:
        """The registry entry `name` (the value of `m[key]`), or None after reporting an unknown name."""
        if isinstance(name, str) and name not in registry:
            f.err(m.val_line(key), _p(prefix, key), f"unknown {what} '{name}'", registry.names(),
                  nearest(name, registry.names()))
        return registry.get(name) if isinstance(name, str) and name in registry else None

    def model_map(self, m: YMap, f: _F, prefix: str, default_name: str, stem: str | None,
                  fx: Path | None) -> ModelSpec | None:
        """A model from its mapping (a fixture file's top level or inline)."""
        n0 = len(self.errors)
        m, _ = self.profiled(m, _MODEL_KEYS, _MODEL_OVERLAY, f, prefix)
        name = self.name(m, f, prefix, default_name, stem)
        label = name if isinstance(name, str) else default_name
        description = _get(m, Param("description", "str", default=""), prefix, f)
        entry = self.entry(RECIPES, _get(m, Param("recipe", "str", required=True), prefix, f), m, "recipe",
                           prefix, f, "recipe")
        if entry is None:
            return None  # which fields are needed depends on the recipe
        recipe = entry.name
        for key, (needed_by, allowed_for) in _RECIPE_RULES.items():
            if recipe not in (*_TRAINED, "load"):
                break  # a plugin recipe: its fields are its own business
            if key in m and recipe not in allowed_for:
                f.err(m.key_line(key), _p(prefix, key),
                      f"'{key}' is not allowed for recipe '{recipe}' (only for {', '.join(allowed_for)})")
            elif key not in m and recipe in needed_by:
                f.err(m.line, _p(prefix, key), f"missing required field '{key}' for recipe '{recipe}'")
        if recipe == "scratch" and ("architecture" in m) == ("from" in m):
            f.err(m.key_line("from") if "from" in m else m.line, _p(prefix, "from" if "from" in m else "architecture"),
                  "recipe 'scratch' needs exactly one of 'architecture' (a GPT-2 shape) or 'from' (a model fixture "
                  "whose config is copied with fresh random weights)" + (", not both" if "from" in m else ""))
        if recipe == "load" and ("path" in m) == ("hub" in m):
            f.err(m.key_line("hub"), _p(prefix, "hub" if "hub" in m else "path"), "recipe 'load' needs exactly one "
                  "of 'path' (a local directory) or 'hub' (a hub id)" + (", not both" if "hub" in m else ""))
        arch = train = None
        if "architecture" in m and recipe in ("scratch", "pretrain"):
            apath = _p(prefix, "architecture")
            arch = _fields(m["architecture"], m.val_line("architecture"), _ARCH, apath, f)
            if arch is not None and arch["n_embd"] % arch["n_head"]:
                f.err(m["architecture"].val_line("n_embd"), _p(apath, "n_embd"),
                      f"n_embd ({arch['n_embd']}) must be divisible by n_head ({arch['n_head']})")
            arch = arch and {k: v for k, v in arch.items() if v is not None}  # only what is set, plus `type`
        if "train" in m and recipe in _TRAINED:
            train = _fields(m["train"], m.val_line("train"), _TRAIN, _p(prefix, "train"), f)
            for k in ("lr", "grad_clip") if train else ():  # Param bounds are inclusive; these must be > 0
                if train[k] <= 0:
                    f.err(m["train"].val_line(k), _p(prefix, f"train.{k}"), f"must be > 0, got {train[k]}")
            if train:
                train = TrainSpec(**{**train, "loss": train["loss"] or ("lm" if recipe == "pretrain" else "answer")})
        task = parent = None
        if "task" in m:
            task = self.ref("tasks", m["task"], f, m.val_line("task"), _p(prefix, "task"), f"{label}.task", fx)
        if "from" in m and recipe in ("finetune", "scratch"):
            parent = self.ref("models", m["from"], f, m.val_line("from"), _p(prefix, "from"), f"{label}.from", fx)
        where = {k: _get(m, Param(k, "str"), prefix, f) for k in ("path", "hub", "revision")}
        if is_pkg_path(where["path"]):  # a file shipped in an installed package: resolved when built
            if pkg_path_problem(where["path"]):
                f.err(m.val_line("path"), _p(prefix, "path"), pkg_path_problem(where["path"]))
        elif isinstance(where["path"], str):  # relative to the file that says it, not to the working directory
            p = Path(where["path"]).expanduser()
            where["path"] = os.path.normpath(p if p.is_absolute() else Path(os.path.abspath(f.file)).parent / p)
        fixed_seed = _get(m, Param("seed", "int", min=0), prefix, f) if "seed" in m else None
        broken = ("task" in m and task is None) or ("from" in m and parent is None)
        if broken or len(self.errors) > n0:
            return None
        key = "path" if "path" in m else "hub"
        return ModelSpec(name, recipe, f.file, description or "", arch, task, train, parent, **where,
                         source_line=m.val_line(key) if key in m else None, source_field=_p(prefix, key),
                         seed=fixed_seed if isinstance(fixed_seed, int) else None)

    def claim(self, doc: YMap, f: _F, fx: Path | None) -> ClaimSpec | None:
        """A claim from its file's top-level mapping, with the selected profile applied."""
        n0 = len(self.errors)
        m, profiles = self.profiled(doc, _CLAIM_KEYS, _CLAIM_OVERLAY, f, "", single=("experiment",))
        cid = _get(m, Param("id", "str", required=True), "", f)
        if isinstance(cid, str) and not _ID_RE.match(cid):
            f.err(m.val_line("id"), "id", f"invalid claim id '{cid}' (lowercase letters, digits, '_', '.', '-'; "
                  "starting with a letter or digit)")
        label = cid if isinstance(cid, str) else "claim"
        statement = _get(m, Param("statement", "str", required=True), "", f)
        source = _fields(m.get("source"), m.val_line("source"), _SOURCE, "source", f)
        tags = m.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            f.err(m.val_line("tags"), "tags", f"expected a list of strings, got {_show(tags)}")
        seeds = _get(m, Param("seeds", "int", default=1, min=1), "", f)

        models: dict[str, Any] = {}
        if _get(m, Param("models", "mapping", required=True), "", f) is not _BAD:
            for role, ref in m["models"].items():
                if not _ROLE_RE.match(role):
                    f.err(m["models"].key_line(role), f"models.{role}",
                          f"invalid role name '{role}' (lowercase letters, digits, '_'; starting with a letter)")
                models[role] = self.ref("models", ref, f, m["models"].val_line(role), f"models.{role}",
                                        f"{label}.{role}", fx)
            if not models:
                f.err(m.val_line("models"), "models", "expected at least one role, e.g. `base: <model fixture>`")

        data = task = None
        if _get(m, Param("data", "mapping", required=True), "", f) is not _BAD:
            d = m["data"]
            fields = _fields(d, m.val_line("data"), _DATA, "data", f, extra=("task",))
            if "task" not in d:
                f.err(d.line, "data.task", "missing required field 'task'")
            else:
                task = self.ref("tasks", d["task"], f, d.val_line("task"), "data.task", f"{label}.task", fx)
            data = DataSpec(task, **fields) if task and fields else None

        groups = tuple(TASKS.get(task.generator).meta.get("token_groups", ())) if task else None
        refs = _Refs(tuple(models), groups, task.generator if task else "")
        experiment = None
        if "experiment" not in m:
            f.err(m.line, "experiment", "missing required field 'experiment'")
        else:
            experiment = self.call(m["experiment"], m.val_line("experiment"), "experiment", EXPERIMENTS, f, refs)
            experiment = experiment and ExperimentSpec(*experiment)
        checks: list[Any] = []
        items = m.get("expect")
        if "expect" not in m:
            f.err(m.line, "expect", "missing required field 'expect'")
        elif not isinstance(items, list) or not items:
            f.err(m.val_line("expect"), "expect", f"expected a non-empty list of checks, got {_show(items)}")
        for i, item in enumerate(items if isinstance(items, list) else []):
            line = _item_line(items, i, m.val_line("expect"))
            got = self.call(item, line, f"expect[{i}]", CHECKS, f, refs)
            checks.append(got and CheckSpec(*got, line=line))

        if len(self.errors) > n0 or None in (data, experiment, *checks, *models.values()) or not checks:
            return None
        return ClaimSpec(cid, statement, f.file, models, data, experiment, tuple(checks), seeds, self.profile,
                         {k: v for k, v in source.items() if v is not None}, tuple(tags), profiles)

    def call(self, v: Any, line: int, path: str, registry: Registry, f: _F, refs: _Refs) -> tuple[str, dict] | None:
        """`{name: args}` (or a bare name) of an experiment or check, validated against its registry entry."""
        if isinstance(v, str):  # a bare name: no arguments
            v, name = YMap(line), v
            v.put(name, None, line, line)
        if not (isinstance(v, YMap) and len(v) == 1):
            got = f"{len(v)} keys ({', '.join(v)})" if isinstance(v, dict) else _show(v)
            return f.err(line, path, f"expected one {registry.kind} as `<name>: {{arguments}}`, got {got}")
        name = next(iter(v))
        entry = self.entry(registry, name, v, name, path, f, registry.kind)
        args = entry and _fields(v[name], v.val_line(name), entry.params, _p(path, name), f, refs, "argument",
                                 f" of {registry.kind} '{name}'")
        return None if args is None else (name, entry.with_defaults(args))


# ---- public API ----------------------------------------------------------------------------------------

def discover(paths: Sequence[str | Path]) -> list[Path]:
    """The claim files in `paths`: files as given, plus *.yaml / *.yml found recursively under directories.

    Below a given directory, hidden directories and `fixtures/` directories are skipped (they hold no claims).
    """
    found, missing = set(), []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.update(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml") and q.is_file() and not any(
                d.startswith(".") or d == "fixtures" for d in q.relative_to(p).parts[:-1]))
        elif p.is_file():
            found.add(p)
        else:
            missing.append(SpecError("no such file or directory", str(p)))
    if missing:
        raise SpecErrors(missing)
    return sorted(found)


def find_fixtures_dir(start: Path) -> Path | None:
    """The `fixtures/` directory of the nearest ancestor of `start` (a claim file or a directory) having one."""
    start = Path(start).absolute()
    here = start if start.is_dir() else start.parent
    return next((d / "fixtures" for d in (here, *here.parents) if (d / "fixtures").is_dir()), None)


def _check_profile(profile: str) -> None:
    """Raise `SpecErrors` if `profile` is not a valid profile name."""
    if not isinstance(profile, str) or not _PROFILE_RE.match(profile):
        raise SpecErrors([SpecError(f"invalid profile name {profile!r} (lowercase letters, digits, '_', '-'; "
                                    "starting with a letter)", field_path="profile")])


def _raise_if(errors: list[SpecError]) -> None:
    """Raise the (deduplicated) `errors` as one `SpecErrors`, if there are any."""
    if errors:
        raise SpecErrors(list({str(e): e for e in errors}.values()))


def load_claims(paths: Sequence[str | Path], profile: str = "ci", fixtures_dir: Path | None = None) -> list[ClaimSpec]:
    """Load and validate the claims under `paths` and the fixtures they use, with `profile` applied.

    Raises one `SpecErrors` with every error of every file. `fixtures_dir` None: the nearest `fixtures/`
    directory above each claim file.
    """
    _check_profile(profile)
    ld, claims, first = _Loader(profile), [], {}
    for path in discover(paths):
        doc = ld.doc(path)
        if doc is None:
            continue
        f = _F(ld.errors, str(path))
        spec = ld.claim(doc, f, Path(fixtures_dir) if fixtures_dir is not None else find_fixtures_dir(path))
        cid = doc.get("id")  # the raw id, so a duplicate is reported even when the claim has other errors
        if isinstance(cid, str) and cid in first:
            f.err(doc.val_line("id"), "id", f"duplicate claim id '{cid}' (also in {first[cid]})")
        elif isinstance(cid, str):
            first[cid] = f"{path}:{doc.val_line('id')}"
        if spec is not None:
            claims.append(spec)
    _raise_if(ld.errors)
    return claims


def load_model_fixture(name: str, fixtures_dir: Path, profile: str = "ci") -> ModelSpec:
    """The model fixture `name` (with its `from` chain) validated; raises `SpecErrors`."""
    _check_profile(profile)
    ld = _Loader(profile)
    spec = ld.ref("models", name, _F(ld.errors, str(Path(fixtures_dir) / "models")), None, "", name,
                  Path(fixtures_dir))
    _raise_if(ld.errors)
    return spec


def load_task_fixture(name: str, fixtures_dir: Path, profile: str = "ci") -> TaskSpec:
    """The task fixture `name` validated; raises `SpecErrors`."""
    _check_profile(profile)
    ld = _Loader(profile)
    spec = ld.ref("tasks", name, _F(ld.errors, str(Path(fixtures_dir) / "tasks")), None, "", name, Path(fixtures_dir))
    _raise_if(ld.errors)
    return spec


def list_fixtures(fixtures_dir: Path) -> dict[str, list[str]]:
    """The fixture names in `fixtures_dir`: {"models": [...], "tasks": [...]}, sorted."""
    return {kind: sorted({p.stem for p in (Path(fixtures_dir) / kind).glob("*.y*ml")
                          if p.suffix in (".yaml", ".yml") and p.is_file()}) for kind in ("models", "tasks")}
