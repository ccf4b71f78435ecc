"""Circuits, cross-model patching and path patching (`mechcheck.interventions.circuits`, `cmap`, `paths`).

- a `Circuit` is plain data (round trip, clear errors); position keys resolve per example from the batch;
- keeping only a circuit equals the same edit written directly on the TransformerLens bridge (GPT-2, BERT),
  with heads at different positions in every example; the means it uses are per position, padding left out;
- the known-answer models: the circuit that carries the answer is exactly faithful (1.0), its complement and
  random circuits avoiding it are at chance;
- random circuits keep each group's size and position and are fixed by their seed;
- CMAP of a model into itself changes no bit; CMAP of every head at every position from F into a B that
  differs from F only in its attention's q/k/v weights gives F's logits; CMAP of the carrying head repairs a
  broken known-answer model; CMAP equals the bridge;
- path patching equals a bridge implementation of its three steps, and on the known-answer relay model finds
  the head that carries the answer into the receiver (the others score exactly 0).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mechcheck import interventions as iv
from mechcheck.known_answer import relay_model, single_head_copy_model
from mechcheck.models import bridge, build_gpt2, prepare
from mechcheck.tasks import TaskBatch
from mechcheck.tasks.toy import make_copy_first
from test_interventions import _spread  # weights far from the initialiser, norms around 1

TOL = dict(rtol=1e-5, atol=1e-5)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gpt2(seed: int, n_layer: int = 2, n_head: int = 3, d_head: int = 4, vocab: int = 17):
    torch.manual_seed(seed)
    return prepare(_spread(build_gpt2({"n_layer": n_layer, "n_head": n_head, "n_embd": n_head * d_head}, vocab, 16),
                           seed), "cpu")


def bert(seed: int):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(vocab_size=17, hidden_size=12, num_hidden_layers=2, num_attention_heads=3, intermediate_size=24,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     attn_implementation="eager")
    torch.manual_seed(seed)
    hf = BertForMaskedLM(cfg)
    hf.config.architectures = ["BertForMaskedLM"]
    return prepare(_spread(hf, seed), "cpu")


def aligned_batch(n: int = 12, T: int = 9, seed: int = 0) -> TaskBatch:
    """Random prompts of one length, with a query label and a previous label at other positions per example."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 17, (n, T))
    query = rng.integers(T - 4, T - 1, n)
    prev = rng.integers(0, T - 4, n)
    labels = {"query_label_pos": query, "prev_label_pos": prev, "slot": rng.integers(0, T, n)}
    return TaskBatch(tokens, np.full(n, T - 1), rng.integers(0, 3, n), [3, 4, 5], {}, labels, pad_id=0)


CIRCUIT = iv.Circuit({
    "mover": ("last", [(1, 0), (1, 2)]),
    "transmit": ("last", [(0, 1)]),
    "detect": ("query_label", [(0, 0), (1, 2)]),  # (1, 2) also in another group, at another position
    "read": ("prev_label", [(0, 2)]),
})


def bridge_keep_only(circuit: iv.Circuit, batch: TaskBatch, means: dict[int, np.ndarray]):
    """The same edit as `keep_only`, written on the bridge's hook_z example by example."""
    where = {"last": batch.answer_pos, "query_label": batch.labels["query_label_pos"],
             "prev_label": batch.labels["prev_label_pos"]}

    def make(layer):
        def fn(z, hook):  # (B, T, H, d_head)
            out = torch.as_tensor(means[layer]).expand_as(z).clone()
            for g in circuit.groups.values():
                for la, h in g.heads:
                    if la != layer:
                        continue
                    for i in range(z.shape[0]):
                        p = int(where[g.position][i])
                        out[i, p, h] = z[i, p, h]
            return out
        return fn

    return [(f"blocks.{layer}.attn.hook_z", make(layer)) for layer in means]


def bridge_logits(br, batch, fwd_hooks=()):
    with torch.no_grad():
        logits = br.run_with_hooks(torch.as_tensor(batch.tokens), fwd_hooks=list(fwd_hooks))
    return logits[torch.arange(len(batch)), torch.as_tensor(batch.answer_pos)]


