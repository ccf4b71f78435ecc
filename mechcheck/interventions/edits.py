"""The interventions themselves: ablate, patch, mask and read a site, as plain objects that give hook functions.

Each intervention names a site, the units along the site's component axis (heads for ``hook_z``, neurons for
``mlp.hook_post``, dimensions of the residual stream; None: all of them) and the positions it applies to:
``"all"``, ``"answer"`` (each example's answer position), a tuple of absolute positions, or ``At(pos)``: one
position per example, from an (n,) array aligned with the batch (a token that sits at a different place in
each prompt, e.g. a queried label).

  Ablate  replace by 0 (zero), by the position-specific mean over a reference set (mean; padding left out of
          the mean), or by another reference example's activation (resample)
  Patch   replace by a given per-example source, aligned with the batch: the same model on another input
          (activation patching) or another model on the same input (cross-model patching)
  Mask    mix: ``m * activation + (1 - m) * source`` with per-unit weights m (fixed, or a torch Parameter to
          learn, e.g. DCM or pruning masks); the source defaults to 0. The model's own weights are never touched.
  Put     replace `units` at one position per example (`At`) by given values (n, len(units), ...): a patch
          that needs only what it writes (path patching's receivers, cross-model patching of a few heads)
  Read    capture a site: at the answer position (n, ...), at one position per example (`At`), at every
          position (n, T, ...), or its position-specific mean over the batch (T, ...) with padding left out

Shapes: ``hook_z`` is (B, T, H, d_head); residual sites and ``attn.o.hook_out`` are (B, T, d_model);
``mlp.hook_post`` is (B, T, d_mlp). The component axis is always axis 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.hooks import HookPoint
from mechcheck.interventions.sites import READ_ONLY, Site

__all__ = ["Ablate", "At", "Patch", "Put", "Mask", "Read", "Reference", "Positions"]

Positions = Any  # "all" | "answer" | tuple[int, ...] | At


@dataclass(frozen=True, eq=False)
class At:
    """One position per example: example i of the batch at position ``pos[i]`` (pos: (n,) ints >= 0)."""

    pos: Any

    def __post_init__(self) -> None:
        pos = np.asarray(self.pos)
        if pos.ndim != 1 or (pos.size and (not np.issubdtype(pos.dtype, np.integer) or pos.min() < 0)):
            raise ValueError(f"At needs one position >= 0 per example, an (n,) integer array; got shape "
                             f"{pos.shape} of {pos.dtype}")
        object.__setattr__(self, "pos", pos.astype(np.int64))

    def rows(self, point: HookPoint, T: int):
        """(B,) the positions of the examples of the forward pass in progress, checked against its length T."""
        import torch

        pos = torch.as_tensor(self.pos)[point.forward.rows.cpu()]
        if pos.numel() and int(pos.max()) >= T:
            raise ValueError(f"{point.name}: position {int(pos.max())} is beyond the prompt length {T}")
        return pos


def _check_positions(positions: Positions) -> Positions:
    if isinstance(positions, At) or (isinstance(positions, str) and positions in ("all", "answer")):
        return positions
    if isinstance(positions, (list, tuple)) and positions and all(isinstance(p, int) and p >= 0 for p in positions):
        return tuple(positions)
    raise ValueError(f"positions must be 'all', 'answer', a tuple of positions >= 0 or At(per-example positions), "
                     f"got {positions!r}")


def _writable(site: Site) -> Site:
    if site.kind in READ_ONLY:
        raise ValueError(f"{site.name} can only be read")
    return site


def _normalise_target(iv) -> None:
    """The site, positions and units of a frozen intervention in their canonical forms (or a ValueError)."""
    object.__setattr__(iv, "site", _writable(Site.parse(iv.site)))
    object.__setattr__(iv, "positions", _check_positions(iv.positions))
    if iv.units is not None:
        object.__setattr__(iv, "units", tuple(int(u) for u in iv.units))


def _as_tensor(value):
    import torch

    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _assign(act, units, positions: Positions, point: HookPoint, value, per_example: bool):
    """A copy of `act` (B, T, U, ...) with [examples, positions, units] replaced from `value`.

    `value` is 0, a position-specific tensor (T, U, ...) shared by every example (``per_example`` False), or
    a per-example tensor (B, T, U, ...) aligned with `act` (``per_example`` True).
    """
    import torch

    out = act.clone()
    B, T = act.shape[:2]
    # long: an empty unit list would otherwise be a float tensor, which cannot index
    u = None if units is None else torch.as_tensor(list(units), dtype=torch.long, device=act.device)
    scalar = not isinstance(value, torch.Tensor)
    if not scalar and not per_example and value.shape[0] < T:  # positions the reference never reached: 0
        pad = torch.zeros((T - value.shape[0], *value.shape[1:]), dtype=value.dtype, device=value.device)
        value = torch.cat([value, pad])
    if positions == "all":
        v = value if scalar or per_example else value[:T]
        if u is None:
            out[:] = v
        else:
            out[:, :, u] = v if scalar else v[:, :, u] if per_example else v[:, u]
        return out
    rows = torch.arange(B, device=act.device)
    if isinstance(positions, At) or positions == "answer":
        pos = positions.rows(point, T) if isinstance(positions, At) else point.forward.answer_pos
        pos = pos.to(act.device)  # (B,)
        v = value if scalar else value[rows, pos] if per_example else value[pos]  # (B, U, ...)
        if u is None:
            out[rows, pos] = v
        else:
            out[rows[:, None], pos[:, None], u[None, :]] = v if scalar else v[:, u]
        return out
    pos = torch.as_tensor(positions, device=act.device)
    if int(pos.max()) >= T:
        raise ValueError(f"{point.name}: position {int(pos.max())} is beyond the prompt length {T}")
    v = value if scalar else value[:, pos] if per_example else value[pos]  # (B, P, U, ...) or (P, U, ...)
    if u is None:
        out[:, pos] = v
    else:
        out[:, pos[:, None], u[None, :]] = v if scalar else v[:, :, u] if per_example else v[:, u]
    return out


@dataclass
class Reference:
    """Activations of a reference set at some sites, for mean and resample ablation.

    means:    site name -> (T, ...) position-specific mean over the reference examples (padding left out;
              a position no reference example reaches has mean 0)
    examples: site name -> (n_ref, T, ...) per-example activations (only needed for resampling)
    """

    means: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, Any] = field(default_factory=dict)

    def mean(self, site: Site):
        try:
            return self.means[site.name]
        except KeyError:
            raise ValueError(f"the reference holds no mean for {site.name} (has: {', '.join(self.means)})") from None


@dataclass(frozen=True)
class Ablate:
    """Replace `units` of `site` at `positions` by 0, the reference mean, or a resampled reference example."""

    site: Site | str
    units: tuple[int, ...] | None = None
    method: str = "zero"
    positions: Positions = "all"
    reference: Reference | None = None
    #: resample: which reference example stands in for batch example i is fixed by this seed
    seed: int = 0

    def __post_init__(self) -> None:
        _normalise_target(self)
        if self.method not in ("zero", "mean", "resample"):
            raise ValueError(f"method must be zero, mean or resample, got {self.method!r}")
        if self.method != "zero" and self.reference is None:
            raise ValueError(f"{self.method} ablation needs a reference (see interventions.reference)")

    def hook(self):
        site, method, ref = self.site, self.method, self.reference
        if method == "zero":
            return lambda act, point: _assign(act, self.units, self.positions, point, 0.0, False)
        if method == "mean":
            mean = _as_tensor(ref.mean(site))
            return lambda act, point: _assign(act, self.units, self.positions, point,
                                              mean.to(act.device, act.dtype), False)
        examples = ref.examples.get(site.name)
        if examples is None:
            raise ValueError(f"resample ablation needs the reference's per-example {site.name}")
        examples = _as_tensor(examples)
        # batch example i is replaced by reference example stand_in[i] (fixed by the seed)
        stand_in = np.random.default_rng([self.seed, 0x4E5]).integers(0, examples.shape[0], size=1 << 16)

        def fn(act, point: HookPoint):
            import torch

            idx = torch.as_tensor(stand_in[point.forward.rows.cpu().numpy() % len(stand_in)])
            src = examples[idx].to(act.device, act.dtype)  # (B, T_ref, ...)
            if src.shape[1] != act.shape[1]:
                raise ValueError(f"{point.name}: reference prompts have {src.shape[1]} positions, the batch "
                                 f"{act.shape[1]}: resampling needs prompts of one length")
            return _assign(act, self.units, self.positions, point, src, True)

        return fn


@dataclass(frozen=True)
class Patch:
    """Replace `units` of `site` at `positions` by `source`: (n, T, ...) per example, aligned with the batch."""

    site: Site | str
    source: Any
    units: tuple[int, ...] | None = None
    positions: Positions = "all"

    def __post_init__(self) -> None:
        _normalise_target(self)

    def hook(self):
        source = _as_tensor(self.source)

        def fn(act, point: HookPoint):
            src = source[point.forward.rows.cpu()].to(act.device, act.dtype)  # (B, T, ...)
            if src.shape[1:] != act.shape[1:]:
                raise ValueError(f"{point.name}: source shape {tuple(src.shape[1:])} per example does not match "
                                 f"the activation's {tuple(act.shape[1:])}")
            return _assign(act, self.units, self.positions, point, src, True)

        return fn


@dataclass(frozen=True)
class Put:
    """Replace `units` of `site` at one position per example (`at`) by `values`: (n, len(units), ...) aligned
    with the batch (``units=None``: every unit, (n, U, ...)). Unlike `Patch`, the source holds only what is
    written, so patching a few heads of a big model at one token stores a few vectors per example."""

    site: Site | str
    values: Any
    at: At
    units: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", _writable(Site.parse(self.site)))
        if not isinstance(self.at, At):
            raise ValueError(f"Put.at must be At(per-example positions), got {self.at!r}")
        if self.units is not None:
            object.__setattr__(self, "units", tuple(int(u) for u in self.units))

    def hook(self):
        import torch

        values = _as_tensor(self.values)

        def fn(act, point: HookPoint):
            B, T = act.shape[:2]
            src = values[point.forward.rows.cpu()].to(act.device, act.dtype)  # (B, U', ...)
            units = range(act.shape[2]) if self.units is None else self.units
            if src.shape[1:] != (len(units), *act.shape[3:]):
                raise ValueError(f"{point.name}: Put values have shape {tuple(src.shape[1:])} per example, expected "
                                 f"{(len(units), *act.shape[3:])} (one row per unit)")
            pos = self.at.rows(point, T).to(act.device)
            rows = torch.arange(B, device=act.device)
            u = torch.as_tensor(list(units), dtype=torch.long, device=act.device)
            out = act.clone()
            out[rows[:, None], pos[:, None], u[None, :]] = src
            return out

        return fn


@dataclass(frozen=True)
class Mask:
    """``m * activation + (1 - m) * source`` with per-unit weights `weights` (U,) along the component axis.

    `weights` may be a torch Parameter to learn: the model's weights are never changed by the mask, but they still
    require gradients, so backpropagate into the mask alone (``loss.backward(inputs=[mask])``, or an optimiser
    over the mask only).
    `source` is (n, T, ...) per example, or None for 0 (then the mask scales the units).
    """

    site: Site | str
    weights: Any
    source: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", _writable(Site.parse(self.site)))

    def hook(self):
        def fn(act, point: HookPoint):
            m = _as_tensor(self.weights).to(act.device)
            if m.ndim != 1 or m.shape[0] != act.shape[2]:
                raise ValueError(f"{point.name}: mask has shape {tuple(m.shape)}, expected ({act.shape[2]},) "
                                 "(one weight per unit along the component axis)")
            m = m.to(act.dtype).reshape(1, 1, -1, *([1] * (act.ndim - 3)))
            if self.source is None:
                return act * m
            src = _as_tensor(self.source)[point.forward.rows.cpu()].to(act.device, act.dtype)
            return act * m + src * (1 - m)

        return fn


@dataclass(frozen=True)
class Read:
    """Capture `site`: at the answer position (n, ...), at one position per example (``at=At(pos)``: (n, ...)),
    at every position (n, T, ...), or ``reduce="mean"``: the position-specific mean over the batch (T, ...),
    padding left out."""

    site: Site | str
    at: str | At = "answer"
    reduce: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "site", Site.parse(self.site))
        if not isinstance(self.at, At) and self.at not in ("answer", "all"):
            raise ValueError(f"Read.at must be 'answer', 'all' or At(per-example positions), got {self.at!r}")
        if self.reduce not in (None, "mean"):
            raise ValueError(f"Read.reduce must be None or 'mean', got {self.reduce!r}")
        if self.reduce == "mean" and self.at != "all":
            raise ValueError("Read(reduce='mean') averages every position: use at='all'")
