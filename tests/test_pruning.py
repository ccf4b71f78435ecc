"""Pruning by gradient x weight (`mechcheck.interventions.pruning`) against known answers.

- the hand-built wrapper model (`mechcheck.known_answer.wrapper_model`): a copy capability hidden under one MLP
  neuron that turns A into A' and B into B'. Scored on the capability's data, that neuron ranks first (also with
  every weight noised, so every neuron has a score); pruning exactly it revives the capability to 100 % and
  drops the wrapped behaviour to 0; pruning any other single neuron revives nothing; the pruning curve shows it
  at K = 1 and a random-neuron curve does not;
- layout: prune() equals zeroing the weights by hand on a copy of the model, for GPT-2's Conv1D (a column per
  unit, q / k / v and MLP alike) and for Llama's Linear (a row per unit); the scores equal a hand-computed
  gradient x weight on that copy;
- the model is untouched afterwards (every parameter bit for bit, also when the with-block raises) and no
  ``.grad`` is left behind; clear errors for unknown neurons.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mechcheck.interventions import run
from mechcheck.interventions.pruning import (
    Neuron, candidate_neurons, neuron_scores, prune, pruning_curve, random_neurons,
)
from mechcheck.known_answer import WRAPPER_NEURON, wrapper_batches, wrapper_model
from mechcheck.models import prepare
from test_interventions import gpt2, llama, words_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _acc(model, batch) -> float:
    return float(run(model, batch).metrics["accuracy"].mean())


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.hf.state_dict().items()}


def _same_state(model, before) -> bool:
    after = model.hf.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture(scope="module")
def wrapped():
    return prepare(wrapper_model(), "cpu"), wrapper_batches(64, seed=0)


# ---------------------------------------------------------------------------------------- known answers


def test_wrapper_model_hides_the_capability(wrapped):
    model, batches = wrapped
    assert _acc(model, batches["pretrain"]) == 0.0  # the wrapper answers A' / B' instead
    assert _acc(model, batches["finetune"]) == 1.0


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_gradient_x_weight_ranks_the_wrapper_neuron_first(noise):
    model = prepare(wrapper_model(noise=noise, seed=3), "cpu")
    scores = neuron_scores(model, wrapper_batches(64, seed=1)["pretrain"])
    assert scores.top(1) == [Neuron.parse(WRAPPER_NEURON)]
    assert len(scores.neurons) == len(candidate_neurons(model)) == 48 + 16 + 64 + 16
    # the runner-up (one of the four output units it writes through) scores well below it
    second = scores.scores[scores.order()[1]]
    assert scores.score(WRAPPER_NEURON) > 2 * second > 0
    if noise:
        assert np.count_nonzero(scores.scores) == len(scores.scores)  # every neuron competes


def test_pruning_the_wrapper_neuron_revives_the_capability(wrapped):
    model, batches = wrapped
    with prune(model, [WRAPPER_NEURON]):
        assert _acc(model, batches["pretrain"]) == 1.0
        assert _acc(model, batches["finetune"]) == 0.0
    assert _acc(model, batches["pretrain"]) == 0.0  # and back


def test_pruning_any_other_single_neuron_revives_nothing(wrapped):
    model, batches = wrapped
    others = [n for n in candidate_neurons(model) if n != Neuron.parse(WRAPPER_NEURON)]
    revived = []
    for n in others:
        with prune(model, [n]):
            if _acc(model, batches["pretrain"]) > 0.0:
                revived.append(str(n))
    assert revived == []


def test_pruning_curve_shows_revival_at_one_neuron_and_the_random_null_does_not(wrapped):
    model, batches = wrapped
    curve = pruning_curve(model, wrapper_batches(64, seed=1)["pretrain"], batches, ks=[0, 1, 2, 5])
    assert curve.ks == [0, 1, 2, 5]
    assert curve.neurons[0] == Neuron.parse(WRAPPER_NEURON) and len(curve.neurons) == 5
    np.testing.assert_array_equal(curve.accuracy("pretrain"), [0, 1, 1, 1])
    np.testing.assert_array_equal(curve.accuracy("finetune"), [1, 0, 0, 0])
    np.testing.assert_array_equal(curve.revival("pretrain"), [0, 1, 1, 1])
    assert curve.smallest_k("pretrain", 0.9) == 1
    assert curve.correct["pretrain"].shape == (4, 64)
    null = random_neurons(model, 5, seed=0, exclude=[WRAPPER_NEURON])
    assert Neuron.parse(WRAPPER_NEURON) not in null and len(set(null)) == 5
    assert null == random_neurons(model, 5, seed=0, exclude=[WRAPPER_NEURON])
    random_curve = pruning_curve(model, None, batches, ks=[0, 1, 5], neurons=null)
    assert random_curve.scores is None
    np.testing.assert_array_equal(random_curve.accuracy("pretrain"), [0, 0, 0])
    assert random_curve.smallest_k("pretrain", 0.9) is None


# ---------------------------------------------------------------------------------------- layout


def _zero_by_hand(hf, neuron: Neuron, conv1d: bool):
    module = hf.get_submodule(f"{_blocks_path(hf)}.{neuron.layer}.{neuron.module}")
    with torch.no_grad():
        if conv1d:
            module.weight[:, neuron.index] = 0  # Conv1D: x @ W + b, W (in, out)
        else:
            module.weight[neuron.index, :] = 0  # Linear: x @ W.T + b, W (out, in)
        if module.bias is not None:
            module.bias[neuron.index] = 0


def _blocks_path(hf) -> str:
    return "transformer.h" if hasattr(hf, "transformer") else "model.layers"


CASES = {
    # GPT-2 (Conv1D): a query, a key and a value unit, a W_O unit, two MLP units (in and out)
    "gpt2": (lambda: gpt2(0, n_layer=2, n_head=2),
             ["blocks.0.attn.c_attn[1]", "blocks.1.attn.c_attn[9]", "blocks.1.attn.c_attn[20]",
              "blocks.0.attn.c_proj[3]", "blocks.1.mlp.c_fc[5]", "blocks.0.mlp.c_proj[7]"], True),
    "llama": (lambda: llama(0, n_layer=2, n_head=2),
              ["blocks.0.self_attn.q_proj[1]", "blocks.1.self_attn.v_proj[6]", "blocks.0.mlp.gate_proj[4]",
               "blocks.1.mlp.down_proj[2]", "blocks.1.self_attn.o_proj[0]"], False),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_prune_equals_zeroing_the_weights_by_hand(arch):
    make, names, conv1d = CASES[arch]
    model, batch = make(), words_batch(16, 0)
    by_hand = prepare(copy.deepcopy(model.hf), "cpu")
    neurons = [Neuron.parse(n) for n in names]
    for n in neurons:
        _zero_by_hand(by_hand.hf, n, conv1d)
    clean = run(model, batch).candidate_logits
    expected = run(by_hand, batch).candidate_logits
    assert not np.allclose(clean, expected)  # the pruned units matter
    before = _state(model)
    with prune(model, neurons):
        pruned = run(model, batch).candidate_logits
        for n in neurons:  # the weights really are zero inside the block
            w = model.hf.get_submodule(f"{_blocks_path(model.hf)}.{n.layer}.{n.module}").weight
            assert not (w[:, n.index] if conv1d else w[n.index]).any()
    np.testing.assert_allclose(pruned, expected, rtol=0, atol=1e-6)
    assert _same_state(model, before)
    np.testing.assert_array_equal(run(model, batch).candidate_logits, clean)


@pytest.mark.parametrize("arch", list(CASES))
def test_scores_are_gradient_x_weight_summed_per_output_unit(arch):
    make, names, conv1d = CASES[arch]
    model, batch = make(), words_batch(16, 1)
    scores = neuron_scores(model, batch, batch_size=5)  # chunks add up to the full-batch gradient
    # by hand, on a copy: the full-vocabulary cross-entropy of the answer token, mean over examples
    hf = copy.deepcopy(model.hf)
    out = hf(torch.as_tensor(batch.tokens)).logits
    rows = torch.arange(len(batch))
    loss = torch.nn.functional.cross_entropy(out[rows, torch.as_tensor(batch.answer_pos)],
                                             torch.as_tensor(batch.answer_ids))
    loss.backward()
    assert scores.loss == pytest.approx(float(loss.detach()), rel=1e-5)
    for name in names:
        n = Neuron.parse(name)
        module = hf.get_submodule(f"{_blocks_path(hf)}.{n.layer}.{n.module}")
        w, g = module.weight.detach(), module.weight.grad
        expected = float((w[:, n.index] * g[:, n.index]).sum() if conv1d else (w[n.index] * g[n.index]).sum())
        if module.bias is not None:
            expected += float(module.bias.detach()[n.index] * module.bias.grad[n.index])
        assert scores.score(n) == pytest.approx(expected, rel=1e-4, abs=1e-8)
    assert all(p.grad is None for p in model.hf.parameters())  # the scored model keeps no gradients


def test_weights_only_scores_and_pruning_leave_the_bias():
    model, batch = gpt2(2, n_layer=1, n_head=2), words_batch(8, 0)
    n = Neuron(0, "mlp.c_fc", 3)
    bias = model.hf.transformer.h[0].mlp.c_fc.bias
    with prune(model, [n], bias=False):
        assert float(bias.detach()[3]) != 0.0
        assert not model.hf.transformer.h[0].mlp.c_fc.weight[:, 3].any()
    with_bias, without = neuron_scores(model, batch), neuron_scores(model, batch, bias=False)
    assert with_bias.score(n) != without.score(n)


def test_model_restored_when_the_block_raises(wrapped):
    model, _ = wrapped
    before = _state(model)
    with pytest.raises(RuntimeError, match="inside"):
        with prune(model, [WRAPPER_NEURON, "blocks.0.attn.c_attn[32]"]):
            raise RuntimeError("inside")
    assert _same_state(model, before)


def test_neuron_names_and_errors(wrapped):
    model, _ = wrapped
    n = Neuron.parse("blocks.0.mlp.c_fc[0]")
    assert (n.layer, n.module, n.index) == (0, "mlp.c_fc", 0) and str(n) == "blocks.0.mlp.c_fc[0]"
    with pytest.raises(ValueError, match="not a neuron name"):
        Neuron.parse("blocks.0.mlp.c_fc")
    with pytest.raises(ValueError, match="no prunable module 'mlp.act'"):
        with prune(model, ["blocks.0.mlp.act[0]"]):
            pass
    with pytest.raises(ValueError, match="has 64 output units"):
        with prune(model, ["blocks.0.mlp.c_fc[64]"]):
            pass
    with pytest.raises(ValueError, match="no prunable module"):
        with prune(model, ["blocks.3.mlp.c_fc[0]"]):
            pass
