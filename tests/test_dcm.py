"""Desiderata-based component masking on the known-answer model: the learnt mask patches exactly the head that
carries the answer when the desideratum is the source's answer, and nothing when it is the base's own."""

from __future__ import annotations

import numpy as np
import pytest
from test_circuits import _flipped, copy_task  # noqa: F401 - copy_task is a fixture

from mechcheck.interventions.circuits import Group
from mechcheck.interventions.dcm import patch_accuracy, train_mask
from mechcheck.known_answer import single_head_copy_model
from mechcheck.models import prepare


def test_dcm_selects_the_carrying_head(copy_task):  # noqa: F811
    model = prepare(single_head_copy_model(6), "cpu")
    base, source = copy_task, _flipped(copy_task)
    last = base.answer_pos
    group = Group("last", ((0, 0), (0, 1)))
    idx = np.arange(len(base))
    train, val, test = idx[:100], idx[100:150], idx[150:]
    wants_source = source.target  # the source's answer: only L0H0 carries it
    got = train_mask(model, base, source, wants_source, group, last, last, train=train, val=val)
    assert got.selected == [(0, 0)] and got.val_accuracy == 1.0 and got.history
    assert patch_accuracy(model, base, source, wants_source, got.selected, "last", last, last, test).mean() == 1.0
    assert patch_accuracy(model, base, source, wants_source, [(0, 1)], "last", last, last, test).mean() == 0.0
    # the base's own answer needs nothing patched: the sparsity term keeps every head
    keep = train_mask(model, base, source, base.target, group, last, last, train=train, val=val)
    assert keep.selected == [] and keep.val_accuracy == 1.0
    again = train_mask(model, base, source, wants_source, group, last, last, train=train, val=val)
    assert np.array_equal(again.mask, got.mask) and again.history == got.history  # deterministic


DCM_CLAIM = """
    id: known.dcm
    statement: in the known-answer model only L0H0 carries the answer at the last position
    models: {m: one-head}
    data: {task: copy6, n: 200}
    experiment:
      desiderata_patching:
        circuit: {mover: {position: last, heads: [[0, 0], [0, 1]]}}
        n_pairs: 200
    expect:
      - patching_accuracy_at_least: {model: m, group: mover, desideratum: source_answer, value: 0.9}
      - patching_accuracy_at_most: {model: m, group: mover, desideratum: source_answer, value: 0.5}
"""


@pytest.mark.slow
def test_desiderata_patching_through_the_cli(claim_tree, tmp_path):
    from test_cli import cli, show, the_report

    claim_tree("claims/dcm.yaml", DCM_CLAIM)
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 1, show(r)  # the second check is false on purpose
    _, report = the_report(claim_tree.root / "r")
    first, second = report.claims[0].checks
    assert first.outcome == "passed" and second.outcome == "failed"
    models = report.claims[0].experiment["models"]["m"]
    assert models["selected"] == {"mover/source_answer": [[0, 0]], "mover/base_answer": []}
    assert [f.rsplit("_", 1)[-1] for f in report.claims[0].figures] == ["dcm.png"]


@pytest.mark.slow
def test_dcm_learns_masks_only_for_the_groups_asked_for(claim_tree, tmp_path):
    from test_cli import cli, show, the_report

    two_groups = DCM_CLAIM.replace(
        "circuit: {mover: {position: last, heads: [[0, 0], [0, 1]]}}",
        "circuit: {mover: {position: last, heads: [[0, 0], [0, 1]]}, other: {position: last, heads: [[0, 1]]}}\n"
        "        groups: [mover]").replace("value: 0.5}", "value: 0.5}\n").rstrip() + "\n"
    claim_tree("claims/dcm.yaml", two_groups)
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 1, show(r)
    _, report = the_report(claim_tree.root / "r")
    assert set(report.claims[0].experiment["models"]["m"]["selected"]) == {"mover/source_answer", "mover/base_answer"}
    claim_tree("claims/dcm.yaml", two_groups.replace("groups: [mover]", "groups: [mover, ghost]"))
    r = cli(["run", "--report-dir", "r2", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 3 and "groups ['ghost'] are not groups of the circuit" in r.stdout + r.stderr, show(r)
