"""learning_curves: steps@target and accuracy-at-step on recorded curves; the checks `steps_ratio_at_most` and
`curve_accuracy_higher` on hand-made curves (pass, fail, censoring, errors); the plan (one `training_curve`
unit per role and seed, refusals); and the experiment through the runner on tiny trained models (the curve is
the one the fixture's cache entry recorded, read again from the store on a rerun)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write
from plans import plan_of
from mechcheck.checks import CheckContext, run_check
from mechcheck.errors import SpecError
from mechcheck.experiments.learning import accuracy_at_step, steps_at_target
from mechcheck.measurements import Measurements, RoleData
from mechcheck.spec import load_claims

STEPS = np.arange(10, 301, 10, dtype=float)


def test_steps_at_target_interpolates_in_log_steps_and_keeps_censoring():
    step, acc = np.array([10.0, 20.0, 40.0]), np.array([0.5, 0.9, 1.0])
    assert steps_at_target(step, acc, 0.95) == (pytest.approx(20 * 2 ** 0.5), None)
    assert steps_at_target(step, acc, 0.9) == (pytest.approx(20.0), None)
    assert steps_at_target(step, np.full(3, 0.5), 0.95) == (40.0, "above")  # never: the last step stands in
    assert steps_at_target(step, np.full(3, 0.99), 0.95) == (10.0, "below")


def test_accuracy_at_step_reads_the_last_evaluation_at_or_before_it():
    step, acc = np.array([10.0, 20.0, 30.0]), np.array([0.1, 0.2, 0.3])
    assert accuracy_at_step(step, acc, 25) == (0.2, 20)
    assert accuracy_at_step(step, acc, 30) == (0.3, 30)
    assert accuracy_at_step(step, acc, 100) == (0.3, 30)  # the run ended earlier
    with pytest.raises(ValueError, match="no evaluation at or before step 5"):
        accuracy_at_step(step, acc, 5)


def _logistic(mid: float, top: float = 1.0, steps: np.ndarray = STEPS) -> np.ndarray:
    return np.round(0.05 + (top - 0.05) / (1 + np.exp(-(np.log(steps) - np.log(mid)) * 4)), 4)


def _role(curves: list[np.ndarray], stop_at: float | None = None, scope: str = "recipe") -> RoleData:
    arrays, meta = [], []
    for acc in curves:
        step = STEPS.copy()
        stopped = False
        if stop_at is not None and (acc >= stop_at).any():  # training stops at the first evaluation >= stop_at
            k = int(np.flatnonzero(acc >= stop_at)[0]) + 1
            step, acc, stopped = step[:k], acc[:k], True
        arrays.append({"curve/step": step, "curve/accuracy": acc, "curve/loss": 1 - acc})
        meta.append({"curve": {"steps": int(step[-1]), "max_steps": 300, "stop_at": stop_at,
                               "stopped_at_accuracy": stopped, "held_out": 512}})
    R = len(curves)
    return RoleData("f", "finetune", scope, 1, 2, list(range(R)), ["k"] * R, arrays, [{} for _ in range(R)], meta)


def _meas(roles: dict[str, RoleData], target: float = 0.95) -> Measurements:
    return Measurements("learning_curves", {"target": target, "models": None}, roles, 0, 2)


def _check(meas, name, **args):
    return run_check(CheckContext(meas, n_boot=100), name, args)


def test_a_fast_revival_against_a_censored_baseline_passes_and_the_bound_is_an_upper_one():
    fast = _role([_logistic(m) for m in (30, 35, 40)], stop_at=0.95)
    slow = _role([_logistic(m, top=0.4) for m in (100, 120, 140)], stop_at=0.95)  # never reaches 0.95
    meas = _meas({"reft": fast, "scr": slow})
    r = _check(meas, "steps_ratio_at_most", model="reft", than="scr", value=0.5)
    assert r.outcome == "passed", r.message
    assert r.details["censored"] == {"reft": [None] * 3, "scr": ["above"] * 3} and r.details["bound"] == "upper"
    assert r.details["steps_trained"]["scr"] == [300] * 3 and "never reached the target" in r.message
    assert 0.1 < r.effect.estimate < 0.3 and r.effect.hi < 0.5
    # an upper bound above a stricter threshold says nothing: inconclusive, not failed
    r = _check(meas, "steps_ratio_at_most", model="reft", than="scr", value=0.05)
    assert r.outcome == "inconclusive", r.message
    # the other way round the ratio is a lower bound (> 6) above 2: a fail is safe
    r = _check(meas, "steps_ratio_at_most", model="scr", than="reft", value=2.0)
    assert r.outcome == "failed" and r.details["bound"] == "lower", r.message


def test_equal_recipes_are_not_judged_faster():
    a = _role([_logistic(m) for m in (40, 60, 50)])
    b = _role([_logistic(m) for m in (50, 40, 60)])
    r = _check(_meas({"a": a, "b": b}), "steps_ratio_at_most", model="a", than="b", value=0.5)
    assert r.outcome in ("failed", "inconclusive") and r.details["bound"] == "exact"
    assert r.effect.lo < 1.0 < r.effect.hi


def test_identical_curves_still_have_an_interval_from_the_held_out_sampling():
    same = [_logistic(50)] * 3
    r = _check(_meas({"a": _role(same), "b": _role(same)}), "steps_ratio_at_most", model="a", than="b", value=1.5)
    assert r.effect.estimate == pytest.approx(1.0) and r.effect.lo < 1.0 < r.effect.hi


def test_ratio_errors_say_what_is_wrong():
    a, b = _role([_logistic(40)] * 3), _role([_logistic(80)] * 2)
    for args, match in (({"model": "a", "than": "b"}, "3 replicates and 'b' 2"),
                        ({"model": "a", "than": "a"}, "compared with itself"),
                        ({"model": "a", "than": "zz"}, "'zz' was not measured")):
        with pytest.raises(SpecError, match=match):
            _check(_meas({"a": a, "b": b}), "steps_ratio_at_most", value=0.5, **args)


def test_curve_accuracy_higher_compares_the_curves_at_a_step():
    better = _role([_logistic(m, top=0.87) for m in (60, 70, 80)])
    worse = _role([_logistic(m, top=0.38) for m in (60, 70, 80)])
    meas = _meas({"randft": better, "scr": worse})
    r = _check(meas, "curve_accuracy_higher", model="randft", than="scr", step=300, by=0.2)
    assert r.outcome == "passed" and r.effect.estimate == pytest.approx(0.48, abs=0.03), r.message
    assert _check(meas, "curve_accuracy_higher", model="scr", than="randft", step=300).outcome == "failed"
    assert r.details["read_at_step"] == {"randft": [300] * 3, "scr": [300] * 3}
    # a run that stopped at its stop_at is read at its last evaluation, and the message says so
    stopped = _role([_logistic(m) for m in (30, 35, 40)], stop_at=0.95)
    r = _check(_meas({"reft": stopped, "scr": worse}), "curve_accuracy_higher", model="reft", than="scr", step=300)
    assert r.outcome == "passed" and "stopped at step" in r.message
    with pytest.raises(SpecError, match="no evaluation at or before step 5"):
        _check(meas, "curve_accuracy_higher", model="randft", than="scr", step=5)


# ------------------------------------------------------------------------------------------------ plans

CLAIM = """
    id: tiny.learning
    statement: two tiny scratch recipes, one with a larger lr (machinery only)
    models:
      fast: {{recipe: scratch, architecture: {{n_layer: 1, n_head: 2, n_embd: 32}}, task: cdm9,
             train: {{steps: 30, batch_size: 16, lr: 3.0e-3, eval_every: 5, stop_at: {stop_at}}}}}
      slow: {{recipe: scratch, architecture: {{n_layer: 1, n_head: 2, n_embd: 32}}, task: cdm9,
             train: {{steps: 30, batch_size: 16, lr: 1.0e-4, eval_every: 5}}}}
    seeds: 2
    data: {{task: cdm9, n: 64}}
    experiment: {{learning_curves: {{target: {target}}}}}
    expect:
      - steps_ratio_at_most: {{model: fast, than: slow, value: 0.5}}
      - curve_accuracy_higher: {{model: fast, than: slow, step: 30}}
