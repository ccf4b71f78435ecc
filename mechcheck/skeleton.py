"""Claim skeletons: a commented claim file for one experiment, which `mechcheck validate` accepts as written.

`skeleton` writes the experiment's arguments with their defaults, one or two checks that can judge it (those
`mechcheck.spec.cross.check_experiment` accepts, with values inside their bounds) and model roles named after
fixtures of the project's `fixtures/` directory (trained GPT-2 shapes first: they are cheap and declare their
shape); without a fixtures directory the names are placeholders to replace. Exposed as `mechcheck new`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mechcheck.errors import SpecError, SpecErrors, nearest
from mechcheck.registry import CHECKS, EXPERIMENTS, TASKS, Entry, Param
from mechcheck.spec import CheckSpec, ExperimentSpec, ModelSpec
from mechcheck.spec.cross import check_experiment
from mechcheck.spec.yaml import _F

__all__ = ["skeleton", "claim_id_for", "describe"]

_ROLES = ("base", "other")
_PLAIN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "none", "~"}
_MODEL_PLACEHOLDER, _TASK_PLACEHOLDER = "<model fixture>", "<task fixture>"


def describe(p: Param) -> str:
    """`p`'s kind in words, with its bounds and whether it is required: "int >= 1, required"."""
    bounds = [f"{op} {_num(v)}" for op, v in ((">=", p.min), ("<=", p.max)) if v is not None]
    if p.kind == "choice" and len(p.choices) <= 8:
        bounds = [" | ".join(str(c) for c in p.choices)]
    kind = {"model": "a role of `models`", "tokens": "a token group of the eval task",
            "label": "a label of the eval task", "labels": "labels of the eval task"}.get(p.kind, p.kind)
    text = kind + (" " + ", ".join(bounds) if bounds else "")
    return text + (", required" if p.required else "") + (f", one of the experiment's `{p.within}`" if p.within else "")


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _yaml(v: Any) -> str:
    """`v` as a one-line YAML value (flow style; strings quoted where YAML would read them otherwise)."""
    if v is None or isinstance(v, bool):
        return "null" if v is None else str(v).lower()
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return v if _PLAIN_RE.match(v) and v.lower() not in _YAML11_WORDS else json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(_yaml(x) for x in v) + "]"


def claim_id_for(path: Path) -> str:
    """A claim id for a new file: `<folder>.<stem>` (`claims/lin2024/late_heads.yaml` -> lin2024.late_heads)."""
    parts = [p for p in (path.parent.name, path.stem) if p and p not in ("claims", ".", "..")]
    clean = [re.sub(r"[^a-z0-9_.-]+", "-", p.lower()).strip("-._") for p in parts]
    return ".".join(p for p in clean if p) or "my.claim"


class _Task:
    """What a check may name in a candidate eval task: its fixture name (None: none found), labels, groups."""

    def __init__(self, name: str | None, generator: str) -> None:
        self.name, self.generator = name, generator
        meta = TASKS.get(generator).meta
        labels = meta.get("labels")
        self.labels = None if labels is None else list(labels)
        self.groups = list(meta.get("token_groups", ()))


def _example(p: Param, role: str, pool: dict[str, Any], task: _Task) -> Any:
    """A valid value for a required argument `p` (`pool`: the experiment's arguments, for `within`)."""
    if p.within and pool.get(p.within) is not None:
        got = pool[p.within]
        return got[0] if isinstance(got, list) and p.kind != "labels" else got
    k, lo, hi = p.kind, p.min, p.max
    if k == "model":
        return role
    if k == "float":
        mid = (lo + hi) / 2 if lo is not None and hi is not None else (lo + 0.5 if lo is not None else
                                                                       hi - 0.5 if hi is not None else 0.0)
        return round(float(mid), 4)
    if k == "int":
        return int(max(lo, 1)) if lo is not None else 1
    if k == "ints":
        start = int(max(lo or 1, 1))
        grid = [x for x in (16, 64, 256) if x >= start and (hi is None or x <= hi)]
        return grid or [start]
    if k == "floats":
        return [round(float(lo if lo is not None else 0.0), 4)]
    if k in ("tokens", "label", "labels"):
        names = task.groups if k == "tokens" else task.labels
        if not names:
            raise LookupError(f"{task.generator} has no {'token groups' if k == 'tokens' else 'labels'}")
        return names[0] if k != "labels" else names[:1]
    return {"choice": lambda: p.choices[0], "str": lambda: "TODO", "bool": lambda: False, "mapping": dict,
            "layers": lambda: [0], "head": lambda: [0, 0], "heads": lambda: "top_head",
            "strings": lambda: list(p.choices[:1]) or ["TODO"]}[k]()


