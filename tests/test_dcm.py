"""Desiderata-based component masking on the known-answer model: the learnt mask patches exactly the head that
carries the answer when the desideratum is the source's answer, and nothing when it is the base's own."""

from __future__ import annotations

import numpy as np
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