"""


def _project(root, stop_at=0.6, target=0.6):
    write(root, "fixtures/tasks/cdm9.yaml", "name: cdm9\ngenerator: cdm\nargs: {vocab: words, max_number: 9}\n")
    return write(root, "claims/learning.yaml", CLAIM.format(stop_at=stop_at, target=target))


def test_plan_has_one_training_curve_unit_per_role_and_seed(tmp_path):
    (claim,) = load_claims([_project(tmp_path)])
    plan, ctx, _ = plan_of(claim, tmp_path / "cache")
    assert sorted(plan) == ["fast", "slow"]
    for role, reps in plan.items():
        assert [list(u) for u in reps] == [["curve"], ["curve"]]
        assert [u["curve"].models for u in reps] == [(ref,) for ref in ctx.roles[role]]
        assert {u["curve"].kind for u in reps} == {"training_curve"}
    assert plan["fast"][0]["curve"].arguments["stop_at"] == 0.6 and plan["slow"][0]["curve"].arguments["stop_at"] is None
    assert len({u["curve"].key for reps in plan.values() for u in reps}) == 4


def test_plan_refuses_a_target_above_a_stop_at_and_untrained_roles(tmp_path, claim_tree):
    (claim,) = load_claims([_project(tmp_path, stop_at=0.6, target=0.9)])
    with pytest.raises(SpecError, match=r"target 0.9 is above the stop_at 0.6 of role 'fast'"):
        plan_of(claim, tmp_path / "cache")
    path = claim_tree("claims/load.yaml", """
        id: lc.load
        statement: a loaded checkpoint has no learning curve
        models: {m: one-head}
        data: {task: copy6, n: 20}
        experiment: {learning_curves: {models: [m]}}
        expect:
          - steps_ratio_at_most: {model: m, than: m, value: 0.5}
    """)
    (claim,) = load_claims([path])
    with pytest.raises(SpecError, match=r"role 'm' \(recipe 'load'\) is not trained, so it has no learning curve"):
        plan_of(claim, tmp_path / "cache")


# ------------------------------------------------------------------------------------- on tiny models


@pytest.mark.slow
def test_runner_reads_the_curves_the_fixtures_recorded(tmp_path):
    from mechcheck.runner import Runner, RunOptions

    (claim,) = load_claims([_project(tmp_path)])
    options = RunOptions(n_boot=50, workers=1, cache_dir=tmp_path / "cache")
    runner = Runner(options)
    first = runner.run_claim(claim)
    assert first.outcome != "error", first.traceback
    _, ctx, build = plan_of(claim, tmp_path / "cache")
    for role in ("fast", "slow"):
        got = first.experiment["models"][role]
        for i, ref in enumerate(ctx.roles[role]):
            _, entry = build.cache.get(ref.key)
            history = entry["info"]["history"]
            assert got["curves"][i]["step"] == [h["step"] for h in history]
            assert got["curves"][i]["accuracy"] == pytest.approx([h["accuracy"] for h in history])
            assert got["training"][i]["steps"] == entry["info"]["steps"]
    assert first.experiment["models"]["slow"]["curves"][0]["step"] == [5, 10, 15, 20, 25, 30]
    ratio, higher = first.checks
    assert ratio.outcome in ("passed", "failed", "inconclusive") and ratio.effect.n_seeds == 2
    assert higher.outcome in ("passed", "failed", "inconclusive")
    again = Runner(options)
    second = again.run_claim(claim)
    assert not again.trained and second.experiment["models"] == first.experiment["models"]
    assert [c.effect.estimate for c in second.checks] == [c.effect.estimate for c in first.checks]


def test_the_figure_draws_every_replicate_and_marks_censored_ones(tmp_path):
    from mechcheck.experiments.learning import _summary
    from mechcheck.report.figures.learning import learning_figures
    from mechcheck.results import ClaimResult

    fast = _role([_logistic(m) for m in (30, 35, 40)], stop_at=0.95)
    slow = _role([_logistic(m, top=0.4) for m in (100, 120, 140)])
    summary = _summary(_meas({"reft": fast, "scr": slow}))
    assert summary["models"]["scr"]["censored"] == ["above"] * 3
    assert [len(c["step"]) for c in summary["models"]["scr"]["curves"]] == [30] * 3
    assert all(len(c["step"]) < 30 for c in summary["models"]["reft"]["curves"])  # stopped at 0.95
    claim = ClaimResult(id="j.reft", file="x.yaml", statement="s", outcome="passed", seeds=[0, 1, 2],
                        experiment=summary)
    (path,) = learning_figures(claim, tmp_path)
    assert path.name == "j.reft_learning.png" and path.stat().st_size > 5000
    assert learning_figures(ClaimResult(id="e", file="x.yaml", statement="s", outcome="error", seeds=[]), tmp_path) == []
