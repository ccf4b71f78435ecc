"""The runner in-process: known-answer claims must pass or fail as the construction dictates, errors stay local
to their claim, and trained fixtures are replicated, cached and deterministic."""

from __future__ import annotations

import shutil

import pytest
import torch

from safetensors.torch import load_file

from conftest import KNOWN_HEAD_PASSES, UNUSED_HEAD_FAILS
from mechcheck.recipes import model_ref
from mechcheck.runner import RunOptions, Runner
from mechcheck.spec import load_claims


def run(paths, **options):
    runner = Runner(RunOptions(**{"workers": 1, **options}))
    try:
        return [runner.run_claim(c) for c in load_claims(paths)], runner
    finally:
        runner.close()


def test_known_answer_claim_passes_and_unused_head_claim_fails(claim_tree):
    a = claim_tree("claims/a.yaml", KNOWN_HEAD_PASSES)
    b = claim_tree("claims/b.yaml", UNUSED_HEAD_FAILS)
    (good, bad), _ = run([a, b])
    assert good.outcome == "passed", [c.message for c in good.checks]
    effect = good.checks[1].effect
    assert effect.estimate == 1.0 and effect.n == 200 and effect.n_seeds == 1
    assert good.checks[1].control["estimate"] == 0.0  # the other head of the model
    assert bad.outcome == "failed"
    assert (bad.checks[0].effect.lo, bad.checks[0].effect.hi) == (0.0, 0.0)
    assert len(good.models) == 1 and good.models[0].recipe == "load"  # a loaded model is one replicate


def test_rank_selectors_attention_and_at_most(claim_tree):
    path = claim_tree("claims/c.yaml", """
        id: known.selectors
        statement: selectors pick the known head; attention is uniform; the unused head does not matter
        models: {m: one-head}
        data: {task: copy6, n: 200}
        seeds: 3
        experiment: {head_ablation: {method: zero, n_control: 3}}
        expect:
          - effect_at_least: {model: m, heads: top_head, value: 0.9}
          - effect_at_least: {model: m, heads: top_2, value: 0.9}
          - effect_at_most: {model: m, heads: [[0, 1]], value: 0.01}
          - attention_to: {model: m, heads: [[0, 0]], tokens: source, at_least: 0.5}
    """)
    (res,), _ = run([path])
    top1, top2, at_most, attention = res.checks
    assert top1.outcome == "passed" and top1.details["selected_heads"] == [["L0H0"]]
    assert top2.outcome == "passed" and top2.effect.estimate == 1.0
    assert at_most.outcome == "passed"
    # Uniform attention over 6 positions: 1/6 on the source, exactly the uniform baseline.
    assert attention.outcome == "failed"
    assert attention.effect.estimate == pytest.approx(1 / 6, abs=1e-5)
    assert attention.control["uniform"] == pytest.approx(1 / 6)
    assert res.seeds == [0, 1, 2] and len(res.models) == 1  # seeds do not copy an untrained model


def test_model_dependent_errors_end_only_their_claim(claim_tree, tmp_path):
    good = claim_tree("claims/good.yaml", KNOWN_HEAD_PASSES)
    beyond = claim_tree("claims/beyond.yaml", """
        id: known.beyond
        statement: a head that does not exist
        models: {m: one-head}
        data: {task: copy6, n: 50}
        experiment: {head_ablation: {method: zero}}
        expect:
          - effect_at_least: {model: m, heads: [[0, 7]], value: 0.1}
          - accuracy_at_least: {model: m, value: 0.9}
    """)
    missing = claim_tree("claims/missing.yaml", f"""
        id: known.missing_checkpoint
        statement: a checkpoint directory that is not there
        models:
          m: {{recipe: load, path: {tmp_path / 'nowhere'}, task: copy6}}
        data: {{task: copy6, n: 50}}
        experiment: {{head_ablation: {{}}}}
        expect:
          - accuracy_at_least: {{model: m, value: 0.9}}
    """)
    results, _ = run([beyond, good, missing])
    by_id = {r.id: r for r in results}
    assert by_id["known.head_matters"].outcome == "passed"
    bad = by_id["known.beyond"]
    # A head the loaded model does not have is found as soon as its config is read, before any measurement.
    assert bad.outcome == "error" and not bad.checks and "measure" not in bad.durations
    assert "beyond.yaml:" in bad.reason and "expect[0].effect_at_least" in bad.reason
    assert "heads 0..1" in bad.reason
    miss = by_id["known.missing_checkpoint"]
    assert miss.outcome == "error" and "nowhere" in miss.reason and "does not exist" in miss.reason
    assert miss.traceback is None  # a set-up problem explained in one line, not a crash


