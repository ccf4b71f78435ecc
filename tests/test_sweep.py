"""`interventions.ablation_sweep` against the slow, obvious way: `interventions.run` with the same intervention.

With ``shortcuts=False`` the sweep runs whole Hugging Face blocks from the clean run's kept inputs: the very
arithmetic of a full forward pass, so its effects are bit-identical to `run`'s. With the shortcuts (GPT-2:
the first ablated layer's attention reused, the last block at the answer position only) the same sums are
computed in another order or over fewer rows (matrix products of other shapes round differently), so they
agree to float rounding (<= 1e-6 here). Activation patching is also checked against TransformerLens' own
`patching.get_act_patch_attn_head_out_all_pos` (the reference implementation).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mechcheck.interventions import Ablate, Job, Patch, Read, Site, ablation_sweep, reference, run
from mechcheck.models import build_gpt2, prepare
from mechcheck.tasks import TaskBatch

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUNDING = 1e-6
VOCAB = 12


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(rng: np.random.Generator, n: int, T: int, padded: bool) -> TaskBatch:
    """Random prompts, right-padded to T when `padded` (answer read at each row's last token)."""
    lengths = rng.integers(2, T + 1, n) if padded else np.full(n, T)
    tokens = rng.integers(1, VOCAB, (n, T))
    tokens[np.arange(T)[None, :] >= lengths[:, None]] = 0
    return TaskBatch(tokens=tokens, answer_pos=lengths - 1, target=rng.integers(0, 3, n), candidates=[3, 5, 7],
                     groups={})


@st.composite
def cases(draw):
    """A random tiny GPT-2, a clean and a corrupted batch (same lengths), and jobs of one or several heads."""
    L, H = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    model = prepare(build_gpt2({"n_layer": L, "n_head": H, "n_embd": 4 * H}, VOCAB, 10), "cpu")
    rng = np.random.default_rng(seed)
    n, T, padded = draw(st.integers(1, 7)), draw(st.integers(2, 8)), draw(st.booleans())
    corrupted = _batch(rng, n, T, padded)
    clean = _batch(rng, n, T, False)
    clean.tokens[corrupted.tokens == 0] = 0  # the same padding: a source aligned position by position
    heads = [(layer, head) for layer in range(L) for head in range(H)]
    jobs = [Job((h,)) for h in heads]
    jobs += [Job(tuple(draw(st.lists(st.sampled_from(heads), min_size=1, max_size=4, unique=True))))
             for _ in range(draw(st.integers(0, 3)))]
    positions = draw(st.sampled_from(["all", "answer", (0,), (0, 1)]))
    return model, clean, corrupted, jobs, positions, draw(st.integers(1, 3)), draw(st.integers(1, 4))


def _z_sources(model, batch):
    sites = [Site(layer, "z").name for layer in range(model.n_layers)]
    return run(model, batch, read=[Read(s, at="all") for s in sites]).reads


def _one_by_one(model, batch, jobs, make, batch_size=500):
    """(n, len(jobs)) clean minus intervened `logit_diff` and `accuracy`, one `run` per job."""
    base = run(model, batch, batch_size=batch_size).metrics
    out = {m: np.zeros((len(batch), len(jobs)), dtype=np.float32) for m in base}
    for j, job in enumerate(jobs):
        got = run(model, batch, [make(layer, hs) for layer, hs in job.by_layer().items()],
                  batch_size=batch_size).metrics
        for m in base:
            out[m][:, j] = base[m] - got[m]
    return base, out


def _check(model, batch, jobs, make, per_pass, batch_size, **kwargs):
    base, expected = _one_by_one(model, batch, jobs, make, batch_size)  # the same chunks: the same bits
    exact = ablation_sweep(model, batch, jobs, shortcuts=False, per_pass=1, batch_size=batch_size, **kwargs)
    for m in base:
        np.testing.assert_array_equal(exact.clean[m], base[m])
        np.testing.assert_array_equal(exact.effects[m], expected[m])  # bit-identical
    fast = ablation_sweep(model, batch, jobs, per_pass=per_pass, batch_size=batch_size, **kwargs)
    np.testing.assert_array_equal(fast.clean["logit_diff"], base["logit_diff"])
    np.testing.assert_allclose(fast.effects["logit_diff"], expected["logit_diff"], rtol=0, atol=ROUNDING)


@SETTINGS
@given(cases())
def test_patch_sweep_is_run_with_the_same_patch(case):
    model, clean, corrupted, jobs, positions, per_pass, batch_size = case
    source = _z_sources(model, clean)
    _check(model, corrupted, jobs, lambda layer, hs: Patch(Site(layer, "z"), source[Site(layer, "z").name], hs,
                                                           positions),
           per_pass, batch_size, method="patch", source=source, positions=positions)


@SETTINGS
@given(cases(), st.sampled_from(["zero", "mean", "resample"]))
def test_ablation_sweep_is_run_with_the_same_ablation(case, method):
    model, _, batch, jobs, positions, per_pass, batch_size = case
    if method == "resample":  # resampling needs prompts of one length
        batch.tokens[batch.tokens == 0] = 1
        batch.answer_pos[:] = batch.tokens.shape[1] - 1
    ref = reference(model, batch, [Site(layer, "z") for layer in range(model.n_layers)],
                    examples=method == "resample")
    _check(model, batch, jobs, lambda layer, hs: Ablate(Site(layer, "z"), hs, method, positions, ref),
           per_pass, batch_size, method=method, positions=positions, reference=ref)


def test_patch_sweep_matches_transformer_lens_patching():
    from transformer_lens import patching

    from mechcheck.models import bridge

    torch.manual_seed(1)
    hf = build_gpt2({"n_layer": 3, "n_head": 4, "n_embd": 32}, VOCAB, 10)
    model, tl = prepare(hf, "cpu"), bridge(hf)
    rng = np.random.default_rng(1)
    clean, corrupted = _batch(rng, 6, 7, False), _batch(rng, 6, 7, False)
    target = rng.integers(0, 2, 6)
    for b in (clean, corrupted):  # two candidates: mechcheck's logit_diff is then correct minus the other
        b.candidates, b.target = [3, 5], target
    correct, other = torch.tensor([3, 5])[target], torch.tensor([5, 3])[target]
    rows = torch.arange(6)

    def metric(logits):  # (B, T, V) -> (B,): correct minus other candidate at the last position
        return logits[rows, -1, correct] - logits[rows, -1, other]

    with torch.no_grad():
        _, cache = tl.run_with_cache(torch.as_tensor(clean.tokens))
        unpatched = metric(tl(torch.as_tensor(corrupted.tokens)))
        res = patching.get_act_patch_attn_head_out_all_pos(tl, torch.as_tensor(corrupted.tokens), cache, metric,
                                                           reduce="none")
    jobs = [Job(((layer, head),)) for layer in range(3) for head in range(4)]
    out = ablation_sweep(model, corrupted, jobs, method="patch", source=_z_sources(model, clean))
    expected = (unpatched - res.values).permute(2, 0, 1).reshape(6, 12).numpy()  # (n, L * H)
    np.testing.assert_allclose(out.effects["logit_diff"], expected, rtol=0, atol=1e-5)


def test_patching_the_one_head_that_copies_moves_every_answer():
    """Known answer: head (0, 0) alone carries the source token; patching its z from prompts with the other
    source makes every answer the other one, and head (0, 1) (read, never written) changes nothing."""
    from mechcheck.known_answer import single_head_copy_model
    from mechcheck.tasks.toy import make_copy_first

    model = prepare(single_head_copy_model(6), "cpu")
    batch = make_copy_first(6).sample(50, "eval", 0)
    flipped = batch.subset(np.arange(len(batch)))
    a, b = batch.candidates
    flipped.tokens[:, 0] = np.where(batch.tokens[:, 0] == a, b, a)
    jobs = [Job(((0, 0),)), Job(((0, 1),))]
    out = ablation_sweep(model, batch, jobs, method="patch", source=_z_sources(model, flipped))
    assert np.all(out.clean["accuracy"] == 1.0)
    assert np.all(out.effects["accuracy"][:, 0] == 1.0) and np.all(out.effects["accuracy"][:, 1] == 0.0)


def test_gpt2_shortcuts_are_the_block_up_to_rounding():
    """The adapter's pieces against the Hugging Face block they stand in for."""
    torch.manual_seed(2)
    model = prepare(build_gpt2({"n_layer": 2, "n_head": 4, "n_embd": 32}, VOCAB, 10), "cpu")
    hf, adapter = model.hf, model.adapter
    assert adapter.shortcuts(hf)
    tokens = torch.randint(1, VOCAB, (5, 7))
    pos = torch.tensor([6, 3, 0, 5, 6])
    rows = torch.arange(5)
    kept = {}
    hf.transformer.h[1].register_forward_pre_hook(lambda m, a, kw: kept.update(a=a, kw=kw), with_kwargs=True)
    with torch.no_grad():
        hf.transformer(tokens, use_cache=False)
        block = hf.transformer.h[1]
        full = block(*kept["a"], **kept["kw"])
        at = adapter.block_at(hf, 1, kept["a"][0], pos, kept["a"], kept["kw"])
        torch.testing.assert_close(at, full[rows, pos], rtol=0, atol=ROUNDING)
        # a change dz of heads 1 and 3's z, added through their rows of W_O, then the MLP half
        x, z, dz = kept["a"][0], torch.randn(5, 7, 32), torch.randn(5, 7, 2, 8)  # z: any (B, T, H * d_head)
        got = adapter.after_attention(hf, 1, x + block.attn.c_proj(z) + adapter.head_write(hf, 1, dz, (1, 3)))
        mid = x + block.attn.c_proj(_with(z, dz))
        torch.testing.assert_close(got, mid + block.mlp(block.ln_2(mid)), rtol=0, atol=ROUNDING)
        h = torch.randn(5, 32)
        torch.testing.assert_close(adapter.unembed_ids(hf, h, [3, 5]), adapter.unembed(hf, h)[:, [3, 5]], rtol=0,
                                   atol=ROUNDING)


def _with(z, dz):
    """z (B, T, 4 * 8) with heads 1 and 3 changed by dz (B, T, 2, 8)."""
    out = z.clone().view(*z.shape[:-1], 4, 8)
    out[:, :, [1, 3]] += dz
    return out.view(z.shape)


def test_bert_has_no_shortcuts_and_sweeps_whole_blocks_bit_identically():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=10)
    model = prepare(BertForMaskedLM(cfg), "cpu")
    assert not model.adapter.shortcuts(model.hf)
    batch = _batch(np.random.default_rng(3), 6, 7, True)
    jobs = [Job(((layer, head),)) for layer in range(2) for head in range(2)] + [Job(((0, 1), (1, 0)))]
    _, expected = _one_by_one(model, batch, jobs, lambda layer, hs: Ablate(Site(layer, "z"), hs))
    out = ablation_sweep(model, batch, jobs)  # shortcuts asked for, but BERT has none: whole blocks
    np.testing.assert_array_equal(out.effects["logit_diff"], expected["logit_diff"])


def test_patch_sweep_needs_a_source_of_every_layer_it_patches():
    torch.manual_seed(0)
    model = prepare(build_gpt2({"n_layer": 2, "n_head": 2, "n_embd": 8}, VOCAB, 10), "cpu")
    batch = _batch(np.random.default_rng(0), 3, 4, False)
    with pytest.raises(ValueError, match="need a source"):
        ablation_sweep(model, batch, [Job(((0, 0),))], method="patch")
    source = {"blocks.0.attn.hook_z": np.zeros((3, 4, 2, 4), dtype=np.float32)}
    with pytest.raises(ValueError, match=r"holds no blocks\.1\.attn\.hook_z"):
        ablation_sweep(model, batch, [Job(((1, 0),))], method="patch", source=source)
    with pytest.raises(ValueError, match="zero, mean, resample or patch"):
        ablation_sweep(model, batch, [Job(((0, 0),))], method="swap")
