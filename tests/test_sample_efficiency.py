"""sample_efficiency: N@target interpolation and censoring, the ratio check on known-answer synthetic curves,
and the experiment end to end on tiny models (variants cached, a killed run keeps what it trained)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mechcheck.checks import CheckContext, run_check
from mechcheck.experiments.sample_efficiency import (
    SampleEfficiencyResult,
    auc_log2,
    n_at_target,
)
from mechcheck.spec import load_claims

GRID = np.array([32, 64, 128, 256, 512, 1024, 2048])


# ------------------------------------------------------------------------------------------ definitions


def test_n_at_target_interpolates_in_log2_n():
    # 0.8 at 64, 1.0 at 128: 0.9 is half-way in log2 N -> 2 ** 6.5
    assert n_at_target(np.array([32, 64, 128]), np.array([0.6, 0.8, 1.0]), 0.9) == (pytest.approx(2 ** 6.5), None)
    # exactly on a grid point: that point
    assert n_at_target(np.array([32, 64, 128]), np.array([0.6, 0.9, 1.0]), 0.9) == (64.0, None)


def test_n_at_target_censoring_is_kept():
    assert n_at_target(GRID, np.full(len(GRID), 0.6), 0.9) == (2048.0, "above")
    assert n_at_target(GRID, np.full(len(GRID), 0.95), 0.9) == (32.0, "below")
    # first crossing: a later dip below the target does not move it
    acc = np.array([0.5, 0.7, 0.92, 0.85, 0.95, 0.96, 0.97])
    assert n_at_target(GRID, acc, 0.9)[0] == pytest.approx(2 ** (6 + 0.2 / 0.22))


def test_auc_is_the_log_scale_mean_accuracy():
    assert auc_log2(GRID, np.full(len(GRID), 0.7)) == pytest.approx(0.7)
    assert auc_log2(np.array([32, 128]), np.array([0.5, 1.0])) == pytest.approx(0.75)
    assert auc_log2(np.array([64]), np.array([0.8])) == pytest.approx(0.8)


# -------------------------------------------------------------------------- the ratio on synthetic curves


def _per_example(curve: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(G, n) 0/1 accuracies whose means are exactly `curve` (rounded to 1/n), in random order."""
    out = np.zeros((len(curve), n), dtype=np.float32)
    for k, a in enumerate(curve):
        out[k, rng.permutation(n)[: round(float(a) * n)]] = 1.0
    return out


def _logistic(center_log2: float) -> np.ndarray:
    """A curve from 0.5 to 1.0 that crosses 0.9 at about N = 2 ** center_log2."""
    x = np.log2(GRID)
    return 0.5 + 0.5 / (1 + np.exp(-2.0 * (x - center_log2 + math.log(4) / 2.0)))


def _synthetic(curves: dict[str, list[np.ndarray]], n: int = 400) -> SampleEfficiencyResult:
    from mechcheck.tasks.cdm import make_cdm

    rng = np.random.default_rng(0)
    batch = make_cdm().sample(n, "eval", 0)
    acc = {role: np.stack([_per_example(c, n, rng) for c in cs]) for role, cs in curves.items()}
    args = {"n_train": GRID.tolist(), "target": 0.9, "steps": None, "batch_size": None, "models": None,
            "eval_batch_size": 500}
    return SampleEfficiencyResult(args, batch, {r: r for r in curves}, {r: "scratch" for r in curves}, acc,
                                  {r: [] for r in curves}, {r: [[] for _ in cs] for r, cs in curves.items()})


def _check(result, name: str, **args):
    return run_check(CheckContext(result, n_boot=400), name, args)


