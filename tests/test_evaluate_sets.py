"""`evaluate`'s `also` eval sets and the accuracy checks on them (Jain et al. 2024's "accuracy of model M on eval set
S"): the shared `also` helper, plans whose `also` units are ordinary clean units with their own keys (the claim's
own `clean` unit keeps its key), `accuracy_at_least` / `accuracy_at_most` / `accuracy_higher` on synthetic
measurements (pass, fail, inconclusive, errors that name what exists), and the CLI end to end on the known-answer
wrapper model and its unwrapped twin (a relevance grid of 2 models x 2 eval sets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import WRAPPED_TASK
from judging import agrees, judge
from mechcheck.errors import SpecError, SpecErrors
from mechcheck.experiments import DATA, PlanContext, also_sets, variant_data
from mechcheck.measurements import Measurements, ModelRef, RoleData, data_ref
from mechcheck.registry import CHECKS, EXPERIMENTS, load_builtins
from mechcheck.spec import TaskSpec, load_claims

COPY6 = TaskSpec("copy6", "copy_first", {"length": 6}, "tasks/copy6.yaml")


def _plan_ctx(n=64):
    data = data_ref(COPY6, n, "eval", 0)
    refs = {"m": [ModelRef(None, 0, "k0"), ModelRef(None, 1, "k1")]}
    return PlanContext(refs, data, data.batch(), shapes={"m": (1, 2)})


# ---- the shared helper ------------------------------------------------------------------------------------------

def test_also_sets_checks_names_and_arguments():
    load_builtins()
    assert also_sets("evaluate", COPY6, None) == {}
    assert also_sets("evaluate", COPY6, {"long": {"length": 8}}) == {"long": {"length": 8}}
    with pytest.raises(ValueError, match="evaluate: 'data' names the claim's own data"):
        also_sets("evaluate", COPY6, {"data": {"length": 8}})
    with pytest.raises(ValueError, match=r"evaluate: also.b: task generator 'copy_first' has no argument operand "
                                         r"\(it has length\)"):
        also_sets("evaluate", COPY6, {"b": {"operand": "b"}})
    with pytest.raises(ValueError, match="also.long must map task arguments to values"):
        also_sets("pruning_revival", COPY6, {"long": 8})


def test_variant_data_is_the_data_set_of_those_arguments():
    load_builtins()
    data = data_ref(COPY6, 64, "train", 3)
    long = variant_data(data, {"length": 8})
    assert (long.n, long.split, long.seed) == (64, "train", 3) and long.task.args == {"length": 8}
    # the key of any task fixture with those arguments, whatever its name: a unit on it is shared
    assert long.key == data_ref(TaskSpec("copy8", "copy_first", {"length": 8}, "x.yaml"), 64, "train", 3).key
    assert long.key != data.key and variant_data(data, {"length": 6}).key == data.key
    assert long.batch().tokens.shape == (64, 8)


# ---- the plan ---------------------------------------------------------------------------------------------------

def test_also_sets_are_clean_units_of_their_own_and_the_data_unit_keeps_its_key():
    load_builtins()
    from mechcheck.experiments.evaluate import evaluate

    plain = evaluate(_plan_ctx())
    assert [list(rep) for rep in plain["m"]] == [["clean"], ["clean"]]
    plan = evaluate(_plan_ctx(), also={"long": {"length": 8}, "short": {"length": 4}})
    for i, rep in enumerate(plan["m"]):
        assert list(rep) == ["clean", "clean@long", "clean@short"]
        assert rep["clean"].key == plain["m"][i]["clean"].key  # `also` leaves the claim's own unit alone
        assert {u.kind for u in rep.values()} == {"clean"} and len({u.key for u in rep.values()}) == 3
        assert rep["clean@long"].data.key == variant_data(_plan_ctx().data, {"length": 8}).key
        assert rep["clean@long"].arguments == rep["clean"].arguments == {"batch_size": 500}
    # a claim whose data *is* the variant plans the very same unit
    long = data_ref(TaskSpec("copy8", "copy_first", {"length": 8}, "x.yaml"), 64, "eval", 0)
    other = PlanContext(_plan_ctx().roles, long, long.batch())
    assert evaluate(other)["m"][1]["clean"].key == plan["m"][1]["clean@long"].key
    with pytest.raises(ValueError, match="evaluate: also.x: task generator 'copy_first' has no argument"):
        evaluate(_plan_ctx(), also={"x": {"answer": "primed"}})


def test_new_arguments_leave_the_normalised_form_of_old_claims_alone():
    """`also` and `task` are keyless: claims without them record the arguments (and check ids) they had."""
    load_builtins()
    assert EXPERIMENTS.get("evaluate").with_defaults({}) == {"batch_size": 500}
    assert EXPERIMENTS.get("evaluate").with_defaults({"also": {}}) == {"batch_size": 500}
    entry = CHECKS.get("accuracy_at_least")
    assert entry.with_defaults({"model": "m", "value": 0.9}) == {"model": "m", "value": 0.9}
    assert entry.with_defaults({"model": "m", "value": 0.9, "task": DATA}) == {"model": "m", "value": 0.9}
    assert entry.with_defaults({"model": "m", "value": 0.9, "task": "b"})["task"] == "b"
    assert CHECKS.get("accuracy_at_least").meta["experiments"] == ("evaluate", "head_ablation")
    for name in ("accuracy_at_most", "accuracy_higher"):
        assert CHECKS.get(name).meta["experiments"] == ("evaluate",)


# ---- the checks on synthetic measurements -----------------------------------------------------------------------

def _role(reps, scope="recipe"):
    R = len(reps)
    return RoleData("synthetic", "scratch" if scope == "recipe" else "load", scope, 1, 2, list(range(R)),
                    [f"k{i}" for i in range(R)], reps, [{} for _ in range(R)], [{} for _ in range(R)])


def _reps(accs: dict[str, float], R=3, n=300, scope="recipe", seed=0, candidates=None):
    """Per replicate, 0/1 correctness with accuracy `accs[set]` (+ seed noise for a recipe) on each set."""
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(R):
        shift = rng.normal(0, 0.01) if scope == "recipe" else 0.0
        rep = {}
        for name, p in accs.items():
            prefix = "clean" if name == DATA else f"clean@{name}"
            rep[f"{prefix}/accuracy"] = (rng.random(n) < p + shift).astype(float)
            rep[f"{prefix}/logit_diff"] = rep[f"{prefix}/accuracy"] - 0.5
            rep[f"{prefix}/candidate_logits"] = np.zeros((n, (candidates or {}).get(name, 2)))
        reps.append(rep)
    return reps


def _meas(roles, experiment="evaluate", n=300):
    args = EXPERIMENTS.get(experiment).with_defaults({})
    return Measurements(experiment, args, roles, n, 2, seed=7)




GRID = {DATA: 0.9, "c0": 0.5, "pretrain": 0.1}


@pytest.mark.parametrize("task, value, outcome", [(DATA, 0.8, "passed"), ("c0", 0.5, "inconclusive"),
                                                  ("c0", 0.7, "failed"), ("pretrain", 0.02, "passed")])
def test_accuracy_at_least_on_each_set(task, value, outcome):
    got = judge(_meas({"m": _role(_reps(GRID))}), "accuracy_at_least", model="m", value=value, task=task)
    assert got.outcome == outcome, got.message
    agrees(got, value)
    assert got.effect.estimate == pytest.approx(GRID[task], abs=0.06)
    assert (f"on '{task}'" in got.message) == (task != DATA) and got.control == {"label": "chance", "estimate": 0.5}


@pytest.mark.parametrize("task, value, outcome", [("pretrain", 0.2, "passed"), ("c0", 0.5, "inconclusive"),
                                                  (DATA, 0.8, "failed")])
def test_accuracy_at_most_mirrors_it(task, value, outcome):
    got = judge(_meas({"m": _role(_reps(GRID))}), "accuracy_at_most", model="m", value=value, task=task)
    assert got.outcome == outcome, got.message
    agrees(got, value, "<=")
    assert got.direction == "<=" and f"(needs < {value})" in got.message


def test_chance_is_that_of_the_set_and_one_checkpoint_gets_the_exact_interval():
    reps = _reps({DATA: 0.0, "wide": 0.5}, R=1, scope="checkpoint", candidates={"wide": 4})
    meas = _meas({"m": _role(reps, "checkpoint")})
    zero = judge(meas, "accuracy_at_most", model="m", value=0.05)
    assert zero.outcome == "passed" and zero.effect.lo == 0.0 and "Clopper-Pearson" in zero.effect.method
    assert "one checkpoint" in zero.message
    assert judge(meas, "accuracy_at_least", model="m", value=0.3, task="wide").control["estimate"] == 0.25
    one = judge(_meas({"m": _role(_reps(GRID, R=1))}), "accuracy_at_least", model="m", value=0.5)
    assert one.outcome == "inconclusive" and "2 or more seeds" in one.message


@pytest.mark.parametrize("task, by, outcome", [(DATA, 0.2, "passed"), ("c0", 0.05, "inconclusive"),
                                               ("pretrain", 0.1, "failed")])
def test_accuracy_higher_pairs_two_models_on_the_same_set(task, by, outcome):
    ft = _reps({DATA: 0.9, "c0": 0.6, "pretrain": 0.1}, seed=1)
    pre = _reps({DATA: 0.5, "c0": 0.6, "pretrain": 0.9}, R=1, scope="checkpoint", seed=2)
    meas = _meas({"ft": _role(ft), "pre": _role(pre, "checkpoint")})
    got = judge(meas, "accuracy_higher", model="ft", than="pre", by=by, task=task)
    assert got.outcome == outcome, got.message
    agrees(got, by)
    acc = got.details["accuracy"]
    assert got.effect.estimate == pytest.approx(acc["ft"] - acc["pre"])
    assert f"'ft' {acc['ft']:.3f}, 'pre' {acc['pre']:.3f}" in got.message
    assert got.control["label"] == "accuracy of 'pre'" and got.control["estimate"] == acc["pre"]
    assert "3 vs 1 replicates, paired by example" in got.effect.method


def test_accuracy_higher_of_two_checkpoints_and_of_a_role_with_itself():
    a = _reps({DATA: 0.99}, R=1, n=200, scope="checkpoint", seed=3)
    b = _reps({DATA: 0.97}, R=1, n=200, scope="checkpoint", seed=4)
    got = judge(_meas({"a": _role(a, "checkpoint"), "b": _role(b, "checkpoint")}, n=200), "accuracy_higher",
                 model="a", than="b")
    assert "paired score interval" in got.effect.method and got.effect.lo <= got.effect.estimate
    with pytest.raises(SpecError, match="compared with itself"):
        judge(_meas({"m": _role(_reps(GRID))}), "accuracy_higher", model="m", than="m")


def test_an_unknown_set_names_those_measured():
    meas = _meas({"m": _role(_reps(GRID))})
    with pytest.raises(SpecError, match=r"task: no eval set 'c1' \(measured: data, c0, pretrain; 'data' is the "
                                        r"claim's data, the others are the experiment's `also`\)"):
        judge(meas, "accuracy_at_least", model="m", value=0.5, task="c1")
    ablation = Measurements("head_ablation", EXPERIMENTS.get("head_ablation").with_defaults({}),
                            {"m": _role(_reps({DATA: 0.9}))}, 300, 2)
    assert judge(ablation, "accuracy_at_least", model="m", value=0.5).outcome == "passed"
    with pytest.raises(SpecError, match="measured: data; .*experiment 'head_ablation' measures no other"):
        judge(ablation, "accuracy_at_least", model="m", value=0.5, task="c0")


def test_the_summary_keeps_its_keys_and_adds_every_set():
    from mechcheck.experiments.evaluate import _summary

    meas = _meas({"m": _role(_reps(GRID)), "p": _role(_reps(GRID, R=1, scope="checkpoint"), "checkpoint")})
    got = _summary(meas)
    assert got["sets"] == ["data", "c0", "pretrain"] and set(got) == {"name", "args", "n", "sets", "models"}
    m = got["models"]["m"]
    assert set(m) == {"fixture", "clean", "sets", "by_set"} and m["by_set"]["data"] == m["clean"]
    assert len(m["by_set"]["pretrain"]["accuracy"]) == 3 and len(got["models"]["p"]["by_set"]["c0"]["accuracy"]) == 1


# ---- the CLI on the known-answer wrapper ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unwrapped_dir(tmp_path_factory: pytest.TempPathFactory, wrapper_dir: Path) -> Path:
    """The wrapper model with its wrapper neuron pruned (it answers the source: the 'pretrained' model the
    wrapper was added to), as a Hugging Face directory."""
    from mechcheck.interventions.pruning import prune
    from mechcheck.known_answer import WRAPPER_NEURON
    from mechcheck.models import load_checkpoint, prepare

    model = load_checkpoint(str(wrapper_dir), local=True)
    path = tmp_path_factory.mktemp("unwrapped") / "model"
    with prune(prepare(model, "cpu"), [WRAPPER_NEURON]):
        model.save_pretrained(path, safe_serialization=True)
    return path


FIXTURES = {
    "fixtures/tasks/copy6-wrapped.yaml": WRAPPED_TASK,
    "fixtures/models/wrapped.yaml": """
        name: wrapped
        recipe: load
        path: {wrapped}
        task: copy6-wrapped
    """,
    "fixtures/models/unwrapped.yaml": """
        name: unwrapped
        recipe: load
        path: {unwrapped}
        task: copy6-wrapped
    """,
}

GRID_CLAIM = """
    id: known.wrapper_grid
    statement: the wrapper answers the primed twin and not the source; without it the model copies the source
    models: {ft: wrapped, pre: unwrapped}
    data: {task: copy6-wrapped, n: 200}
    experiment:
      evaluate: {also: {primed: {answer: primed}}}
    expect:
      - accuracy_at_most: {model: ft, value: 0.05}
      - accuracy_at_least: {model: ft, task: primed, value: 0.95}
      - accuracy_higher: {model: pre, than: ft, by: 0.5}
      - accuracy_higher: {model: ft, than: pre, task: primed, by: 0.5}
