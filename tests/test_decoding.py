"""Representation experiments: known-answer decoding, selectivity and silhouettes on synthetic features; the
units (`read`, `decode`, `geometry`) as the engine calls them; the plans (decoding and geometry share one
`read` unit); the checks on the units' measurements; and both experiments end to end through the runner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mechcheck.engine import UnitContext
from mechcheck.experiments.decoding import (
    cv_correct,
    decode_replicate,
    decode_unit,
    null_pvalue,
    read_unit,
    shuffled_null,
    unit_selectivity,
)
from mechcheck.experiments.geometry import geometry_replicate, geometry_unit
from mechcheck.measurements import UnitResult
from mechcheck.spec import load_claims
from plans import plan_of

N = 300


def _labels(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = {k: rng.integers(0, 2, n) for k in ("context", "motion_sign", "color_sign")}
    lab["choice"] = np.where(lab["context"] == 0, lab["motion_sign"], lab["color_sign"])
    return lab


# ------------------------------------------------------------------------------------------ definitions


def test_informative_feature_decodes_and_beats_null_random_does_not():
    lab = _labels()
    rng = np.random.default_rng(1)
    y = lab["context"]
    informative = rng.normal(size=(N, 8))
    informative[:, 0] += 4.0 * (2 * y - 1)
    noise = rng.normal(size=(N, 8))
    correct, _ = cv_correct(informative, y)
    assert correct.mean() > 0.97
    null, per_example = shuffled_null(informative, y, n_shuffle=10)
    assert abs(null.mean() - 0.5) < 0.1 and per_example.shape == (N,)
    p_t, p_rank = null_pvalue(correct.mean(), null, N)
    assert p_t < 1e-4 and p_rank == pytest.approx(1 / 11)
    c_noise, _ = cv_correct(noise, y)
    assert abs(c_noise.mean() - 0.5) < 0.1
    null_noise, _ = shuffled_null(noise, y, n_shuffle=10)
    assert null_pvalue(c_noise.mean(), null_noise, N)[0] > 0.01


def test_what_cannot_be_cross_validated_is_nan():
    X = np.random.default_rng(0).normal(size=(20, 3))
    assert np.isnan(cv_correct(X, np.zeros(20, dtype=int))[0]).all()  # one class
    assert np.isnan(cv_correct(X, np.r_[np.zeros(19, dtype=int), 1])[0]).all()  # a class of one example
    assert all(np.isnan(p) for p in null_pvalue(0.8, np.array([0.5, np.nan]), 20))
    assert all(np.isnan(p) for p in null_pvalue(float("nan"), np.array([0.5, 0.5]), 20))
    # a degenerate null: its sd is floored at half the binomial sd of the null mean, so p > 0
    from scipy.stats import t

    p_t, p_rank = null_pvalue(0.9, np.full(5, 0.5), 100)
    floor = 0.5 * np.sqrt(0.25 / 100)
    assert p_t == pytest.approx(t.sf(0.4 / (floor * np.sqrt(1 + 1 / 5)), 4)) and p_t > 0
    assert p_rank == pytest.approx(1 / 6)


def test_unit_with_two_variables_is_mixed_one_variable_is_not():
    lab = _labels(600)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(600, 5))
    X[:, 0] += 2.0 * lab["context"] + 2.0 * lab["motion_sign"]  # mixed
    X[:, 1] += 2.0 * lab["color_sign"]  # pure
    sel = unit_selectivity(X, {k: lab[k] for k in ("context", "motion_sign", "color_sign")})
    assert sel["variables"] == ["context", "motion_sign", "color_sign"]
    assert sel["mixed"].tolist() == [True, False, False, False, False]
    assert sel["selective"][:, 1].tolist() == [False, False, True]
    assert not sel["selective"][:, 2:].any()  # noise units are selective for nothing
    # multi-class labels are skipped, not mis-scored
    assert unit_selectivity(X, {"four": rng.integers(0, 4, 600)})["variables"] == []


def test_silhouette_of_separated_clusters_is_high_and_permuted_is_not():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    X = rng.normal(size=(200, 6)) + 8.0 * y[:, None]
    rep = geometry_replicate(X, {"context": y}, embed=False)
    assert rep.silhouette["raw"]["context"].mean() > 0.7
    assert abs(rep.control["raw"]["context"].mean()) < 0.1
    one_class = geometry_replicate(X, {"one": np.zeros(200, dtype=int)}, embed=False)
    assert np.isnan(one_class.silhouette["raw"]["one"]).all()


# ------------------------------------------------------------------------------------------------ units


def _cdm_batch(n: int = N, seed: int = 0):
    from mechcheck.tasks.cdm import make_cdm

    return make_cdm(vocab="words", max_number=9).sample(n, "eval", seed)


def _stored_read(batch, seed: int = 0) -> UnitResult:
    """What a `read` unit stores for a 2-layer model: layer 0 carries context, layer 1 only noise; the final
    state (layer 1) has one unit mixing context and motion_sign and one carrying color_sign."""
    rng = np.random.default_rng(seed)
    lab = batch.labels
    layer0 = rng.normal(size=(len(batch), 6)).astype(np.float32)
    layer0[:, 0] += 4.0 * (2 * lab["context"] - 1)
    final = rng.normal(size=(len(batch), 6)).astype(np.float32)
    final[:, 1] += 2.0 * lab["context"] + 2.0 * lab["motion_sign"]
    final[:, 2] += 2.0 * lab["color_sign"]
    return UnitResult({"blocks.0.attn.o.hook_out": layer0, "blocks.1.hook_resid_post": final})


DECODE_ARGS = {"features": [[0, "blocks.0.attn.o.hook_out"], [1, "blocks.1.hook_resid_post"]],
               "final": "blocks.1.hook_resid_post", "variables": ["context", "motion_sign", "response_type"],
               "selectivity": ["context", "motion_sign", "color_sign"], "classifier": "logistic", "folds": 5,
               "n_shuffle": 4, "unit_auc": 0.1, "unit_alpha": 0.01, "seed": 3}


def _unit_ctx(batch, args, deps=(), models=()):
    return UnitContext(list(models), batch, dict(args), list(deps), lambda *a: None)


def test_read_unit_stores_the_sites_at_the_answer_position():
    import torch

    from mechcheck import interventions as iv
    from mechcheck.models import build_gpt2, prepare

    torch.manual_seed(0)
    model = prepare(build_gpt2({"n_layer": 2, "n_head": 2, "n_embd": 16}, 17, 13), "cpu")
    batch = _cdm_batch(12)
    sites = ["blocks.0.attn.o.hook_out", "blocks.1.hook_resid_post"]
    got = read_unit(_unit_ctx(batch, {"sites": sites, "batch_size": 5}, models=[model])).arrays
    want = iv.run(model, batch, read=sites).reads
    assert sorted(got) == sorted(sites)
    for s in sites:
        assert got[s].dtype == np.float32 and got[s].shape == (12, 16)
        np.testing.assert_allclose(got[s], want[s], rtol=1e-6, atol=1e-6)


def test_decode_unit_fits_from_a_stored_read():
    batch = _cdm_batch()
    read = _stored_read(batch)
    out = decode_unit(_unit_ctx(batch, DECODE_ARGS, [read]))
    a = out.arrays
    assert out.meta["layers"] == [0, 1] and out.meta["selectivity_variables"] == DECODE_ARGS["selectivity"]
    assert isinstance(out.meta["not_converged"], int)
    for v in DECODE_ARGS["variables"]:
        assert a[f"correct/{v}"].shape == (N, 2) and a[f"null_example/{v}"].shape == (N, 2)
        assert a[f"null_acc/{v}"].shape == (4, 2)
    assert a["sel/auc"].shape == (3, 6) and a["sel/selective"].dtype == np.uint8
    assert a["sel/mixed"].tolist() == [0, 1, 0, 0, 0, 0]
    context, motion = a["correct/context"].mean(0), a["correct/motion_sign"].mean(0)
    assert context[0] > 0.95 and abs(motion[0] - 0.5) < 0.15  # layer 0 carries context only
    assert motion[1] > 0.7  # the final state's mixed unit carries motion_sign
    # the unit is decode_replicate on the stored arrays: the same numbers
    rep = decode_replicate({0: read.arrays["blocks.0.attn.o.hook_out"], 1: read.arrays["blocks.1.hook_resid_post"]},
                           read.arrays["blocks.1.hook_resid_post"], batch.labels, DECODE_ARGS["variables"],
                           DECODE_ARGS["selectivity"], "logistic", 5, 4, 0.1, 0.01, 3)
    for v in DECODE_ARGS["variables"]:
        np.testing.assert_array_equal(a[f"correct/{v}"], rep.correct[v])
        np.testing.assert_array_equal(a[f"null_acc/{v}"], rep.null_acc[v])


def _measurements(experiment, args, per_role: dict[str, list[dict[str, UnitResult]]], batch):
    """`Measurements` as the runner assembles them: each unit's arrays and metadata under its plan name."""
    from mechcheck.measurements import Measurements, RoleData
    from mechcheck.registry import EXPERIMENTS

    roles = {}
    for role, reps in per_role.items():
        arrays = [{f"{name}/{k}": v for name, u in rep.items() for k, v in u.arrays.items()} for rep in reps]
        meta = [{name: u.meta for name, u in rep.items()} for rep in reps]
        roles[role] = RoleData(role, "scratch", "recipe", 2, 2, list(range(len(reps))), ["k"] * len(reps), arrays,
                               [{} for _ in reps], meta)
    return Measurements(experiment, EXPERIMENTS.get(experiment).with_defaults(args), roles, len(batch),
                        len(batch.candidates), dict(batch.labels), dict(batch.groups), batch.answer_pos, 0)


