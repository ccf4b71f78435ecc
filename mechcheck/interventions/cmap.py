"""Cross-model activation patching (CMAP): one model's heads, run on the same inputs, written into another.

`cmap(base, source, batch, circuit)` runs `source` (e.g. a fine-tuned model) on `batch`, keeps each circuit
head's ``hook_z`` at its group's position in every example, and runs `base` on the same batch with those heads'
outputs there replaced by the source's. Everything else of the base run is the base model's own. If the
patched heads carry what the source does better, the base model's accuracy rises to the source's.

``site="q"`` (``"k"``, ``"v"``) is the input variant: the circuit heads' query (key, value) *input* (the
residual stream the projection reads, `sites`) is taken from the source model and projected by the base
model's own weights. The query is patched at the group's position; keys and values at every position (the
head at its position reads them all), and then every head's ``hook_z`` at positions that belong to no group
is frozen to the base model's clean value, so the change acts only through the groups' positions. This
differs from patching the source's projected q / k / v vectors, which would also carry the source's W_Q /
W_K / W_V.

Both models must have the same shape (layers, heads, head size) and read the same tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mechcheck.interventions.circuits import Circuit, positions_of
from mechcheck.interventions.edits import At, Patch, Put, Read
from mechcheck.interventions.hooks import HookPoint
from mechcheck.interventions.run import RunOutput, run
from mechcheck.interventions.sites import Site

__all__ = ["cmap", "cmap_edits"]


def _same_shape(base, source) -> None:
    keys = ("n_layers", "n_heads", "d_head")
    a, b = (tuple(m.dims[k] for k in keys) for m in (base, source))
    if a != b:
        raise ValueError(f"cross-model patching needs models of one shape (layers, heads, d_head): base {a}, "
                         f"source {b}")


def _by_layer(circuit: Circuit) -> dict[tuple[str, int], tuple[int, ...]]:
    """(position key, layer) -> the circuit's heads of that layer at that position (groups sharing a key merge)."""
    out: dict[tuple[str, int], set[int]] = {}
    for g in circuit.groups.values():
        for layer, head in g.heads:
            out.setdefault((g.position, layer), set()).add(head)
    return {k: tuple(sorted(v)) for k, v in sorted(out.items())}


def cmap_edits(base, source, batch, circuit: Circuit, *, site: str = "z", positions: Mapping[str, Any] | None = None,
               batch_size: int = 500) -> list:
    """The edits of `cmap` for a run of `base` on `batch` (one run of `source` per position key to read them)."""
    if site not in ("z", "q", "k", "v"):
        raise ValueError(f"cmap site must be z (head outputs) or q, k, v (head inputs), got {site!r}")
    _same_shape(base, source)
    circuit.check(base.n_layers, base.n_heads)
    pos = positions_of([g.position for g in circuit.groups.values()], batch, positions)
    parts = _by_layer(circuit)
    edits: list = []
    for key in dict.fromkeys(k for k, _ in parts):
        layers = {layer: heads for (k, layer), heads in parts.items() if k == key}
        at = pos[key] if isinstance(pos[key], str) else At(pos[key])
        kind = "z" if site == "z" else f"{site}_input"
        # keys and values are read at every position up to the head's: take the source's at all of them
        read_at = "all" if site in ("k", "v") else at
        reads = run(source, batch, read=[Read(Site(layer, kind), at=read_at) for layer in layers],
                    batch_size=batch_size).reads
        for layer, heads in layers.items():
            name = Site(layer, kind).name
            if isinstance(read_at, At):
                edits.append(Put(name, reads[name][:, list(heads)], at, heads))
            else:
                edits.append(Patch(name, reads[name], heads, "all"))
    if site != "z":
        clean = run(base, batch, read=[Read(Site(layer, "z"), at="all") for layer in range(base.n_layers)],
                    batch_size=batch_size).reads
        kept = [p for p in pos.values() if not isinstance(p, str)]
        if not any(isinstance(p, str) for p in pos.values()):
            edits += [_FreezeOutside(Site(layer, "z"), clean[Site(layer, "z").name], tuple(At(p) for p in kept))
                      for layer in range(base.n_layers)]
    return edits


class _FreezeOutside:
    """hook_z set to `clean` (n, T, H, d_head) at every position except each example's positions in `keep`."""

    def __init__(self, site: Site, clean: np.ndarray, keep: tuple[At, ...]) -> None:
        self.site, self.clean, self.keep = site, clean, keep

    def hook(self):
        import torch

        clean = torch.as_tensor(self.clean)

        def fn(z, point: HookPoint):
            B, T = z.shape[:2]
            src = clean[point.forward.rows.cpu()].to(z.device, z.dtype)
            outside = torch.ones(B, T, dtype=torch.bool, device=z.device)
            rows = torch.arange(B, device=z.device)
            for at in self.keep:
                outside[rows, at.rows(point, T).to(z.device)] = False
            return torch.where(outside[:, :, None, None], src, z)

        return fn


def cmap(base, source, batch, circuit: Circuit, *, site: str = "z", positions: Mapping[str, Any] | None = None,
         batch_size: int = 500) -> RunOutput:
    """Run `base` on `batch` with `circuit`'s heads (at their groups' positions) patched from `source` on the
    same inputs: their outputs (``site="z"``) or their query / key / value inputs (``"q"``, ``"k"``, ``"v"``)."""
    edits = cmap_edits(base, source, batch, circuit, site=site, positions=positions, batch_size=batch_size)
    return run(base, batch, edits, batch_size=batch_size)