def test_four_times_fewer_samples_gives_ratio_a_quarter_and_passes():
    # fine-tuned crosses 0.9 two octaves earlier than scratch, with a little seed jitter
    res = _synthetic({"ft": [_logistic(6.0 + d) for d in (-0.1, 0.0, 0.1)],
                      "scr": [_logistic(8.0 + d) for d in (0.1, 0.0, -0.1)]})
    ft = [v for v, _ in res.n_at_target("ft")]
    scr = [v for v, _ in res.n_at_target("scr")]
    assert np.exp(np.mean(np.log(ft) - np.log(scr))) == pytest.approx(0.25, rel=0.15)
    check = _check(res, "samples_ratio_at_most", model="ft", than="scr", value=0.5)
    assert check.outcome == "passed", check.message
    assert check.effect.estimate == pytest.approx(0.25, rel=0.15)
    assert check.effect.hi <= 0.5 and check.effect.n_seeds == 3
    assert check.details["bound"] == "exact"
    for text in ("N@0.9", "[32, 64, 128, 256, 512, 1024, 2048]", "3 seeds", "'scr'"):
        assert text in check.message
    assert check.control["estimate"] == pytest.approx(np.exp(np.mean(np.log(scr))))
    # the reverse comparison clearly fails
    assert _check(res, "samples_ratio_at_most", model="scr", than="ft", value=0.5).outcome == "failed"


def test_equal_curves_do_not_pass():
    same = [_logistic(7.0 + d) for d in (-0.1, 0.0, 0.1)]
    res = _synthetic({"a": same, "b": list(same)})
    check = _check(res, "samples_ratio_at_most", model="a", than="b", value=0.5)
    assert check.effect.estimate == pytest.approx(1.0)
    assert check.outcome in ("failed", "inconclusive")


def test_censoring_bounds_the_ratio_and_is_reported():
    never = [np.full(len(GRID), 0.6)] * 3
    early = [_logistic(6.0)] * 3
    # 'than' never reaches 0.9: the ratio is an upper bound, which may still pass
    res = _synthetic({"ft": early, "scr": never})
    check = _check(res, "samples_ratio_at_most", model="ft", than="scr", value=0.5)
    assert check.outcome == "passed" and check.details["bound"] == "upper"
    assert "upper bound" in check.message and "'scr' never reached 0.9 by N=2048 in 3 of 3 seeds" in check.message
    assert check.details["censored"]["scr"] == ["above"] * 3
    # 'model' never reaches 0.9: it cannot pass, even with a generous threshold
    res = _synthetic({"ft": never, "scr": early})
    check = _check(res, "samples_ratio_at_most", model="ft", than="scr", value=1000.0)
    assert check.outcome == "inconclusive" and "cannot pass" in check.message
    # both never: the ratio 1 is meaningless either way
    res = _synthetic({"ft": never, "scr": list(never)})
    assert _check(res, "samples_ratio_at_most", model="ft", than="scr", value=0.5).outcome == "inconclusive"


def test_accuracy_at_n_and_wrong_arguments():
    res = _synthetic({"ft": [_logistic(6.0)] * 2, "scr": [_logistic(8.0)] * 2})
    check = _check(res, "accuracy_at_n_at_least", model="ft", n=128, value=0.9, than="scr")
    assert check.outcome == "passed" and check.control["estimate"] < 0.9
    assert _check(res, "accuracy_at_n_at_least", model="scr", n=64, value=0.9).outcome == "failed"
    from mechcheck.errors import SpecError

    with pytest.raises(SpecError, match="not a point of the experiment's grid"):
        _check(res, "accuracy_at_n_at_least", model="ft", n=100, value=0.9)
    with pytest.raises(SpecError, match="not measured"):
        _check(res, "samples_ratio_at_most", model="ft", than="nobody", value=0.5)
    with pytest.raises(SpecError, match="needs the experiment 'sample_efficiency'"):
        _check(object(), "samples_ratio_at_most", model="ft", than="scr", value=0.5)


def test_figure_from_the_json_summary(tmp_path):
    from mechcheck.report.markdown import write_figures
    from mechcheck.results import ClaimResult

    res = _synthetic({"ft": [_logistic(6.0)] * 2, "scr": [_logistic(8.0), np.full(len(GRID), 0.6)]})
    claim = ClaimResult(id="se.fig", file="", statement="", outcome="passed", experiment=res.summary())
    paths = write_figures(claim, tmp_path)
    assert [p.name for p in paths] == ["se.fig__sample_efficiency.png"] and paths[0].stat().st_size > 0
    assert res.summary()["models"]["scr"]["censored"] == [None, "above"]