# --------------------------------------------------------------------------------------------- the data


def test_a_circuit_is_plain_data_and_bad_input_is_a_clear_error():
    data = CIRCUIT.to_dict()
    assert data["detect"] == {"position": "query_label", "heads": [[0, 0], [1, 2]]}
    assert iv.Circuit.from_dict(data) == CIRCUIT and iv.Circuit.from_dict(data).to_dict() == data
    assert CIRCUIT.sizes() == {"mover": 2, "transmit": 1, "detect": 2, "read": 1}
    assert CIRCUIT.heads == {(1, 0), (1, 2), (0, 1), (0, 0), (0, 2)}
    with pytest.raises(ValueError, match="exactly the keys position and heads"):
        iv.Circuit.from_dict({"a": {"position": "last"}})
    with pytest.raises(ValueError, match=r"\[layer, head\] with both >= 0"):
        iv.Circuit({"a": ("last", [(0, -1)])})
    with pytest.raises(ValueError, match="lists a head twice"):
        iv.Circuit({"a": ("last", [(0, 1), (0, 1)])})
    with pytest.raises(ValueError, match=r"group 'a': head \[2, 0\] does not exist \(2 layers x 3 heads\)"):
        iv.Circuit({"a": ("last", [(2, 0)])}).check(2, 3)


def test_position_keys_resolve_per_example():
    batch = aligned_batch()
    pos = iv.positions_of(["last", "query_label", "prev_label", "slot", "mine", "all"], batch,
                          {"mine": np.arange(12) % 9})
    np.testing.assert_array_equal(pos["last"], batch.answer_pos)
    np.testing.assert_array_equal(pos["query_label"], batch.labels["query_label_pos"])
    np.testing.assert_array_equal(pos["prev_label"], batch.labels["prev_label_pos"])
    np.testing.assert_array_equal(pos["slot"], batch.labels["slot"])
    np.testing.assert_array_equal(pos["mine"], np.arange(12) % 9)
    assert pos["all"] == "all"
    with pytest.raises(ValueError, match="the batch has no label 'other'"):
        iv.positions_of(["other"], batch)
    with pytest.raises(ValueError, match=r"one integer position per example \(12,\)"):
        iv.positions_of(["x"], batch, {"x": np.zeros(5, dtype=int)})
    with pytest.raises(ValueError, match="example 0 has position 9, outside its prompt"):
        iv.positions_of(["x"], batch, {"x": np.full(12, 9)})
    padded = copy.deepcopy(batch)
    padded.tokens[0, 6:] = 0  # right padding: positions 6.. of example 0 are not in its prompt
    with pytest.raises(ValueError, match="example 0 has position 7"):
        iv.positions_of(["x"], padded, {"x": np.full(12, 7)})


# ----------------------------------------------------------------------------------- keeping the circuit


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_keeping_only_the_circuit_equals_the_bridge(arch):
    model = gpt2(0) if arch == "gpt2" else bert(0)
    batch, ref_batch = aligned_batch(seed=0), aligned_batch(n=20, seed=1)
    ref = iv.circuit_reference(model, ref_batch)
    means = {layer: ref.means[f"blocks.{layer}.attn.hook_z"] for layer in range(model.n_layers)}
    br = bridge(model.hf)
    got = iv.circuit_accuracy(model, CIRCUIT, batch, ref)
    want = bridge_logits(br, batch, bridge_keep_only(CIRCUIT, batch, means))[:, batch.candidates].numpy()
    np.testing.assert_allclose(got.candidate_logits, want, **TOL)
    clean = iv.run(model, batch).candidate_logits
    nothing = iv.circuit_accuracy(model, iv.Circuit({}), batch, ref).candidate_logits
    assert np.abs(got.candidate_logits - clean).max() > 1e-2  # the circuit is not the model
    assert np.abs(got.candidate_logits - nothing).max() > 1e-2  # and the kept heads do matter