def test_decoding_checks_give_verdicts_on_the_units_measurements():
    from mechcheck.checks import CheckContext, run_check
    from mechcheck.errors import SpecError
    from mechcheck.experiments.decoding import _summary
    from mechcheck.registry import CHECKS

    batch = _cdm_batch()
    reps = [{"decode": decode_unit(_unit_ctx(batch, DECODE_ARGS, [_stored_read(batch, seed)]))} for seed in (0, 1)]
    args = {k: DECODE_ARGS[k] for k in ("variables", "selectivity", "n_shuffle", "folds")}
    meas = _measurements("linear_decoding", {**args, "site": "attn_out", "layers": "all"}, {"m": reps, "n": reps},
                         batch)

    def check(name, **a):
        return run_check(CheckContext(meas, n_boot=50), name, CHECKS.get(name).with_defaults(a))

    assert check("decoding_accuracy_at_least", model="m", variable="context", value=0.9, layer=0).outcome == "passed"
    assert check("decoding_accuracy_at_least", model="m", variable="motion_sign", value=0.9).outcome != "passed"
    assert check("decoding_above_null", model="m", variable="context").outcome == "passed"
    same = check("mixed_selectivity_higher", model="m", than="n")
    assert same.outcome in ("failed", "inconclusive") and same.effect.estimate == 0.0
    with pytest.raises(SpecError, match="was not decoded"):
        check("decoding_accuracy_at_least", model="m", variable="choice", value=0.5)
    with pytest.raises(SpecError, match=r"layer: 4 was not decoded.*decoded layers: \[0, 1\]"):
        check("decoding_accuracy_at_least", model="m", variable="context", value=0.5, layer=4)
    summary = _summary(meas)
    json.dumps(summary)
    rep0 = summary["models"]["m"]["replicates"][0]
    assert summary["models"]["m"]["layers"] == [0, 1] and rep0["accuracy"]["context"][0] > 0.95
    assert rep0["selectivity"]["mixed_share"] == pytest.approx(1 / 6, abs=1e-4)
    assert summary["chance"]["response_type"] < 0.5  # four classes