def _check(entry: Entry, experiment: ExperimentSpec, task: _Task) -> tuple[dict[str, Any], int] | None:
    """The required arguments of a check that fits `experiment` and `task`, and how many roles it names."""
    args: dict[str, Any] = {}
    roles = iter(_ROLES)
    try:
        for p in entry.params:
            if p.required:
                role = next(roles) if p.kind == "model" else ""
                args[p.name] = _example(p, role, experiment.args, task)
    except (LookupError, StopIteration):
        return None
    f = _F([], "<skeleton>")
    check_experiment(f, experiment, 1, [(0, CheckSpec(entry.name, entry.with_defaults(args), line=1))])
    return None if f.errors else (args, sum(1 for p in entry.params if p.required and p.kind == "model"))


def _checks(experiment: ExperimentSpec, task: _Task) -> list[tuple[str, dict[str, Any], int]]:
    """Up to two checks for `experiment`: those registered for it first, then any that read every experiment."""
    names = sorted(CHECKS.names(), key=lambda n: CHECKS.get(n).meta.get("experiments") is None)
    out = []
    for name in names:
        got = _check(CHECKS.get(name), experiment, task)
        if got is not None:
            out.append((name, *got))
        if len(out) == 2:
            break
    return out


def _fixtures(fixtures_dir: Path | None) -> tuple[list[ModelSpec], list[_Task]]:
    """The valid model fixtures (cheapest first) and task fixtures of `fixtures_dir`."""
    from mechcheck.spec import list_fixtures, load_model_fixture, load_task_fixture

    if fixtures_dir is None or not Path(fixtures_dir).is_dir():
        return [], []
    found = list_fixtures(fixtures_dir)
    models, tasks = [], []
    for name in found["models"]:
        try:
            models.append(load_model_fixture(name, fixtures_dir))
        except SpecErrors:
            continue  # a broken fixture is `mechcheck validate`'s to report, not a skeleton's to use
    for name in found["tasks"]:
        try:
            tasks.append(_Task(name, load_task_fixture(name, fixtures_dir).generator))
        except SpecErrors:
            continue
    rank = {"scratch": 0, "pretrain": 1, "finetune": 2, "load": 4}
    models.sort(key=lambda m: (rank.get(m.recipe, 3) + (m.recipe == "scratch" and not m.architecture) * 2, m.name))
    return models, tasks


def _plan(experiment: Entry, exp_args: dict[str, Any], fixtures_dir: Path | None):
    """The eval task, checks and models of the skeleton: the first task (models' tasks first) that fits."""
    models, tasks = _fixtures(fixtures_dir)
    order = list(dict.fromkeys([m.task.name for m in models if m.task] + [t.name for t in tasks]))
    by_name = {t.name: t for t in tasks}
    candidates = [by_name[n] for n in order if n in by_name] + [_Task(None, g) for g in TASKS.names()]
    spec = ExperimentSpec(experiment.name, experiment.with_defaults(exp_args))
    for task in candidates:
        labels = [v for p in experiment.params if p.kind in ("label", "labels") and (v := exp_args.get(p.name))]
        flat = [x for v in labels for x in (v if isinstance(v, list) else [v])]
        if task.labels is not None and any(x not in task.labels for x in flat):
            continue  # the experiment's default labels are not this task's
        checks = _checks(spec, task)
        if checks:
            own = [m.name for m in models if m.task and m.task.name == task.name]
            rest = [m.name for m in models if m.name not in own]
            return task, checks, (own + rest) if task.name else []
    raise SpecError(f"no registered check can judge experiment '{experiment.name}' with any task",
                    field_path="experiment")


