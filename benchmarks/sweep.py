"""Benchmark: mechcheck's exact head sweep vs TransformerLens' activation patching, side by side in one run.

Activation patching of every head's output (default): TransformerLens' own
``patching.get_act_patch_attn_head_out_all_pos(bridge, corrupted_tokens, clean_cache, metric, reduce="none")``
on a bridge of the model (`mechcheck.models.bridge`), against ``interventions.ablation_sweep(method="patch",
source=clean hook_z)`` on the Hugging Face model. Both patch each head's clean ``hook_z`` (all positions) into
the corrupted run, one head at a time; the metric is the logit difference (correct - other answer candidate,
the clean prompt's answer being correct) at the last position, per example (two candidates, so mechcheck's
``logit_diff``, correct minus the best other, is the same number). What is compared: the per-example effect,
unpatched corrupted metric minus patched metric, (n, L, H); for TransformerLens the unpatched metric is one
more bridge forward (outside the timed call). Timed: the sweep calls only; both take the clean run's
activations as input (TransformerLens' ``run_with_cache``, mechcheck's `run` with `Read`s), made once before.
``--steps`` also times mechcheck with ``shortcuts=False`` (whole blocks from the layer up), to see what the
GPT-2 shortcuts pay.

``--ci``: the ci profile's shape (4 layers x 4 heads, d 128) on 1,000 CDM word prompts, mean ablation of each
head, mechcheck's sweep vs the naive way, `interventions.run` with one `Ablate` per head (a full forward each):
what the sweep's reuse of the clean run saves. With ``shortcuts=False`` its effects must be bit-identical to
the naive ones, with the shortcuts within 1e-5.

Shapes: ``--shape gpt2`` is GPT-2 small (12 layers x 12 heads, d_model 768, vocab 50,257), ``--shape small`` the
ci shape (4 x 4, d 128) with GPT-2's vocabulary; random weights (`models.build_gpt2`, seed 0: no hub here).
Prompts are random tokens; the corrupted prompt differs from the clean one at position 1; the two answer
candidates are fixed tokens, the correct one drawn per example.

Seconds are the best of `--repeats`, the paths alternating, so that they see the same machine load: only the
ratio means anything on a shared machine. Wall and CPU seconds are both shown; CPU seconds of a one-thread
run are the steadier of the two there. Exits 1 when the effects differ by more than 1e-5.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep.py [--shape gpt2|small] [--prompts 32] [--tokens 13]
        [--repeats 3] [--threads 1] [--steps]
    PYTHONPATH=. .venv/bin/python benchmarks/sweep.py --ci [--prompts 1000]

Measured on this machine: 2 CPU cores shared with other engineers' concurrent test runs (load 1.4-1.7 during
the one-thread runs), torch 2.13 CPU, transformer-lens 4.3; best of 3, one thread unless said:

  --shape gpt2 --steps   TransformerLens 162.5 s wall / 158.3 s CPU; mechcheck 47.7 / 47.4 s: 3.41x wall,
                         3.34x CPU; max |effect difference| 2.9e-06 (effects up to 0.24). With shortcuts=False
                         (whole blocks from the ablated layer up) 66.7 / 66.5 s: 2.44x wall, 2.38x CPU.
  --shape gpt2 --threads 2 --repeats 2   two runs: TL 91.8 s wall, mechcheck 28.2 s: 3.26x (load ~2); and
                         TL 84.4 s, mechcheck 34.3 s: 2.46x (load ~4). Two threads on two shared cores are at
                         the mercy of the other jobs; the one-thread ratio is the one to trust.
  --shape small --steps  TL 1.69 s, mechcheck 0.08 s: 21.9x (whole blocks 0.12 s: 14.0x); TL computes all
                         50,257 logits at all 13 positions, mechcheck 2 logits at 1; max |diff| 4.9e-07.
  --ci                   naive (one `run` per head) 6.67 s wall, sweep 2.49 s: 2.68x; shortcuts=False 3.91 s:
                         1.71x, bit-identical to naive; with the shortcuts max |diff| 5.4e-07.

Before this benchmark's commit the sweep ran whole blocks and the full output head; TransformerLens 4's
`start_at_layer` is no help for the same reuse (it still runs the blocks below the start layer).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens' sweep shows a progress bar per call

import numpy as np
import torch

from mechcheck.interventions import Ablate, Job, Read, Site, ablation_sweep, reference, run
from mechcheck.models import bridge, build_gpt2, prepare
from mechcheck.tasks import TaskBatch

SHAPES = {"gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768}, "small": {"n_layer": 4, "n_head": 4, "n_embd": 128}}
VOCAB = 50_257
TOLERANCE = 1e-5


def prompts(n: int, T: int, seed: int = 0) -> tuple[TaskBatch, TaskBatch]:
    """(clean, corrupted) batches of random prompts that differ at position 1, answer read at the last one.

    Both carry the clean run's correct candidate as target: the metric is about the clean answer.
    """
    rng = np.random.default_rng(seed)
    clean = rng.integers(3, VOCAB, (n, T))
    corrupted = clean.copy()
    corrupted[:, 1] = (clean[:, 1] + rng.integers(1, VOCAB - 3, n) - 3) % (VOCAB - 3) + 3  # another token
    target = rng.integers(0, 2, n)

    def batch(tokens):
        return TaskBatch(tokens=tokens, answer_pos=np.full(n, T - 1), target=target, candidates=[1, 2], groups={})

    return batch(clean), batch(corrupted)


def logit_diff_metric(batch: TaskBatch):
    """TransformerLens metric: (B, T, V) logits -> (B,) correct minus other candidate, at the last position."""
    cand = torch.as_tensor(batch.candidates)
    correct = cand[torch.as_tensor(batch.target)]
    other = cand[1 - torch.as_tensor(batch.target)]
    rows = torch.arange(len(batch))

    def metric(logits):
        last = logits[:, -1]
        return last[rows, correct] - last[rows, other]

    return metric


def timed(paths: dict, repeats: int) -> tuple[dict[str, tuple[float, float]], dict]:
    """Best (wall, CPU) seconds of each path over `repeats`, the paths alternating; each path's (last) result.

    CPU seconds (this process, all its threads) are the steadier measure on a shared machine: other jobs
    stretch the wall clock, much less the CPU time of a one-thread run.
    """
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in paths}
    results = {}
    for _ in range(repeats):
        for name, fn in paths.items():
            w0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append((time.perf_counter() - w0, time.process_time() - c0))
    return {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}, results


def seconds(wall_cpu: tuple[float, float]) -> str:
    return f"{wall_cpu[0]:8.2f} s wall {wall_cpu[1]:8.2f} s CPU"


def ratio(a: tuple[float, float], b: tuple[float, float]) -> str:
    return f"{a[0] / b[0]:.2f}x wall, {a[1] / b[1]:.2f}x CPU"


def versus_transformer_lens(shape: str, n: int, T: int, repeats: int, steps: bool) -> float:
    """Print the patching sweep both ways; returns max |effect difference|."""
    from transformer_lens import patching

    torch.manual_seed(0)
    hf = build_gpt2(SHAPES[shape], VOCAB, max(T, 16))
    model = prepare(hf, "cpu")
    tl = bridge(hf)
    L, H = model.n_layers, model.n_heads
    clean, corrupted = prompts(n, T)
    metric = logit_diff_metric(clean)
    clean_tokens, corrupted_tokens = torch.as_tensor(clean.tokens), torch.as_tensor(corrupted.tokens)
    sites = [Site(layer, "z").name for layer in range(L)]
    with torch.no_grad():
        _, clean_cache = tl.run_with_cache(clean_tokens)
        tl_unpatched = metric(tl(corrupted_tokens))  # (n,)
    source = run(model, clean, read=[Read(s, at="all") for s in sites]).reads  # site -> (n, T, H, d_head)
    jobs = [Job(((layer, head),)) for layer in range(L) for head in range(H)]

    def tl_sweep():
        with torch.no_grad():
            res = patching.get_act_patch_attn_head_out_all_pos(tl, corrupted_tokens, clean_cache, metric,
                                                               reduce="none")
        return (tl_unpatched - res.values).permute(2, 0, 1).numpy()  # (n, L, H) unpatched - patched

    def mc_sweep(shortcuts=True):
        out = ablation_sweep(model, corrupted, jobs, method="patch", source=source, batch_size=n,
                             shortcuts=shortcuts)
        return out.effects["logit_diff"].reshape(n, L, H)

    paths = {"transformer_lens": tl_sweep, "mechcheck": mc_sweep}
    if steps:
        paths["whole_blocks"] = lambda: mc_sweep(shortcuts=False)
    best, res = timed(paths, repeats)
    diff = max(float(np.abs(res["transformer_lens"] - res[k]).max()) for k in paths)
    print(f"activation patching, every head's hook_z: {shape} ({L} x {H} heads, d {hf.config.n_embd}, "
          f"vocab {VOCAB}), {n} prompts x {T} tokens, threads={torch.get_num_threads()}, best of {repeats}")
    print(f"  TransformerLens get_act_patch_attn_head_out_all_pos  {seconds(best['transformer_lens'])}")
    print(f"  mechcheck ablation_sweep(method='patch')             {seconds(best['mechcheck'])}")
    if steps:
        print(f"  ... with shortcuts=False (whole blocks)             {seconds(best['whole_blocks'])}   "
              f"TL / it = {ratio(best['transformer_lens'], best['whole_blocks'])}")
    print(f"  ratio TL / mechcheck = {ratio(best['transformer_lens'], best['mechcheck'])}   "
          f"max |effect difference| = {diff:.2e}   (max |effect| {np.abs(res['mechcheck']).max():.2e})")
    return diff


def versus_naive(n: int, repeats: int) -> float:
    """Print the ci-shape mean-ablation sweep vs one full `run` per head; returns max |effect difference|."""
    from mechcheck.tasks.cdm import make_cdm

    task = make_cdm(vocab="words", max_number=9)
    batch = task.sample(n, "eval", 0)
    torch.manual_seed(0)
    model = prepare(build_gpt2(SHAPES["small"], task.vocab_size, task.seq_len + 2), "cpu")
    L, H = model.n_layers, model.n_heads
    ref = reference(model, batch, [Site(layer, "z") for layer in range(L)])
    jobs = [Job(((layer, head),)) for layer in range(L) for head in range(H)]

    def naive():
        base = run(model, batch).metrics["logit_diff"]
        out = np.zeros((n, L * H), dtype=np.float32)
        for j, job in enumerate(jobs):
            (layer, head), = job.heads
            ablated = run(model, batch, [Ablate(Site(layer, "z"), (head,), "mean", "all", ref)])
            out[:, j] = base - ablated.metrics["logit_diff"]
        return out

    def sweep(shortcuts=True):
        out = ablation_sweep(model, batch, jobs, method="mean", reference=ref, shortcuts=shortcuts)
        return out.effects["logit_diff"]

    best, res = timed({"naive": naive, "sweep": sweep, "whole_blocks": lambda: sweep(False)}, repeats)
    diff = float(np.abs(res["naive"] - res["sweep"]).max())
    identical = np.array_equal(res["naive"], res["whole_blocks"])
    print(f"mean ablation, every head: ci shape ({L} x {H} heads, d 128), {n} CDM word prompts x {task.seq_len} "
          f"tokens, threads={torch.get_num_threads()}, best of {repeats}")
    print(f"  naive: interventions.run per head  {seconds(best['naive'])}")
    print(f"  mechcheck ablation_sweep           {seconds(best['sweep'])}   max |effect difference| = {diff:.2e}")
    print(f"  ... with shortcuts=False           {seconds(best['whole_blocks'])}   "
          f"bit-identical to naive: {'yes' if identical else 'NO'}")
    print(f"  ratio naive / sweep = {ratio(best['naive'], best['sweep'])}; "
          f"naive / whole blocks = {ratio(best['naive'], best['whole_blocks'])}")
    return diff if identical else float("inf")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=tuple(SHAPES), default="gpt2")
    p.add_argument("--prompts", type=int, default=None, help="default 32 (1000 with --ci)")
    p.add_argument("--tokens", type=int, default=13)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ci", action="store_true", help="ci shape, mean ablation, vs one interventions.run per head")
    p.add_argument("--steps", action="store_true", help="also time mechcheck with shortcuts=False (whole blocks)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.ci:
        diff = versus_naive(args.prompts or 1000, args.repeats)
    else:
        diff = versus_transformer_lens(args.shape, args.prompts or 32, args.tokens, args.repeats, args.steps)
    if diff > TOLERANCE:
        print(f"FAIL: effects differ by {diff:.2e} > {TOLERANCE:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
