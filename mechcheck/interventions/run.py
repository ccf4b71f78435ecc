"""The one entry point: ``run(model, batch, interventions, read=sites)`` -> per-example arrays.

`run` splits the batch into chunks, installs every intervention's hook (and a reader per `Read`) around each
forward pass, computes the output head at each example's answer position and for the answer candidates only
(the rest of the logits would be thrown away; for a small model with a big vocabulary it is most of the
compute), and returns numpy arrays:
the per-example answer metrics (`mechcheck.metrics`), the candidates' logits, and what was read. Gradients are
off; `forward` is the building block with gradients, for learning masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.edits import At, Read, Reference
from mechcheck.interventions.hooks import hooks
from mechcheck.interventions.sites import Site
from mechcheck.metrics import METRICS, candidate_metrics

__all__ = ["RunOutput", "forward", "run", "reference", "valid_positions", "chunks"]


@dataclass
class RunOutput:
    """metrics: name -> (n,); candidate_logits: (n, C); reads: site name -> array (see `Read`)."""

    metrics: dict[str, np.ndarray]
    candidate_logits: np.ndarray
    reads: dict[str, np.ndarray] = field(default_factory=dict)


def chunks(n: int, size: int):
    """Consecutive slices of range(n) of at most `size` examples."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def valid_positions(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    """(B, T) bool: positions up to each row's last non-pad token (right-padded prompts)."""
    not_pad = tokens != pad_id
    T = tokens.shape[1]
    last = T - 1 - np.argmax(not_pad[:, ::-1], axis=1)
    return np.arange(T)[None, :] <= last[:, None]


def forward(model, tokens, answer_pos, valid=None, ids=None):
    """(B, V) output-head logits at each row's answer position, with whatever hooks are installed; (B, len(ids))
    with `ids`: the logits of those tokens only (the output head's other rows are not computed).

    `valid` (B, T) masks padding out of attention for bidirectional models (causal models need no mask: the
    answer position sees no right-padding). Gradients follow torch's current mode.
    """
    import torch

    adapter = model.adapter
    kwargs = {"use_cache": False}  # a key/value cache would grow with every block the sweep re-runs
    if adapter.bidirectional and valid is not None:
        kwargs["attention_mask"] = torch.as_tensor(valid, device=tokens.device).long()
    hidden = adapter.base(model.hf)(tokens, **kwargs).last_hidden_state  # (B, T, d)
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    if ids is not None:
        return adapter.unembed_ids(model.hf, hidden[rows, answer_pos], ids)
    return adapter.unembed(model.hf, hidden[rows, answer_pos])


class _Reader:
    """Collects one `Read` over the chunks of a run."""

    def __init__(self, spec: Read, n: int) -> None:
        self.spec, self.n = spec, n
        self.parts: list[np.ndarray] = []
        self.total = self.count = None
        self.valid = None  # (B, T) of the chunk in progress

    def fn(self, act, point):
        import torch

        a = act.detach()
        if self.spec.reduce == "mean":
            v = torch.as_tensor(self.valid, device=a.device)
            w = v.to(torch.float64).reshape(*v.shape, *([1] * (a.ndim - 2)))
            s = (a.double() * w).sum(0)  # (T, ...)
            c = v.sum(0).double()  # (T,)
            self.total = s if self.total is None else self.total + s
            self.count = c if self.count is None else self.count + c
        elif isinstance(self.spec.at, At) or self.spec.at == "answer":
            rows = torch.arange(a.shape[0], device=a.device)
            T = a.shape[2] if self.spec.site.kind == "pattern" else a.shape[1]
            pos = self.spec.at.rows(point, T) if isinstance(self.spec.at, At) else point.forward.answer_pos
            pos = pos.to(a.device)
            # a pattern (B, H, Tq, Tk) is read at the answer position as the query: (B, H, Tk)
            picked = a[rows, :, pos] if self.spec.site.kind == "pattern" else a[rows, pos]
            self.parts.append(picked.float().cpu().numpy())
        else:
            self.parts.append(a.float().cpu().numpy())

    def result(self) -> np.ndarray:
        if self.spec.reduce == "mean":
            count = self.count.clamp(min=1).reshape(-1, *([1] * (self.total.ndim - 1)))
            return (self.total / count).float().cpu().numpy()
        return np.concatenate(self.parts) if self.parts else np.zeros((0,))


def run(model, batch, interventions: Sequence[Any] = (), read: Sequence[Read | str] = (), *,
        batch_size: int = 500) -> RunOutput:
    """Run `model` on `batch` with `interventions` (Ablate / Patch / Mask) and `read` sites; no gradients.

    A bare site name in `read` reads it at the answer position. Arrays are per example, in batch order.
    """
    import torch

    readers = [_Reader(r if isinstance(r, Read) else Read(r), len(batch)) for r in read]
    names = [r.spec.site.name for r in readers]
    if len(set(names)) != len(names):
        raise ValueError(f"a site is read twice in one run: {sorted(n for n in names if names.count(n) > 1)}")
    fns = [(iv.site, iv.hook()) for iv in interventions] + [(r.spec.site, r.fn) for r in readers]
    metrics: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    cand: list[np.ndarray] = []
    valid_all = valid_positions(batch.tokens, batch.pad_id)
    candidates = torch.as_tensor(batch.candidates, device=model.device)
    with torch.no_grad(), hooks(model.hf, model.adapter, fns, dims=model.dims) as fwd:
        for sl in chunks(len(batch), batch_size):
            tokens = torch.as_tensor(batch.tokens[sl], device=model.device)
            fwd.rows = torch.arange(sl.start, sl.stop)
            fwd.answer_pos = torch.as_tensor(batch.answer_pos[sl], device=model.device)
            for r in readers:
                r.valid = valid_all[sl]
            logits = forward(model, tokens, fwd.answer_pos, valid_all[sl], ids=candidates).float()  # (B, C)
            target = torch.as_tensor(batch.target[sl], device=model.device)
            for m, v in candidate_metrics(logits, target).items():
                metrics[m].append(v)
            cand.append(logits.cpu().numpy())
    return RunOutput({m: np.concatenate(v) for m, v in metrics.items()}, np.concatenate(cand),
                     {r.spec.site.name: r.result() for r in readers})


def reference(model, batch, sites: Sequence[Site | str], *, examples: bool = False, batch_size: int = 500) -> Reference:
    """Position-specific means of `sites` over `batch` (padding left out), and with `examples` the per-example
    activations too (for resample ablation)."""
    sites = [Site.parse(s) for s in sites]
    reads = [Read(s, at="all", reduce="mean") for s in sites]
    out = run(model, batch, read=reads, batch_size=batch_size)
    means = {s.name: out.reads[s.name] for s in sites}
    per_example = {}
    if examples:
        per_example = run(model, batch, read=[Read(s, at="all") for s in sites], batch_size=batch_size).reads
    return Reference(means, per_example)