def _geometry_unit_result(X, labels) -> UnitResult:
    """What the `geometry` unit stores, without UMAP (its JIT takes seconds): the raw space also as 'umap'."""
    rep = geometry_replicate(X, labels, embed=False)
    arrays = {"embedding": np.random.default_rng(0).normal(size=(len(X), 2)).astype(np.float32)}
    for space in ("raw", "umap"):
        for lab in labels:
            arrays[f"silhouette/{space}/{lab}"] = rep.silhouette["raw"][lab]
            arrays[f"control/{space}/{lab}"] = rep.control["raw"][lab]
    return UnitResult(arrays)


def test_geometry_checks_summary_and_figure(tmp_path):
    from mechcheck.checks import CheckContext, run_check
    from mechcheck.experiments.geometry import _summary
    from mechcheck.registry import CHECKS
    from mechcheck.report.figures import write_figures
    from mechcheck.results import ClaimResult

    batch = _cdm_batch(150)
    rng = np.random.default_rng(6)
    y = batch.labels["context"]
    sep = [{"geometry": _geometry_unit_result(rng.normal(size=(150, 4)) + 6.0 * y[:, None], {"context": y})}
           for _ in range(2)]
    mix = [{"geometry": _geometry_unit_result(rng.normal(size=(150, 4)), {"context": y})} for _ in range(2)]
    meas = _measurements("embedding_geometry", {"labels": ["context"], "max_points": 50}, {"a": sep, "b": mix}, batch)

    def check(name, **a):
        return run_check(CheckContext(meas, n_boot=50), name, CHECKS.get(name).with_defaults(a))

    assert check("silhouette_at_least", model="a", label="context", space="raw", value=0.5).outcome == "passed"
    assert check("silhouette_higher", model="a", than="b", label="context").outcome == "passed"
    assert check("silhouette_higher", model="b", than="a", label="context").outcome != "passed"
    summary = _summary(meas)
    json.dumps(summary)
    assert len(summary["point_index"]) == 50 and len(summary["models"]["a"]["replicates"][0]["points"]) == 50
    assert summary["models"]["a"]["replicates"][0]["silhouette"]["raw"]["context"] > 0.5
    claim = ClaimResult(id="geo", file="x.yaml", statement="", outcome="passed", experiment=summary)
    assert [p.name for p in write_figures(claim, tmp_path)] == ["geo__umap.png"]


