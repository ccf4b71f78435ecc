"""Profiles: named overlays (`ci`, `paper`, ...) deep-merged into a claim or fixture before it is validated.

`profiled` checks a mapping's keys and its `profiles` section and returns the mapping with the selected overlay
merged in; `check_profile_name` is the error about the selected profile itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mechcheck.errors import SpecError, SpecErrors
from mechcheck.spec.kinds import _check_keys
from mechcheck.spec.yaml import YMap, _F, _p, _show, merge

_PROFILE_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_NAME_RULE = "lowercase letters, digits, '_', '-'; starting with a letter"


def check_profile_name(profile: str) -> None:
    """Raise `SpecErrors` if `profile` is not a valid profile name."""
    if not isinstance(profile, str) or not _PROFILE_RE.match(profile):
        raise SpecErrors([SpecError(f"invalid profile name {profile!r} ({_NAME_RULE})", field_path="profile")])


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
