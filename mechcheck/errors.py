"""The few exception types mechcheck raises on purpose.

`SpecError` is the one error type for invalid input (a claim or fixture file, a CLI argument that
names something): its message always names the file, the line, the field path and what is allowed.
`ClaimSkipped` ends a claim as `skipped` (e.g. the hub is unreachable). Anything else that escapes a
claim's evaluation is a harness problem and ends that claim as `error`, never as `failed`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["SpecError", "SpecErrors", "ClaimSkipped", "nearest"]


def nearest(name: str, allowed: Iterable[str]) -> str | None:
    """The allowed name closest to `name` (for "did you mean ...?"), or None if nothing is close."""
    matches = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return matches[0] if matches else None


@dataclass
class SpecError(Exception):
    """An invalid claim or fixture file (or a value that names something that does not exist).

    Rendered on one line as ``file:line: field.path: message (allowed: ...; did you mean 'x'?)``.
    """

    message: str
    file: str | None = None
    line: int | None = None
    field_path: str = ""
    allowed: tuple[str, ...] = ()
    suggestion: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.field_path:
            text += f"{self.field_path}: "
        text += self.message
        extras = []
        if self.allowed:
            shown = ", ".join(self.allowed[:12]) + (", ..." if len(self.allowed) > 12 else "")
            extras.append(f"allowed: {shown}")
        if self.suggestion:
            extras.append(f"did you mean '{self.suggestion}'?")
        if extras:
            text += " (" + "; ".join(extras) + ")"
        return text


@dataclass
class SpecErrors(Exception):
    """Several `SpecError`s found in one validation pass (all of them are reported, not just the first)."""

    errors: list[SpecError] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class ClaimSkipped(Exception):
    """Raised while preparing a claim that cannot run here (e.g. it needs the hub and the hub is unreachable)."""
