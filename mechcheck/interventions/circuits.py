"""Circuits: named groups of heads, each at its own token position, and the model with only the circuit left.

A `Circuit` maps a group name to (position key, heads): ``{"mover": ("last", [(1, 0), (1, 3)]),
"detector": ("query_label", [(0, 2)])}``. A position key names one position per example, resolved from the
batch (`positions_of`):

  last         each example's answer position (``batch.answer_pos``)
  query_label  ``batch.labels["query_label_pos"]``;  prev_label: ``batch.labels["prev_label_pos"]``
  all          every position (the group's heads are kept everywhere)
  any other    a per-example (n,) array passed in ``positions={key: array}``, else ``batch.labels[key]`` or
               ``batch.labels[key + "_pos"]``
  KEY+k, KEY-k any of these shifted by k tokens (``prev_label+1``: the token after the query label's earlier
               occurrence, where a small model may bind a label to its value)

*Keeping only the circuit* (`keep_only`) replaces every head's output (``hook_z``, the input of the attention
output projection) by its position-specific mean over a reference batch, at every position, except the
circuit's heads at their group's position in each example, which keep what they compute in that run (from
an upstream that is itself ablated). MLPs, embeddings and the residual stream are untouched. The means are
per position, so prompts must be aligned (one length, the same template slot at the same position): the
reference batch must have the evaluation batch's length.

`faithfulness` is the candidate accuracy of the model under `keep_only` divided by the clean model's; its
null is `random_circuits`, drawn with the same number of heads per group.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.edits import At, Reference, _as_tensor, _assign
from mechcheck.interventions.hooks import HookPoint
from mechcheck.interventions.run import RunOutput, reference, run, valid_positions
from mechcheck.interventions.sites import Site

__all__ = ["Circuit", "Group", "KeepOnly", "Faithfulness", "positions_of", "circuit_reference", "keep_only",
           "circuit_accuracy", "faithfulness", "random_circuits", "POSITION_ALIASES"]

#: position keys with a fixed meaning: the batch field (or label) each one reads
POSITION_ALIASES = {"last": "answer_pos", "query_label": "query_label_pos", "prev_label": "prev_label_pos"}

Head = tuple[int, int]


@dataclass(frozen=True)
class Group:
    """Heads (layer, head) of one circuit group, all at the group's position key."""

    position: str
    heads: tuple[Head, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.position, str) or not self.position:
            raise ValueError(f"a group's position must be a non-empty key (last, query_label, ...), got "
                             f"{self.position!r}")
        heads = []
        for h in self.heads:
            if len(h) != 2 or any(not isinstance(x, (int, np.integer)) or x < 0 for x in h):
                raise ValueError(f"a circuit head is [layer, head] with both >= 0, got {list(h)!r}")
            heads.append((int(h[0]), int(h[1])))
        if len(set(heads)) != len(heads):
            raise ValueError(f"a group lists a head twice: {sorted(h for h in heads if heads.count(h) > 1)}")
        object.__setattr__(self, "heads", tuple(heads))