# ------------------------------------------------------------------------------------- on tiny models

CLAIM = """
    id: tiny.sample_efficiency
    statement: two tiny scratch recipes on few trials (machinery only; nothing is learnt in 8 steps)
    models:
      fast: {{recipe: scratch, architecture: {{n_layer: 1, n_head: 2, n_embd: 32}}, task: cdm9,
             train: {{steps: 10, batch_size: 16, lr: 3.0e-3}}}}
      slow: {{recipe: scratch, architecture: {{n_layer: 1, n_head: 2, n_embd: 32}}, task: cdm9,
             train: {{steps: 10, batch_size: 16, lr: 1.0e-4}}}}
    seeds: 2
    data: {{task: cdm9, n: 64}}
    experiment: {{sample_efficiency: {{n_train: {grid}, steps: 8, target: 0.9}}}}
    expect:
      - samples_ratio_at_most: {{model: fast, than: slow, value: 0.5}}
      - accuracy_at_n_at_least: {{model: fast, n: 16, value: 0.9, than: slow}}
"""


@pytest.mark.slow
def test_runner_trains_caches_and_survives_a_killed_run(tmp_path, monkeypatch):
    from conftest import write

    import mechcheck.recipes as fx
    from mechcheck.runner import Runner, RunOptions

    write(tmp_path, "fixtures/tasks/cdm9.yaml", "name: cdm9\ngenerator: cdm\nargs: {vocab: words, max_number: 9}\n")
    path = write(tmp_path, "claims/se.yaml", CLAIM.format(grid="[16, 8]"))
    (claim,) = load_claims([path])

    # a run that dies after its third variant
    calls = []

    original = fx.build_model

    def dying(spec, seed, ctx):
        if "@n" in spec.name:
            calls.append((spec.name, seed))
            if len(calls) == 4:
                raise KeyboardInterrupt("killed")
        return original(spec, seed, ctx)

    monkeypatch.setattr(fx, "build_model", dying)
    with pytest.raises(KeyboardInterrupt):
        Runner(RunOptions(n_boot=200)).run_claim(claim)
    monkeypatch.setattr(fx, "build_model", original)
    assert len(calls) == 4

    first = Runner(RunOptions(n_boot=200)).run_claim(claim)
    assert first.outcome != "error", first.traceback
    exp = first.experiment
    assert exp["name"] == "sample_efficiency" and exp["grid"] == [8, 16]
    variants = {role: [v for seed in exp["models"][role]["variants"] for v in seed] for role in ("fast", "slow")}
    order = [v for role in ("fast", "slow") for v in variants[role]]
    # seed-major order: fast s0 N=8, 16, slow s0 N=8 were trained before the kill and come from the cache now
    assert [v["cached"] for v in order] == [True, True, False, False] + [True, False, False, False]
    assert all(len(exp["models"][r]["accuracy"]) == 2 and len(exp["models"][r]["accuracy"][0]) == 2
               for r in ("fast", "slow"))
    assert len({v["key"] for v in order}) == 8  # every role x seed x N is its own model
    ratio, at_n = first.checks
    assert ratio.effect is not None and ratio.effect.n_seeds == 2 and "grid [8, 16]" in ratio.message
    assert at_n.control["label"] == "'slow' at N=16"

    second = Runner(RunOptions(n_boot=200)).run_claim(claim)
    assert all(v["cached"] for r in ("fast", "slow") for seed in second.experiment["models"][r]["variants"]
               for v in seed)
    for r in ("fast", "slow"):
        assert second.experiment["models"][r]["accuracy"] == exp["models"][r]["accuracy"]
        assert [v["weights_sha256"] for s in second.experiment["models"][r]["variants"] for v in s] == \
               [v["weights_sha256"] for s in exp["models"][r]["variants"] for v in s]
