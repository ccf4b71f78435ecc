"""The intervention layer (`mechcheck.interventions`) on real tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechcheck import interventions as iv
from mechcheck.models import build_gpt2, prepare
from mechcheck.tasks.cdm import make_cdm


def gpt2(seed: int, n_layer: int = 2, n_head: int = 2, d_head: int = 4, vocab: int = 17, n_positions: int = 16):
    torch.manual_seed(seed)
    return prepare(build_gpt2({"n_layer": n_layer, "n_head": n_head, "n_embd": n_head * d_head}, vocab, n_positions),
                   "cpu")


@pytest.mark.parametrize("positions", ["all", "answer", (0, 3)])
def test_ablating_no_unit_changes_nothing(positions):
    """An empty unit list is a valid intervention that replaces nothing (it used to raise an IndexError:
    the empty index tensor was float)."""
    model = gpt2(0)
    batch = make_cdm(vocab="words", max_number=9).sample(8, "eval", 0)
    clean = iv.run(model, batch)
    for site in ("blocks.0.attn.hook_z", "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"):
        out = iv.run(model, batch, [iv.Ablate(site, (), positions=positions)])
        np.testing.assert_array_equal(out.candidate_logits, clean.candidate_logits)
