"""Hooks on sites: ``fn(activation, hook) -> activation | None``, scoped by a context manager that removes them.

As in TransformerLens, a hook function receives the activation in its canonical shape (see `sites`) and a
`HookPoint` describing where and on which examples it runs; it returns a replacement (same shape) or None to
leave the activation as it is. `hooks(...)` installs hook functions on the Hugging Face modules that hold
the sites and always removes them on exit, even when the forward pass raises.

`Forward` carries what a hook may need about the forward pass in progress: which examples of the batch are
in it (`rows`, so a hook can index per-example sources) and each example's answer position.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mechcheck.interventions.sites import READ_ONLY, Site

__all__ = ["Forward", "HookPoint", "HookFn", "hooks"]


@dataclass
class Forward:
    """The forward pass in progress: example indices into the batch (B,), answer positions (B,), and how many
    copies of the batch are stacked (several interventions run side by side, one copy each)."""

    rows: Any = None
    answer_pos: Any = None
    copies: int = 1


@dataclass
class HookPoint:
    """What a hook function is told: the site (``name``, ``layer``) and the forward pass (``forward``)."""

    site: Site
    forward: Forward = field(default_factory=Forward)

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def layer(self) -> int:
        return self.site.layer


HookFn = Callable[[Any, HookPoint], Any]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _with_first(out, value):
    return (value, *out[1:]) if isinstance(out, tuple) else value


def _install(model, adapter, site: Site, fn: HookFn, point: HookPoint, dims: dict[str, int]):
    """Register `fn` at `site` on the right Hugging Face module; returns the torch handle."""
    read_only = site.kind in READ_ONLY

    def checked(value):
        if value is not None and read_only:
            raise ValueError(f"{site.name} can be read but not written (a hook there must return None)")
        return value

    if site.kind == "z":
        H, dh = dims["n_heads"], dims["d_head"]

        def pre(module, args):
            x = args[0]  # (B, T, H * d_head): the heads' outputs, concatenated, entering W_O
            z = fn(x.view(*x.shape[:-1], H, dh), point)  # (B, T, H, d_head)
            return None if z is None else (z.reshape(x.shape), *args[1:])

        return adapter.w_o(model, site.layer).register_forward_pre_hook(pre)
    if site.kind in ("resid_pre", "resid_mid"):
        module = adapter.blocks(model)[site.layer] if site.kind == "resid_pre" else \
            adapter.resid_mid_module(model, site.layer)

        def pre_resid(module, args):
            new = checked(fn(args[0], point))
            return None if new is None else (new, *args[1:])

        return module.register_forward_pre_hook(pre_resid)
    if site.kind in ("q_input", "k_input", "v_input"):
        return _install_qkv(model, adapter, site, fn, point, dims)
    if site.kind == "pattern":
        def post_pattern(module, args, out):
            weights = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if weights is None:
                raise RuntimeError(f"{type(module).__name__} returned no attention weights: load the model with "
                                   "eager attention (models.load_checkpoint and build_gpt2 do)")
            checked(fn(weights, point))  # (B, H, Tq, Tk)

        return adapter.attention(model, site.layer).register_forward_hook(post_pattern)
    if site.kind == "mlp_post" and adapter.mlp_post_is_input:
        def pre_mlp(module, args):  # gated MLPs: the neurons are act(gate) * up, the down projection's input
            new = fn(args[0], point)
            return None if new is None else (new, *args[1:])

        return adapter.mlp_act(model, site.layer).register_forward_pre_hook(pre_mlp)
    module = {"resid_post": lambda: adapter.blocks(model)[site.layer],
              "attn_out": lambda: adapter.w_o(model, site.layer),
              "mlp_post": lambda: adapter.mlp_act(model, site.layer)}[site.kind]()

    def post(module, args, out):
        new = fn(_first(out), point)
        return None if new is None else _with_first(out, new)

    return module.register_forward_hook(post)


class _Handles:
    """Several torch hook handles removed together."""

    def __init__(self, *handles) -> None:
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _install_qkv(model, adapter, site: Site, fn: HookFn, point: HookPoint, dims: dict[str, int]):
    """A hook on a head's q / k / v input: the residual stream, one copy per head (B, T, H, d_model).

    The function sees every head's copy; only the heads whose copy it changes get their projection
    recomputed from the new input (the others keep the model's own output, bit for bit).
    """
    import torch

    qkv = adapter.qkv(model, site.layer, site.kind)
    H = dims["n_heads"]
    seen: dict[str, Any] = {}

    def keep(module, args):
        seen["x"] = args[0]  # (B, T, d_model)

    def post(module, args, out):
        x = seen.pop("x")
        per_head = x.unsqueeze(2).expand(*x.shape[:2], H, x.shape[-1])  # (B, T, H, d_model)
        new = fn(per_head, point)
        if new is None:
            return None
        out = out.clone()
        for head in range(H):
            if not torch.equal(new[:, :, head], per_head[:, :, head]):
                out[..., qkv.columns(head)] = qkv.project(new[:, :, head], head)
        return out

    return _Handles(qkv.source.register_forward_pre_hook(keep), qkv.output.register_forward_hook(post))


@contextmanager
def hooks(model, adapter, fns: Iterable[tuple[Site | str, HookFn]], forward: Forward | None = None,
          dims: dict[str, int] | None = None) -> Iterator[Forward]:
    """Install `fns` (site, hook function) on `model` for the duration of the block; yields the `Forward`
    the hooks see (the caller updates its rows / answer positions before each forward pass).

    Functions on the same site run in the order given. Every hook is removed on exit, also on error.
    """
    forward = forward or Forward()
    dims = dims or adapter.dims(model)
    handles = []
    try:
        for site, fn in fns:
            site = Site.parse(site)
            if site.layer >= dims["n_layers"]:
                raise ValueError(f"{site.name}: the model has {dims['n_layers']} layers (0..{dims['n_layers'] - 1})")
            handles.append(_install(model, adapter, site, fn, HookPoint(site, forward), dims))
        yield forward
    finally:
        for h in handles:
            h.remove()
