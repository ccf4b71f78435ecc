"""The `pruning_revival` and `block_probes` experiments and their checks (Jain et al. 2024, "fine-tuning learns a
wrapper"): plans and units on the known-answer models, the CLI end to end on the hand-built wrapper model (pruning
its one wrapper neuron revives the hidden capability; random neurons do not), and every check on synthetic
measurements (pass, fail, inconclusive; the interval agrees with the verdict)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import WRAPPED_TASK
from judging import agrees, judge
from mechcheck.experiments import PlanContext
from mechcheck.experiments.pruning import block_probes_unit, pruning_curve_unit
from mechcheck.known_answer import WRAPPER_NEURON, relay_model, single_head_copy_model
from mechcheck.measurements import Measurements, ModelRef, RoleData, data_ref
from mechcheck.models import prepare
from mechcheck.registry import CHECKS, EXPERIMENTS, load_builtins
from mechcheck.spec import TaskSpec
from mechcheck.worker import UnitContext

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COPY6 = TaskSpec("copy6", "copy_first", {"length": 6}, "tasks/copy6.yaml")


def _ctx(model, n=64, seed=0, **args):
    data = data_ref(COPY6, n, "eval", seed)
    return UnitContext([model], data.batch(), args, [], lambda *a, **k: None, data=data)


def _plan_ctx(n=64):
    data = data_ref(COPY6, n, "eval", 0)
    refs = {"m": [ModelRef(None, 0, "k0"), ModelRef(None, 1, "k1")]}
    return PlanContext(refs, data, data.batch(), shapes={"m": (1, 2)})


# ---- units and plans ---------------------------------------------------------------------------------------

def test_pruning_curve_unit_on_the_known_answer_model():
    model = prepare(single_head_copy_model(6), "cpu")
    args = dict(ks=[0, 1, 3], also={"long": {"length": 8}}, n_score=32, random=True, batch_size=500)
    got = pruning_curve_unit(_ctx(model, **args))
    assert set(got.arrays) == {"acc/data", "acc/long", "null/data", "null/long", "scores"}
    assert got.arrays["acc/data"].shape == (3, 64) and got.arrays["acc/long"].shape == (3, 64)
    assert got.arrays["acc/data"][0].mean() == 1.0 and got.arrays["acc/long"][0].mean() == 1.0  # K = 0: clean
    assert got.meta["ks"] == [0, 1, 3] and len(got.meta["neurons"]) == 3 == len(got.arrays["scores"])
    assert got.meta["score_split"] == "train"  # neurons are never chosen on the examples they are judged on
    assert np.all(np.diff(got.arrays["scores"]) <= 0)  # from the largest score down
    assert len(got.meta["null_neurons"]) == 3 and not set(got.meta["null_neurons"]) & set(got.meta["neurons"])
    again = pruning_curve_unit(_ctx(model, **args))
    assert again.meta == got.meta and all(np.array_equal(again.arrays[k], v) for k, v in got.arrays.items())


def test_block_probes_unit_on_the_relay_model():
    model = prepare(relay_model(6), "cpu")
    got = block_probes_unit(_ctx(model, n=120, label="source", train_frac=0.5, untrained=True, batch_size=500))
    np.testing.assert_array_equal(got.arrays["accuracy"][1:], [1.0, 1.0])
    assert got.arrays["accuracy"][0] == pytest.approx(got.meta["chance"])
    assert got.arrays["correct"].shape == (3, 60) and got.arrays["untrained"].shape == (3,)
    for null in ("shuffled", "untrained"):  # the nulls' per-example correctness, on the same held-out examples
        assert got.arrays[f"{null}_correct"].shape == (3, 60)
        np.testing.assert_allclose(got.arrays[f"{null}_correct"].mean(1), got.arrays[null])


def test_registered_with_their_parameters():
    load_builtins()
    curve, probes = EXPERIMENTS.get("pruning_revival"), EXPERIMENTS.get("block_probes")
    assert {p.name for p in curve.params} == {"ks", "also", "n_score", "random", "batch_size"}
    assert [p.name for p in probes.params if p.required] == ["label"]
    for name in ("pruning_revives_at_least", "pruning_drops_at_least"):
        assert CHECKS.get(name).meta["experiments"] == ("pruning_revival",)
    for name in ("probe_accuracy_at_least", "probe_above_null", "probe_accuracy_close"):
        assert CHECKS.get(name).meta["experiments"] == ("block_probes",)


def test_plans_one_unit_per_replicate_and_checks_arguments():
    load_builtins()
    from mechcheck.experiments.pruning import block_probes_experiment, pruning_revival

    plan = pruning_revival(_plan_ctx(), ks=[3, 1], also={"long": {"length": 8}})
    assert len(plan["m"]) == 2 and {u["curve"].kind for u in plan["m"]} == {"pruning_curve"}
    assert plan["m"][0]["curve"].arguments["ks"] == [0, 1, 3]  # K = 0 is always measured
    assert pruning_revival(_plan_ctx())["m"][0]["curve"].arguments["ks"] == list(range(16))
    with pytest.raises(ValueError, match="has no argument operand"):
        pruning_revival(_plan_ctx(), also={"finetune": {"operand": "b"}})
    with pytest.raises(ValueError, match="'data' names the claim's own data"):
        pruning_revival(_plan_ctx(), also={"data": {"length": 8}})
    probes = block_probes_experiment(_plan_ctx(), label="source")
    assert probes["m"][1]["probe"].arguments["label"] == "source"
    with pytest.raises(ValueError, match="no label 'count_a'"):
        block_probes_experiment(_plan_ctx(), label="count_a")


# ---- the CLI on the known-answer wrapper ----------------------------------------------------------------------

WRAPPER_FIXTURES = {
    "fixtures/tasks/copy6-wrapped.yaml": WRAPPED_TASK,
    "fixtures/models/wrapper.yaml": """
        name: wrapper
        recipe: load
        path: {path}
        task: copy6-wrapped
    """,
}

REVIVES = """
    id: known.wrapper_pruning
    statement: pruning the one wrapper neuron revives copying the source and breaks the primed answer
    models: {m: wrapper}
    data: {task: copy6-wrapped, n: 200}
    experiment:
      pruning_revival: {ks: [0, 1, 2, 4], also: {finetune: {answer: primed}}, n_score: 64}
    expect:
      - pruning_revives_at_least: {model: m, k: 1, value: 0.9}
      - pruning_drops_at_least: {model: m, k: 1, task: finetune, value: 0.9}