@pytest.mark.slow
def test_geometry_unit_embeds_a_stored_read():
    """The geometry unit with UMAP (seconds of JIT the first time): shapes, and separated clusters score high."""
    batch = _cdm_batch(120)
    y = batch.labels["context"]
    X = np.random.default_rng(0).normal(size=(120, 6)).astype(np.float32) + 5.0 * y[:, None]
    args = {"site": "blocks.1.hook_resid_post", "labels": ["context", "choice"], "n_neighbors": 15, "min_dist": 0.1,
            "seed": 0}
    out = geometry_unit(_unit_ctx(batch, args, [UnitResult({"blocks.1.hook_resid_post": X})])).arrays
    assert out["embedding"].shape == (120, 2)
    assert sorted(k for k in out if k != "embedding") == sorted(
        f"{kind}/{space}/{lab}" for kind in ("silhouette", "control") for space in ("raw", "umap")
        for lab in ("context", "choice"))
    assert out["silhouette/umap/context"].mean() > 0.5 and out["silhouette/raw/context"].mean() > 0.5
    again = geometry_unit(_unit_ctx(batch, args, [UnitResult({"blocks.1.hook_resid_post": X})])).arrays
    np.testing.assert_array_equal(again["embedding"], out["embedding"])  # seeded: the same embedding


