"""Hand-built models whose mechanism is known exactly, to test the harness against the truth.

`single_head_copy_model` solves the `copy_first` task through **one** attention head (layer 0, head 0) and
nothing else: a claim that this head matters must pass, and a claim that any other head matters must fail.

Construction (GPT-2, 1 layer, 2 heads, d_model 16, d_head 8, untied unembedding):
- embeddings: A = +e0 - e1, B = -e0 + e1, every other token = +e2 - e3 (zero mean, so LayerNorm keeps the sign);
- attention: W_Q = W_K = 0, so every head attends uniformly to the positions it can see;
- values: both heads copy residual dim 0 (the A/B sign) into their first value dimension;
- W_O: only head 0's first value dimension is written, into residual dim 4; head 1 is read but never written,
  so its z carries the answer yet cannot affect the output (a stricter "unused head" than a dead one);
- MLP: output weights zero; unembedding: logit(A) = +10 * dim 4, logit(B) = -10 * dim 4.
At the last position head 0 contributes (sign of the source) / T to dim 4, so the model is always right; zero-
ablating head 0 leaves dim 4 at 0, the two logits tie, and every answer is wrong (ties count as wrong).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["single_head_copy_model", "save_single_head_copy_model"]


def single_head_copy_model(length: int = 6):
    """The GPT-2 described above, for the `copy_first` task of the given prompt length."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechcheck.tasks.toy import make_copy_first

    task = make_copy_first(length)
    vocab = task.vocab
    d, n_head = 16, 2
    d_head = d // n_head
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=length + 2, n_embd=d, n_layer=1, n_head=n_head,
                     tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in (model.transformer.h[0].ln_1, model.transformer.h[0].ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        wte = model.transformer.wte.weight
        for word, i in vocab.ids.items():
            if word == "A":
                wte[i, 0], wte[i, 1] = 1.0, -1.0
            elif word == "B":
                wte[i, 0], wte[i, 1] = -1.0, 1.0
            else:
                wte[i, 2], wte[i, 3] = 1.0, -1.0
        c_attn = model.transformer.h[0].attn.c_attn.weight  # (d, 3d) = [q | k | v], Conv1D is x @ W
        for head in range(n_head):
            c_attn[0, 2 * d + head * d_head] = 1.0  # both heads' first value dim reads the A/B sign
        c_proj = model.transformer.h[0].attn.c_proj.weight  # (d, d): z (head-major) -> residual
        c_proj[0 * d_head + 0, 4] = 1.0  # only head 0 writes
        lm_head = model.lm_head.weight  # (vocab, d)
        lm_head[vocab.ids["A"], 4] = 10.0
        lm_head[vocab.ids["B"], 4] = -10.0
    cfg.architectures = ["GPT2LMHeadModel"]
    return model.eval()


def save_single_head_copy_model(path: Path | str, length: int = 6) -> Path:
    """Write the model as a Hugging Face directory (config.json + model.safetensors) for `recipe: load`."""
    path = Path(path)
    single_head_copy_model(length).save_pretrained(path, safe_serialization=True)
    return path
