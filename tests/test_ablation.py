"""Head ablation on real (tiny) models: invariants as Hypothesis properties, and a known-answer model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechcheck.experiments.head_ablation import (
    ExperimentContext,
    _ablation_hooks,
    _clean_run,
    forward_metrics,
    head_ablation,
)
from mechcheck.known_answer import single_head_copy_model
from mechcheck.models import build_gpt2, wrap
from mechcheck.tasks.toy import make_copy_first

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def tiny_models(draw):
    """A random GPT-2 (1-3 layers, 1-4 heads) wrapped by the bridge, and a batch of random prompts."""
    n_layer = draw(st.integers(1, 3))
    n_head = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = build_gpt2({"n_layer": n_layer, "n_head": n_head, "n_embd": 4 * n_head}, vocab_size=12, n_positions=10)
    tokens = torch.randint(0, 12, (3, draw(st.integers(2, 8))), generator=torch.Generator().manual_seed(seed))
    return wrap(model, "cpu"), tokens


def _capture_z(handle, tokens, hooks):
    """hook_z of every layer *after* the given hooks ran (capture hooks are added last, so they run last)."""
    seen = {}

    def grabber(name):
        def grab(z, hook):  # hook.name may be the bridge's internal alias, so key by the canonical name
            seen[name] = z.detach().clone()
            return z

        return grab

    names = [f"blocks.{layer}.attn.hook_z" for layer in range(handle.n_layers)]
    with torch.no_grad():
        logits = handle.bridge.run_with_hooks(tokens, fwd_hooks=list(hooks) + [(n, grabber(n)) for n in names])
    return logits, [seen[n] for n in names]


@SETTINGS
@given(tiny_models())
def test_bridge_without_interventions_is_the_hf_model(model_and_tokens):
    handle, tokens = model_and_tokens
    with torch.no_grad():
        assert torch.equal(handle.bridge(tokens), handle.hf(tokens).logits)
        identity = [(f"blocks.{layer}.attn.hook_z", lambda z, hook: z.clone()) for layer in range(handle.n_layers)]
        assert torch.equal(handle.bridge.run_with_hooks(tokens, fwd_hooks=identity), handle.hf(tokens).logits)


@SETTINGS
@given(tiny_models(), st.data())
def test_heads_outside_the_intervention_are_bit_identical(model_and_tokens, data):
    handle, tokens = model_and_tokens
    L, H = handle.n_layers, handle.n_heads
    all_heads = [(layer, head) for layer in range(L) for head in range(H)]
    ablated = data.draw(st.lists(st.sampled_from(all_heads), min_size=1, max_size=len(all_heads), unique=True))
    first = min(layer for layer, _ in ablated)
    _, clean = _capture_z(handle, tokens, [])
    _, patched = _capture_z(handle, tokens, _ablation_hooks(tuple(ablated), "zero", "all", None, None))
    for layer in range(first):  # everything before the first intervention is untouched
        assert torch.equal(patched[layer], clean[layer])
    for layer, head in all_heads:
        if layer == first and (layer, head) not in ablated:
            assert torch.equal(patched[layer][:, :, head], clean[layer][:, :, head])
        if (layer, head) in ablated:
            assert torch.count_nonzero(patched[layer][:, :, head]) == 0


@SETTINGS
@given(tiny_models(), st.data())
def test_mean_ablation_with_a_runs_own_activations_changes_nothing(model_and_tokens, data):
    """Patching a single prompt's heads with their 'mean' over that one prompt is the identity."""
    handle, tokens = model_and_tokens
    one = tokens[:1]
    layer = data.draw(st.integers(0, handle.n_layers - 1))
    head = data.draw(st.integers(0, handle.n_heads - 1))
    _, clean = _capture_z(handle, one, [])
    mean_z = {i: clean[i][0] for i in range(handle.n_layers)}  # (T, H, d_head): the mean over a batch of one
    with torch.no_grad():
        patched = handle.bridge.run_with_hooks(one, fwd_hooks=_ablation_hooks(((layer, head),), "mean", "all", mean_z, None))
        assert torch.equal(patched, handle.bridge(one))


@pytest.fixture(scope="module")
def known():
    task = make_copy_first(6)
    return wrap(single_head_copy_model(6), "cpu"), task.sample(200, "eval", 0)


def test_known_answer_model_zero_ablation(known):
    handle, batch = known
    res = head_ablation(ExperimentContext({"m": [handle]}, {"m": "one-head"}, batch), method="zero")
    assert res.clean("m", "accuracy")[0].mean() == 1.0
    eff = res.head_effects("m", "accuracy")[0]
    assert np.all(eff[:, 0, 0] == 1.0)  # the only path: every answer lost (ties count as wrong)
    assert np.all(eff[:, 0, 1] == 0.0)  # reads the answer but writes nothing
    assert np.all(res.head_effects("m", "logit_diff")[0][:, 0, 1] == 0.0)
    assert np.all(res.layer_effects("m", "accuracy")[0][:, 0] == 1.0)
    assert np.all(res.joint_effect("m", 0, ((0, 0), (0, 1)), "accuracy") == 1.0)


def test_known_answer_model_mean_ablation_and_answer_position(known):
    handle, batch = known
    mean = head_ablation(ExperimentContext({"m": [handle]}, {"m": "one-head"}, batch), method="mean")
    eff = mean.head_effects("m", "accuracy")[0].mean(0)
    # The mean of a balanced A/B signal is ~0: the model then always answers one side, half are wrong.
    assert 0.35 < eff[0, 0] < 0.65 and eff[0, 1] == 0.0
    at_answer = head_ablation(ExperimentContext({"m": [handle]}, {"m": "one-head"}, batch), method="zero",
                              positions="answer")
    assert at_answer.head_effects("m", "accuracy")[0][:, 0, 0].mean() == 1.0  # one layer: only the answer position reads


def test_attention_shares_are_exact_for_uniform_attention(known):
    handle, batch = known
    _, _, attention = _clean_run(handle, batch, batch_size=64)
    assert np.allclose(attention["source"], 1 / 6, atol=1e-6)  # W_Q = W_K = 0: uniform over 6 visible positions
    total = attention["source"] + attention["filler"] + attention["answer"]
    assert np.allclose(total, 1.0, atol=1e-5)


def test_forward_metrics_batches_do_not_change_results(known):
    handle, batch = known
    a = forward_metrics(handle, batch, ((0, 0),), "zero", "all", None, batch_size=7)
    b = forward_metrics(handle, batch, ((0, 0),), "zero", "all", None, batch_size=500)
    assert np.array_equal(a["logit_diff"], b["logit_diff"])


def test_wrapping_a_model_twice_reuses_its_bridge():
    """A fixture shared by several claims is wrapped once: re-wrapping would stack the bridge's modules."""
    import torch

    from mechcheck.models import build_gpt2, wrap

    torch.manual_seed(0)
    model = build_gpt2({"n_layer": 1, "n_head": 2, "n_embd": 16}, 12, 8)
    first = wrap(model, "cpu")
    n_modules = len(list(model.modules()))
    model.train()
    again = wrap(model, "cpu")
    assert again is first and len(list(model.modules())) == n_modules
    assert not model.training  # back in eval mode
