"""sample_efficiency: N@target interpolation and censoring, AUC; the plan (one `clean` unit per role, seed and
N, each on its own variant fixture whose cache key differs by `n_train`); and the experiment end to end on tiny
models through the runner (variants cached, a killed run keeps what it trained, a rerun gives the same bits)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conftest import write
from plans import plan_of
from mechcheck.experiments.sample_efficiency import auc_log2, n_at_target, variant_spec
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


# ------------------------------------------------------------------------------------------------ plans

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


def _project(root):
    write(root, "fixtures/tasks/cdm9.yaml", "name: cdm9\ngenerator: cdm\nargs: {vocab: words, max_number: 9}\n")
    return write(root, "claims/se.yaml", CLAIM.format(grid="[16, 8]"))


def test_plan_has_one_clean_unit_per_role_seed_and_n(tmp_path):
    from mechcheck.recipes import model_ref

    (claim,) = load_claims([_project(tmp_path)])
    plan, ctx, build = plan_of(claim, tmp_path / "cache")
    assert sorted(plan) == ["fast", "slow"] and all(len(reps) == 2 for reps in plan.values())
    variant_keys = []
    for role, reps in plan.items():
        spec = claim.models[role]
        for seed, units in enumerate(reps):
            assert list(units) == ["reference", "n8", "n16"]  # the grid, sorted
            assert all(u.kind == "clean" for u in units.values())
            assert units["reference"].models == (ctx.roles[role][seed],)
            for n in (8, 16):
                (variant,) = units[f"n{n}"].models
                assert variant.seed == seed and variant.spec.train.n_train == n and variant.spec.train.steps == 8
                assert variant.spec.train.lr == spec.train.lr and variant.spec.architecture == spec.architecture
                assert variant.key == model_ref(variant_spec(spec, n, 8, None), seed, build).key
                variant_keys.append(variant.key)
    assert len(set(variant_keys)) == 8  # every role x seed x N is its own model
    assert not set(variant_keys) & {ref.key for refs in ctx.roles.values() for ref in refs}
    # the key differs by n_train and by nothing else: the variant's name only labels progress
    spec = claim.models["fast"]
    a, b = variant_spec(spec, 8, 8, None), variant_spec(spec, 16, 8, None)
    assert dataclasses.replace(a, train=b.train) == dataclasses.replace(b, name=a.name)
    assert model_ref(a, 0, build).key != model_ref(b, 0, build).key
    assert model_ref(dataclasses.replace(a, name="renamed"), 0, build).key == model_ref(a, 0, build).key
    # the reference is the very unit `evaluate` plans for the role's own fixture: measured once
    evaluate, _, _ = plan_of(claim, tmp_path / "cache", ("evaluate", {}))
    assert plan["fast"][1]["reference"].key == evaluate["fast"][1]["clean"].key


def test_plan_refuses_roles_that_do_not_train(claim_tree, tmp_path):
    from mechcheck.errors import SpecError

    path = claim_tree("claims/load.yaml", """
        id: se.load
        statement: a loaded checkpoint has no training-set size
        models: {m: one-head}
        data: {task: copy6, n: 20}
        experiment: {sample_efficiency: {n_train: [8]}}
        expect:
          - accuracy_at_n_at_least: {model: m, n: 8, value: 0.9}
    """)
    (claim,) = load_claims([path])
    with pytest.raises(SpecError, match="has no trained role"):
        plan_of(claim, tmp_path / "cache")
    with pytest.raises(SpecError, match=r"role 'm' \(recipe 'load'\) is not trained"):
        plan_of(claim, tmp_path / "cache", ("sample_efficiency", {"n_train": [8], "models": ["m"]}))
    with pytest.raises(SpecError, match="unknown role 'nobody'"):
        plan_of(claim, tmp_path / "cache", ("sample_efficiency", {"n_train": [8], "models": ["nobody"]}))


def test_clean_unit_is_the_run_of_the_model():
    """A curve's point is the `clean` unit of its variant: per-example metrics and candidate logits."""
    import torch

    from mechcheck import interventions as iv
    from mechcheck.engine import UnitContext
    from mechcheck.experiments.evaluate import clean_unit
    from mechcheck.models import build_gpt2, prepare
    from mechcheck.tasks.cdm import make_cdm

    torch.manual_seed(0)
    model = prepare(build_gpt2({"n_layer": 1, "n_head": 2, "n_embd": 16}, 17, 13), "cpu")
    batch = make_cdm(vocab="words", max_number=9).sample(20, "eval", 0)
    got = clean_unit(UnitContext([model], batch, {"batch_size": 7}, [], lambda *a: None))
    want = iv.run(model, batch)
    assert sorted(got.arrays) == ["accuracy", "candidate_logits", "logit_diff"]
    for m in ("accuracy", "logit_diff"):
        np.testing.assert_allclose(got.arrays[m], want.metrics[m], rtol=1e-6, atol=1e-6)
    assert got.arrays["candidate_logits"].shape == (20, 2)


