"""Benchmark: one head-ablation sweep three ways, side by side.

  raw_hf        raw Hugging Face pre-hooks on attn.c_proj, a full forward per head
  bridge        the TransformerLens bridge, a full forward per head
  bridge+reuse  the bridge starting at the ablated layer from the clean residual stream (what
                `head_ablation` does: the layers below an ablated head are never recomputed)

All three zero-ablate each head of a GPT-2 on the same CDM prompts and must give identical per-example logit
differences. Prints seconds per path and the ratios, measured in one run (alternating, best of `--repeats`),
so the ratios are meaningful even on a busy machine. `--layers 4` is the ci profile's shape; try 12.

    .venv/bin/python benchmarks/ablation_sweep.py [--n 1000] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mechcheck.experiments.head_ablation import _clean_run, _metrics_from_logits, forward_metrics
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
                out[:, layer, head] = _metrics_from_logits(logits, answer_pos, candidates, target)["logit_diff"]
    return out


def bridge_sweep(handle, batch, reuse: bool) -> np.ndarray:
    resid_pre = _clean_run(handle, batch, len(batch))[3] if reuse else None  # the clean run is paid for here
    out = np.zeros((len(batch), handle.n_layers, handle.n_heads), dtype=np.float32)
    for layer in range(handle.n_layers):
        for head in range(handle.n_heads):
            out[:, layer, head] = forward_metrics(handle, batch, ((layer, head),), "zero", "all", None,
                                                  batch_size=len(batch), resid_pre=resid_pre)["logit_diff"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--layers", type=int, default=4)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = make_cdm()
    batch = task.sample(args.n, "eval", 0)
    torch.manual_seed(0)
    model = build_gpt2({"n_layer": args.layers, "n_head": 4, "n_embd": 128}, task.vocab_size, task.seq_len + 2).eval()
    handle = wrap(model, "cpu")
    paths = {"raw_hf": lambda: raw_hf_sweep(model, batch), "bridge": lambda: bridge_sweep(handle, batch, False),
             "bridge+reuse": lambda: bridge_sweep(handle, batch, True)}
    times: dict[str, list[float]] = {k: [] for k in paths}
    results = {}
    for _ in range(args.repeats):  # alternate so every path sees the same machine load
        for name, fn in paths.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    for name in ("bridge", "bridge+reuse"):
        assert np.allclose(results[name], results["raw_hf"], atol=1e-5), f"{name} disagrees with raw_hf"
    best = {k: min(v) for k, v in times.items()}
    print(f"head-ablation sweep: {args.layers * 4} heads x {args.n} prompts, threads={torch.get_num_threads()}, "
          f"best of {args.repeats}")
    for name, t in best.items():
        print(f"  {name:<13} {t:6.2f} s   ratio to raw_hf {t / best['raw_hf']:.2f}")
    print("  identical effects on all paths: yes")


if __name__ == "__main__":
    main()
