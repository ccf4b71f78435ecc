"""Path patching: the effect of one head at one position on chosen receiver heads' inputs only.

For a sender head s at its position (one per example) and receivers R (heads with the input they read: query,
key or value, at the receivers' position):

1. the clean batch and the corrupted batch are run once, keeping every head's ``hook_z`` of the clean run and
   the senders' layers' ``hook_z`` of the corrupted run at the sender position (shared by every sender);
2. the clean batch is run with every head's output frozen to its clean value, at every position, except s at
   its position, which gets the corrupted run's value there (MLPs still run, so the path may pass through
   them); the receivers' q / k / v inputs at their position are recorded;
3. the clean batch is run with only the receivers' inputs at their position replaced by those recorded, and
   p_patch, the probability of the correct token at the answer position, is read.

The receivers' position is where their input is replaced: for Q-composition the receivers' own position;
for K- or V-composition from a sender at another token, the token the receivers read (often the sender's),
or ``"all"`` (every position). With no receivers, step 2's own output is read instead: the sender's direct
effect with all other heads frozen. The score is ``(p_patch - p_org) / p_org`` per example (p_org: the clean
run's probability); the most negative scores mark the senders the receivers depend on. For a causal model,
freezing positions before the sender's changes nothing, so this is the usual "from the sender position on"
recipe. A sender in a layer at or above every receiver's cannot reach their inputs: its score is 0 without a
forward pass.

Probabilities are over the whole vocabulary (``over="vocab"``) or over the task's candidates (``"candidates"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck.interventions.circuits import positions_of
from mechcheck.interventions.edits import At, Patch, Put, Read
from mechcheck.interventions.run import run
from mechcheck.interventions.sites import Site

__all__ = ["PathResult", "path_patching"]


@dataclass
class PathResult:
    """p_org: (n,) clean probability of the correct token; p_patch: (n, S) per sender, in `senders` order."""

    senders: list[tuple[int, int]]
    p_org: np.ndarray
    p_patch: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """(n, S) ``(p_patch - p_org) / p_org``."""
        return (self.p_patch - self.p_org[:, None]) / self.p_org[:, None]

    @property
    def mean_score(self) -> np.ndarray:
        """(S,) the score averaged over examples."""
        return self.score.mean(0)

    def ranked(self) -> list[tuple[tuple[int, int], float]]:
        """Senders by mean score, most negative (most important) first."""
        order = np.argsort(self.mean_score, kind="stable")
        return [(self.senders[i], float(self.mean_score[i])) for i in order]


def _probability(out, batch) -> np.ndarray:
    logits = out.candidate_logits.astype(np.float64)
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return p[np.arange(len(batch)), batch.target]


def _position(key_or_array, batch, positions) -> np.ndarray:
    if isinstance(key_or_array, str):
        pos = positions_of([key_or_array], batch, positions)[key_or_array]
        if isinstance(pos, str):
            raise ValueError("path patching needs one position per example, not 'all'")
        return pos
    return positions_of(["given"], batch, {"given": key_or_array})["given"]


def path_patching(model, clean, corrupt, senders: Sequence[tuple[int, int]] | None = None, *,
                  sender_position: Any = "last", receivers: Sequence[tuple[int, int, str]] = (),
                  receiver_position: Any = "last", positions: Mapping[str, Any] | None = None,
                  corrupt_positions: Mapping[str, Any] | None = None, over: str = "vocab",
                  batch_size: int = 500) -> PathResult:
    """Path-patching scores of `senders` (default: every head below the receivers' top layer, or every head)
    into `receivers` ((layer, head, "q" | "k" | "v")), clean batch `clean`, corrupted batch `corrupt` (aligned:
    same n and length). Positions are keys (as in `circuits`) or (n,) arrays; the sender position is resolved
    on each batch with its own `positions` / `corrupt_positions`, so it may differ between the two prompts."""
    if over not in ("vocab", "candidates"):
        raise ValueError(f"over must be vocab or candidates, got {over!r}")
    if clean.tokens.shape != corrupt.tokens.shape:
        raise ValueError(f"clean and corrupted batches must be aligned: shapes {clean.tokens.shape} and "
                         f"{corrupt.tokens.shape}")
    L, H = model.n_layers, model.n_heads
    receivers = [(int(la), int(h), str(w)) for la, h, w in receivers]
    for la, h, w in receivers:
        if w not in ("q", "k", "v") or la >= L or h >= H:
            raise ValueError(f"receiver {[la, h, w]} must be [layer, head, q|k|v] of the model "
                             f"({L} layers x {H} heads)")
    top = max((la for la, _, _ in receivers), default=L)
    senders = [(la, h) for la in range(top) for h in range(H)] if senders is None else \
        [(int(la), int(h)) for la, h in senders]
    for la, h in senders:
        if la >= L or h >= H:
            raise ValueError(f"sender head [{la}, {h}] does not exist ({L} layers x {H} heads)")
    if over == "vocab":
        clean = dataclasses.replace(clean, candidates=list(range(model.hf.config.vocab_size)), target=clean.answer_ids)
    s_pos = At(_position(sender_position, clean, positions))
    c_pos = At(_position(sender_position, corrupt, corrupt_positions if corrupt_positions is not None else positions))
    r_pos = None
    if receivers:
        r_pos = "all" if receiver_position == "all" else At(_position(receiver_position, clean, positions))

    # step 1: once per sweep
    z = [Site(layer, "z") for layer in range(L)]
    base = run(model, clean, read=[Read(s, at="all") for s in z], batch_size=batch_size)
    p_org = _probability(base, clean)
    sender_layers = sorted({la for la, _ in senders})
    corrupt_z = run(model, corrupt, read=[Read(z[la], at=c_pos) for la in sender_layers],
                    batch_size=batch_size).reads  # (n, H, d_head) per layer
    inputs = sorted({(la, w) for la, _, w in receivers})
    heads_of = {(la, w): tuple(sorted(h for la2, h, w2 in receivers if (la2, w2) == (la, w))) for la, w in inputs}

    p_patch = np.empty((len(clean), len(senders)))
    for j, (la, h) in enumerate(senders):
        if receivers and la >= top:
            p_patch[:, j] = p_org  # cannot reach any receiver's input
            continue
        frozen = [Patch(z[layer], base.reads[z[layer].name]) for layer in range(la, L)]
        frozen.insert(1, Put(z[la], corrupt_z[z[la].name][:, [h]], s_pos, (h,)))  # after its layer's freeze
        if not receivers:  # step 2 is the answer: the direct effect
            p_patch[:, j] = _probability(run(model, clean, frozen, batch_size=batch_size), clean)
            continue
        rec = run(model, clean, frozen, read=[Read(Site(r, f"{w}_input"), at=r_pos) for r, w in inputs],
                  batch_size=batch_size).reads  # step 2: (n, H, d_model) per receiver input
        edits = [Put(Site(r, f"{w}_input"), rec[Site(r, f"{w}_input").name][:, list(hs)], r_pos, hs)
                 if isinstance(r_pos, At) else Patch(Site(r, f"{w}_input"), rec[Site(r, f"{w}_input").name], hs)
                 for (r, w), hs in heads_of.items()]
        p_patch[:, j] = _probability(run(model, clean, edits, batch_size=batch_size), clean)  # step 3
    return PathResult(senders, p_org, p_patch)
