"""The loader: claim and fixture files -> frozen, validated specs (`load_claims` and friends).

A claim file names a model fixture per role, a task, one experiment and a list of checks; fixture files
(``fixtures/models/<name>.yaml``, ``fixtures/tasks/<name>.yaml``) say how a model is built and how a task is
generated. Everything is validated before anything runs: each problem becomes a `SpecError` with the file,
the 1-based line and the field path of the offending value, and `load_claims` raises all of them at once.
Format reference: docs/claim-format.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechcheck.errors import SpecError, SpecErrors, nearest
from mechcheck.paths import is_pkg_path, pkg_path_problem
from mechcheck.registry import CHECKS, EXPERIMENTS, RECIPES, TASKS, Param, Registry
from mechcheck.spec import CheckSpec, ClaimSpec, DataSpec, ExperimentSpec, ModelSpec, TaskSpec, TrainSpec
from mechcheck.spec.cross import check_experiment, check_shapes, declared_shape
from mechcheck.spec.fields import (
    ARCH_FIELDS, CLAIM_KEYS, CLAIM_OVERLAY, DATA_FIELDS, FIXTURE_RE, ID_RE, MODEL_KEYS, MODEL_OVERLAY, RECIPE_RULES,
    ROLE_RE, SOURCE_FIELDS, TASK_KEYS, TASK_OVERLAY, TRAIN_FIELDS, TRAINED,
)
from mechcheck.spec.kinds import _BAD, _Refs, _fields, _get
from mechcheck.train import hints_problem
from mechcheck.spec.profiles import check_profile_name, profiled, unknown_profile
from mechcheck.spec.yaml import YList, YMap, _F, _item_line, _p, _show, parse

# ---- loading: one `_Loader` per load, so a fixture shared by many claims is parsed and reported once ---

class _Loader:
    """Validates claims and the fixtures they reference under one profile, collecting every error."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self.errors: list[SpecError] = []
        self._docs: dict[Path, YMap | None] = {}
        self._fixtures: dict[Path, Any] = {}
        self._resolving: list[tuple[Path, str]] = []  # named fixtures being built, to catch `from` cycles
        self.defined: set[str] = set()  # the profile names that the files read so far define

    def doc(self, path: Path) -> YMap | None:
        """File `path` parsed (once per load)."""
        key = path.resolve()
        if key not in self._docs:
            self._docs[key] = parse(path, self.errors)
        return self._docs[key]

    def profiled(self, m: YMap, keys: Sequence[str], overlay_keys: Sequence[str], f: _F, prefix: str,
                 single: Sequence[str] = ()) -> tuple[YMap, tuple[str, ...]]:
        """`m` with the selected profile's overlay merged in, and the profile names it defines (`profiles.profiled`)."""
        m, names = profiled(m, keys, overlay_keys, f, prefix, self.profile, single)
        self.defined.update(names)
        return m, names

    def ref(self, kind: str, v: Any, f: _F, line: int | None, path: str, default_name: str,
            fx: Path | None) -> Any:
        """A ModelSpec / TaskSpec (`kind` "models" / "tasks") from a fixture name or an inline mapping, or None."""
        build = self.model_map if kind == "models" else self.task_map
        what = kind[:-1]
        if isinstance(v, YMap):
            return build(v, f, path, default_name, None, fx)
        if not isinstance(v, str) or not FIXTURE_RE.match(v):
            return f.err(line, path, f"expected a {what} fixture name or an inline {what} mapping, got {_show(v)}")
        if fx is None:
            return f.err(line, path, f"{what} fixture '{v}' is named, but there is no fixtures/ directory above "
                         f"{f.file} (name one with --fixtures-dir DIR)")
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
        m, _ = self.profiled(m, TASK_KEYS, TASK_OVERLAY, f, prefix)
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
        m, _ = self.profiled(m, MODEL_KEYS, MODEL_OVERLAY, f, prefix)
        name = self.name(m, f, prefix, default_name, stem)
        label = name if isinstance(name, str) else default_name
        description = _get(m, Param("description", "str", default=""), prefix, f)
        entry = self.entry(RECIPES, _get(m, Param("recipe", "str", required=True), prefix, f), m, "recipe",
                           prefix, f, "recipe")
        if entry is None:
            return None  # which fields are needed depends on the recipe
        recipe = entry.name
        for key, (needed_by, allowed_for) in RECIPE_RULES.items():
            if recipe not in (*TRAINED, "load"):
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
            arch = _fields(m["architecture"], m.val_line("architecture"), ARCH_FIELDS, apath, f)
            if arch is not None and arch["n_embd"] % arch["n_head"]:
                f.err(m["architecture"].val_line("n_embd"), _p(apath, "n_embd"),
                      f"n_embd ({arch['n_embd']}) must be divisible by n_head ({arch['n_head']})")
            arch = arch and {k: v for k, v in arch.items() if v is not None}  # only what is set, plus `type`
        if "train" in m and recipe in TRAINED:
            train = _fields(m["train"], m.val_line("train"), TRAIN_FIELDS, _p(prefix, "train"), f)
            for k in ("lr", "grad_clip") if train else ():  # Param bounds are inclusive; these must be > 0
                if train[k] <= 0:
                    f.err(m["train"].val_line(k), _p(prefix, f"train.{k}"), f"must be > 0, got {train[k]}")
            if train and train.get("hints") is not None:
                problem = hints_problem(train["hints"])
                if problem:
                    f.err(m["train"].val_line("hints"), _p(prefix, "train.hints"), problem)
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
        where["dtype"] = _get(m, Param("dtype", "choice", choices=("float32", "float16", "bfloat16")), prefix, f)
        where["adapter"] = _get(m, Param("adapter", "str"), prefix, f)
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
        m, profiles = self.profiled(doc, CLAIM_KEYS, CLAIM_OVERLAY, f, "", single=("experiment",))
        cid = _get(m, Param("id", "str", required=True), "", f)
        if isinstance(cid, str) and not ID_RE.match(cid):
            f.err(m.val_line("id"), "id", f"invalid claim id '{cid}' (lowercase letters, digits, '_', '.', '-'; "
                  "starting with a letter or digit)")
        label = cid if isinstance(cid, str) else "claim"
        statement = _get(m, Param("statement", "str", required=True), "", f)
        source = _fields(m.get("source"), m.val_line("source"), SOURCE_FIELDS, "source", f)
        tags = m.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            f.err(m.val_line("tags"), "tags", f"expected a list of strings, got {_show(tags)}")
        seeds = _get(m, Param("seeds", "int", default=1, min=1), "", f)

        models: dict[str, Any] = {}
        if _get(m, Param("models", "mapping", required=True), "", f) is not _BAD:
            for role, ref in m["models"].items():
                if not ROLE_RE.match(role):
                    f.err(m["models"].key_line(role), f"models.{role}",
                          f"invalid role name '{role}' (lowercase letters, digits, '_'; starting with a letter)")
                models[role] = self.ref("models", ref, f, m["models"].val_line(role), f"models.{role}",
                                        f"{label}.{role}", fx)
            if not models:
                f.err(m.val_line("models"), "models", "expected at least one role, e.g. `base: <model fixture>`")

        data = task = None
        if _get(m, Param("data", "mapping", required=True), "", f) is not _BAD:
            d = m["data"]
            fields = _fields(d, m.val_line("data"), DATA_FIELDS, "data", f, extra=("task",))
            if "task" not in d:
                f.err(d.line, "data.task", "missing required field 'task'")
            else:
                task = self.ref("tasks", d["task"], f, d.val_line("task"), "data.task", f"{label}.task", fx)
            data = DataSpec(task, **fields) if task and fields else None

        refs = _Refs(tuple(models))
        if task:
            meta = TASKS.get(task.generator).meta
            labels = meta.get("labels")  # None: a task that does not say (a plugin): label names are not checked
            refs = _Refs(tuple(models), tuple(meta.get("token_groups", ())),
                         f"task '{task.name}' (generator {task.generator})", None if labels is None else tuple(labels))
        experiment = None
        if "experiment" not in m:
            f.err(m.line, "experiment", "missing required field 'experiment'")
        else:
            experiment = self.call(m["experiment"], m.val_line("experiment"), "experiment", EXPERIMENTS, f, refs)
            experiment = experiment and ExperimentSpec(*experiment[:2])
        checks: list[Any] = []
        items = m.get("expect")
        if "expect" not in m:
            f.err(m.line, "expect", "missing required field 'expect'")
        elif not isinstance(items, list) or not items:
            f.err(m.val_line("expect"), "expect", f"expected a non-empty list of checks, got {_show(items)}")
        for i, item in enumerate(items if isinstance(items, list) else []):
            line = _item_line(items, i, m.val_line("expect"))
            got = self.call(item, line, f"expect[{i}]", CHECKS, f, refs)
            checks.append(got and CheckSpec(got[0], got[1], line=line, lines=got[2]))

        valid = [(i, c) for i, c in enumerate(checks) if c is not None]
        if experiment is not None:
            exp = m["experiment"]  # the line of the experiment's name, where its arguments start
            check_experiment(f, experiment, exp.key_line(experiment.name) if isinstance(exp, YMap)
                             else m.val_line("experiment"), valid)
        shapes = {role: s for role, spec in models.items() if spec and (s := declared_shape(spec)) is not None}
        check_shapes(f, models, valid, shapes)

        if len(self.errors) > n0 or None in (data, experiment, *checks, *models.values()) or not checks:
            return None
        return ClaimSpec(cid, statement, f.file, models, data, experiment, tuple(checks), seeds, self.profile,
                         {k: v for k, v in source.items() if v is not None}, tuple(tags), profiles)

    def call(self, v: Any, line: int, path: str, registry: Registry, f: _F,
             refs: _Refs) -> tuple[str, dict, dict[str, int]] | None:
        """`{name: args}` (or a bare name) of an experiment or check, validated against its registry entry.

        Returns the name, the arguments with defaults, and the lines of the arguments written (`_arg_lines`).
        """
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
        return None if args is None else (name, entry.with_defaults(args), _arg_lines(v[name]))