@dataclass(frozen=True)
class Circuit:
    """Named groups of heads at their positions; a head may belong to several groups (at other positions)."""

    groups: Mapping[str, Group] = field(default_factory=dict)

    def __post_init__(self) -> None:
        groups = {}
        for name, g in dict(self.groups).items():
            if isinstance(g, Mapping):
                g = Group(g.get("position"), tuple(tuple(h) for h in g.get("heads", ())))
            elif not isinstance(g, Group):
                position, heads = g
                g = Group(position, tuple(tuple(h) for h in heads))
            groups[str(name)] = g
        object.__setattr__(self, "groups", groups)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Circuit:
        """From ``{name: {"position": key, "heads": [[layer, head], ...]}}`` (what `to_dict` writes)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a circuit is a mapping of group name -> {{position, heads}}, got {type(data).__name__}")
        for name, g in data.items():
            if not isinstance(g, Mapping) or set(g) != {"position", "heads"}:
                raise ValueError(f"circuit group {name!r} must have exactly the keys position and heads, got {g!r}")
        return cls(dict(data))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: {"position": g.position, "heads": [list(h) for h in g.heads]} for name, g in self.groups.items()}

    @property
    def heads(self) -> set[Head]:
        """Every head of any group."""
        return {h for g in self.groups.values() for h in g.heads}

    def sizes(self) -> dict[str, int]:
        return {name: len(g.heads) for name, g in self.groups.items()}

    def check(self, n_layers: int, n_heads: int) -> None:
        """ValueError naming the first head the model (n_layers x n_heads) does not have."""
        for name, g in self.groups.items():
            for layer, head in g.heads:
                if layer >= n_layers or head >= n_heads:
                    raise ValueError(f"circuit group {name!r}: head [{layer}, {head}] does not exist "
                                     f"({n_layers} layers x {n_heads} heads)")


_OFFSET = re.compile(r"^(?P<base>.+?)(?P<shift>[+-]\d+)$")


def split_offset(key: str) -> tuple[str, int]:
    """``"prev_label+1"`` -> ("prev_label", 1); a key without an offset -> (key, 0)."""
    m = _OFFSET.match(key)
    return (m.group("base"), int(m.group("shift"))) if m else (key, 0)


def positions_of(keys: Iterable[str], batch, positions: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per position key, the (n,) position of every example in `batch` (or ``"all"``), checked to be in the prompt."""
    positions = dict(positions or {})
    n, T = batch.tokens.shape
    valid = valid_positions(batch.tokens, batch.pad_id)
    out: dict[str, Any] = {}
    for key in dict.fromkeys(keys):
        if key == "all":
            out[key] = "all"
            continue
        base, shift = split_offset(key)
        if key in positions:
            pos, shift = positions[key], 0
        elif base in positions:
            pos = positions[base]
        elif base == "last":
            pos = batch.answer_pos
        else:
            label = POSITION_ALIASES.get(base, base)
            found = [k for k in (label, f"{label}_pos") if k in batch.labels]
            if not found:
                have = ", ".join(sorted(batch.labels)) or "none"
                raise ValueError(f"position {key!r}: the batch has no label {label!r} (labels: {have}); pass "
                                 f"positions={{{key!r}: (n,) array}}")
            pos = batch.labels[found[0]]
        pos = np.asarray(pos) + shift if shift else np.asarray(pos)
        if pos.shape != (n,) or not np.issubdtype(pos.dtype, np.integer):
            raise ValueError(f"position {key!r}: expected one integer position per example ({n},), got shape "
                             f"{pos.shape} of {pos.dtype}")
        if pos.min() < 0 or pos.max() >= T or not valid[np.arange(n), pos].all():
            bad = int(np.flatnonzero((pos < 0) | (pos >= T) | ~valid[np.arange(n), np.clip(pos, 0, T - 1)])[0])
            raise ValueError(f"position {key!r}: example {bad} has position {int(pos[bad])}, outside its prompt")
        out[key] = pos.astype(np.int64)
    return out


def circuit_reference(model, batch, *, batch_size: int = 500) -> Reference:
    """Position-specific means of every layer's hook_z over `batch` (T, H, d_head) each, padding left out."""
    return reference(model, batch, [Site(layer, "z") for layer in range(model.n_layers)], batch_size=batch_size)


@dataclass(frozen=True, eq=False)
class KeepOnly:
    """One layer's hook_z replaced by its position-specific `mean` (T, H, d_head) everywhere, except each
    (heads, positions) pair of `keep`, which keeps the run's own values (positions: At, or "all")."""

    site: Site | str
    mean: Any
    keep: tuple[tuple[tuple[int, ...], Any], ...] = ()

    def __post_init__(self) -> None:
        site = Site.parse(self.site)
        if site.kind != "z":
            raise ValueError(f"KeepOnly edits hook_z, got {site.name}")
        object.__setattr__(self, "site", site)

    def hook(self):
        import torch

        mean = _as_tensor(self.mean)

        def fn(z, point: HookPoint):  # (B, T, H, d_head)
            out = _assign(z, None, "all", point, mean.to(z.device, z.dtype), False)
            rows = torch.arange(z.shape[0], device=z.device)
            for heads, at in self.keep:
                u = torch.as_tensor(heads, dtype=torch.long, device=z.device)
                if isinstance(at, str):  # "all"
                    out[:, :, u] = z[:, :, u]
                    continue
                pos = at.rows(point, z.shape[1]).to(z.device)[:, None]
                out[rows[:, None], pos, u[None, :]] = z[rows[:, None], pos, u[None, :]]
            return out

        return fn