def test_the_means_are_per_position_and_every_other_head_output_is_its_mean():
    model = gpt2(1)
    batch, ref_batch = aligned_batch(seed=2), aligned_batch(n=30, seed=3)
    ref = iv.circuit_reference(model, ref_batch)
    sites = [f"blocks.{layer}.attn.hook_z" for layer in range(2)]
    per_example = iv.run(model, ref_batch, read=[iv.Read(s, at="all") for s in sites]).reads
    for s in sites:
        np.testing.assert_allclose(ref.means[s], per_example[s].mean(0), rtol=1e-6, atol=1e-6)
        assert np.abs(np.diff(ref.means[s], axis=0)).max() > 1e-2  # one mean per position, not one overall
    edits = iv.keep_only(model, CIRCUIT, batch, ref)
    z = iv.run(model, batch, edits, read=[iv.Read(s, at="all") for s in sites]).reads
    kept = np.zeros((len(batch), 9, 2, 3), dtype=bool)  # (example, position, layer, head)
    where = iv.positions_of(["last", "query_label", "prev_label"], batch)
    for g in CIRCUIT.groups.values():
        for layer, head in g.heads:
            kept[np.arange(len(batch)), where[g.position], layer, head] = True
    for layer, s in enumerate(sites):
        mean = np.broadcast_to(ref.means[s], z[s].shape)
        off = ~kept[:, :, layer]
        np.testing.assert_array_equal(z[s][off], mean[off])
        assert np.abs(z[s][kept[:, :, layer]] - mean[kept[:, :, layer]]).max() > 1e-3  # kept heads are not means


def test_padded_reference_means_leave_padding_out_and_lengths_must_match():
    model = gpt2(2)
    ref_batch = aligned_batch(n=6, seed=4)
    ref_batch.tokens[[0, 3], 5:] = 0  # two right-padded prompts
    ref = iv.circuit_reference(model, ref_batch)
    acts = iv.run(model, ref_batch, read=[iv.Read("blocks.1.attn.hook_z", at="all")]).reads["blocks.1.attn.hook_z"]
    valid = iv.valid_positions(ref_batch.tokens, 0)
    want = (acts * valid[:, :, None, None]).sum(0) / valid.sum(0)[:, None, None]
    np.testing.assert_allclose(ref.means["blocks.1.attn.hook_z"], want, rtol=1e-6, atol=1e-6)
    short = iv.circuit_reference(model, aligned_batch(n=4, T=7, seed=5))
    with pytest.raises(ValueError, match="cover 7 positions, the batch has 9"):
        iv.keep_only(model, CIRCUIT, aligned_batch(), short)


@pytest.fixture(scope="module")
def copy_task():
    return make_copy_first(6).sample(200, "eval", 0)


def test_known_answer_circuit_is_exactly_faithful_and_its_complement_is_at_chance(copy_task):
    model, batch = prepare(single_head_copy_model(6), "cpu"), copy_task
    ref = iv.circuit_reference(model, batch)
    share_b = batch.target.mean()  # under the mean, every prompt gets the mean source sign's answer: B
    assert share_b == pytest.approx(0.53)
    circuit = iv.Circuit({"copy": ("answer_slot", [(0, 0)])})  # positions as an array, under any key
    f = iv.faithfulness(model, circuit, batch, ref, positions={"answer_slot": batch.answer_pos}, n_random=0)
    assert f.model.mean() == 1.0 and f.faithfulness == 1.0
    complement = iv.Circuit({"rest": ("last", [(0, 1)])})
    assert iv.faithfulness(model, complement, batch, ref).faithfulness == pytest.approx(share_b)
    avoiding = iv.random_circuits(circuit, 1, 2, 3, seed=0, avoid=circuit.heads)
    for c in avoiding:
        assert c.heads == {(0, 1)}
        assert iv.circuit_accuracy(model, c, batch, ref, positions={"answer_slot": batch.answer_pos}) \
            .metrics["accuracy"].mean() == pytest.approx(share_b)
    elsewhere = iv.Circuit({"copy": ("source", [(0, 0)])})  # the right head at the wrong position
    assert iv.faithfulness(model, elsewhere, batch, ref, positions={"source": np.zeros(200, int)}).faithfulness \
        == pytest.approx(share_b)