def skeleton(experiment: str, fixtures_dir: Path | None = None, claim_id: str = "my.claim",
             schema: str | None = None) -> str:
    """A commented claim file for `experiment`, using fixtures of `fixtures_dir` (None: placeholder names).

    `schema`: a path or URL of the JSON Schema (`mechcheck schema -o ...`), written as the yaml-language-server
    modeline on the first line. Raises `SpecError` for an unknown experiment.
    """
    if experiment not in EXPERIMENTS:
        names = EXPERIMENTS.names()
        raise SpecError(f"unknown experiment '{experiment}'", file="<command line>", field_path="--experiment",
                        allowed=tuple(names), suggestion=nearest(experiment, names))
    entry = EXPERIMENTS.get(experiment)
    # an experiment's own role arguments (cross_model_patching's source / into) name the first roles, in order
    exp_roles = iter(_ROLES)
    exp_args = {p.name: p.default if p.default is not None else _example(
        p, next(exp_roles) if p.kind == "model" else "", {}, _Task(None, TASKS.names()[0]))
        for p in entry.params if p.required or p.default is not None}
    task, checks, fixtures = _plan(entry, exp_args, fixtures_dir)
    n_exp_roles = sum(1 for p in entry.params if p.kind == "model" and p.name in exp_args)
    n_roles = max([n for _, _, n in checks] + [1, n_exp_roles])
    roles = _ROLES[:max(n_roles, 1)]
    models = {r: (fixtures[i] if i < len(fixtures) else _MODEL_PLACEHOLDER) for i, r in enumerate(roles)}

    out = [f"# yaml-language-server: $schema={schema}"] if schema else []
    out += [f"# Claim skeleton for experiment `{experiment}`: {entry.doc}",
            "# Replace every TODO and each value marked `<- set`; `mechcheck validate <file>` checks the file",
            "# without touching a model. Format: docs/claim-format.md; `mechcheck ls` lists what can be named.",
            f"id: {_yaml(claim_id)}",
            "statement: >",
            "  TODO: the hypothesis, in a sentence or two.",
            "source:",
            '  notes: "TODO: where the claim comes from (keys: paper, arxiv, section, url, notes)"',
            "tags: []",
            "models:  # role -> model fixture (fixtures/models/<name>.yaml) or an inline model mapping"]
    if fixtures_dir is None or not task.name:
        out.append("  # no fixtures/ directory with a fitting task was found: replace the placeholders")
    out += [f"  {r}: {_yaml(m)}" for r, m in models.items()]
    out += ["data:",
            f"  task: {_yaml(task.name or _TASK_PLACEHOLDER)}  # the eval task"
            + ("" if task.name else f" (a task fixture with generator {task.generator}, say)"),
            "  n: 512  # evaluation examples", "  seed: 0",
            "seeds: 3  # independently trained replicates (a trained model needs >= 2 for a verdict)",
            "experiment:", f"  {experiment}:"]
    for p in entry.params:
        note = "; ".join(x for x in (p.doc, describe(p)) if x)
        if p.name in exp_args:
            mark = "  <- set" if p.required else ""
            out.append(f"    {p.name}: {_yaml(exp_args[p.name])}  # {note}{mark}")
        else:
            out.append(f"    # {p.name}:  # {note}; not set by default")
    out.append("expect:")
    for name, args, _ in checks:
        e = CHECKS.get(name)
        out.append(f"  - {name}:  # {e.doc}")
        for p in e.params:
            if p.name in args:
                mark = "" if p.kind == "model" else "  <- set"
                out.append(f"      {p.name}: {_yaml(args[p.name])}  # {describe(p)}{mark}")
        optional = [f"{p.name}={_yaml(p.default)}" for p in e.params if not p.required]
        if optional:
            out.append(f"      # optional: {', '.join(optional)}")
    out += ["# profiles:  # overlays merged in by --profile NAME (ci is the default; paper: the published setting)",
            "#   paper:", "#     data: {n: 2000}"]
    return "\n".join(out) + "\n"
