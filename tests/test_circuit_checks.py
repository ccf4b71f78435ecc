"""Circuit claims (`circuit_faithfulness` and its checks): known answers through the CLI, and the checks on
synthetic measurements."""

from __future__ import annotations

import numpy as np
import pytest

from test_cli import cli, no_traceback, show, the_report

from mechcheck.checks import CheckContext, run_check
from mechcheck.measurements import Measurements, RoleData
from mechcheck.registry import CHECKS, EXPERIMENTS

CIRCUIT_CLAIM = """
    id: known.circuit
    statement: L0H0 at the last position is the whole circuit of the known-answer model
    models: {{m: one-head}}
    data: {{task: copy6, n: 200}}
    experiment:
      circuit_faithfulness:
        circuit: {{mover: {{position: last, heads: [{head}]}}}}
        n_random: 20
        random_excludes_circuit: true
        n_reference: 100
    expect:
      - faithfulness_at_least: {{model: m, value: 0.95}}
      - random_circuits_below: {{model: m, value: 0.9}}
"""


@pytest.mark.slow
def test_known_answer_circuit_is_faithful_and_its_complement_is_not(claim_tree, tmp_path):
    claim_tree("claims/right.yaml", CIRCUIT_CLAIM.format(head="[0, 0]"))
    claim_tree("claims/wrong.yaml", CIRCUIT_CLAIM.format(head="[0, 1]").replace("known.circuit", "known.complement"))
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    no_traceback(r)
    assert r.returncode == 1, show(r)
    _, report = the_report(claim_tree.root / "r")
    right, wrong = {c.id: c for c in report.claims}["known.circuit"], {c.id: c for c in report.claims}["known.complement"]
    assert right.outcome == "passed", right
    faith = right.checks[0].effect
    assert faith.estimate == 1.0 and faith.scope == "checkpoint"
    # random single heads other than L0H0 leave only chance: the share of 'B' answers the tie-breaking gives
    assert right.checks[1].effect.estimate == pytest.approx(wrong.checks[0].details["circuit_accuracy"])
    assert wrong.checks[0].outcome == "failed" and wrong.checks[0].effect.hi < 0.95
    assert right.experiment["models"]["m"]["circuit_accuracy"] == [1.0]
    assert sorted(f.rsplit("_", 1)[-1] for f in right.figures) == ["circuit.png", "faithfulness.png"]


def test_a_circuit_head_beyond_the_model_is_an_error(claim_tree, tmp_path):
    claim_tree("claims/bad.yaml", CIRCUIT_CLAIM.format(head="[0, 5]"))
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 3 and "does not exist" in r.stdout + r.stderr, show(r)


def _meas(models, circuits, scope="recipe"):
    R, n = len(models), models[0].size
    data = RoleData("synthetic", "scratch" if scope == "recipe" else "load", scope, 2, 2, list(range(R)),
                    [f"k{i}" for i in range(R)],
                    [{"faithfulness/model": m, "faithfulness/circuit": c, "faithfulness/random": np.zeros((3, n))}
                     for m, c in zip(models, circuits)], [{} for _ in range(R)], [{} for _ in range(R)])
    args = EXPERIMENTS.get("circuit_faithfulness").with_defaults({"circuit": {}})
    return Measurements("circuit_faithfulness", args, {"m": data}, n, 7)


def _judge(meas, name, **args):
    ctx = CheckContext(meas, claim_file="c.yaml")
    return run_check(ctx, name, CHECKS.get(name).with_defaults(args))


@pytest.mark.parametrize("value", [0.7, 0.8, 0.85, 0.9, 0.95])
def test_faithfulness_interval_agrees_with_the_verdict(value):
    rng = np.random.default_rng(3)
    models = [(rng.random(300) < 0.7).astype(float) for _ in range(3)]
    circuits = [m * (rng.random(300) < 0.85) for m in models]
    got = _judge(_meas(models, circuits), "faithfulness_at_least", model="m", value=value)
    est = got.effect
    assert est.lo < est.estimate < est.hi
    assert (got.outcome == "passed") == (est.lo > value) and (got.outcome == "failed") == (est.hi < value)


def test_one_replicate_of_a_recipe_is_inconclusive_and_a_checkpoint_is_not():
    m = np.ones(200)
    c = np.r_[np.ones(190), np.zeros(10)]
    assert _judge(_meas([m], [c]), "faithfulness_at_least", model="m", value=0.9).outcome == "inconclusive"
    assert _judge(_meas([m], [c], "checkpoint"), "faithfulness_at_least", model="m", value=0.9).outcome == "passed"


