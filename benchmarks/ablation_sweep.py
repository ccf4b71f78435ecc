"""Benchmark: one head-ablation sweep through the TransformerLens bridge vs raw Hugging Face hooks.

Both paths zero-ablate each head of a 4-layer x 4-head, d=128 GPT-2 (the ci profile's shape) on the same
1,000 CDM prompts, one forward pass per head, and must give identical per-example logit differences. Prints
seconds per path and their ratio, measured side by side in one run (alternating, best of `--repeats`), so
the ratio is meaningful even on a busy machine. Measured here (2 cores): ratio 0.97 for 4 and for 12 layers —
the bridge costs nothing over raw hooks for this model.

Not a saving: TransformerLens 4's `start_at_layer` still runs the blocks below the start layer (it injects the
given residual at block k and discards what blocks 0..k-1 produced), so starting the ablated pass at the
ablated layer from the clean residual measured 1.03-1.07x the full pass. Reusing the clean prefix for real
needs calling the blocks from layer k directly; left for when GPT-2-small sweeps need it.

    .venv/bin/python benchmarks/ablation_sweep.py [--n 1000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mechcheck.experiments.head_ablation import forward_metrics
from mechcheck.metrics import answer_metrics
from mechcheck.models import build_gpt2, wrap
from mechcheck.tasks.cdm import make_cdm


def raw_hf_sweep(model, batch) -> np.ndarray:
    """(n, L, H) logit-difference after zero-ablating each head via a pre-hook on attn.c_proj (W_O's input)."""
    cfg = model.config
    d_head = cfg.n_embd // cfg.n_head
    tokens = torch.as_tensor(batch.tokens)
    answer_pos, candidates = torch.as_tensor(batch.answer_pos), torch.as_tensor(batch.candidates)
    target = torch.as_tensor(batch.target)
    out = np.zeros((len(batch), cfg.n_layer, cfg.n_head), dtype=np.float32)
    with torch.no_grad():
        for layer in range(cfg.n_layer):
            for head in range(cfg.n_head):
                def pre(module, args, head=head):
                    x = args[0].clone()  # (B, T, H * d_head), head-major
                    x[..., head * d_head:(head + 1) * d_head] = 0
                    return (x,)

                handle = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(pre)
                try:
                    logits = model(tokens).logits
                finally:
                    handle.remove()
                out[:, layer, head] = answer_metrics(logits, answer_pos, candidates, target)["logit_diff"]
    return out


def bridge_sweep(handle, batch) -> np.ndarray:
    out = np.zeros((len(batch), handle.n_layers, handle.n_heads), dtype=np.float32)
    for layer in range(handle.n_layers):
        for head in range(handle.n_heads):
            out[:, layer, head] = forward_metrics(handle, batch, ((layer, head),), "zero", "all", None,
                                                  batch_size=len(batch))["logit_diff"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = make_cdm()
    batch = task.sample(args.n, "eval", 0)
    torch.manual_seed(0)
    model = build_gpt2({"n_layer": 4, "n_head": 4, "n_embd": 128}, task.vocab_size, task.seq_len + 2).eval()
    handle = wrap(model, "cpu")
    times = {"bridge": [], "raw_hf": []}
    results = {}
    for _ in range(args.repeats):  # alternate so both see the same machine load
        for name, fn in (("bridge", lambda: bridge_sweep(handle, batch)), ("raw_hf", lambda: raw_hf_sweep(model, batch))):
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    assert np.allclose(results["bridge"], results["raw_hf"], atol=1e-5), "the two paths disagree"
    best = {k: min(v) for k, v in times.items()}
    print(f"head-ablation sweep: 16 heads x {args.n} prompts, threads={torch.get_num_threads()}")
    print(f"  bridge  {best['bridge']:.2f} s   raw HF hooks  {best['raw_hf']:.2f} s   "
          f"ratio bridge/raw = {best['bridge'] / best['raw_hf']:.2f}  (identical effects: yes)")


if __name__ == "__main__":
    main()
