"""Exact ablation sweeps that reuse the clean run below the ablated layer.

Ablating a head of layer k changes nothing below layer k, so the sweep runs the clean forward pass once per
chunk of examples, keeps the input of every block (the residual stream and the block's other arguments:
attention mask, position ids), and for each ablation runs only the Hugging Face blocks k .. L-1 from the kept
input, with the ablation hooked in, then the final norm and the output head at the answer positions, for the
answer candidates only. On average half of the blocks run per head.

Shortcuts (``shortcuts=True``, where the architecture has them: pre-LN GPT-2, see `sites`): at layer k the
other heads' attention is unchanged, so the residual stream after attention is the clean run's plus the edited
heads' change of z times their rows of W_O, and only layer k's MLP half runs; and when nothing is edited in
the last block, it runs at the answer positions only (every position's keys and values, one query, one MLP
row). These are the same sums in another order or over fewer rows, so effects equal the full forward pass up
to float rounding (~1e-7 relative) rather than bit for bit; ``shortcuts=False`` gives the bits of
`interventions.run` (whole blocks, the same arithmetic as a full forward pass with the same hook). Either
way an effect is exact, not an attribution approximation. The shortcuts keep the clean run's residual after
attention and ``hook_z`` of every layer too: three (B, T, d_model) tensors per layer and chunk instead of one.

Several ablations that start at the same layer can run side by side as copies of the chunk stacked along the
batch dimension (`per_pass`): on a GPU that fills the device; on a CPU it was measured to be slower (cache
pressure), so the CPU default is one ablation per pass.

Besides zero / mean / resample ablation, ``method="patch"`` is activation patching: each job's heads take
their ``hook_z`` from `source`, per example (the same model on another input, as TransformerLens'
``patching.get_act_patch_attn_head_out_all_pos`` patches the clean run into the corrupted one); the sweep's
batch is then the run patched *into*.

Effects are clean minus ablated (patched), per example, for every metric of `mechcheck.metrics`.
`benchmarks/sweep.py` measures the sweep against TransformerLens' patching and against one `run` per head.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.edits import Ablate, Patch, Reference, _as_tensor
from mechcheck.interventions.hooks import Forward, HookPoint
from mechcheck.interventions.run import chunks, forward, valid_positions
from mechcheck.interventions.sites import Site
from mechcheck.metrics import METRICS, candidate_metrics

__all__ = ["SweepResult", "ablation_sweep", "Job"]

Heads = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Job:
    """One ablation of the sweep: these heads ablated together (heads of any layers)."""

    heads: Heads

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError("a sweep job needs at least one [layer, head] to ablate (an empty job changes nothing)")

    @property
    def start(self) -> int:
        return min(layer for layer, _ in self.heads)

    def by_layer(self) -> dict[int, tuple[int, ...]]:
        out: dict[int, list[int]] = {}
        for layer, head in self.heads:
            out.setdefault(layer, []).append(head)
        return {layer: tuple(sorted(hs)) for layer, hs in sorted(out.items())}


@dataclass
class SweepResult:
    """clean: metric -> (n,); effects: metric -> (n, len(jobs)) clean minus ablated, in job order."""

    jobs: list[Job]
    clean: dict[str, np.ndarray]
    effects: dict[str, np.ndarray] = field(default_factory=dict)


def _expand(value, B: int, copies: int):
    """`value` with every tensor whose first dimension is the batch repeated `copies` times along it."""
    import torch

    if copies == 1:
        return value
    if isinstance(value, torch.Tensor):
        return torch.cat([value] * copies) if value.ndim and value.shape[0] == B else value
    if isinstance(value, tuple):
        return tuple(_expand(v, B, copies) for v in value)
    if isinstance(value, dict):
        return {k: _expand(v, B, copies) for k, v in value.items()}
    return value


def _edits(jobs: Sequence[Job], method: str, positions: Any, reference: Reference | None,
           source: Mapping[str, Any] | None) -> dict[tuple[int, int], Callable]:
    """The hook function of every (job index, layer) a job touches: its heads of that layer ablated or patched."""
    if method not in ("zero", "mean", "resample", "patch"):
        raise ValueError(f"method must be zero, mean, resample or patch, got {method!r}")
    if method != "patch":
        return {(j, layer): Ablate(Site(layer, "z"), hs, method, positions, reference).hook()
                for j, job in enumerate(jobs) for layer, hs in job.by_layer().items()}
    if source is None:
        raise ValueError("patch sweeps need a source: site name -> (n, T, H, d_head) per example")
    sources = {}
    for layer in sorted({layer for job in jobs for layer, _ in job.heads}):
        name = Site(layer, "z").name
        if name not in source:
            raise ValueError(f"the patch source holds no {name} (has: {', '.join(source)})")
        sources[layer] = _as_tensor(source[name])  # one tensor per layer, shared by its jobs' hooks
    return {(j, layer): Patch(Site(layer, "z"), sources[layer], hs, positions).hook()
            for j, job in enumerate(jobs) for layer, hs in job.by_layer().items()}


@dataclass
class _Kept:
    """What the sweep keeps of the clean run of one chunk, per block: its inputs (args, kwargs), and, for the
    shortcuts, the residual stream after attention (B, T, d_model) and hook_z (B, T, H * d_head)."""

    inputs: list
    mid: list
    z: list


def _clean_run(model, tokens, answer_pos, valid, ids, shortcuts: bool):
    """(B, C) candidate logits of the clean forward pass, and what it kept (read-only hooks: the same bits)."""
    hf, adapter = model.hf, model.adapter
    L = model.n_layers
    kept = _Kept([None] * L, [None] * L, [None] * L)

    def keep(store, i, with_kwargs):
        if with_kwargs:
            def pre_kw(module, args, kwargs):
                store[i] = (args, kwargs)
            return pre_kw

        def pre(module, args):
            store[i] = args[0]
        return pre

    handles = [adapter.blocks(hf)[i].register_forward_pre_hook(keep(kept.inputs, i, True), with_kwargs=True)
               for i in range(L)]
    if shortcuts:
        handles += [adapter.resid_mid_module(hf, i).register_forward_pre_hook(keep(kept.mid, i, False))
                    for i in range(L)]
        handles += [adapter.w_o(hf, i).register_forward_pre_hook(keep(kept.z, i, False)) for i in range(L)]
    try:
        logits = forward(model, tokens, answer_pos, valid, ids=ids).float()
    finally:
        for h in handles:
            h.remove()
    return logits, kept


def _edit_hooks(model, fwd: Forward, fns_by_layer: dict[int, list], B: int) -> list:
    """Pre-hooks on W_O that apply each copy's edit function (None: leave that copy alone) at these layers."""
    import torch

    hf, adapter, H = model.hf, model.adapter, model.n_heads
    handles = []
    for layer, fns in fns_by_layer.items():
        if all(f is None for f in fns):
            continue
        G = len(fns)

        def pre(module, args, fns=fns, layer=layer):
            x = args[0]  # (G * B, T, H * d_head)
            z = x.view(G, B, x.shape[1], H, -1)
            p = HookPoint(Site(layer, "z"), fwd)
            out = torch.stack([z[g] if f is None else f(z[g], p) for g, f in enumerate(fns)])
            return (out.reshape(x.shape), *args[1:])

        handles.append(adapter.w_o(hf, layer).register_forward_pre_hook(pre))
    return handles


