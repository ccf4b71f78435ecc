"""`--override FIXTURE=LOCATION`: a model fixture replaced by a checkpoint, wherever it appears in a `from:` chain.

This is how CI regression works: the suite stays as written, and the model a fixture names is swapped for the
checkpoint under test. LOCATION is one of

  DIR               a local Hugging Face directory (config.json + safetensors), relative to the working directory
  DIR/seed{i}       one directory per replicate: `{i}` is filled with the replicate's index (0, 1, ...), so a
                    claim that trains 3 seeds of the fixture keeps 3 replicates
  pkg:PKG/PATH      a directory inside an installed Python package
  hub:ORG/NAME      a Hugging Face hub id (optionally hub:ORG/NAME@REVISION)

A plain value is always a local path: a missing directory is then an error of the claims that use it, never a
silent attempt to download something of the same name.

What a replacement means for the statistics: one checkpoint is one replicate, so a claim about a recipe that
trained several seeds becomes a claim about that checkpoint (its intervals no longer cover seed-to-seed
variation, and the report says so); a `{i}` pattern keeps the replicates. Fixtures fine-tuned *from* a replaced
fixture are still trained (from the new checkpoint), with their own cache keys.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mechcheck.errors import SpecError, SpecErrors, nearest
from mechcheck.paths import is_pkg_path, pkg_path_problem
from mechcheck.spec import ClaimSpec, ModelSpec

__all__ = ["PATTERN", "parse_overrides", "apply_overrides", "override_spec", "is_pattern", "fill_pattern"]

#: the placeholder a per-replicate LOCATION is filled in with
PATTERN = "{i}"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_WHERE = "<command line>"


def _err(message: str) -> SpecError:
    return SpecError(message, file=_WHERE, field_path="--override")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`["name=location", ...]` -> {name: location}; every malformed item is reported (exit 2), none is guessed."""
    out: dict[str, str] = {}
    errors: list[SpecError] = []
    for item in items:
        name, sep, location = item.partition("=")
        name, location = name.strip(), location.strip()
        if not sep or not name or not location:
            errors.append(_err(f"expected FIXTURE=LOCATION, got {item!r}"))
        elif not _NAME_RE.match(name):
            errors.append(_err(f"{name!r} is not a model fixture name"))
        elif name in out and out[name] != location:
            errors.append(_err(f"fixture '{name}' is overridden twice ({out[name]!r} and {location!r})"))
        elif problem := _location_problem(location):
            errors.append(_err(f"{name}={location}: {problem}"))
        else:
            out[name] = location
    if errors:
        raise SpecErrors(errors)
    return out


def _location_problem(location: str) -> str | None:
    braces = re.findall(r"\{[^}]*\}|[{}]", location)
    if any(b != PATTERN for b in braces):
        return f"the only placeholder a location may hold is {PATTERN} (the replicate's index)"
    if location.startswith("hub:"):
        hub = location[4:].split("@", 1)[0]
        if PATTERN in location:
            return "a hub id cannot hold a per-replicate pattern; use local directories"
        if not _HUB_RE.match(hub):
            return f"{hub!r} is not a hub id (ORG/NAME)"
        return None
    if is_pkg_path(location):
        return pkg_path_problem(location)
    return None


def is_pattern(spec: ModelSpec) -> bool:
    """Whether `spec` loads one checkpoint per replicate (a `{i}` location)."""
    return spec.recipe == "load" and bool(spec.path) and PATTERN in spec.path


def fill_pattern(path: str, replicate: int) -> str:
    """`path` with `{i}` replaced by the replicate's index."""
    return path.replace(PATTERN, str(replicate))


def override_spec(original: ModelSpec, location: str) -> ModelSpec:
    """The `load` fixture that stands in for `original` (same name and task; `replaces` says what it replaced)."""
    hub = path = revision = None
    if location.startswith("hub:"):
        hub, _, rev = location[4:].partition("@")
        revision = rev or None
    elif is_pkg_path(location):
        path = location
    else:
        p = Path(location).expanduser()
        path = os.path.normpath(p if p.is_absolute() else Path.cwd() / p)
    what = f"{original.recipe} fixture from {original.file}" if original.file else f"{original.recipe} fixture"
    return ModelSpec(original.name, "load", original.file, f"--override of {original.name} by {location}",
                     task=original.task, path=path, hub=hub, revision=revision, source_line=None,
                     source_field=f"--override {original.name}", replaces=what)


def replace_in_chain(spec: ModelSpec, overrides: Mapping[str, ModelSpec]) -> ModelSpec:
    """`spec` with every fixture of its `from` chain that `overrides` names replaced (the chain above it is cut)."""
    if spec.name in overrides:
        return overrides[spec.name]
    if spec.parent is None:
        return spec
    parent = replace_in_chain(spec.parent, overrides)
    return spec if parent is spec.parent else dataclasses.replace(spec, parent=parent)


def chain_names(spec: ModelSpec | None) -> list[str]:
    """The fixture names of `spec`'s `from` chain, itself first."""
    out = []
    while spec is not None:
        out.append(spec.name)
        spec = spec.parent
    return out


def unknown_overrides(overrides: Mapping[str, str], used: Iterable[str], known: Iterable[str]) -> list[SpecError]:
    """An error per override naming a fixture that is neither used by the claims nor defined in fixtures/."""
    used, known = set(used), set(known) | set(used)
    return [_err(f"no model fixture '{name}' to override (fixtures the claims use: {', '.join(sorted(used))})"
                 + (f"; did you mean '{near}'?" if (near := nearest(name, sorted(known))) else ""))
            for name in overrides if name not in known]


def apply_overrides(claims: list[ClaimSpec], overrides: Mapping[str, str], known: set[str]) -> list[ClaimSpec]:
    """`claims` with the fixtures `overrides` names replaced by `load` fixtures of the given locations."""
    originals: dict[str, ModelSpec] = {}
    for claim in claims:
        for spec in claim.models.values():
            while spec is not None:
                originals.setdefault(spec.name, spec)
                spec = spec.parent
    errors = unknown_overrides(overrides, originals, known)
    if errors:
        raise SpecErrors(errors)
    specs = {name: override_spec(originals[name], loc) for name, loc in overrides.items() if name in originals}
    out = []
    for claim in claims:
        if not any(n in specs for m in claim.models.values() for n in chain_names(m)):
            out.append(claim)
            continue
        out.append(dataclasses.replace(claim, models={r: replace_in_chain(m, specs) for r, m in claim.models.items()}))
    return out
