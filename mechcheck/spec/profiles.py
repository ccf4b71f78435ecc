"""Profiles: named overlays (`ci`, `paper`, ...) deep-merged into a claim or fixture before it is validated.

`profiled` checks a mapping's keys and its `profiles` section and returns the mapping with the selected overlay
merged in; `check_profile_name` and `unknown_profile` are the errors about the selected profile itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from mechcheck.errors import SpecError, SpecErrors, nearest
from mechcheck.spec.kinds import _check_keys
from mechcheck.spec.yaml import YMap, _F, _p, _show, merge

#: the profile every suite has: the base of every file, used when a file defines no overlay of its own
BASE_PROFILE = "ci"
_PROFILE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_NAME_RULE = "lowercase letters, digits, '_', '-'; starting with a letter"


def check_profile_name(profile: str) -> None:
    """Raise `SpecErrors` if `profile` is not a valid profile name."""
    if not isinstance(profile, str) or not _PROFILE_RE.match(profile):
        raise SpecErrors([SpecError(f"invalid profile name {profile!r} ({_NAME_RULE})", field_path="profile")])


def unknown_profile(profile: str, defined: Iterable[str]) -> SpecError | None:
    """The error for selecting `profile` when the suite's files define only `defined` (None if it is defined).

    A profile only some files define is fine (the others use their base); one that no file defines is almost
    always a typo, and would otherwise validate and run the base of every file without a word.
    """
    known = sorted({BASE_PROFILE, *defined})
    if profile in known:
        return None
    return SpecError(f"unknown profile '{profile}'",
                     field_path="profile", allowed=tuple(known), suggestion=nearest(profile, known))


def profiled(m: YMap, keys: Sequence[str], overlay_keys: Sequence[str], f: _F, prefix: str, profile: str,
             single: Sequence[str] = ()) -> tuple[YMap, tuple[str, ...]]:
    """Check `m`'s keys and `profiles`; return `m` merged with the overlay of `profile`, and the profile names.

    `single`: keys holding a one-key mapping that an overlay naming another key replaces (see `merge`).
    """
    _check_keys(m, keys, f, prefix)
    profs, ppath = m.get("profiles"), _p(prefix, "profiles")
    if profs is None:
        return m, ()
    if not isinstance(profs, YMap):
        f.err(m.val_line("profiles"), ppath, f"expected a mapping of profile name -> overlay, got {_show(profs)}")
        return m, ()
    for name, overlay in profs.items():
        if not _PROFILE_RE.match(name):
            f.err(profs.key_line(name), _p(ppath, name), f"invalid profile name '{name}' ({_NAME_RULE})")
        if isinstance(overlay, YMap):
            _check_keys(overlay, overlay_keys, f, _p(ppath, name), "overlay field")
        elif overlay is not None:
            f.err(profs.val_line(name), _p(ppath, name), f"expected an overlay mapping, got {_show(overlay)}")
    overlay = profs.get(profile)
    if isinstance(overlay, YMap):
        kept = YMap(overlay.line)  # unknown overlay fields are already reported: keep them out
        for k in overlay:
            if k in overlay_keys:
                kept.put(k, overlay[k], *overlay.lines[k])
        m = merge(m, kept, single)
    return m, tuple(profs)