"""

RANDOM_REVIVES = """
    id: known.random_pruning
    statement: (false) pruning four random neurons revives copying the source
    models: {m: wrapper}
    data: {task: copy6-wrapped, n: 200}
    experiment:
      pruning_revival: {ks: [0, 1, 2, 4], also: {finetune: {answer: primed}}, n_score: 64}
    expect:
      - pruning_revives_at_least: {model: m, k: 4, value: 0.2, neurons: random}
"""

PROBES = """
    id: known.wrapper_probes
    statement: the source is linearly readable after layer 0 (head L0H0 writes it), not from the embeddings
    models: {m: wrapper}
    data: {task: copy6-wrapped, n: 200}
    experiment:
      block_probes: {label: source}
    expect:
      - probe_accuracy_at_least: {model: m, block: 1, value: 0.9}
      - probe_above_null: {model: m, block: 1, against: shuffled, by: 0.2}
"""


@pytest.mark.slow
def test_pruning_the_wrapper_neuron_revives_the_capability_through_the_cli(claim_tree, tmp_path, wrapper_dir):
    from test_cli import cli, no_traceback, show, the_report

    for rel, text in WRAPPER_FIXTURES.items():
        claim_tree(rel, text.replace("{path}", str(wrapper_dir)))
    claim_tree("claims/revives.yaml", REVIVES)
    claim_tree("claims/random.yaml", RANDOM_REVIVES)
    claim_tree("claims/probes.yaml", PROBES)
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    no_traceback(r)
    assert r.returncode == 1, show(r)  # the random-neuron claim is false on purpose
    _, report = the_report(claim_tree.root / "r")
    claims = {c.id: c for c in report.claims}
    revives, rand = claims["known.wrapper_pruning"], claims["known.random_pruning"]
    probes = claims["known.wrapper_probes"]
    assert revives.outcome == "passed", revives
    gain, drop = (c.effect for c in revives.checks)
    assert gain.estimate == 1.0 and drop.estimate == 1.0 and gain.scope == "checkpoint"
    assert revives.checks[0].control["estimate"] == pytest.approx(0.0, abs=0.05)  # random neurons: nothing
    models = revives.experiment["models"]["m"]
    assert models["neurons"][0][0] == WRAPPER_NEURON and models["sets"] == ["data", "finetune"]
    assert models["acc"]["data"][0][:2] == [0.0, 1.0] and models["acc"]["finetune"][0][:2] == [1.0, 0.0]
    assert rand.outcome == "failed" and rand.checks[0].effect.hi < 0.2, rand.checks[0].message
    assert probes.outcome == "passed", [c.message for c in probes.checks]
    assert [f.rsplit("_", 1)[-1] for f in revives.figures] == ["pruning.png"]
    assert [f.rsplit("_", 1)[-1] for f in probes.figures] == ["probes.png"]


# ---- the checks on synthetic measurements ----------------------------------------------------------------------

def _role(reps, scope="recipe", meta=None):
    R = len(reps)
    return RoleData("synthetic", "scratch" if scope == "recipe" else "load", scope, 2, 2, list(range(R)),
                    [f"k{i}" for i in range(R)], reps, [{} for _ in range(R)], meta or [{} for _ in range(R)])


def _curve_meas(p0, pk, R=3, n=300, scope="recipe", seed=0, ks=(0, 1, 4)):
    """Accuracy p0 unpruned and pk after pruning K = 1 and 4 top neurons (and unchanged after random ones), on the
    claim's data; the `finetune` set falls from pk to p0 (the mirror)."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(R):
        shift = rng.normal(0, 0.02) if scope == "recipe" else 0.0
        u = rng.random((len(ks), n))
        probs = np.array([[p0] + [pk] * (len(ks) - 1)]).T + shift
        acc = (u < probs).astype(float)
        ft = (rng.random((len(ks), n)) < np.array([[pk] + [p0] * (len(ks) - 1)]).T + shift).astype(float)
        null = np.repeat(acc[:1], len(ks), axis=0)
        reps.append({"curve/acc/data": acc, "curve/null/data": null, "curve/acc/finetune": ft,
                     "curve/null/finetune": np.repeat(ft[:1], len(ks), axis=0), "scores": np.ones(max(ks))})
    args = EXPERIMENTS.get("pruning_revival").with_defaults({"ks": list(ks)})
    return Measurements("pruning_revival", args, {"m": _role(reps, scope)}, n, 4, seed=7)




