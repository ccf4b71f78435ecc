"""Checks and statistics added for Lin 2024's fine-tuned vs scratch comparison (no trained models)."""

from __future__ import annotations

import numpy as np
import pytest

from mechcheck import stats
from mechcheck.checks import CheckContext, layer_centroid, layer_profile, run_check
from mechcheck.tasks import TaskBatch


class FakeAblation:
    """Just enough of a HeadAblationResult: per-role, per-replicate (n, L, H) effects."""

    def __init__(self, effects: dict[str, list[np.ndarray]]) -> None:
        self.effects = effects
        n = effects[next(iter(effects))][0].shape[0]
        self.batch = TaskBatch(np.zeros((n, 3), dtype=np.int64), np.zeros(n, dtype=np.int64),
                               np.zeros(n, dtype=np.int64), [1, 2], {})
        self.metric = "accuracy"

    def head_effects(self, role, metric):
        return self.effects[role]

    def shape(self, role):
        return self.effects[role][0].shape[1:]


def effects_in_layer(layer: int, n=200, L=4, H=4, size=0.2, seeds=3, noise=0.05):
    out = []
    for s in range(seeds):
        rng = np.random.default_rng(s + 10 * layer)
        e = rng.normal(0, noise, (n, L, H))
        e[:, layer, 0] += size
        out.append(e)
    return out


def test_layer_centroid_and_profile():
    m = np.zeros((4, 3))
    m[1, 0], m[3, 2] = 0.2, 0.2
    assert layer_centroid(m) == pytest.approx(2.0)
    m[2, 1] = -5.0  # a head whose ablation helps is not "relied on"
    assert layer_profile(m).tolist() == pytest.approx([0, 0.2, 0, 0.2])
    assert layer_centroid(m) == pytest.approx(2.0)
    assert np.isnan(layer_centroid(np.zeros((3, 3))))


def test_bootstrap_difference_covers_the_truth_and_zero_for_equal_groups():
    rng = np.random.default_rng(0)
    a = [rng.normal(1.0, 1, 400) for _ in range(3)]
    b = [rng.normal(0.0, 1, 400) for _ in range(2)]
    est = stats.bootstrap_difference(a, b, n_boot=500, seed=1)
    assert est.lo < 1.0 < est.hi and est.lo > 0.5
    assert est.n_seeds == 2
    same = stats.bootstrap_difference(a, a, n_boot=500, seed=1)
    assert same.estimate == 0.0 and same.lo < 0 < same.hi


def _ctx(result):
    return CheckContext(result, claim_file="c.yaml", line=3, field_path="expect[0]", n_boot=400)


def test_layer_centroid_higher_passes_fails_and_reports_expected_heads():
    late, early = effects_in_layer(3), effects_in_layer(0)
    res = FakeAblation({"ft": late, "scr": early})
    passed = run_check(_ctx(res), "layer_centroid_higher",
                       {"model": "ft", "than": "scr", "by": 1.0, "critical": 0.05,
                        "expected_heads": [[3, 0], [1, 1]], "metric": None})
    assert passed.outcome == "passed", passed.message
    assert passed.effect.estimate > 2.0
    assert passed.details["expected_heads"] == {"L3H0": True, "L1H1": False}
    assert "L0H0" in passed.details["critical_heads"]["scr"]
    reversed_ = run_check(_ctx(res), "layer_centroid_higher",
                          {"model": "scr", "than": "ft", "by": 0.0, "critical": 0.05, "expected_heads": None,
                           "metric": None})
    assert reversed_.outcome == "failed"
    same = run_check(_ctx(FakeAblation({"a": late, "b": effects_in_layer(3)})), "layer_centroid_higher",
                     {"model": "a", "than": "b", "by": 0.5, "critical": 0.05, "expected_heads": None,
                      "metric": None})
    assert same.outcome in ("failed", "inconclusive")


def test_layer_centroid_higher_refuses_models_of_different_depth():
    from mechcheck.errors import SpecError

    res = FakeAblation({"a": effects_in_layer(1, L=4), "b": effects_in_layer(1, L=6)})
    with pytest.raises(SpecError, match="same depth"):
        run_check(_ctx(res), "layer_centroid_higher",
                  {"model": "a", "than": "b", "by": 0.0, "critical": 0.05, "expected_heads": None, "metric": None})


def test_comparison_figure_is_drawn_for_two_roles(tmp_path):
    from mechcheck.report.markdown import write_figures
    from mechcheck.results import ClaimResult

    def role(layer):
        return {"head_effect": [e.mean(0).tolist() for e in effects_in_layer(layer)],
                "layer_effect": [[0.1] * 4] * 3, "clean": {"accuracy": [1.0] * 3}, "attention": {}}

    claim = ClaimResult(id="x.compare", file="x.yaml", statement="", outcome="passed",
                        experiment={"name": "head_ablation", "args": {"metric": "accuracy"},
                                    "models": {"ft": role(3), "scr": role(0)}})
    paths = write_figures(claim, tmp_path)
    assert any(p.name == "x.compare__compare.png" and p.stat().st_size > 1000 for p in paths)


def test_layer_centroid_higher_is_inconclusive_for_a_model_that_needs_no_head():
    flat = [np.zeros((50, 4, 4)) for _ in range(2)]
    res = FakeAblation({"ft": effects_in_layer(3), "scr": flat})
    out = run_check(_ctx(res), "layer_centroid_higher",
                    {"model": "ft", "than": "scr", "by": 0.0, "critical": 0.05, "expected_heads": None, "metric": None})
    assert out.outcome == "inconclusive" and "no head's ablation lowers" in out.message