def keep_only(model, circuit: Circuit, batch, reference: Reference,
              positions: Mapping[str, Any] | None = None) -> list[KeepOnly]:
    """The edits (one `KeepOnly` per layer) that leave only `circuit` on `batch`: for `run(model, batch, ...)`."""
    circuit.check(model.n_layers, model.n_heads)
    pos = positions_of([g.position for g in circuit.groups.values()], batch, positions)
    T = batch.tokens.shape[1]
    edits = []
    for layer in range(model.n_layers):
        site = Site(layer, "z")
        mean = reference.mean(site)
        if mean.shape[0] != T:
            raise ValueError(f"{site.name}: the reference's means cover {mean.shape[0]} positions, the batch has {T}: "
                             "position-specific means need aligned prompts of one length")
        keep = []
        for g in circuit.groups.values():
            heads = tuple(sorted(h for la, h in g.heads if la == layer))
            if heads:
                p = pos[g.position]
                keep.append((heads, p if isinstance(p, str) else At(p)))
        edits.append(KeepOnly(site, mean, tuple(keep)))
    return edits


def circuit_accuracy(model, circuit: Circuit, batch, reference: Reference, *,
                     positions: Mapping[str, Any] | None = None, batch_size: int = 500) -> RunOutput:
    """The run of `model` on `batch` with only `circuit` left (metrics per example: accuracy over the candidates)."""
    return run(model, batch, keep_only(model, circuit, batch, reference, positions), batch_size=batch_size)


def random_circuits(circuit: Circuit, n_layers: int, n_heads: int, n: int, seed: int = 0, *,
                    avoid: Iterable[Head] = ()) -> list[Circuit]:
    """`n` circuits with `circuit`'s groups, positions and sizes, each group's heads drawn uniformly without
    replacement from all heads (minus `avoid`); the same `seed` gives the same circuits."""
    avoid = {(int(a), int(b)) for a, b in avoid}
    pool = [(la, h) for la in range(n_layers) for h in range(n_heads) if (la, h) not in avoid]
    for name, g in circuit.groups.items():
        if len(g.heads) > len(pool):
            raise ValueError(f"group {name!r} has {len(g.heads)} heads, but only {len(pool)} heads can be drawn")
    rng = np.random.default_rng([seed, 0xC1C])
    out = []
    for _ in range(n):
        groups = {name: Group(g.position, tuple(pool[i] for i in sorted(rng.choice(len(pool), len(g.heads),
                                                                                       replace=False))))
                  for name, g in circuit.groups.items()}
        out.append(Circuit(groups))
    return out


@dataclass
class Faithfulness:
    """Per-example accuracies (over the candidates): of the model (n,), of the circuit (n,), of each random
    circuit (R, n); `faithfulness` = circuit / model accuracy, `random_faithfulness` (R,) the same for the null."""

    model: np.ndarray
    circuit: np.ndarray
    random: np.ndarray
    random_circuits: list[Circuit] = field(default_factory=list)

    @property
    def faithfulness(self) -> float:
        return _ratio(self.circuit.mean(), self.model.mean())

    @property
    def random_faithfulness(self) -> np.ndarray:
        return np.array([_ratio(r.mean(), self.model.mean()) for r in self.random])


def _ratio(a: float, b: float) -> float:
    if b == 0:
        raise ValueError("the model answers no example correctly: faithfulness F(circuit) / F(model) is undefined")
    return float(a / b)


def faithfulness(model, circuit: Circuit, batch, reference: Reference, *, positions: Mapping[str, Any] | None = None,
                 n_random: int = 0, seed: int = 0, batch_size: int = 500, avoid: Iterable[Head] = ()) -> Faithfulness:
    """F(circuit) / F(model) on `batch`, means from `reference`, and `n_random` random circuits as the null
    (drawn from every head but `avoid`)."""
    clean = run(model, batch, batch_size=batch_size).metrics["accuracy"]
    kept = circuit_accuracy(model, circuit, batch, reference, positions=positions, batch_size=batch_size)
    draws = random_circuits(circuit, model.n_layers, model.n_heads, n_random, seed, avoid=avoid)
    rand = [circuit_accuracy(model, c, batch, reference, positions=positions, batch_size=batch_size)
            .metrics["accuracy"] for c in draws]
    return Faithfulness(clean, kept.metrics["accuracy"],
                        np.stack(rand) if rand else np.zeros((0, len(batch))), draws)
