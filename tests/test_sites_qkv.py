"""q / k / v input sites: patching one head's input changes that head's projection only, as TransformerLens'
split-qkv hooks do (GPT-2: checked against the bridge; BERT, where the bridge has no such hook: against
replacing the self-attention's input by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechcheck.interventions import Patch, Read, run
from mechcheck.models import bridge, build_gpt2, prepare
from mechcheck.tasks import TaskBatch
from mechcheck.tasks.cdm import make_cdm


def _batches():
    task = make_cdm(vocab="words", max_number=9)
    return task, task.sample(24, "eval", 0), task.sample(24, "eval", 5)


def _per_head(resid: np.ndarray, heads: int) -> np.ndarray:
    return np.repeat(resid[:, :, None, :], heads, axis=2)  # (n, T, H, d)


@pytest.mark.parametrize("which", "qkv")
def test_gpt2_qkv_input_patch_matches_the_bridge(which):
    torch.manual_seed(0)
    task, batch, other = _batches()
    model = build_gpt2({"n_layer": 2, "n_head": 2, "n_embd": 16}, task.vocab_size, 16)
    handle = prepare(model, "cpu")
    ref = bridge(model)
    ref.set_use_split_qkv_input(True)
    site = f"blocks.1.attn.hook_{which}_input"
    source = _per_head(run(handle, other, read=[Read("blocks.1.hook_resid_pre", at="all")])
                       .reads["blocks.1.hook_resid_pre"], 2)
    ours = run(handle, batch, [Patch(site, source, units=(1,))]).candidate_logits

    def swap(x, hook):
        x = x.clone()
        x[:, :, 1] = torch.as_tensor(source[:, :, 1])
        return x

    logits = ref.run_with_hooks(torch.as_tensor(batch.tokens), fwd_hooks=[(site, swap)])
    theirs = logits[np.arange(len(batch)), batch.answer_pos][:, batch.candidates].detach().numpy()
    assert np.abs(ours - theirs).max() < 1e-5


def test_qkv_input_read_is_the_residual_stream_per_head_and_patching_it_back_is_exact():
    torch.manual_seed(1)
    task, batch, _ = _batches()
    handle = prepare(build_gpt2({"n_layer": 2, "n_head": 4, "n_embd": 32}, task.vocab_size, 16), "cpu")
    reads = run(handle, batch, read=[Read("blocks.1.attn.hook_k_input", at="all"),
                                     Read("blocks.1.hook_resid_pre", at="all")]).reads
    k_in = reads["blocks.1.attn.hook_k_input"]
    assert k_in.shape == (*reads["blocks.1.hook_resid_pre"].shape[:2], 4, 32)
    assert np.array_equal(k_in[:, :, 2], reads["blocks.1.hook_resid_pre"])
    clean = run(handle, batch).candidate_logits
    patched = run(handle, batch, [Patch("blocks.1.attn.hook_k_input", k_in)]).candidate_logits
    assert np.array_equal(clean, patched)  # unchanged heads keep the model's own output, bit for bit


def test_bert_qkv_inputs_of_every_head_equal_replacing_the_attention_input():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(2)
    cfg = BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32, vocab_size=30)
    cfg._attn_implementation = "eager"
    model = BertForMaskedLM(cfg).eval()
    rng = np.random.default_rng(0)

    def batch_of(tokens):
        return TaskBatch(tokens, np.full(len(tokens), 6), np.zeros(len(tokens), dtype=np.int64), [3, 4], {})

    batch, other = batch_of(rng.integers(1, 30, (6, 7))), batch_of(rng.integers(1, 30, (6, 7)))
    handle = prepare(model, "cpu")
    x_other = run(handle, other, read=[Read("blocks.1.hook_resid_pre", at="all")]).reads["blocks.1.hook_resid_pre"]
    source = _per_head(x_other, 2)
    ours = run(handle, batch, [Patch(f"blocks.1.attn.hook_{w}_input", source) for w in "qkv"]).candidate_logits

    attention = model.bert.encoder.layer[1].attention.self
    hook = attention.register_forward_pre_hook(lambda m, args: (torch.as_tensor(x_other), *args[1:]))
    try:
        reference = run(handle, batch).candidate_logits  # only self-attention reads the other input
    finally:
        hook.remove()
    assert np.abs(ours - reference).max() < 1e-5
    assert np.abs(ours - run(handle, batch).candidate_logits).max() > 1e-4  # the patch did something


@pytest.mark.parametrize("which", "qkv")
def test_llama_qkv_input_patch_matches_a_patched_projection(which):
    """Llama: q / k / v are separate projections of the RMS-normed residual, rotary positions applied after them.
    Patching head 1's input must equal computing its columns of that projection from the other residual."""
    from test_interventions import llama

    task, batch, other = _batches()
    handle = llama(0, n_layer=2, n_head=2, vocab=task.vocab_size)
    source = _per_head(run(handle, other, read=[Read("blocks.1.hook_resid_pre", at="all")])
                       .reads["blocks.1.hook_resid_pre"], 2)
    ours = run(handle, batch, [Patch(f"blocks.1.attn.hook_{which}_input", source, units=(1,))]).candidate_logits
    block = handle.hf.model.layers[1]
    proj = {"q": block.self_attn.q_proj, "k": block.self_attn.k_proj, "v": block.self_attn.v_proj}[which]
    d_head = block.self_attn.head_dim
    src = torch.as_tensor(source[:, :, 1])

    def replace(module, args, out):
        out = out.clone()
        out[..., d_head:2 * d_head] = block.input_layernorm(src) @ proj.weight[d_head:2 * d_head].T
        return out

    hook = proj.register_forward_hook(replace)
    try:
        theirs = run(handle, batch).candidate_logits
    finally:
        hook.remove()
    assert np.abs(ours - theirs).max() < 1e-5
    assert np.abs(ours - run(handle, batch).candidate_logits).max() > 1e-4  # the patch did something