def test_known_answer_relay_circuit_is_the_model(copy_task):
    model, batch = prepare(relay_model(6), "cpu"), copy_task
    ref = iv.circuit_reference(model, batch)
    circuit = iv.Circuit({"mover": ("last", [(1, 0)]), "copy": ("all", [(0, 0)])})
    clean = iv.run(model, batch)
    kept = iv.circuit_accuracy(model, circuit, batch, ref)
    assert clean.metrics["accuracy"].mean() == 1.0
    np.testing.assert_allclose(kept.candidate_logits, clean.candidate_logits, rtol=1e-6)  # nothing else writes
    f = iv.faithfulness(model, circuit, batch, ref, n_random=4, seed=1)
    assert f.faithfulness == 1.0 and f.random.shape == (4, 200)
    without_copy = iv.Circuit({"mover": ("last", [(1, 0)])})
    assert iv.faithfulness(model, without_copy, batch, ref).faithfulness == pytest.approx(0.53)


def test_random_circuits_keep_group_sizes_and_are_fixed_by_their_seed():
    draws = iv.random_circuits(CIRCUIT, 4, 5, 20, seed=7)
    assert draws == iv.random_circuits(CIRCUIT, 4, 5, 20, seed=7)
    assert draws != iv.random_circuits(CIRCUIT, 4, 5, 20, seed=8)
    seen = set()
    for c in draws:
        assert c.sizes() == CIRCUIT.sizes()
        assert {n: g.position for n, g in c.groups.items()} == {n: g.position for n, g in CIRCUIT.groups.items()}
        c.check(4, 5)
        seen |= c.heads
    assert len(seen) > 15  # uniform over the 20 heads, not a fixed few
    avoid = [(la, h) for la in range(4) for h in range(5) if (la, h) != (3, 4)][:18]
    for c in iv.random_circuits(CIRCUIT, 4, 5, 5, seed=0, avoid=avoid):
        assert not c.heads & set(avoid)
    with pytest.raises(ValueError, match="group 'mover' has 2 heads, but only 1 heads can be drawn"):
        iv.random_circuits(CIRCUIT, 1, 1, 1)


# ---------------------------------------------------------------------------------------------- CMAP


@pytest.mark.parametrize("site", ["z", "q", "k", "v"])
def test_cmap_of_a_model_into_itself_changes_nothing(site):
    model, batch = gpt2(3), aligned_batch(seed=6)
    out = iv.cmap(model, model, batch, CIRCUIT, site=site)
    np.testing.assert_array_equal(out.candidate_logits, iv.run(model, batch).candidate_logits)


def test_cmap_of_every_head_everywhere_gives_the_source_when_only_attention_qkv_differs():
    """B is F with other q/k/v weights: with all of F's head outputs written in, B computes F."""
    f, batch = gpt2(4), aligned_batch(seed=7)
    b_hf = copy.deepcopy(f.hf)
    with torch.no_grad():
        for block in b_hf.transformer.h:
            block.attn.c_attn.weight.normal_(0, 0.3)
    b = prepare(b_hf, "cpu")
    every = iv.Circuit({"all": ("all", [(la, h) for la in range(2) for h in range(3)])})
    want = iv.run(f, batch).candidate_logits
    assert np.abs(iv.run(b, batch).candidate_logits - want).max() > 1e-2
    np.testing.assert_allclose(iv.cmap(b, f, batch, every).candidate_logits, want, **TOL)


def test_cmap_of_the_carrying_head_repairs_a_broken_known_answer_model(copy_task):
    batch = copy_task
    fine = prepare(single_head_copy_model(6), "cpu")
    broken_hf = single_head_copy_model(6)
    with torch.no_grad():
        broken_hf.transformer.h[0].attn.c_attn.weight[0, 2 * 16] = -1.0  # head 0 copies the sign flipped
    base = prepare(broken_hf, "cpu")
    assert iv.run(base, batch).metrics["accuracy"].mean() == 0.0
    carrying = iv.cmap(base, fine, batch, iv.Circuit({"copy": ("last", [(0, 0)])}))
    assert carrying.metrics["accuracy"].mean() == 1.0
    other = iv.cmap(base, fine, batch, iv.Circuit({"copy": ("last", [(0, 1)])}))
    assert other.metrics["accuracy"].mean() == 0.0


