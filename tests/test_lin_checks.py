"""The Lin 2024 comparison on synthetic measurements (no models): the debiased layer centroid and
`layer_centroid_higher`.

Effects are per-example accuracy flips (clean minus ablated, in {-1, 0, 1}) with planted means: a head that
matters flips an example down with probability `size`, every head flips examples both ways at a small rate
(`noise`), the noise of a head that does nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechcheck import stats
from mechcheck.checks import CheckContext, run_check
from mechcheck.errors import SpecError
from mechcheck.experiments.head_ablation import centroid
from mechcheck.measurements import Measurements, RoleData

N = 200


def flips(rng, heads: dict[tuple[int, int], float], n=N, L=4, H=4, noise=0.02) -> np.ndarray:
    """(n, L, H) ablation effects of one replicate: P(+1) = noise + size, P(-1) = noise."""
    up = np.full((L, H), noise)
    for (layer, head), size in heads.items():
        up[layer, head] += size
    u = rng.random((n, L, H))
    return (u < up).astype(float) - ((u >= up) & (u < up + noise))


def role(effects: list[np.ndarray], scope="recipe") -> RoleData:
    R = len(effects)
    _, L, H = effects[0].shape
    return RoleData("synthetic", "scratch", scope, L, H, list(range(R)), [f"k{i}" for i in range(R)],
                    [{"sweep/head/accuracy": e, "clean/accuracy": np.ones(e.shape[0])} for e in effects],
                    [{} for _ in range(R)], [{} for _ in range(R)])


def meas(roles: dict[str, RoleData], seed=0) -> Measurements:
    n = next(iter(roles.values())).replicates[0]["sweep/head/accuracy"].shape[0]
    return Measurements("head_ablation", {"metric": "accuracy", "method": "mean", "positions": "all",
                                          "batch_size": 500, "n_control": 10}, roles, n, 2, seed=seed)


def check(m: Measurements, n_boot=100, **args):
    full = {"by": 0.0, "critical": 0.05, "expected_heads": None, "metric": None} | args
    return run_check(CheckContext(m, claim_file="c.yaml", line=3, field_path="expect[0]", n_boot=n_boot),
                     "layer_centroid_higher", full)


def replicates(seed: int, heads, R=3, **kw) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [flips(rng, heads, **kw) for _ in range(R)]


EARLY = {(0, 0): 0.3, (0, 2): 0.3, (1, 1): 0.4}  # centroid 0.4
LATE = {(2, 1): 0.3, (3, 0): 0.3, (3, 3): 0.4}   # centroid 2.7


# ------------------------------------------------------------------------------------------- centroid


def test_centroid_of_a_known_profile():
    a, b = stats.split_halves(N, 0)
    eff = flips(np.random.default_rng(0), {(1, 0): 0.4, (3, 2): 0.4}, noise=0.0)
    c, profile = centroid(eff, a, b)
    assert profile[[0, 2]].tolist() == [0.0, 0.0] and profile[1] > 0 and profile[3] > 0
    assert c == pytest.approx((profile[1] + 3 * profile[3]) / (profile[1] + profile[3]))
    assert 1.5 < c < 2.5
    # each head weighs effect_a * effect_b (the product of its two halves' means)
    ma, mb = eff[a].mean(0), eff[b].mean(0)
    assert profile[1] == pytest.approx(ma[1, 0] * mb[1, 0]) and profile[3] == pytest.approx(ma[3, 2] * mb[3, 2])


def test_null_heads_add_no_mass():
    """15 noisy heads that do nothing and one that matters in the last layer: the null heads' weights average
    to 0 (clipping the noise at 0 gave every layer mass and pulled the centroid towards the middle)."""
    a, b = stats.split_halves(N, 0)
    old, new, null_mass = [], [], []
    for seed in range(5):
        eff = flips(np.random.default_rng(seed), {(3, 1): 0.4}, noise=0.1)
        c, profile = centroid(eff, a, b)
        new.append(c)
        null_mass.append(profile[:3].sum() / profile.sum())
        clipped = np.clip(eff[b].mean(0), 0, None).sum(1)  # what the old profile summed
        old.append((np.arange(4) * clipped).sum() / clipped.sum())
    assert np.mean(old) < 2.7
    assert abs(np.mean(new) - 3.0) < 0.05 and abs(np.mean(null_mass)) < 0.02


def test_centroid_of_nothing_is_nan():
    a, b = stats.split_halves(N, 0)
    c, profile = centroid(np.zeros((N, 4, 4)), a, b)
    assert np.isnan(c) and profile.tolist() == [0.0] * 4
    c, _ = centroid(flips(np.random.default_rng(1), {}, noise=0.05), a, b)
    assert np.isnan(c)


def test_heads_whose_ablation_helps_are_not_relied_on():
    a, b = stats.split_halves(N, 0)
    eff = flips(np.random.default_rng(2), {(1, 0): 0.4}, noise=0.0)
    eff[:, 3, 0] = -(np.random.default_rng(3).random(N) < 0.5).astype(float)  # ablating L3H0 helps
    c, profile = centroid(eff, a, b)
    assert c == pytest.approx(1.0) and profile[3] == 0.0


# ---------------------------------------------------------------------------------- layer_centroid_higher


def test_a_true_later_layer_difference_is_found():
    m = meas({"ft": role(replicates(1, LATE)), "scr": role(replicates(2, EARLY))})
    out = check(m, model="ft", than="scr", by=1.0, expected_heads=[[3, 0], [1, 1]])
    assert out.outcome == "passed", out.message
    assert 1.8 < out.effect.estimate < 2.6 and out.effect.lo > 1.0 and out.effect.n_seeds == 3
    assert out.details["expected_heads"] == {"L3H0": True, "L1H1": False}
    assert "L0H0" in out.details["critical_heads"]["scr"] and "L3H3" in out.details["critical_heads"]["ft"]
    assert len(out.details["layer_profile"]["ft"]) == 3 and out.details["replicates_without_profile"] == {
        "ft": 0, "scr": 0}
    reverse = check(m, model="scr", than="ft")
    assert reverse.outcome == "failed", reverse.message


def test_identical_models_do_not_differ():
    m = meas({"a": role(replicates(3, EARLY)), "b": role(replicates(4, EARLY))})
    out = check(m, model="a", than="b")
    assert out.outcome == "inconclusive" and out.effect.lo < 0 < out.effect.hi


def test_a_noisier_but_identical_model_does_not_look_later():
    """Same heads, same effects, 7x the random flips: the old clipped profile made such a model "look later"
    89 % of the time; the centroid of squared effects from two halves does not move."""
    passes, diffs = 0, []
    for sim in range(8):
        noisy = role(replicates(100 + sim, EARLY, noise=0.15))
        clean = role(replicates(200 + sim, EARLY, noise=0.02))
        out = check(meas({"noisy": noisy, "clean": clean}, seed=sim), model="noisy", than="clean")
        passes += out.outcome == "passed"
        diffs.append(out.effect.estimate)
    assert passes == 0
    assert abs(np.mean(diffs)) < 0.15


def test_no_profile_is_inconclusive():
    m = meas({"ft": role(replicates(5, LATE)), "scr": role([np.zeros((N, 4, 4)) for _ in range(3)])})
    out = check(m, model="ft", than="scr")
    assert out.outcome == "inconclusive" and out.effect is None
    assert "no head's ablation significantly lowers" in out.message and "'scr'" in out.message
    assert out.details["replicates_without_profile"]["scr"] == 3


def test_a_replicate_without_profile_is_left_out_and_said():
    effects = replicates(6, EARLY, R=4)
    effects[2] = np.zeros_like(effects[2])  # a replicate at chance: no head matters
    m = meas({"ft": role(replicates(7, LATE)), "scr": role(effects)})
    out = check(m, model="ft", than="scr", by=1.0)
    assert out.outcome == "passed", out.message
    assert out.details["replicates_without_profile"] == {"ft": 0, "scr": 1}
    assert len(out.details["centroids"]["scr"]) == 3 and "left out" in out.message


def test_depth_mismatch_is_an_error():
    m = meas({"a": role(replicates(8, EARLY)), "b": role(replicates(9, {(5, 0): 0.3}, L=6))})
    with pytest.raises(SpecError, match="same depth"):
        check(m, model="a", than="b")


def test_one_replicate_of_a_recipe_is_inconclusive_and_a_checkpoint_is_judged():
    one = meas({"ft": role(replicates(10, LATE, R=1)), "scr": role(replicates(11, EARLY))})
    out = check(one, model="ft", than="scr")
    assert out.outcome == "inconclusive" and "2 or more seeds" in out.message
    ckpts = meas({"ft": role(replicates(12, LATE, R=1), "checkpoint"),
                  "scr": role(replicates(13, EARLY, R=1), "checkpoint")})
    out = check(ckpts, model="ft", than="scr", by=1.0)
    assert out.outcome == "passed", out.message
    assert out.effect.scope == "checkpoint" and "one checkpoint" in out.message


def test_centroid_higher_is_deterministic_under_the_claim_seed():
    m = meas({"ft": role(replicates(14, LATE)), "scr": role(replicates(15, EARLY))}, seed=3)
    first, second = check(m, model="ft", than="scr"), check(m, model="ft", than="scr")
    assert first.effect == second.effect and first.details == second.details
