"""Desiderata-based component masking (DCM): which heads of a group carry one kind of information?

For a group of heads at its position and a desideratum — pairs (base prompt, source prompt) and the token the
base model should then output if the masked heads carry that information — a mask m in [0, 1] per head is
learnt; each head's output at the group's position in the base run becomes

    m * z_base + (1 - m) * z_source          (z_source: the same head, same position, in the source run)

and the objective is  -mean logit(target) + lambda * sum(1 - m)  (say the target, patch as few heads as
possible). Adam, lr 0.1, masks clamped to [0, 1] after each step, 2 epochs of batch 32; every 4 steps the mask is
rounded and its accuracy (argmax over the candidates == target) measured on a validation split, and the best
rounded mask is kept (ties: the one patching more heads). Selected heads = those rounded to 0 (patched). This is
the procedure of Prakash et al. 2024; the masks are hooks, the model's weights are never changed.

`patch_accuracy` then measures, on held-out pairs, how often patching exactly a head set from source into base
makes the model say the desideratum's target — the number a DCM role table reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.circuits import Group
from mechcheck.interventions.edits import At, Read
from mechcheck.interventions.hooks import HookPoint, hooks
from mechcheck.interventions.run import forward, run
from mechcheck.interventions.sites import Site

__all__ = ["DCMResult", "train_mask", "patch_accuracy", "group_sources"]


def group_sources(model, source, group: Group, pos: np.ndarray, batch_size: int = 500) -> dict[int, np.ndarray]:
    """Per layer of `group`, the source run's hook_z of the group's heads at `pos`: (n, k_layer, d_head)."""
    layers = sorted({la for la, _ in group.heads})
    reads = run(model, source, read=[Read(Site(la, "z"), at=At(pos)) for la in layers], batch_size=batch_size).reads
    return {la: reads[Site(la, "z").name][:, [h for l2, h in group.heads if l2 == la]] for la in layers}


def _mix_fns(group: Group, mask, sources: dict[int, Any], pos: np.ndarray):
    """Hook functions mixing base and source outputs of the group's heads at `pos` with weights `mask` (|G|,)."""
    import torch

    index = {h: i for i, h in enumerate(group.heads)}
    fns = []
    for layer, src in sources.items():
        heads = [h for la, h in group.heads if la == layer]
        cols = [index[(layer, h)] for h in heads]
        src_t = torch.as_tensor(src)

        def fn(z, point: HookPoint, heads=heads, cols=cols, src_t=src_t):
            rows = point.forward.rows.cpu()
            p = torch.as_tensor(pos)[rows].to(z.device)
            r = torch.arange(z.shape[0], device=z.device)[:, None]
            u = torch.as_tensor(heads, device=z.device)[None, :]
            m = mask[cols].to(z.device, z.dtype)[None, :, None]
            out = z.clone()
            out[r, p[:, None], u] = m * z[r, p[:, None], u] + (1 - m) * src_t[rows].to(z.device, z.dtype)
            return out

        fns.append((Site(layer, "z"), fn))
    return fns


def _logits(model, batch, idx: np.ndarray, fns):
    import torch

    with hooks(model.hf, model.adapter, fns, dims=model.dims) as fwd:
        fwd.rows = torch.as_tensor(idx)
        fwd.answer_pos = torch.as_tensor(batch.answer_pos[idx], device=model.device)
        tokens = torch.as_tensor(batch.tokens[idx], device=model.device)
        return forward(model, tokens, fwd.answer_pos, ids=list(batch.candidates)).float()  # (B, C)


@dataclass
class DCMResult:
    """The kept rounded mask (1: keep base, 0: patched from the source), the heads it patches, and the
    validation accuracy at each evaluation (steps, accuracy)."""

    group: Group
    mask: np.ndarray
    selected: list[tuple[int, int]]
    val_accuracy: float
    history: list[tuple[int, float]] = field(default_factory=list)