def test_cmap_equals_the_bridge():
    base, source, batch = gpt2(5), gpt2(6), aligned_batch(seed=8)
    seen = {}

    def grab(name):
        def fn(z, hook):
            seen[name] = z.detach().clone()
        return fn

    sites = ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    bridge_logits(bridge(source.hf), batch, [(s, grab(s)) for s in sites])
    where = iv.positions_of(["last", "query_label", "prev_label"], batch)

    def make(layer):
        def fn(z, hook):
            z = z.clone()
            for g in CIRCUIT.groups.values():
                for la, h in g.heads:
                    if la == layer:
                        for i in range(len(batch)):
                            p = int(where[g.position][i])
                            z[i, p, h] = seen[sites[layer]][i, p, h]
            return z
        return fn

    want = bridge_logits(bridge(base.hf), batch, [(sites[layer], make(layer)) for layer in range(2)])
    got = iv.cmap(base, source, batch, CIRCUIT).candidate_logits
    np.testing.assert_allclose(got, want[:, batch.candidates].numpy(), **TOL)
    assert np.abs(got - iv.run(base, batch).candidate_logits).max() > 1e-2
    with pytest.raises(ValueError, match="models of one shape"):
        iv.cmap(base, gpt2(0, n_head=2), batch, CIRCUIT)


# --------------------------------------------------------------------------------------- path patching


def _flipped(batch: TaskBatch) -> TaskBatch:
    """The copy_first prompts with the source token swapped: every answer is the other one."""
    out = batch.subset(np.arange(len(batch)))
    a, b = batch.candidates
    out.tokens = out.tokens.copy()
    out.tokens[:, 0] = np.where(batch.tokens[:, 0] == a, b, a)
    out.target = 1 - batch.target
    return out


def test_path_patching_finds_the_head_that_carries_the_answer(copy_task):
    batch = copy_task
    direct = iv.path_patching(prepare(single_head_copy_model(6), "cpu"), batch, _flipped(batch))
    assert direct.senders == [(0, 0), (0, 1)]
    assert direct.mean_score[0] < -0.99 and np.all(direct.score[:, 1] == 0.0)
    relay = prepare(relay_model(6), "cpu")
    into = iv.path_patching(relay, batch, _flipped(batch), receivers=[(1, 0, "v")])
    assert into.senders == [(0, 0), (0, 1)]  # only heads below the receiver
    assert into.ranked()[0][0] == (0, 0) and into.mean_score[0] < -1e-3
    assert np.all(into.score[:, 1] == 0.0)  # L0H1 writes nothing: exactly no effect
    assert np.all(iv.path_patching(relay, batch, _flipped(batch), receivers=[(1, 1, "v")]).score[:, 1] == 0.0)
    # L0H0's effect goes through L1H0, not directly to the logits; L1H0 carries it directly
    relay_direct = iv.path_patching(relay, batch, _flipped(batch))
    scores = dict(relay_direct.ranked())
    assert scores[(1, 0)] < -0.99 and abs(scores[(0, 0)]) < 1e-2 and scores[(0, 1)] == scores[(1, 1)] == 0.0


@pytest.mark.parametrize("which, sender, receiver", [("q", "last", "last"), ("v", "query_label", "query_label"),
                                                     ("k", "prev_label", "all")])
