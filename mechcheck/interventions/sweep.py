"""Exact ablation sweeps that reuse the clean run below the ablated layer.

Ablating a head of layer k changes nothing below layer k, so the sweep runs the clean forward pass once per
chunk of examples, keeps the input of every block (the residual stream and the block's other arguments:
attention mask, position ids), and for each ablation runs only the Hugging Face blocks k .. L-1 from the kept
input, with the ablation hooked in, then the final norm and the output head at the answer positions. The
effects are exact (the same arithmetic as a full forward pass with the same hook: the lower blocks would
compute the very same bits), not an attribution approximation. On average half of the blocks run per head.

Several ablations that start at the same layer can run side by side as copies of the chunk stacked along the
batch dimension (`per_pass`): on a GPU that fills the device; on a CPU it was measured to be slower (cache
pressure), so the CPU default is one ablation per pass.

Effects are clean minus ablated, per example, for every metric of `mechcheck.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.edits import Ablate, Reference
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


def ablation_sweep(model, batch, jobs: Sequence[Job], *, method: str = "zero", positions: Any = "all",
                   reference: Reference | None = None, per_pass: int | None = None, batch_size: int = 500,
                   progress: Callable[[int, int], None] | None = None) -> SweepResult:
    """Per-example effect of each job's joint ablation (zero / mean / resample at `positions`), exactly.

    `reference` holds the means (or examples) of ``hook_z`` for mean (resample) ablation. `per_pass`: ablations
    run side by side in one pass (default: 1 on CPU, up to 16 on CUDA). `progress(done, total)` is called
    after every pass.
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
    hf, adapter = model.hf, model.adapter
    blocks = adapter.blocks(hf)
    L = len(blocks)
    # the ablation function of every (job, layer) it touches
    edit = {(j, layer): Ablate(Site(layer, "z"), hs, method, positions, reference).hook()
            for j, job in enumerate(jobs) for layer, hs in job.by_layer().items()}
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
    candidates = torch.as_tensor(batch.candidates, device=model.device)
    with torch.no_grad():
        for sl in chunks(n, batch_size):
            tokens = torch.as_tensor(batch.tokens[sl], device=model.device)
            answer_pos = torch.as_tensor(batch.answer_pos[sl], device=model.device)
            target = torch.as_tensor(batch.target[sl], device=model.device)
            B = tokens.shape[0]
            kept: list[tuple[tuple, dict]] = [None] * L  # type: ignore[list-item]

            def keep(i):
                def pre(module, args, kwargs):
                    kept[i] = (args, kwargs)
                return pre

            handles = [blocks[i].register_forward_pre_hook(keep(i), with_kwargs=True) for i in range(L)]
            try:
                logits = forward(model, tokens, answer_pos, valid_all[sl])[:, candidates].float()
            finally:
                for h in handles:
                    h.remove()
            base = candidate_metrics(logits, target)
            for m in METRICS:
                clean[m][sl] = base[m]
            done += 1
            if progress:
                progress(done, total)
            for group in passes:
                start = jobs[group[0]].start
                G = len(group)
                fwd = Forward(rows=torch.arange(sl.start, sl.stop), answer_pos=answer_pos, copies=G)
                handles = []
                for layer in range(start, L):
                    fns = [edit.get((j, layer)) for j in group]
                    if all(f is None for f in fns):
                        continue

                    def pre(module, args, fns=fns, layer=layer):
                        x = args[0]  # (G * B, T, H * d_head)
                        z = x.view(G, B, x.shape[1], H, -1)
                        p = HookPoint(Site(layer, "z"), fwd)
                        out = torch.stack([z[g] if f is None else f(z[g], p) for g, f in enumerate(fns)])
                        return (out.reshape(x.shape), *args[1:])

                    handles.append(adapter.w_o(hf, layer).register_forward_pre_hook(pre))
                try:
                    args, kwargs = kept[start]
                    x = _expand(args[0], B, G)
                    for i in range(start, L):
                        a, kw = kept[i]
                        out = blocks[i](x, *_expand(a[1:], B, G), **_expand(kw, B, G))
                        x = out[0] if isinstance(out, tuple) else out
                finally:
                    for h in handles:
                        h.remove()
                hidden = adapter.final_norm(hf, x)  # (G * B, T, d): the norm of every position, as `forward`
                rows = torch.arange(G * B, device=x.device)
                ablated = adapter.unembed(hf, hidden[rows, answer_pos.repeat(G)])[:, candidates].float()
                for g, j in enumerate(group):
                    got = candidate_metrics(ablated[g * B:(g + 1) * B], target)
                    for m in METRICS:
                        effects[m][sl, j] = base[m] - got[m]
                done += 1
                if progress:
                    progress(done, total)
    return SweepResult(jobs, clean, effects)