def _start_shortcut(model, kept: _Kept, start: int, fns: list, heads: list, fwd: Forward, at_answer: bool):
    """Block `start`'s output with each copy's edit, from the clean run's attention: its residual after
    attention plus the edited heads' change times their rows of W_O, then the MLP half.

    (G * B, T, d_model), or (G * B, d_model) at the answer positions only when `at_answer` (the last block).
    """
    import torch

    hf, adapter, H = model.hf, model.adapter, model.n_heads
    z, mid = kept.z[start], kept.mid[start]  # (B, T, H * d_head), (B, T, d_model)
    B, T = z.shape[:2]
    zh = z.view(B, T, H, -1)
    p = HookPoint(Site(start, "z"), fwd)
    rows = torch.arange(B, device=z.device)
    out = []
    for f, hs in zip(fns, heads):
        dz = (f(zh, p) - zh)[:, :, list(hs)]  # (B, T, h, d_head): the edit touches these heads only
        if at_answer:
            out.append(mid[rows, fwd.answer_pos] + adapter.head_write(hf, start, dz[rows, fwd.answer_pos], hs))
        else:
            out.append(mid + adapter.head_write(hf, start, dz, hs))
    return adapter.after_attention(hf, start, torch.cat(out))


def _run_pass(model, kept: _Kept, group: list[int], jobs: list[Job], edit: dict, fwd: Forward, shortcuts: bool):
    """(G * B, d_model) final-normed hidden state at the answer positions, one copy of the chunk per job."""
    import torch

    hf, adapter = model.hf, model.adapter
    blocks = adapter.blocks(hf)
    L, G = model.n_layers, len(group)
    start = jobs[group[0]].start
    B = fwd.answer_pos.shape[0]
    pos = fwd.answer_pos.repeat(G)
    # the last block at the answer position only: when nothing is edited there (its z would be cut short)
    answer_only = shortcuts and start < L - 1 and all(edit.get((j, L - 1)) is None for j in group)
    end = L - 1 if answer_only else L
    first = start + 1 if shortcuts else start
    fns = {layer: [edit.get((j, layer)) for j in group] for layer in range(first, end)}
    handles = _edit_hooks(model, fwd, fns, B)
    try:
        if shortcuts:
            heads = [jobs[j].by_layer()[start] for j in group]
            x = _start_shortcut(model, kept, start, [edit[(j, start)] for j in group], heads, fwd, start == L - 1)
        else:
            x = _expand(kept.inputs[start][0][0], B, G)
        for i in range(first, end):
            a, kw = kept.inputs[i]
            out = blocks[i](x, *_expand(a[1:], B, G), **_expand(kw, B, G))
            x = out[0] if isinstance(out, tuple) else out
        if answer_only:
            a, kw = kept.inputs[L - 1]
            x = adapter.block_at(hf, L - 1, x, pos, (x, *_expand(a[1:], B, G)), _expand(kw, B, G))
    finally:
        for h in handles:
            h.remove()
    if x.ndim == 2:  # already at the answer positions
        return adapter.final_norm(hf, x)
    hidden = adapter.final_norm(hf, x)  # (G * B, T, d): the norm of every position, as `forward`
    return hidden[torch.arange(G * B, device=x.device), pos]