def _measurements(n_train: list[int], curves: dict[str, list[list[float]]], n: int = 100):
    """`Measurements` as the runner assembles them from the plan's units (``n{N}/accuracy`` per replicate),
    with per-example 0/1 accuracies whose means are the given curves (listed in ascending N)."""
    from mechcheck.measurements import Measurements, RoleData

    grid = sorted(n_train)
    rng = np.random.default_rng(0)
    roles = {}
    for role, reps in curves.items():
        arrays = []
        for curve in reps:
            rep = {"reference/accuracy": np.ones(n, dtype=np.float32)}
            for N, a in zip(grid, curve):
                acc = np.zeros(n, dtype=np.float32)
                acc[rng.permutation(n)[: round(a * n)]] = 1.0
                rep[f"n{N}/accuracy"] = acc
            arrays.append(rep)
        roles[role] = RoleData(role, "scratch", "recipe", 1, 2, list(range(len(reps))), ["k"] * len(reps), arrays,
                               [{} for _ in reps], [{} for _ in reps])
    args = {"n_train": list(n_train), "target": 0.9, "steps": None, "batch_size": None, "models": None,
            "eval_batch_size": 500}
    return Measurements("sample_efficiency", args, roles, n, 2)


def test_a_grid_listed_in_any_order_is_read_in_ascending_n():
    """A claim may list n_train in any order (the plan sorts it); the curves, N@target, AUC and the checks must
    read it ascending (N@target interpolates between neighbours on the ascending grid)."""
    from mechcheck.checks import CheckContext, run_check
    from mechcheck.experiments.sample_efficiency import _summary, curves

    ft = [[0.5, 0.8, 1.0, 1.0], [0.6, 0.8, 1.0, 1.0]]
    scr = [[0.5, 0.5, 0.6, 0.95], [0.5, 0.5, 0.7, 0.95]]
    ordered = _measurements([8, 16, 32, 64], {"ft": ft, "scr": scr})
    shuffled = _measurements([32, 8, 64, 16], {"ft": ft, "scr": scr})
    np.testing.assert_array_equal(curves(shuffled, "ft"), curves(ordered, "ft"))
    a, b = _summary(ordered), _summary(shuffled)
    assert b["grid"] == [8, 16, 32, 64] and b["models"] == a["models"]
    assert a["models"]["ft"]["n_at_target"] == [pytest.approx(2 ** 4.5, abs=0.01)] * 2
    for name, args in (("samples_ratio_at_most", {"model": "ft", "than": "scr", "value": 0.5}),
                       ("accuracy_at_n_at_least", {"model": "ft", "n": 32, "value": 0.9, "than": "scr"})):
        x, y = (run_check(CheckContext(m, n_boot=50), name, dict(args)) for m in (ordered, shuffled))
        assert (y.outcome, y.effect.estimate, y.details) == (x.outcome, x.effect.estimate, x.details)
        assert y.outcome in ("passed", "failed", "inconclusive")


# ------------------------------------------------------------------------------------- on tiny models


def _variants(result) -> list[dict]:
    """The variants of a report's experiment summary, role-major then seed then N."""
    models = result.experiment["models"]
    return [v for role in ("fast", "slow") for seed in models[role]["variants"] for v in seed]


@pytest.mark.slow
def test_runner_trains_caches_and_survives_a_killed_run(tmp_path, monkeypatch):
    import mechcheck.recipes as recipes
    from mechcheck.runner import Runner, RunOptions

    (claim,) = load_claims([_project(tmp_path)])
    options = RunOptions(n_boot=100, workers=1, cache_dir=tmp_path / "cache")

    # a run that dies as it starts its fourth variant
    calls, original = [], recipes.build_model

    def dying(spec, seed, ctx):
        if "@n" in spec.name:
            calls.append((spec.name, seed))
            if len(calls) == 4:
                raise KeyboardInterrupt("killed")
        return original(spec, seed, ctx)

    monkeypatch.setattr(recipes, "build_model", dying)
    with pytest.raises(KeyboardInterrupt):
        Runner(options).run_claim(claim)
    monkeypatch.setattr(recipes, "build_model", original)
    plan, _, build = plan_of(claim, tmp_path / "cache")
    variant_keys = {u.models[0].key for reps in plan.values() for units in reps for name, u in units.items()
                    if name != "reference"}
    kept = {k for k in variant_keys if build.cache.get(k) is not None}
    assert len(kept) == 3  # every variant finished before the kill is in the cache

    runner = Runner(options)
    first = runner.run_claim(claim)
    assert first.outcome != "error", first.traceback
    assert not kept & runner.trained and variant_keys - kept <= runner.trained  # the rest trained now
    exp = first.experiment
    assert exp["name"] == "sample_efficiency" and exp["grid"] == [8, 16]
    for role in ("fast", "slow"):
        acc = np.asarray(exp["models"][role]["accuracy"])
        assert acc.shape == (2, 2) and ((0 <= acc) & (acc <= 1)).all()
    variants = _variants(first)
    assert {v["key"] for v in variants} == variant_keys
    assert [v["cached"] for v in variants] == [v["key"] in kept for v in variants]
    assert all(len(v["weights_sha256"]) == 64 and v["seconds"] >= 0 for v in variants)
    ratio, at_n = first.checks  # the checks run on the measurements and give a verdict
    assert ratio.outcome in ("passed", "failed", "inconclusive") and ratio.effect.n_seeds == 2
    assert at_n.outcome in ("passed", "failed", "inconclusive") and at_n.control["label"] == "'slow' at N=16"

    again = Runner(options)
    second = again.run_claim(claim)
    assert not again.trained and all(v["cached"] for v in _variants(second))
    for role in ("fast", "slow"):
        assert second.experiment["models"][role]["accuracy"] == exp["models"][role]["accuracy"]
    assert [v["weights_sha256"] for v in _variants(second)] == [v["weights_sha256"] for v in variants]
