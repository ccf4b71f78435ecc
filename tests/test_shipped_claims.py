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


@pytest.mark.parametrize("profile", ["ci"])
def test_scratch_twin_has_the_pretrained_models_config(profile):
    """cdm-finetuned and cdm-scratch differ only in their starting weights: same architecture, vocabulary, positions."""
    from mechcheck.recipes import make_task
    from mechcheck.spec import load_model_fixture

    fx = REPO / "fixtures"
    scratch = load_model_fixture("cdm-scratch", fx, profile)
    finetuned = load_model_fixture("cdm-finetuned", fx, profile)
    pretrained = finetuned.parent
    assert pretrained.name == "lm-pretrained" and pretrained.seed is not None  # one checkpoint, like GPT-2
    corpus = make_task(pretrained.task)
    arch = {k: v for k, v in scratch.architecture.items() if k not in ("vocab_size", "n_positions")}
    assert arch == pretrained.architecture
    assert scratch.architecture["vocab_size"] == corpus.vocab_size
    assert scratch.architecture["n_positions"] == corpus.seq_len + 2
    assert scratch.task == finetuned.task and scratch.train.steps == finetuned.train.steps
    assert scratch.train.batch_size == finetuned.train.batch_size  # the same data budget


def test_every_lin_claim_has_a_paper_profile():
    claims = [c for c in load_claims([REPO / "claims" / "lin2024"], profile="ci")]
    assert len(claims) >= 7
    for claim in claims:
        assert "paper" in claim.profiles, claim.id


def test_format_doc_examples_name_fixtures_that_exist(tmp_path):
    """Every claim example in docs/claim-format.md validates against the shipped fixtures, and every fixture
    example's file name is a shipped fixture: a newcomer can copy them."""
    import re

    from mechcheck.spec import list_fixtures, load_claims

    doc = (REPO / "docs" / "claim-format.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    claims = [b for b in blocks if re.search(r"^id: ", b, re.M) and "expect:" in b]  # whole claims, not snippets
    assert claims
    for i, text in enumerate(claims):
        path = tmp_path / f"example{i}.yaml"
        path.write_text(text)
        load_claims([path], fixtures_dir=REPO / "fixtures")  # raises on any problem
    shipped = list_fixtures(REPO / "fixtures")
    named = re.findall(r"^# fixtures/(models|tasks)/([\w.-]+)\.yaml", doc, re.M)
    assert named
    for kind, name in named:
        assert name in shipped[kind], f"docs/claim-format.md shows fixtures/{kind}/{name}.yaml, which is not shipped"