def _arg_lines(args: Any) -> dict[str, int]:
    """Argument -> line of its value, and "argument[i]" -> line of item i of a list argument."""
    out: dict[str, int] = {}
    for key, value in args.items() if isinstance(args, YMap) else ():
        out[key] = args.val_line(key)
        if isinstance(value, YList):
            out.update({f"{key}[{i}]": at for i, at in enumerate(value.lines)})
    return out



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


def _raise_if(errors: list[SpecError]) -> None:
    """Raise the (deduplicated) `errors` as one `SpecErrors`, if there are any."""
    if errors:
        raise SpecErrors(list({str(e): e for e in errors}.values()))


def load_claims(paths: Sequence[str | Path], profile: str = "ci", fixtures_dir: Path | None = None,
                overrides: Mapping[str, str] | None = None) -> list[ClaimSpec]:
    """Load and validate the claims under `paths` and the fixtures they use, with `profile` applied.

    Raises one `SpecErrors` with every error of every file. `fixtures_dir` None: the nearest `fixtures/`
    directory above each claim file. A `profile` that none of the files read defines (the claim files and the
    fixture files they use; `ci` always exists) is an error too (field path `profile`, no file).
    `overrides` ({fixture name: location}, as `parse_overrides` gives): those model fixtures are replaced by
    checkpoints wherever they appear (`mechcheck.spec.overrides`); a name no fixture has is an error.
    """
    check_profile_name(profile)
    ld, claims, first, known = _Loader(profile), [], {}, set()
    for path in discover(paths):
        doc = ld.doc(path)
        if doc is None:
            continue
        f = _F(ld.errors, str(path))
        fx = Path(fixtures_dir) if fixtures_dir is not None else find_fixtures_dir(path)
        if fx is not None:
            known.update(list_fixtures(fx)["models"])
        spec = ld.claim(doc, f, fx)
        cid = doc.get("id")  # the raw id, so a duplicate is reported even when the claim has other errors
        if isinstance(cid, str) and cid in first:
            f.err(doc.val_line("id"), "id", f"duplicate claim id '{cid}' (also in {first[cid]})")
        elif isinstance(cid, str):
            first[cid] = f"{path}:{doc.val_line('id')}"
        if spec is not None:
            claims.append(spec)
    missing = unknown_profile(profile, ld.defined)
    _raise_if(([missing] if missing else []) + ld.errors)
    if overrides:
        from mechcheck.spec.overrides import apply_overrides

        claims = apply_overrides(claims, overrides, known)
    return claims