def test_path_patching_equals_the_bridge(which, sender, receiver):
    """Steps 2 and 3 written on the bridge (split q/k/v inputs): sender L0H1 (its corrupted value from the
    corrupted prompt's own position), receivers L1H0 and L1H2, candidates' probabilities."""
    model, clean, corrupt = gpt2(7), aligned_batch(seed=9), aligned_batch(seed=10)
    got = iv.path_patching(model, clean, corrupt, [(0, 1)], sender_position=sender,
                           receivers=[(1, 0, which), (1, 2, which)], receiver_position=receiver, over="candidates")
    br = bridge(model.hf)
    br.set_use_split_qkv_input(True)
    z = [f"blocks.{la}.attn.hook_z" for la in range(2)]
    seen: dict = {}

    def grab(name, store):
        def fn(x, hook):
            store[name] = x.detach().clone()
        return fn

    clean_seen, corrupt_seen = {}, {}
    p_clean = bridge_logits(br, clean, [(s, grab(s, clean_seen)) for s in z])
    bridge_logits(br, corrupt, [(s, grab(s, corrupt_seen)) for s in z])
    rows = torch.arange(len(clean))
    def where(key, b):
        return torch.as_tensor(b.answer_pos if key == "last" else b.labels[f"{key}_pos"])

    s_clean, s_corrupt = where(sender, clean), where(sender, corrupt)

    def freeze(layer):
        def fn(x, hook):
            out = clean_seen[z[layer]].clone()
            if layer == 0:
                out[rows, s_clean, 1] = corrupt_seen[z[0]][rows, s_corrupt, 1]
            return out
        return fn

    site = f"blocks.1.hook_{which}_input"
    bridge_logits(br, clean, [(z[0], freeze(0)), (z[1], freeze(1)), (site, grab(site, seen))])

    def put(x, hook):
        x = x.clone()
        for h in (0, 2):
            if receiver == "all":
                x[:, :, h] = seen[site][:, :, h]
            else:
                r = where(receiver, clean)
                x[rows, r, h] = seen[site][rows, r, h]
        return x

    patched = bridge_logits(br, clean, [(site, put)])

    def prob(logits):
        return torch.softmax(logits[:, clean.candidates].double(), -1)[rows, torch.as_tensor(clean.target)].numpy()

    np.testing.assert_allclose(got.p_org, prob(p_clean), **TOL)
    np.testing.assert_allclose(got.p_patch[:, 0], prob(patched), **TOL)
    assert np.abs(got.score).max() > 1e-3
    one_by_one = iv.path_patching(model, clean, corrupt, [(0, 0), (0, 1)], sender_position=sender,
                                  receivers=[(1, 0, which), (1, 2, which)], receiver_position=receiver,
                                  over="candidates")
    np.testing.assert_array_equal(one_by_one.p_patch[:, 1], got.p_patch[:, 0])  # cached runs shared, not leaked


def test_per_example_positions_and_put_errors():
    model, batch = gpt2(8), aligned_batch(seed=11)
    with pytest.raises(ValueError, match=r"At needs one position >= 0 per example"):
        iv.At(np.array([0, -1]))
    with pytest.raises(ValueError, match="Put.at must be At"):
        iv.Put("blocks.0.attn.hook_z", np.zeros((12, 1, 4)), "answer", (0,))
    with pytest.raises(ValueError, match=r"Put values have shape \(2, 4\) per example, expected \(1, 4\)"):
        iv.run(model, batch, [iv.Put("blocks.0.attn.hook_z", np.zeros((12, 2, 4)), iv.At(batch.answer_pos), (0,))])
    with pytest.raises(ValueError, match="position 9 is beyond the prompt length 9"):
        iv.run(model, batch, read=[iv.Read("blocks.0.attn.hook_z", at=iv.At(np.full(12, 9)))])
    # At and "answer" are the same positions when At holds the answer positions
    at = iv.run(model, batch, [iv.Ablate("blocks.1.attn.hook_z", (1,), positions=iv.At(batch.answer_pos))],
                read=[iv.Read("blocks.0.attn.hook_z", at=iv.At(batch.answer_pos))])
    ans = iv.run(model, batch, [iv.Ablate("blocks.1.attn.hook_z", (1,), positions="answer")],
                 read=["blocks.0.attn.hook_z"])
    np.testing.assert_array_equal(at.candidate_logits, ans.candidate_logits)
    np.testing.assert_array_equal(at.reads["blocks.0.attn.hook_z"], ans.reads["blocks.0.attn.hook_z"])
