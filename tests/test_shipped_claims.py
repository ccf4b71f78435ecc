"""The claims and fixtures shipped in the repository validate in every profile they define."""

from __future__ import annotations

import pytest

from conftest import REPO
from mechcheck.spec import load_claims


@pytest.mark.parametrize("profile", ["ci", "paper"])
def test_shipped_claims_validate(profile):
    claims = load_claims([REPO / "claims"], profile=profile)
    ids = {c.id for c in claims}
    assert "lin2024.scratch_first_layer_heads" in ids
    for claim in claims:
        assert claim.source.get("arxiv"), f"{claim.id}: a paper claim names its source"


def test_ci_profile_is_cpu_sized_and_replicated():
    (claim,) = [c for c in load_claims([REPO / "claims"], profile="ci") if c.id == "lin2024.scratch_first_layer_heads"]
    scratch = claim.models["scratch"]
    assert claim.seeds >= 3  # the bar: >= 3 independently trained replicates at ci
    assert scratch.architecture["n_layer"] <= 4 and scratch.train.steps <= 500
    (paper,) = [c for c in load_claims([REPO / "claims"], profile="paper") if c.id == claim.id]
    assert paper.models["scratch"].architecture["n_layer"] == 12  # GPT-2 small's shape
    assert paper.data.task.args["tokenizer"] == "gpt2"
