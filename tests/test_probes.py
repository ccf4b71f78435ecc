"""Per-block linear probes (`mechcheck.interventions.probes`) on a model whose answer-position residual stream is
known: the two-layer `relay_model` copies the source token (A / B) into the answer position in block 0 and keeps
it through block 1, so the source is linearly present after blocks 0 and 1 and absent from the embeddings (the
answer position holds the same "?" token in every prompt).

- the probe reads 1.0 after blocks 0 and 1, chance at the embeddings; the shuffled-label null stays near chance;
- the untrained-model null: on this task a randomly initialised GPT-2 also reads the source (its attention
  averages every earlier token into the answer position), which is what that null is for; a given model whose
  activations carry nothing gives chance;
- reads are the residual stream at the answer position (checked against the hand computation), multinomial
  labels work, results are deterministic in the seed, and bad labels are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechcheck.interventions.probes import block_probes, block_reads, block_sites, fit_probe, untrained_like
from mechcheck.known_answer import relay_model
from mechcheck.models import prepare
from mechcheck.tasks.toy import make_copy_first

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def relay():
    return prepare(relay_model(), "cpu"), make_copy_first(6).sample(200, "eval", 0)


@pytest.fixture(scope="module")
def result(relay):
    model, batch = relay
    return block_probes(model, batch, "source", seed=0)


def test_sites_are_the_embeddings_then_each_block():
    assert block_sites(2) == ["blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_reads_are_the_residual_stream_at_the_answer(relay):
    model, batch = relay
    X = block_reads(model, batch)
    assert X.shape == (3, 200, 16)
    assert np.ptp(X[0], axis=0).max() == 0.0  # embeddings of "?" at the last position: the same for every prompt
    sign = np.where(batch.labels["source"] == 0, 1.0, -1.0)
    # block 0's head writes the source sign / 6 (uniform attention over 6 positions) into dim 4
    np.testing.assert_allclose(X[1][:, 4], sign * X[1][:, 4].max(), rtol=1e-6)
    assert X[1][:, 4].max() > 0


def test_probe_finds_the_label_after_the_copying_block_only(result):
    assert result.blocks == [0, 1, 2]
    np.testing.assert_array_equal(result.accuracy[1:], [1.0, 1.0])
    assert result.accuracy[0] == pytest.approx(result.chance)  # nothing to read: the majority class
    assert 0.3 < result.chance < 0.7
    assert np.all(result.shuffled < 0.7)
    assert len(result.train) == len(result.test) == 100 and not set(result.train) & set(result.test)
    assert result.correct.shape == (3, 100) and result.not_converged == 0


def test_untrained_null(relay, result):
    model, batch = relay
    assert result.untrained[0] == pytest.approx(result.chance)
    # a random GPT-2's attention mixes the source token into the answer position too: this null is not at chance
    assert np.all(result.untrained[1:] > 0.9)
    blank = prepare(relay_model(), "cpu")
    with torch.no_grad():
        for p in blank.hf.parameters():
            p.zero_()  # every activation is 0
    given = block_probes(model, batch, "source", seed=0, untrained=blank)
    np.testing.assert_allclose(given.untrained, given.chance)
    assert block_probes(model, batch, "source", seed=0, untrained=False).untrained is None


def test_untrained_model_is_seeded_and_leaves_the_global_rng(relay):
    model, _ = relay
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = untrained_like(model, 0), untrained_like(model, 0), untrained_like(model, 1)
    assert torch.equal(torch.get_rng_state(), state)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.hf.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert type(a.hf) is type(model.hf) and a.hf.config.n_embd == model.hf.config.n_embd


def test_deterministic_in_the_seed(relay, result):
    model, batch = relay
    again = block_probes(model, batch, "source", seed=0)
    for field in ("accuracy", "shuffled", "untrained", "correct", "train", "test"):
        np.testing.assert_array_equal(getattr(again, field), getattr(result, field))
    other = block_probes(model, batch, "source", seed=1, untrained=False)
    assert not np.array_equal(other.test, result.test)


def test_multinomial_probe_and_labels_as_arrays(relay):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    X = rng.normal(size=(300, 6)) * 0.1
    X[np.arange(300), y] += 1.0  # class k lives along dimension k
    pred, ok = fit_probe(X[:150], y[:150], X[150:])
    assert ok and np.mean(pred == y[150:]) == 1.0
    pred, _ = fit_probe(X[:150], np.zeros(150, dtype=int), X[150:])
    assert np.all(pred == 0)  # one class in training: predicted as a constant
    model, batch = relay
    out = block_probes(model, batch, batch.labels["source"] * 2, seed=0, untrained=False)
    assert out.label == "label" and out.accuracy[1] == 1.0


def test_bad_labels(relay):
    model, batch = relay
    with pytest.raises(ValueError, match="no label 'count_a'"):
        block_probes(model, batch, "count_a")
    with pytest.raises(ValueError, match="one integer per example"):
        block_probes(model, batch, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="train_frac"):
        block_probes(model, batch, "source", train_frac=1.0)