# ------------------------------------------------------------------------------------------------ plans

PLAN_CLAIM = """
    id: tiny.plans
    statement: plans only (nothing is built)
    models: {m: tiny-cdm}
    seeds: 2
    data: {task: cdm9, n: 40}
    experiment: {linear_decoding: {}}
    expect:
      - decoding_accuracy_at_least: {model: m, variable: context, value: 0.6}
"""


def test_l4_decoding_and_geometry_plans_share_one_read_unit(claim_tree, tmp_path):
    (claim,) = load_claims([claim_tree("claims/plan.yaml", PLAN_CLAIM)])
    decoding, ctx, _ = plan_of(claim, tmp_path / "cache")
    geometry, _, _ = plan_of(claim, tmp_path / "cache", ("embedding_geometry", {}))
    assert [list(units) for units in decoding["m"]] == [["decode"], ["decode"]]
    assert [list(units) for units in geometry["m"]] == [["geometry"], ["geometry"]]
    for i in range(2):
        decode, geo = decoding["m"][i]["decode"], geometry["m"][i]["geometry"]
        assert decode.kind == "decode" and geo.kind == "geometry" and decode.models == geo.models == ()
        (read,), (geo_read,) = decode.deps, geo.deps
        assert read.kind == "read" and read.key == geo_read.key  # one forward pass serves both experiments
        assert read.models == (ctx.roles["m"][i],)
        assert read.arguments == {"sites": ["blocks.1.hook_resid_post"], "batch_size": 500}
        assert decode.arguments["features"] == [[1, "blocks.1.hook_resid_post"]]
        assert geo.arguments["site"] == "blocks.1.hook_resid_post"
    assert decoding["m"][0]["decode"].deps[0].key != decoding["m"][1]["decode"].deps[0].key  # two replicates


def test_decoding_every_layer_reads_every_layer_and_the_final_state(claim_tree, tmp_path):
    (claim,) = load_claims([claim_tree("claims/plan.yaml", PLAN_CLAIM)])
    plan, _, _ = plan_of(claim, tmp_path / "cache", ("linear_decoding", {"site": "attn_out", "layers": "all",
                                                                          "n_shuffle": 3}))
    decode = plan["m"][0]["decode"]
    (read,) = decode.deps
    assert read.arguments["sites"] == ["blocks.0.attn.o.hook_out", "blocks.1.attn.o.hook_out",
                                       "blocks.1.hook_resid_post"]
    assert decode.arguments["features"] == [[0, "blocks.0.attn.o.hook_out"], [1, "blocks.1.attn.o.hook_out"]]
    assert decode.arguments["final"] == "blocks.1.hook_resid_post" and decode.arguments["n_shuffle"] == 3
    assert decode.arguments["seed"] == claim.data.seed  # folds and shuffles are fixed by the claim's data seed
    last, _, _ = plan_of(claim, tmp_path / "cache")
    assert last["m"][0]["decode"].deps[0].key != read.key  # other sites: another read


# ------------------------------------------------------------------------------------------ end to end

KNOWN_DECODING = """
    id: known.decoding
    statement: the source token is decodable from the known-answer model's final state (its only head copies it)
    models: {m: one-head}
    data: {task: copy6, n: 120}
    experiment:
      linear_decoding: {variables: [source], selectivity: [source], n_shuffle: 3, folds: 3}
    expect:
      - decoding_accuracy_at_least: {model: m, variable: source, value: 0.9}
      - decoding_above_null: {model: m, variable: source}
      - mixed_selectivity_higher: {model: m, than: m}
"""