@pytest.mark.parametrize("value, outcome", [(0.2, "passed"), (0.4, "inconclusive"), (0.6, "failed")])
def test_pruning_revives_at_least_verdicts(value, outcome):
    got = judge(_curve_meas(0.1, 0.5), "pruning_revives_at_least", model="m", k=4, value=value)
    assert got.outcome == outcome, got.message
    agrees(got, value)
    assert got.effect.estimate == pytest.approx(0.4, abs=0.06)
    assert got.control["label"] == "4 random neurons pruned" and got.control["estimate"] == 0.0


@pytest.mark.parametrize("value, outcome", [(0.2, "passed"), (0.4, "inconclusive"), (0.6, "failed")])
def test_pruning_drops_at_least_verdicts(value, outcome):
    got = judge(_curve_meas(0.1, 0.5), "pruning_drops_at_least", model="m", k=1, task="finetune", value=value)
    assert got.outcome == outcome, got.message
    agrees(got, value)


def test_random_neurons_revive_nothing_and_one_seed_of_a_recipe_is_inconclusive():
    got = judge(_curve_meas(0.1, 0.5), "pruning_revives_at_least", model="m", k=4, value=0.05, neurons="random")
    assert got.outcome == "failed" and got.effect.estimate == 0.0 and got.control is None
    one = judge(_curve_meas(0.1, 0.5, R=1), "pruning_revives_at_least", model="m", k=4, value=0.05)
    assert one.outcome == "inconclusive" and "2 or more seeds" in one.message
    ckpt = judge(_curve_meas(0.1, 0.5, R=1, scope="checkpoint"), "pruning_revives_at_least", model="m", k=4,
                  value=0.2)
    assert ckpt.outcome == "passed" and "one checkpoint" in ckpt.message