def test_pickle_only_checkpoint_is_refused(claim_tree, tmp_path):
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "pytorch_model.bin").write_bytes(b"not even a pickle")
    path = claim_tree("claims/p.yaml", f"""
        id: known.pickle
        statement: pickles are never loaded
        models:
          m: {{recipe: load, path: {ckpt}, task: copy6}}
        data: {{task: copy6, n: 50}}
        experiment: {{head_ablation: {{}}}}
        expect:
          - accuracy_at_least: {{model: m, value: 0.9}}
    """)
    (res,), _ = run([path])
    assert res.outcome == "error" and "pickled weights are refused" in res.reason


def test_hub_model_offline_is_skipped(claim_tree, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(claim_tree.root / "hf-home"))  # an empty HF cache
    path = claim_tree("claims/h.yaml", """
        id: known.hub
        statement: needs gpt2 from the hub
        models:
          m: {recipe: load, hub: gpt2, task: copy6}
        data: {task: copy6, n: 50}
        experiment: {head_ablation: {}}
        expect:
          - accuracy_at_least: {model: m, value: 0.9}
    """)
    (res,), _ = run([path])
    assert res.outcome == "skipped" and "hub" in res.reason


TINY = """
    id: tiny.trained
    statement: machinery on a freshly trained tiny model
    models: {m: tiny-cdm}
    data: {task: cdm9, n: 100}
    seeds: 2
    experiment: {head_ablation: {method: mean}}
    expect:
      - top_heads_in_layers: {model: m, top: 1, layers: [0, 1], at_least: 0.5}
      - effect_at_least: {model: m, heads: top_2, value: -1.0}
"""


@pytest.mark.slow
def test_trained_fixture_replicates_cache_and_determinism(claim_tree, tmp_path):
    path = claim_tree("claims/t.yaml", TINY)
    cache = tmp_path / "cache"
    (first,), runner = run([path], cache_dir=cache)
    assert first.outcome in ("passed", "failed", "inconclusive"), first.reason
    assert [m.seed for m in first.models] == [0, 1] and not any(m.cached for m in first.models)
    assert len({m.key for m in first.models}) == 2  # replicates are distinct models
    assert first.checks[0].effect.n_seeds == 2
    assert first.models[0].info["steps"] == 30
    # A new runner (fresh process state) reuses the cache and reproduces every number.
    (second,), _ = run([path], cache_dir=cache)
    assert all(m.cached for m in second.models)
    assert [m.key for m in second.models] == [m.key for m in first.models]
    hashes = [m.info["weights_sha256"] for m in first.models]
    assert len(set(hashes)) == 2 and [m.info["weights_sha256"] for m in second.models] == hashes
    assert [c.effect for c in second.checks] == [c.effect for c in first.checks]
    assert second.experiment["models"] == first.experiment["models"]