def train_mask(model, base, source, target_idx: np.ndarray, group: Group, base_pos: np.ndarray,
               source_pos: np.ndarray, *, train: Sequence[int], val: Sequence[int], lr: float = 0.1, epochs: int = 2,
               batch_size: int = 32, lam: float = 0.01, eval_every: int = 4, seed: int = 0) -> DCMResult:
    """Learn the DCM mask of `group` for pairs (base[i], source[i]) whose desired output is candidate
    `target_idx[i]`; `train` / `val`: example indices. Deterministic in `seed`."""
    import torch

    if not group.heads:
        return DCMResult(group, np.ones(0), [], float("nan"))
    train, val = np.asarray(train), np.asarray(val)
    sources = group_sources(model, source, group, source_pos)
    mask = torch.nn.Parameter(torch.ones(len(group.heads)))
    opt = torch.optim.Adam([mask], lr=lr)
    target = torch.as_tensor(target_idx)
    rng = np.random.default_rng([seed, 0xDC3])
    best = (-1.0, -1, np.ones(len(group.heads)))
    history: list[tuple[int, float]] = []
    step = 0
    for _ in range(epochs):
        order = rng.permutation(train)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            with torch.enable_grad():
                logits = _logits(model, base, idx, _mix_fns(group, mask, sources, base_pos))
                loss = -logits[torch.arange(len(idx)), target[idx]].mean() + lam * (1 - mask).sum()
                opt.zero_grad()
                loss.backward(inputs=[mask])
            opt.step()
            with torch.no_grad():
                mask.clamp_(0.0, 1.0)
            step += 1
            if step % eval_every == 0:
                rounded = torch.round(mask.detach())
                acc = _accuracy(model, base, val, target_idx, group, rounded, sources, base_pos)
                history.append((step, acc))
                patched = int((rounded == 0).sum())
                if acc > best[0] or (acc == best[0] and patched > best[1]):
                    best = (acc, patched, rounded.numpy().copy())
    if best[1] < 0:  # fewer steps than one evaluation: judge the final mask
        rounded = torch.round(mask.detach())
        best = (_accuracy(model, base, val, target_idx, group, rounded, sources, base_pos), 0, rounded.numpy())
    selected = [h for h, m in zip(group.heads, best[2]) if m == 0]
    return DCMResult(group, best[2], selected, float(best[0]), history)


def _accuracy(model, base, idx, target_idx, group, weights, sources, base_pos) -> float:
    import torch

    if len(idx) == 0:
        return float("nan")
    with torch.no_grad():
        logits = _logits(model, base, np.asarray(idx), _mix_fns(group, weights, sources, base_pos))
    pred = logits.argmax(1).numpy()
    top = logits.max(1, keepdim=True).values
    ties = (logits == top).sum(1).numpy() > 1  # a tie is not an answer
    return float(((pred == np.asarray(target_idx)[idx]) & ~ties).mean())


def patch_accuracy(model, base, source, target_idx: np.ndarray, heads: Sequence[tuple[int, int]], position: str,
                   base_pos: np.ndarray, source_pos: np.ndarray, idx: Sequence[int] | None = None) -> np.ndarray:
    """Per example of `idx`: 1 when patching `heads` (at the group position) from source into base makes the model
    output the desideratum's target (strict argmax over the candidates), else 0."""
    import torch

    idx = np.arange(len(base)) if idx is None else np.asarray(idx)
    group = Group(position, tuple(heads))
    if not group.heads:
        with torch.no_grad():
            logits = _logits(model, base, idx, [])
    else:
        sources = group_sources(model, source, group, source_pos)
        with torch.no_grad():
            logits = _logits(model, base, idx, _mix_fns(group, torch.zeros(len(group.heads)), sources, base_pos))
    top = logits.max(1, keepdim=True).values
    strict = (logits == top).sum(1).numpy() == 1
    return ((logits.argmax(1).numpy() == np.asarray(target_idx)[idx]) & strict).astype(np.float64)


def describe(result: DCMResult) -> dict[str, Any]:
    return {"group": {"position": result.group.position, "heads": [list(h) for h in result.group.heads]},
            "selected": [list(h) for h in result.selected], "val_accuracy": result.val_accuracy,
            "history": [[s, a] for s, a in result.history]}
