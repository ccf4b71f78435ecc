"""`effect_higher` on synthetic measurements (no models): the paired difference of two head sets' effects in one
model, its interval, its verdicts, its requests for joint ablations, and its errors; and once on the
known-answer model, where only L0H0 carries the answer.

Effects are per-example accuracy flips (clean minus ablated, in {-1, 0, 1}): a head that matters flips an
example down with probability `size`; every head flips examples both ways at a small rate (`noise`).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write
from mechcheck import stats
from mechcheck.checks import CheckContext, check_requests, run_check
from mechcheck.errors import SpecError
from mechcheck.measurements import Measurements, RoleData

from test_lin_checks import N, flips  # the same synthetic per-example ablation effects


def meas(effects: list[np.ndarray], scope: str = "recipe", seed: int = 0) -> Measurements:
    R = len(effects)
    n, L, H = effects[0].shape
    data = RoleData("synthetic", "scratch" if scope == "recipe" else "load", scope, L, H, list(range(R)),
                    [f"k{i}" for i in range(R)],
                    [{"sweep/head/accuracy": e, "clean/accuracy": np.ones(n)} for e in effects],
                    [{} for _ in range(R)], [{} for _ in range(R)])
    return Measurements("head_ablation", {"metric": "accuracy", "method": "mean", "positions": "all",
                                          "batch_size": 500, "n_control": 10}, {"m": data}, n, 2, seed=seed)


def judge(m: Measurements, **args):
    """Fulfil the check's requests (a joint ablation = the sum of its heads' effects) and judge it."""
    ctx = CheckContext(m, claim_file="c.yaml", line=3, field_path="expect[0]")
    full = {"model": "m", "by": 0.0, "metric": None} | args
    reqs = check_requests(ctx, "effect_higher", full)
    for req in reqs:
        eff = m.roles[req.role].replicates[req.replicate]["sweep/head/accuracy"]
        cols = [sum(eff[:, layer, head] for layer, head in s) for s in req.arguments["sets"]]
        m.roles[req.role].extra[req.replicate][req.name] = {"set/accuracy": np.stack(cols, axis=1)}
    return run_check(ctx, "effect_higher", full), reqs


def replicates(seed: int, heads, R=3, **kw) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [flips(rng, heads, **kw) for _ in range(R)]


LATE_MATTERS = {(3, 0): 0.4, (0, 0): 0.05}


def test_passes_when_the_first_set_matters_more_and_the_reverse_fails():
    effs = replicates(0, LATE_MATTERS)
    out, reqs = judge(meas(effs), heads=[[3, 0]], than=[[0, 0]])
    assert reqs == []  # single heads are read from the sweep
    assert out.outcome == "passed" and out.effect.lo > 0, out.message
    diffs = [e[:, 3, 0] - e[:, 0, 0] for e in effs]
    # exactly effect_at_least's interval (crossed replicates x examples), applied to the per-example differences
    want = stats.mean_estimate(diffs, "recipe")
    assert (out.effect.estimate, out.effect.lo, out.effect.hi) == pytest.approx((want.estimate, want.lo, want.hi))
    assert out.control["estimate"] == pytest.approx(np.mean([e[:, 0, 0].mean() for e in effs]))
    assert out.details["effects"]["heads"] == pytest.approx(np.mean([e[:, 3, 0].mean() for e in effs]))
    reverse, _ = judge(meas(effs), heads=[[0, 0]], than=[[3, 0]])
    assert reverse.outcome == "failed" and reverse.effect.hi < 0


def test_by_is_the_margin():
    effs = replicates(1, LATE_MATTERS)  # true difference 0.35
    assert judge(meas(effs), heads=[[3, 0]], than=[[0, 0]], by=0.6)[0].outcome == "failed"
    assert judge(meas(effs), heads=[[3, 0]], than=[[0, 0]], by=0.2)[0].outcome == "passed"


def test_paired_over_examples_and_replicates():
    """Both heads break the same examples, more so in some seeds; one of them also breaks 20 examples the other
    does not, in every seed. Alone, their effects' intervals overlap widely; paired, the difference is clear."""
    rng = np.random.default_rng(2)
    only_first = np.arange(N) % 10 == 0
    effs = []
    for size in (0.2, 0.5, 0.8):  # seed-to-seed variation shared by both heads
        e = np.zeros((N, 4, 4))
        shared = (rng.random(N) < size).astype(float)
        e[:, 1, 1], e[:, 2, 2] = np.where(only_first, 1.0, shared), np.where(only_first, 0.0, shared)
        effs.append(e)
    out, _ = judge(meas(effs), heads=[[1, 1]], than=[[2, 2]])
    assert out.outcome == "passed", out.message
    alone = [stats.mean_estimate([e[:, h, h] for e in effs]) for h in (1, 2)]
    assert alone[0].lo < alone[1].hi  # unpaired, the two effects could not be told apart
    # an unpaired difference (independent replicates) would not pass either
    assert stats.replicate_difference([e[:, 1, 1].mean() for e in effs], [e[:, 2, 2].mean() for e in effs]).lo < 0


def test_equal_effects_do_not_pass():
    for seed in range(5):
        out, _ = judge(meas(replicates(10 + seed, {(3, 0): 0.2, (0, 0): 0.2})), heads=[[3, 0]], than=[[0, 0]])
        assert out.outcome != "passed", out.message