def test_random_circuits_below_needs_enough_draws_to_beat_them():
    n = 200
    rng = np.random.default_rng(0)
    rand = (rng.random((20, n)) < 0.2).astype(float)
    data = RoleData("synthetic", "load", "checkpoint", 2, 2, [0], ["k"],
                    [{"faithfulness/model": np.ones(n), "faithfulness/circuit": np.ones(n), "faithfulness/random": rand}],
                    [{}], [{}])
    meas = Measurements("circuit_faithfulness", EXPERIMENTS.get("circuit_faithfulness").with_defaults(
        {"circuit": {}}), {"m": data}, n, 7)
    got = _judge(meas, "random_circuits_below", model="m", value=0.5)
    assert got.outcome == "passed" and got.details["empirical_p"] == pytest.approx(1 / 21)
    few = Measurements(meas.experiment, meas.args, {"m": RoleData(
        "synthetic", "load", "checkpoint", 2, 2, [0], ["k"], [{**data.replicates[0], "faithfulness/random": rand[:5]}],
        [{}], [{}])}, n, 7)
    got = _judge(few, "random_circuits_below", model="m", value=0.5)
    assert got.outcome == "inconclusive" and "cannot give p" in got.message


DISCOVERED = """
    id: known.discovered
    statement: the circuit path patching finds in the known-answer model is faithful
    models: {m: one-head}
    data: {task: copy6, n: 200}
    experiment:
      circuit_faithfulness:
        discover: {model: m, steps: {mover: {position: last, k: 2}}, n: 50}
        n_random: 20
        random_excludes_circuit: true
        n_reference: 100
    expect:
      - faithfulness_at_least: {model: m, value: 0.95}
"""


@pytest.mark.slow
def test_a_discovered_circuit_is_judged_like_a_given_one(claim_tree, tmp_path):
    claim_tree("claims/d.yaml", DISCOVERED)
    claim_tree("claims/both.yaml", DISCOVERED.replace("known.discovered", "known.both").replace(
        "discover: {model: m, steps: {mover: {position: last, k: 2}}, n: 50}",
        "discover: {model: m, steps: {mover: {position: last, k: 2}}, n: 50}\n        circuit: {}"))
    r = cli(["run", "claims/d.yaml", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 0, show(r)
    _, report = the_report(claim_tree.root / "r")
    # only L0H0 hurts when corrupted: k=2 still takes one head
    assert report.claims[0].experiment["circuit"] == {"mover": {"heads": [[0, 0]], "position": "last"}}
    r = cli(["run", "claims/both.yaml", "--report-dir", "r2", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 3 and "exactly one of 'circuit'" in r.stdout + r.stderr, show(r)


def _overlap(ft_circuits, base_circuit):
    metas = [{"discovery": {"circuit": c}} for c in ft_circuits]
    roles = {"ft": RoleData("synthetic", "finetune", "recipe", 2, 4, list(range(len(metas))),
                            [f"k{i}" for i in range(len(metas))], [{} for _ in metas], [{} for _ in metas], metas),
             "base": RoleData("synthetic", "load", "checkpoint", 2, 4, [0], ["b"], [{}], [{}],
                              [{"discovery": {"circuit": base_circuit}}])}
    return Measurements("circuit_overlap", EXPERIMENTS.get("circuit_overlap").with_defaults({"steps": {}}), roles,
                        10, 7)


def test_circuit_contains_counts_components_at_their_positions():
    base = {"a": {"position": "last", "heads": [[0, 0], [1, 1]]}, "b": {"position": "query_label", "heads": [[0, 2]]}}
    same = [base, base, base]
    got = _judge(_overlap(same, base), "circuit_contains", model="ft", than="base", value=0.5)
    assert got.effect.estimate == 1.0 and got.outcome == "passed"
    # the same head in another group (another position) is another component
    moved = {"a": {"position": "last", "heads": [[0, 0]]}, "b": {"position": "query_label", "heads": [[1, 1]]}}
    got = _judge(_overlap([moved] * 3, base), "circuit_contains", model="ft", than="base", value=0.5)
    assert got.details["precision"] == [1 / 3] * 3 and got.outcome == "failed"
    got = _judge(_overlap([moved] * 3, base), "circuit_contains", model="ft", than="base", value=0.5, group="a")
    assert got.details["precision"] == [0.5] * 3
    one = _judge(_overlap([base], base), "circuit_contains", model="ft", than="base", value=0.5)
    assert one.outcome == "inconclusive" and "no interval" in one.message


@pytest.mark.slow
def test_discovery_with_minimality_prunes_what_does_not_matter(claim_tree, tmp_path):
    """`minimal: true` runs end to end through the CLI and leaves the carrying head (here discovery already finds
    only L0H0, so nothing is pruned; the pruning rule itself is tested in test_minimality.py)."""
    claim_tree("claims/m.yaml", DISCOVERED.replace("n: 50}", "n: 50, minimal: true}"))
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    assert r.returncode == 0, show(r)
    _, report = the_report(claim_tree.root / "r")
    assert report.claims[0].experiment["circuit"] == {"mover": {"heads": [[0, 0]], "position": "last"}}