def ablation_sweep(model, batch, jobs: Sequence[Job], *, method: str = "zero", positions: Any = "all",
                   reference: Reference | None = None, source: Mapping[str, Any] | None = None,
                   per_pass: int | None = None, batch_size: int = 500, shortcuts: bool = True,
                   progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Per-example effect of each job's joint ablation (zero / mean / resample / patch at `positions`), exactly.

    `reference` holds the means (or examples) of ``hook_z`` for mean (resample) ablation; `source` maps site
    names (``blocks.{L}.attn.hook_z``) to per-example activations (n, T, H, d_head) aligned with `batch`, for
    ``method="patch"`` (the same as `interventions.run` with a `Patch` of those heads). `per_pass`: ablations
    run side by side in one pass (default: 1 on CPU, up to 16 on CUDA). `shortcuts` (where the architecture
    has them, see `sites`): reuse the clean attention of the first ablated layer and compute the last block at
    the answer position only, equal to a full forward pass up to float rounding; False runs whole blocks, the
    same bits as `interventions.run`. `progress(done, total)` is called after every pass.
    """
    import torch

    jobs = list(jobs)
    H = model.n_heads
    for job in jobs:
        for layer, head in job.heads:
            if not (0 <= layer < model.n_layers and 0 <= head < H):
                raise ValueError(f"head [{layer}, {head}] does not exist ({model.n_layers} layers x {H} heads)")
    if per_pass is None:
        per_pass = 16 if str(model.device).startswith("cuda") else 1
    shortcuts = shortcuts and model.adapter.shortcuts(model.hf)
    edit = _edits(jobs, method, positions, reference, source)
    # jobs grouped by the layer they start at, in passes of up to `per_pass`
    passes: list[list[int]] = []
    for start in sorted({job.start for job in jobs}):
        group = [j for j, job in enumerate(jobs) if job.start == start]
        passes += [group[i:i + per_pass] for i in range(0, len(group), per_pass)]

    n = len(batch)
    clean = {m: np.zeros(n, dtype=np.float32) for m in METRICS}
    effects = {m: np.zeros((n, len(jobs)), dtype=np.float32) for m in METRICS}
    n_chunks = len(range(0, n, batch_size))
    total, done = n_chunks * (1 + len(passes)), 0
    valid_all = valid_positions(batch.tokens, batch.pad_id)
    ids = torch.as_tensor(batch.candidates, device=model.device)
    with torch.no_grad():
        for sl in chunks(n, batch_size):
            tokens = torch.as_tensor(batch.tokens[sl], device=model.device)
            answer_pos = torch.as_tensor(batch.answer_pos[sl], device=model.device)
            target = torch.as_tensor(batch.target[sl], device=model.device)
            B = tokens.shape[0]
            logits, kept = _clean_run(model, tokens, answer_pos, valid_all[sl], ids, shortcuts)
            base = candidate_metrics(logits, target)
            for m in METRICS:
                clean[m][sl] = base[m]
            done += 1
            if progress:
                progress(done, total)
            for group in passes:
                fwd = Forward(rows=torch.arange(sl.start, sl.stop), answer_pos=answer_pos, copies=len(group))
                hidden = _run_pass(model, kept, group, jobs, edit, fwd, shortcuts)
                ablated = model.adapter.unembed_ids(model.hf, hidden, ids).float()  # (G * B, C)
                for g, j in enumerate(group):
                    got = candidate_metrics(ablated[g * B:(g + 1) * B], target)
                    for m in METRICS:
                        effects[m][sl, j] = base[m] - got[m]
                done += 1
                if progress:
                    progress(done, total)
    return SweepResult(jobs, clean, effects)
