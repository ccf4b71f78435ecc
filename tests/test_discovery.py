"""Circuit discovery by iterative path patching, on the known-answer models (the circuit is known exactly)."""

from __future__ import annotations

import numpy as np
import pytest
from test_circuits import _flipped, copy_task  # noqa: F401 - copy_task is a fixture

from mechcheck.interventions import Step, discover_circuit
from mechcheck.interventions.discovery import steps_from
from mechcheck.models import prepare
from mechcheck.known_answer import relay_model, single_head_copy_model


def test_discovery_finds_the_relay_from_the_logits_backwards(copy_task):  # noqa: F811
    model = prepare(relay_model(6), "cpu")
    steps = [Step("mover", "last", k=2), Step("feeder", "last", k=2, into="mover", via="v")]
    got = discover_circuit(model, copy_task, _flipped(copy_task), steps)
    # only heads that hurt are taken, so k=2 still finds one head per group
    assert got.circuit.to_dict() == {"mover": {"position": "last", "heads": [[1, 0]]},
                                     "feeder": {"position": "last", "heads": [[0, 0]]}}
    assert got.scores["mover"].shape == (4,) and got.forward_passes > 0
    assert np.all(got.scores["feeder"][[1, 2, 3]] == 0.0)  # L0H1 writes nothing; layer 1 cannot feed layer 1


def test_discovery_of_a_one_head_model_and_bad_steps(copy_task):  # noqa: F811
    model = prepare(single_head_copy_model(6), "cpu")
    got = discover_circuit(model, copy_task, _flipped(copy_task), [Step("mover", "last", k=1)])
    assert got.circuit.to_dict() == {"mover": {"position": "last", "heads": [[0, 0]]}}
    with pytest.raises(ValueError, match="no earlier step"):
        discover_circuit(model, copy_task, _flipped(copy_task), [Step("b", "last", 1, into="a")])
    with pytest.raises(ValueError, match="via must be"):
        Step("a", "last", 1, via="x")
    with pytest.raises(ValueError, match="keys"):
        steps_from([{"name": "a", "position": "last", "k": 1, "colour": "red"}])
