"""Circuit discovery by iterative path patching: groups of heads found from the logits backwards.

Each `Step` finds one group: the `k` heads, at the step's position, whose path-patched effect on the receivers
is most negative (`mechcheck.interventions.paths`). The first step has no receivers (the heads' direct effect on
the answer, every other head frozen); each later step's receivers are an earlier group's heads, read through
their query, key or value input. This is the recipe of Prakash et al. 2024 (Value Fetcher at the last token from
the logits; Position Transmitter into its queries; Position Detector at the query label into the Transmitter's
values; Structure Reader at the previous occurrence of the query label into the Detector's values), written as
data so that other circuits can be discovered the same way:

    [Step("value_fetcher", "last", k=8),
     Step("position_transmitter", "last", k=3, into="value_fetcher", via="q"),
     Step("position_detector", "query_label", k=4, into="position_transmitter", via="v"),
     Step("structure_reader", "prev_label", k=2, into="position_detector", via="v")]

For K- and V-composition the receivers' inputs are replaced at the sender's position (the token whose key or value
they read); for Q-composition at the receivers' own position. A head already in an earlier group may be selected
again (at another position it is another component); `exclude_selected` forbids that. Only heads that hurt
(a negative mean score) are selected, so a group can be smaller than `k`: path patching gives no natural threshold,
and a head whose corruption changes nothing is not part of the mechanism.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mechcheck.interventions.circuits import Circuit, Group
from mechcheck.interventions.paths import path_patching

__all__ = ["Step", "Discovery", "discover_circuit", "PRAKASH_STEPS"]


@dataclass(frozen=True)
class Step:
    """One group to find: `k` heads at `position`, scored into group `into` through input `via` (q / k / v)."""

    name: str
    position: str
    k: int
    into: str | None = None
    via: str = "q"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"step {self.name!r}: k must be >= 1, got {self.k}")
        if self.via not in ("q", "k", "v"):
            raise ValueError(f"step {self.name!r}: via must be q, k or v, got {self.via!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        unknown = set(data) - {"name", "position", "k", "into", "via"}
        if unknown:
            raise ValueError(f"a discovery step has the keys name, position, k, into, via; got {sorted(unknown)}")
        return cls(str(data["name"]), str(data["position"]), int(data["k"]), data.get("into"), data.get("via", "q"))


#: the four groups of Prakash et al. 2024, with top-k scaled to a model of `n_heads_total` heads by the caller
PRAKASH_STEPS = ("value_fetcher", "position_transmitter", "position_detector", "structure_reader")


@dataclass
class Discovery:
    """The circuit found, and per step the senders' mean scores (S,) in `senders` order."""

    circuit: Circuit
    senders: list[tuple[int, int]]
    scores: dict[str, np.ndarray]
    forward_passes: int

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"score/{name}": s for name, s in self.scores.items()}


def discover_circuit(model, clean, corrupt, steps: Sequence[Step], *, positions: Mapping[str, Any] | None = None,
                     corrupt_positions: Mapping[str, Any] | None = None, exclude_selected: bool = False,
                     over: str = "vocab", batch_size: int = 500) -> Discovery:
    """Run `steps` in order on the aligned `clean` / `corrupt` batches; returns the circuit and every score."""
    L, H = model.n_layers, model.n_heads
    groups: dict[str, Group] = {}
    scores: dict[str, np.ndarray] = {}
    senders = [(la, h) for la in range(L) for h in range(H)]
    passes = 0
    for step in steps:
        if step.name in groups:
            raise ValueError(f"two discovery steps are named {step.name!r}")
        receivers: list[tuple[int, int, str]] = []
        receiver_position: Any = "last"
        if step.into is not None:
            if step.into not in groups:
                raise ValueError(f"step {step.name!r} composes into {step.into!r}, which no earlier step found")
            target = groups[step.into]
            receivers = [(la, h, step.via) for la, h in target.heads]
            # Q: the receivers' own position; K / V: the token they read, the sender's
            receiver_position = target.position if step.via == "q" else step.position
        if step.into is not None and not receivers:
            scores[step.name] = np.zeros(len(senders))
            groups[step.name] = Group(step.position, ())
            continue
        got = path_patching(model, clean, corrupt, senders, sender_position=step.position, receivers=receivers,
                            receiver_position=receiver_position, positions=positions,
                            corrupt_positions=corrupt_positions, over=over, batch_size=batch_size)
        top = max((la for la, _, _ in receivers), default=L)
        passes += 2 + sum(1 if not receivers else 2 for la, _ in senders if la < top)
        mean = got.mean_score
        scores[step.name] = mean
        taken = {h for g in groups.values() for h in g.heads} if exclude_selected else set()
        order = [i for i in np.argsort(mean, kind="stable") if mean[i] < 0 and senders[i] not in taken]
        groups[step.name] = Group(step.position, tuple(sorted(senders[i] for i in order[: step.k])))
    return Discovery(Circuit(groups), senders, scores, passes)


def steps_from(data: Sequence[Mapping[str, Any]]) -> list[Step]:
    """Steps from plain dicts (a claim's `steps:`), checked."""
    steps = [Step.from_dict(d) for d in data]
    if not steps:
        raise ValueError("discovery needs at least one step")
    return steps


def steps_to_dicts(steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [asdict(s) for s in steps]