def test_pruning_checks_name_what_exists():
    from mechcheck.errors import SpecError

    meas = _curve_meas(0.1, 0.5)
    with pytest.raises(SpecError, match="no eval set 'pretrain'"):
        judge(meas, "pruning_revives_at_least", model="m", k=4, value=0.1, task="pretrain")
    with pytest.raises(SpecError, match="not one of the experiment's ks"):
        judge(meas, "pruning_revives_at_least", model="m", k=3, value=0.1)


def _probe_meas(accs, nulls=(0.5, 0.5, 0.5), R=3, n=200, scope="recipe", seed=0, other=None):
    """Per block, probe accuracy `accs` (the same for every replicate, plus seed noise); shuffled null 0.5; untrained
    null `nulls`. `other`: a second role `o` with its own accuracies."""
    rng = np.random.default_rng(seed)

    def role(accs):
        reps = []
        for _ in range(R):
            shift = rng.normal(0, 0.02) if scope == "recipe" else 0.0
            correct = (rng.random((len(accs), n)) < np.asarray(accs)[:, None] + shift).astype(float)
            shuffled = (rng.random((len(accs), n)) < 0.5).astype(float)
            untrained = (rng.random((len(accs), n)) < np.asarray(nulls)[:, None]).astype(float)
            reps.append({"probe/correct": correct, "probe/accuracy": correct.mean(1),
                         "probe/shuffled_correct": shuffled, "probe/shuffled": shuffled.mean(1),
                         "probe/untrained_correct": untrained,
                         "probe/untrained": untrained.mean(1)})
        return _role(reps, scope, [{"probe": {"chance": 0.5}} for _ in range(R)])

    roles = {"m": role(accs)}
    if other is not None:
        roles["o"] = role(other)
    args = EXPERIMENTS.get("block_probes").with_defaults({"label": "count_a"})
    return Measurements("block_probes", args, roles, 2 * n, 4, seed=7)


@pytest.mark.parametrize("value, outcome", [(0.7, "passed"), (0.8, "inconclusive"), (0.9, "failed")])
def test_probe_accuracy_at_least_verdicts(value, outcome):
    got = judge(_probe_meas([0.5, 0.8, 0.8]), "probe_accuracy_at_least", model="m", block=2, value=value)
    assert got.outcome == outcome, got.message
    agrees(got, value)
    assert got.details["nulls"]["chance"] == 0.5 and "untrained" in got.details["nulls"]


@pytest.mark.parametrize("against, by, outcome", [("shuffled", 0.2, "passed"), ("untrained", 0.2, "failed"),
                                                  ("untrained", 0.0, "inconclusive")])
def test_probe_above_null_verdicts(against, by, outcome):
    got = judge(_probe_meas([0.5, 0.8, 0.8], nulls=(0.5, 0.8, 0.8)), "probe_above_null", model="m", block=1,
                 against=against, by=by)
    assert got.outcome == outcome, got.message
    agrees(got, by)


@pytest.mark.parametrize("other, within, outcome", [(0.8, 0.1, "passed"), (0.45, 0.2, "failed"),
                                                    (0.75, 0.05, "inconclusive")])
def test_probe_accuracy_close_verdicts(other, within, outcome):
    got = judge(_probe_meas([0.5, 0.8, 0.8], other=[0.5, other, other]), "probe_accuracy_close", model="m",
                 than="o", block=1, within=within)
    assert got.outcome == outcome, got.message
    agrees(got, within, "<=")
    d = got.details["difference"]
    assert got.effect.estimate == pytest.approx(abs(d["estimate"])) and got.effect.hi == pytest.approx(
        max(abs(d["lo"]), abs(d["hi"])))


def test_probe_checks_name_what_exists():
    from mechcheck.errors import SpecError

    with pytest.raises(SpecError, match="block 3 does not exist"):
        judge(_probe_meas([0.5, 0.8, 0.8]), "probe_accuracy_at_least", model="m", block=3, value=0.5)
    with pytest.raises(SpecError, match="compared with itself"):
        judge(_probe_meas([0.5, 0.8, 0.8]), "probe_accuracy_close", model="m", than="m", block=1, within=0.1)