def load_model_fixture(name: str, fixtures_dir: Path, profile: str = "ci") -> ModelSpec:
    """The model fixture `name` (with its `from` chain) validated; raises `SpecErrors`."""
    check_profile_name(profile)
    ld = _Loader(profile)
    spec = ld.ref("models", name, _F(ld.errors, str(Path(fixtures_dir) / "models")), None, "", name,
                  Path(fixtures_dir))
    _raise_if(ld.errors)
    return spec


def load_task_fixture(name: str, fixtures_dir: Path, profile: str = "ci") -> TaskSpec:
    """The task fixture `name` validated; raises `SpecErrors`."""
    check_profile_name(profile)
    ld = _Loader(profile)
    spec = ld.ref("tasks", name, _F(ld.errors, str(Path(fixtures_dir) / "tasks")), None, "", name, Path(fixtures_dir))
    _raise_if(ld.errors)
    return spec


def list_fixtures(fixtures_dir: Path) -> dict[str, list[str]]:
    """The fixture names in `fixtures_dir`: {"models": [...], "tasks": [...]}, sorted."""
    return {kind: sorted({p.stem for p in (Path(fixtures_dir) / kind).glob("*.y*ml")
                          if p.suffix in (".yaml", ".yml") and p.is_file()}) for kind in ("models", "tasks")}