def test_one_replicate_of_a_recipe_is_inconclusive_and_a_checkpoint_is_judged_on_examples():
    effs = replicates(3, LATE_MATTERS, R=1)
    out, _ = judge(meas(effs), heads=[[3, 0]], than=[[0, 0]])
    assert out.outcome == "inconclusive" and out.effect.insufficient and "1 replicate" in out.effect.insufficient
    ckpt, _ = judge(meas(effs, scope="checkpoint"), heads=[[3, 0]], than=[[0, 0]])
    assert ckpt.outcome == "passed" and ckpt.effect.scope == "checkpoint" and "checkpoint" in ckpt.message


def test_sets_are_ablated_jointly():
    effs = replicates(4, {(3, 0): 0.2, (3, 1): 0.2, (0, 0): 0.3})
    out, reqs = judge(meas(effs), heads=[[3, 0], [3, 1]], than=[[0, 0]])
    # one joint ablation of the set per replicate, without random controls; `than` is one head (the sweep)
    assert [(r.replicate, r.arguments["sets"]) for r in reqs] == [(i, [[[3, 0], [3, 1]]]) for i in range(3)]
    want = stats.mean_estimate([e[:, 3, 0] + e[:, 3, 1] - e[:, 0, 0] for e in effs], "recipe")
    assert out.effect.estimate == pytest.approx(want.estimate)
    assert out.details["selected_heads"] == [["L3H0", "L3H1"]] * 3


def test_a_rank_selector_is_chosen_on_one_half_and_measured_with_than_on_the_other():
    effs = replicates(5, LATE_MATTERS)
    m = meas(effs)
    out, _ = judge(m, heads="top_head", than=[[0, 0]])
    assert out.outcome == "passed" and out.details["selected_heads"] == [["L3H0"]] * 3
    _, b = stats.split_halves(N, m.seed)
    half = stats.mean_estimate([e[b, 3, 0] - e[b, 0, 0] for e in effs], "recipe")
    assert out.details["one_half"]["estimate"] == pytest.approx(half.estimate)
    assert out.effect.lo <= min(half.lo, out.details["everywhere"]["lo"]) + 1e-12  # the hull of both
    reverse, _ = judge(m, heads=[[0, 0]], than="top_head")
    assert reverse.outcome == "failed" and reverse.details["than_heads"] == [["L3H0"]] * 3


def test_the_same_heads_on_both_sides_are_an_error():
    with pytest.raises(SpecError, match="heads and than name the same heads"):
        judge(meas(replicates(6, LATE_MATTERS)), heads=[[3, 0], [0, 0]], than=[[0, 0], [3, 0]])


def test_a_head_beyond_the_model_is_an_error_when_judged():
    with pytest.raises(SpecError, match=r"head \[0, 4\] does not exist in model 'm'"):
        judge(meas(replicates(7, LATE_MATTERS)), heads=[[3, 0]], than=[[0, 4]])


# ------------------------------------------------------------------------------- the known-answer model


@pytest.mark.slow
def test_effect_higher_on_the_known_answer_model(claim_tree):
    from mechcheck.runner import RunOptions, Runner
    from mechcheck.spec import load_claims

    path = claim_tree("claims/higher.yaml", """
        id: known.higher
        statement: ablating L0H0 costs more than ablating L0H1 (which is read but never written)
        models: {m: one-head}
        data: {task: copy6, n: 200}
        experiment: {head_ablation: {method: zero}}
        expect:
          - effect_higher: {model: m, heads: [[0, 0]], than: [[0, 1]]}
          - effect_higher: {model: m, heads: [[0, 1]], than: [[0, 0]]}
    """)
    runner = Runner(RunOptions(workers=1))
    try:
        (res,) = [runner.run_claim(c) for c in load_claims([path])]
    finally:
        runner.close()
    right, reverse = res.checks
    assert right.outcome == "passed", right.message
    assert right.effect.estimate == 1.0 and right.effect.scope == "checkpoint" and right.control["estimate"] == 0.0
    assert reverse.outcome == "failed" and reverse.effect.estimate == -1.0


def test_validate_rejects_a_than_head_beyond_the_declared_architecture(tmp_path):
    from mechcheck.errors import SpecErrors
    from mechcheck.spec import load_claims

    write(tmp_path, "fixtures/tasks/cdm9.yaml", "name: cdm9\ngenerator: cdm\nargs: {max_number: 9}\n")
    write(tmp_path, "fixtures/models/tiny.yaml", """
        name: tiny
        recipe: scratch
        architecture: {n_layer: 2, n_head: 2, n_embd: 32}
        task: cdm9
        train: {steps: 1}
    """)
    path = write(tmp_path, "claims/c.yaml", """
        id: c
        statement: s
        models: {m: tiny}
        data: {task: cdm9}
        experiment: {head_ablation: {}}
        expect:
          - effect_higher: {model: m, heads: [[1, 0]], than: [[0, 2]]}
    """)
    with pytest.raises(SpecErrors) as exc:
        load_claims([path])
    [err] = exc.value.errors
    assert (err.line, err.field_path) == (7, "expect[0].effect_higher.than[0]")
    assert "head [0, 2] does not exist in model 'm' (fixture tiny: 2 layers x 2 heads" in str(err)