@pytest.mark.slow
def test_training_is_deterministic_and_corrupt_cache_is_rebuilt(claim_tree, tmp_path):
    path = claim_tree("claims/t.yaml", TINY.replace("seeds: 2", "seeds: 1"))
    (a,), r1 = run([path], cache_dir=tmp_path / "c1")
    (b,), r2 = run([path], cache_dir=tmp_path / "c2")  # trained again from scratch
    assert a.models[0].key == b.models[0].key and not b.models[0].cached
    sd_a = load_file(str(r1.build.cache.entry(a.models[0].key) / "model.safetensors"))
    sd_b = load_file(str(r2.build.cache.entry(b.models[0].key) / "model.safetensors"))
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert a.models[0].info["weights_sha256"] == b.models[0].info["weights_sha256"]
    # Corrupt the stored weights: the entry is detected, dropped and rebuilt (never used); the rebuilt model
    # has the same bits, so the stored measurements still stand.
    shutil.rmtree(tmp_path / "c1" / "measurements")  # measure it again, to see the same numbers come back
    entry = r1.build.cache.entry(a.models[0].key)
    weights = next(entry.glob("*.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    (c,), _ = run([path], cache_dir=tmp_path / "c1")
    assert not c.models[0].cached
    assert [(x.effect.estimate, x.effect.replicates) for x in c.checks] == \
        [(x.effect.estimate, x.effect.replicates) for x in a.checks]


@pytest.mark.slow
def test_finetune_chain_keys_follow_the_parent(claim_tree, tmp_path):
    claim = TINY.replace("models: {m: tiny-cdm}", """models:
      ft: {recipe: finetune, from: tiny-cdm, task: cdm9, train: {steps: 5, batch_size: 16, lr: 1.0e-3}}""")
    claim = claim.replace("model: m", "model: ft").replace("seeds: 2", "seeds: 1")
    path = claim_tree("claims/ft.yaml", claim)
    cache = tmp_path / "cache"
    (first,), runner = run([path], cache_dir=cache)
    assert first.outcome != "error", first.reason
    (ft,) = first.models
    assert ft.recipe == "finetune" and ft.info["parent"] == "tiny-cdm" and ft.info["steps"] == 5
    (claim,) = load_claims([path])
    parent = model_ref(claim.models["ft"].parent, 0, runner.build)
    assert parent.key != ft.key and runner.build.cache.get(parent.key) is not None  # built and cached
    # Retraining the parent differently must change the child's key (and so rebuild it).
    fixture = claim_tree.root / "fixtures/models/tiny-cdm.yaml"
    fixture.write_text(fixture.read_text().replace("steps: 30", "steps: 31"))
    (second,), _ = run([path], cache_dir=cache)
    assert second.models[0].key != ft.key and not second.models[0].cached


@pytest.mark.slow
def test_pretrain_recipe_trains_with_next_token_loss(claim_tree, tmp_path):
    path = claim_tree("claims/pt.yaml", """
        id: tiny.pretrained
        statement: a pretrain fixture (next-token loss on every position) builds and runs
        models:
          m: {recipe: pretrain, architecture: {n_layer: 1, n_head: 2, n_embd: 16}, task: cdm9,
              train: {steps: 20, batch_size: 16, lr: 3.0e-3, eval_every: 10}}
        data: {task: cdm9, n: 50}
        seeds: 2
        experiment: {head_ablation: {}}
        expect:
          - effect_at_most: {model: m, heads: [[0, 0]], value: 1.0}
    """)
    (res,), runner = run([path], cache_dir=tmp_path / "cache")
    assert res.outcome == "passed", res.reason
    m = res.models[0]
    assert m.recipe == "pretrain" and m.info["steps"] == 20
    meta = runner.build.cache.get(m.key)[1]
    assert meta["payload"]["train"]["loss"] == "lm"
    # Next-token loss over ~14 positions starts near log(vocab) and must fall within 20 steps.
    history = [h["loss"] for h in meta["info"]["history"]]
    assert history[-1] < 3.2 and history[-1] < history[0] + 1e-9


def test_a_child_of_a_wrapped_parent_is_the_same_model_and_reloads(claim_tree, tmp_path):
    """A parent used as a role (so wrapped for an experiment) before its fine-tuned child is built: the child
    must start from the parent's weights as built, train to the same bits, and be cached loadably. (Wrapping
    rebuilds the module tree; a copy of the wrapped module would be saved under keys no loader maps back.)"""
    claim = TINY.replace("models: {m: tiny-cdm}", """models:
      m: tiny-cdm
      ft: {recipe: finetune, from: tiny-cdm, task: cdm9, train: {steps: 5, batch_size: 16, lr: 1.0e-3}}""")
    claim = claim.replace("seeds: 2", "seeds: 1")
    path = claim_tree("claims/ft_after_parent.yaml", claim)
    cache = tmp_path / "cache"
    (first,), _ = run([path], cache_dir=cache)  # builds and wraps the parent (role m), then the child
    assert first.outcome != "error", first.reason
    (second,), _ = run([path], cache_dir=cache)  # both from the cache
    child = {m.role: m for m in first.models}["ft"]
    again = {m.role: m for m in second.models}["ft"]
    assert again.cached and again.info["weights_sha256"] == child.info["weights_sha256"]
    assert second.experiment == first.experiment  # the reloaded child measures exactly as the trained one
