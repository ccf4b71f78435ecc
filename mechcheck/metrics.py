"""Per-example metrics of the answer: the one definition used by training and by every experiment.

  accuracy    1 when the correct candidate's logit is strictly larger than every other candidate's
              (a tie is not a decision, so it counts as wrong)
  logit_diff  correct logit minus the largest other candidate logit
"""

from __future__ import annotations

import numpy as np

__all__ = ["METRICS", "answer_metrics", "candidate_metrics"]

METRICS = ("accuracy", "logit_diff")


def answer_metrics(logits, answer_pos, candidates, target) -> dict[str, np.ndarray]:
    """Per-example accuracy and logit difference. logits (B, T, V); returns arrays of shape (B,)."""
    import torch

    rows = torch.arange(logits.shape[0], device=logits.device)
    return candidate_metrics(logits[rows, answer_pos][:, candidates].float(), target)


def candidate_metrics(cand, target) -> dict[str, np.ndarray]:
    """Per-example accuracy and logit difference from the candidates' logits `cand` (B, C) and `target` (B,)."""
    import torch

    rows = torch.arange(cand.shape[0], device=cand.device)
    cand = cand.float()
    correct = cand[rows, target]
    others = cand.clone()
    others[rows, target] = -torch.inf
    best_other = others.max(dim=-1).values
    return {
        "accuracy": (correct > best_other).float().cpu().numpy(),
        "logit_diff": (correct - best_other).cpu().numpy(),
    }
