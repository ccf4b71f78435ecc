"""Minimality and completeness on the known-answer model (L0H0 carries the answer, L0H1 writes nothing)."""

from __future__ import annotations

import numpy as np
from test_circuits import copy_task  # noqa: F401 - a fixture

import mechcheck.interventions as iv
from mechcheck.interventions.minimality import completeness, minimal_circuit
from mechcheck.known_answer import single_head_copy_model
from mechcheck.models import prepare


def test_minimality_drops_the_head_that_writes_nothing_and_the_circuit_is_complete(copy_task):  # noqa: F811
    model = prepare(single_head_copy_model(6), "cpu")
    ref = iv.circuit_reference(model, copy_task)
    both = iv.Circuit({"mover": {"position": "last", "heads": [[0, 0], [0, 1]]}})
    got = minimal_circuit(model, both, copy_task, ref)
    assert got.circuit.to_dict() == {"mover": {"position": "last", "heads": [[0, 0]]}}
    assert got.dropped == [("mover", (0, 1))]
    assert got.scores[("mover", (0, 0))]["relative_drop"] > 0.5 and got.forward_passes > 0
    out = completeness(model, both, copy_task, ref, n_subsets=8, seed=1)
    assert out["circuit"].shape == (8,) and np.allclose(out["circuit"], out["model"])
    assert set(out["sizes"]) <= {0, 1, 2}
