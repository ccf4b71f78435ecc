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
As a circuit (`mechcheck.interventions.Circuit`), ``{"copy": ("last", [(0, 0)])}`` is exactly faithful (1.0):
at the last position head 0 keeps its output, and nothing else reaches the answer; keeping only head 1
leaves head 0 at its mean everywhere, and every prompt gets the answer of the mean source sign (chance).

`relay_model` adds a second layer, so that the answer flows through a path of two heads:
- layer 0 is the model above (head 0 writes the source sign / (position + 1) into residual dim 4 at every
  position; head 1 writes nothing);
- layer 1: W_Q = W_K = 0 again; both heads' first value dimension reads dim 4 (through ln_1, which keeps its
  sign), and only head 0 writes, into dim 5; the unembedding reads dim 5 (logit(A) = +2 * dim 5, logit(B) =
  -2 * dim 5, small enough that the correct token's probability is not saturated).
So the answer is L0H0 (at every position) -> L1H0's values -> L1H0 at the last position -> logits: the circuit
``{"mover": ("last", [(1, 0)]), "copy": ("all", [(0, 0)])}`` is exactly faithful, path patching into L1H0's
value input finds L0H0 as the only sender that matters, and heads 1 of both layers carry nothing.

`wrapper_model` is a capability hidden under a one-neuron "wrapper" (as fine-tuning leaves one, Jain et al. 2024):
the model above copies the source token, and one MLP neuron turns that answer into another one. Two extra tokens
A' and B' (ids after the task's) are the wrapped answers; `wrapper_batches` gives the same prompts twice, with the
candidates [A, B, A', B'] and the target the source (`pretrain`: the capability) or its primed twin (`finetune`:
the wrapped behaviour, A -> A', B -> B').
- the wrapper is MLP neuron 0 of block 0: it reads residual dim 2 (through ln_2; dim 2 is +1 on every token but
  A and B, so at the answer position it is about 2.7 and the neuron fires, GELU(2.7) = 2.7) and writes +h into
  dims 6, 7 and -h into dims 8, 9 (zero mean, so ln_f keeps the copied sign in dim 4);
- unembedding: logit(A') = logit(A) + (dims 6 + 7 - 8 - 9) - dim 2 and logit(B') = logit(B) + the same. With the
  neuron firing, the wrapper adds about +6.9 to both primed answers: the model answers A' for A and B' for B
  (finetune accuracy 1, pretrain 0). Without it only the -dim 2 term is left (about -2.6): the copied answer wins
  again (pretrain 1, finetune 0).
As a pruning candidate the wrapper is `WRAPPER_NEURON`: output unit 0 of block 0's ``mlp.c_fc`` (column 0 of that
Conv1D's weight, and its bias entry). Its output weights are spread over four residual dims, so no single output
unit of ``mlp.c_proj`` carries more than a quarter of it. `noise` adds N(0, noise^2) to every weight (seeded), so
that every neuron has a nonzero score and the wrapper must outrank all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["single_head_copy_model", "save_single_head_copy_model", "relay_model", "wrapper_model",
           "wrapper_batches", "WRAPPER_NEURON"]


def single_head_copy_model(length: int = 6, n_layer: int = 1, extra_tokens: int = 0):
    """The GPT-2 described above, for the `copy_first` task of the given prompt length (`n_layer` > 1: layer 0
    as described, the other layers empty, for `relay_model` to fill; `extra_tokens`: that many more token ids
    after the task's, never in a prompt, with zero embeddings and unembeddings, for `wrapper_model`)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from mechcheck.tasks.toy import make_copy_first

    task = make_copy_first(length)
    vocab = task.vocab
    d, n_head = 16, 2
    d_head = d // n_head
    cfg = GPT2Config(vocab_size=len(vocab) + extra_tokens, n_positions=length + 2, n_embd=d, n_layer=n_layer,
                     n_head=n_head, tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "eager"
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        blocks = model.transformer.h
        for ln in [model.transformer.ln_f, *(b.ln_1 for b in blocks), *(b.ln_2 for b in blocks)]:
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


def relay_model(length: int = 6):
    """The two-layer GPT-2 described above (L0H0 -> L1H0 by value), for the `copy_first` task."""
    import torch

    from mechcheck.tasks.toy import make_copy_first

    model = single_head_copy_model(length, n_layer=2)
    vocab = make_copy_first(length).vocab
    d, n_head = model.config.n_embd, model.config.n_head
    d_head = d // n_head
    with torch.no_grad():
        c_attn = model.transformer.h[1].attn.c_attn.weight  # (d, 3d) = [q | k | v]
        for head in range(n_head):
            c_attn[4, 2 * d + head * d_head] = 1.0  # both heads' first value dim reads dim 4
        model.transformer.h[1].attn.c_proj.weight[0 * d_head + 0, 5] = 1.0  # only head 0 writes, into dim 5
        lm_head = model.lm_head.weight
        lm_head.zero_()
        lm_head[vocab.ids["A"], 5] = 2.0
        lm_head[vocab.ids["B"], 5] = -2.0
    return model.eval()


def save_single_head_copy_model(path: Path | str, length: int = 6) -> Path:
    """Write the model as a Hugging Face directory (config.json + model.safetensors) for `recipe: load`."""
    path = Path(path)
    single_head_copy_model(length).save_pretrained(path, safe_serialization=True)
    return path


#: the wrapper of `wrapper_model` as a pruning candidate (`mechcheck.interventions.pruning.Neuron`'s name)
WRAPPER_NEURON = "blocks.0.mlp.c_fc[0]"


def wrapper_model(length: int = 6, noise: float = 0.0, seed: int = 0):
    """The copy model with a one-neuron wrapper described above (ids of A' and B': the task's vocabulary size
    and the next one)."""
    import torch

    from mechcheck.tasks.toy import make_copy_first

    vocab = make_copy_first(length).vocab
    model = single_head_copy_model(length, extra_tokens=2)
    a2, b2 = len(vocab), len(vocab) + 1
    with torch.no_grad():
        mlp = model.transformer.h[0].mlp
        mlp.c_fc.weight[2, 0] = 1.0  # Conv1D (d, d_mlp): column 0 is neuron 0's input weights
        for dim, sign in ((6, 1.0), (7, 1.0), (8, -1.0), (9, -1.0)):
            mlp.c_proj.weight[0, dim] = sign  # Conv1D (d_mlp, d): row 0 is neuron 0's output weights
        lm_head = model.lm_head.weight
        for primed, plain in ((a2, vocab.ids["A"]), (b2, vocab.ids["B"])):
            lm_head[primed] = lm_head[plain]
            lm_head[primed, 6:10] = torch.tensor([1.0, 1.0, -1.0, -1.0])
            lm_head[primed, 2] = -1.0
        if noise:
            g = torch.Generator().manual_seed(seed)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * noise)
    return model.eval()


def wrapper_batches(n: int = 64, seed: int = 0, length: int = 6, split: str = "eval"):
    """{"pretrain": the capability (answer: the source), "finetune": the wrapped behaviour (answer: its primed
    twin)} on the same `copy_first` prompts, both with candidates [A, B, A', B']."""
    from mechcheck.tasks.toy import make_copy_first

    task = make_copy_first(length)
    base = task.sample(n, split, seed)
    primed = [len(task.vocab), len(task.vocab) + 1]
    out = {}
    for name, offset in (("pretrain", 0), ("finetune", 2)):
        b = base.subset(np.arange(n))
        b.candidates = [*base.candidates, *primed]
        b.target = base.target + offset
        out[name] = b
    return out
