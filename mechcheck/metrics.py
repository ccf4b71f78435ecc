"""Per-example metrics of the answer: the one definition used by training and by every experiment.

  accuracy    1 when the correct candidate's logit is strictly larger than every other candidate's
              (a tie is not a decision, so it counts as wrong)
  logit_diff  correct logit minus the largest other candidate logit
"""

from __future__ import annotations

import numpy as np

__all__ = ["METRICS", "answer_metrics"]

METRICS = ("accuracy", "logit_diff")


def answer_metrics(logits, answer_pos, candidates, target) -> dict[str, np.ndarray]:
    """Per-example accuracy and logit difference. logits (B, T, V); returns arrays of shape (B,)."""
    import torch

    rows = torch.arange(logits.shape[0], device=logits.device)
    cand = logits[rows, answer_pos][:, candidates].float()  # (B, C)
    correct = cand[rows, target]
    others = cand.clone()
    others[rows, target] = -torch.inf
    best_other = others.max(dim=-1).values
    return {
        "accuracy": (correct > best_other).float().cpu().numpy(),
        "logit_diff": (correct - best_other).cpu().numpy(),
    }