def test_linear_decoding_runs_on_the_known_answer_model(claim_tree, tmp_path):
    from mechcheck.runner import Runner, RunOptions

    (claim,) = load_claims([claim_tree("claims/known.yaml", KNOWN_DECODING)])
    res = Runner(RunOptions(n_boot=50, workers=1, cache_dir=tmp_path / "cache")).run_claim(claim)
    accuracy, above, mixed = res.checks
    assert accuracy.outcome == "passed" and above.outcome == "passed", [c.message for c in res.checks]
    assert mixed.outcome in ("failed", "inconclusive")  # one variable: nothing can be mixed
    rep = res.experiment["models"]["m"]["replicates"][0]
    assert rep["accuracy"]["source"] == [1.0] and rep["selectivity"]["mixed_share"] == 0.0


DECODING_CLAIM = """
    id: tiny.decoding
    statement: context is linearly decodable from a (barely) trained tiny model
    models: {m: tiny-cdm}
    data: {task: cdm9, n: 160}
    experiment:
      linear_decoding: {variables: [context, choice, response_type], n_shuffle: 4, layers: all, site: attn_out,
                        folds: 3}
    expect:
      - decoding_accuracy_at_least: {model: m, variable: context, value: 0.6, layer: 1}
      - decoding_above_null: {model: m, variable: context}
      - mixed_selectivity_higher: {model: m, than: m}
"""

L4_CLAIM = """
    id: tiny.decoding_last
    statement: choice from the final state
    models: {m: tiny-cdm}
    data: {task: cdm9, n: 160}
    experiment: {linear_decoding: {variables: [choice], n_shuffle: 2, folds: 3}}
    expect:
      - decoding_accuracy_at_least: {model: m, variable: choice, value: 0.5}
"""

GEOMETRY_CLAIM = """
    id: tiny.geometry
    statement: the final states cluster by context
    models: {m: tiny-cdm}
    data: {task: cdm9, n: 160}
    experiment: {embedding_geometry: {labels: [context, choice], max_points: 40}}
    expect:
      - silhouette_at_least: {model: m, label: context, value: 0.0, space: raw}
"""


@pytest.mark.slow
def test_decoding_and_geometry_end_to_end_on_tiny_gpt2(claim_tree, tmp_path):
    from mechcheck.report.figures import write_figures
    from mechcheck.runner import Runner, RunOptions

    paths = [claim_tree(f"claims/{name}.yaml", text) for name, text in
             (("dec", DECODING_CLAIM), ("last", L4_CLAIM), ("geo", GEOMETRY_CLAIM))]
    runner = Runner(RunOptions(n_boot=50, workers=1, cache_dir=tmp_path / "cache"))
    events = []
    runner.on_event = events.append
    results = {r.id: r for r in runner.run_claims(load_claims(paths))}
    dec, last, geo = results["tiny.decoding"], results["tiny.decoding_last"], results["tiny.geometry"]
    for res in (dec, last, geo):
        assert res.outcome in ("passed", "failed", "inconclusive"), (res.reason, res.traceback)
        assert all(c.outcome in ("passed", "failed", "inconclusive") for c in res.checks), res.checks
    exp = dec.experiment
    assert exp["name"] == "linear_decoding" and exp["models"]["m"]["layers"] == [0, 1]
    assert set(exp["models"]["m"]["replicates"][0]["accuracy"]) == {"context", "choice", "response_type"}
    assert geo.experiment["name"] == "embedding_geometry"
    assert len(geo.experiment["models"]["m"]["replicates"][0]["points"]) == 40
    # the final-state read is computed once for the L4 decoding claim and the geometry claim
    reads = [e for e in events if e.what == "end" and e.computed and e.label.startswith("read of")]
    assert len(reads) == 2  # attn_out of every layer for `dec`; the final state, shared, for `last` and `geo`
    figs = write_figures(dec, tmp_path / "figs") + write_figures(geo, tmp_path / "figs")
    assert sorted(p.name for p in figs) == ["tiny.decoding__decoding.png", "tiny.decoding__decoding_layers.png",
                                            "tiny.geometry__umap.png"]