"""

ONE_SET = """
    id: known.unwrapped_copies
    statement: without the wrapper the model copies the source
    models: {pre: unwrapped}
    data: {task: copy6-wrapped, n: 200}
    experiment: evaluate
    expect:
      - accuracy_at_least: {model: pre, value: 0.95}
"""


@pytest.mark.slow
def test_a_relevance_grid_of_the_wrapper_through_the_cli(claim_tree, tmp_path, wrapper_dir, unwrapped_dir):
    from test_cli import cli, no_traceback, show, the_report

    for rel, text in FIXTURES.items():
        claim_tree(rel, text.replace("{wrapped}", str(wrapper_dir)).replace("{unwrapped}", str(unwrapped_dir)))
    claim_tree("claims/grid.yaml", GRID_CLAIM)
    claim_tree("claims/one.yaml", ONE_SET)
    r = cli(["run", "--report-dir", "r", "--workers", "1"], claim_tree.root, tmp_path / "cache")
    no_traceback(r)
    assert r.returncode == 0, show(r)
    run_dir, report = the_report(claim_tree.root / "r")
    claims = {c.id: c for c in report.claims}
    grid, one = claims["known.wrapper_grid"], claims["known.unwrapped_copies"]
    assert grid.outcome == "passed", [c.message for c in grid.checks]
    at_most, at_least, pre_higher, ft_higher = grid.checks
    assert at_most.effect.estimate == 0.0 and at_least.effect.estimate == 1.0 and at_least.args["task"] == "primed"
    assert pre_higher.effect.estimate == 1.0 and ft_higher.effect.estimate == 1.0
    assert at_most.control == {"label": "chance", "estimate": 0.25}
    exp = grid.experiment
    assert exp["sets"] == ["data", "primed"]
    assert exp["models"]["ft"]["by_set"]["primed"]["accuracy"] == [1.0]
    assert exp["models"]["pre"]["by_set"]["data"]["accuracy"] == [1.0] == exp["models"]["pre"]["clean"]["accuracy"]
    assert [f.rsplit("_", 1)[-1] for f in grid.figures] == ["accuracy.png"]
    assert all((run_dir / f).is_file() for f in grid.figures)
    assert one.outcome == "passed" and one.figures == [] and one.experiment["sets"] == ["data"]
    assert "task" not in one.checks[0].args  # the normalised arguments of a claim without `task` are as they were


def test_validate_catches_an_eval_set_the_experiment_does_not_measure(claim_tree):
    """A check's `task` must be 'data' or a name of the experiment's `also` before anything runs (also for the
    pruning checks); a claim without `also` has only 'data'."""
    path = claim_tree("claims/sets.yaml", """
        id: sets.typo
        statement: eval-set names are checked at validation
        models: {m: one-head}
        data: {task: copy6, n: 20}
        experiment: {evaluate: {also: {longer: {length: 8}}}}
        expect:
          - accuracy_at_least: {model: m, value: 0.5, task: longer}
          - accuracy_at_most: {model: m, value: 0.5, task: data}
          - accuracy_at_most: {model: m, value: 0.5, task: longr}
    """)
    with pytest.raises(SpecErrors) as err:
        load_claims([path])
    text = str(err.value)
    assert "expect[2].accuracy_at_most.task: 'longr' is not one of the values of the experiment's `also`" in text
    assert "did you mean 'longer'" in text and "expect[0]" not in text and "expect[1]" not in text
    path = claim_tree("claims/nosets.yaml", """
        id: sets.none
        statement: without also there is only the claim's data
        models: {m: one-head}
        data: {task: copy6, n: 20}
        experiment: {pruning_revival: {ks: [1]}}
        expect:
          - pruning_revives_at_least: {model: m, k: 1, value: 0.1, task: finetune}
    """)
    with pytest.raises(SpecErrors, match=r"'finetune' is not one of the values of the experiment's `also`.*allowed: data"):
        load_claims([path])
