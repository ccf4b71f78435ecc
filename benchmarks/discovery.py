"""Benchmark: circuit discovery by iterative path patching, with shared clean / corrupted runs vs the naive way.

mechcheck's `discover_circuit` runs each step as one path-patching sweep: the clean and the corrupted prompts are
run once per step (their head outputs cached), then per sender one forward with the sender patched (and, for a
step with receivers, one more with the receivers' inputs replaced). The naive way calls path patching once per
sender, so every call re-runs the clean and corrupted prompts: one full set of forwards per sender x receiver set.
Both give the same scores (checked: exit 1 if they differ by more than 1e-6); the benchmark prints forward passes
and seconds of each, side by side, alternating so that both see the same machine load.

Steps: Prakash et al.'s four groups at the entity task's three positions (value fetcher at the last token from
the logits; position transmitter into its queries; position detector at the query label into its values;
structure reader at the previous query label into the detector's values), top-k scaled to the model.

    PYTHONPATH=. .venv/bin/python benchmarks/discovery.py [--shape ci|gpt2] [--prompts 16] [--repeats 1]

Shapes: ``ci`` is the ci models' shape (4 layers x 4 heads, d 128), ``gpt2`` GPT-2 small's (12 x 12, d 768;
its vocabulary is the entity task's, since the unembedding is not what discovery reuses). Random weights (no
trained entity-tracking model exists yet at ci; the passes counted do not depend on the weights). One torch thread.

Measured on this machine (2 cores shared with other work), one repeat, one thread, identical scores and groups:

  --shape ci --prompts 16     shared 38 passes, 1.38 s CPU; naive 80 passes, 2.59 s: 2.11x fewer passes, 1.87x CPU
  --shape gpt2 --prompts 4    shared 416 passes, 174 s CPU; naive 960 passes, 417 s: 2.31x fewer passes, 2.39x CPU
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _setup(shape: str, n: int):
    import torch

    import mechcheck.builtins  # noqa: F401 - registers the task generators
    from mechcheck.models import build_gpt2, prepare
    from mechcheck.registry import TASKS

    args = {"n_boxes": 7}
    entry = TASKS.get("entity_tracking")
    task = entry.func(**entry.with_defaults(args))
    clean, corrupt, corrupt_pos = entry.meta["counterfactual"](entry.with_defaults(args), n, 0)
    arch = {"ci": {"n_layer": 4, "n_head": 4, "n_embd": 128}, "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768}}[shape]
    torch.manual_seed(0)
    model = prepare(build_gpt2(arch, task.vocab_size, clean.tokens.shape[1] + 2), "cpu")
    L, H = arch["n_layer"], arch["n_head"]
    k = max(1, (L * H) // 8)
    from mechcheck.interventions import Step

    steps = [Step("value_fetcher", "last", k), Step("position_transmitter", "last", max(1, k // 2), "value_fetcher", "q"),
             Step("position_detector", "query_label", k, "position_transmitter", "v"),
             Step("structure_reader", "prev_label", max(1, k // 2), "position_detector", "v")]
    return model, clean, corrupt, corrupt_pos, steps


def _naive(model, clean, corrupt, corrupt_pos, steps):
    """The same discovery with one path-patching call per sender (clean and corrupted runs redone each time)."""
    from mechcheck.interventions.circuits import Group
    from mechcheck.interventions.paths import path_patching

    L, H = model.n_layers, model.n_heads
    senders = [(la, h) for la in range(L) for h in range(H)]
    groups, scores, passes = {}, {}, 0
    for step in steps:
        receivers, r_pos = [], "last"
        if step.into is not None:
            target = groups[step.into]
            receivers = [(la, h, step.via) for la, h in target.heads]
            r_pos = target.position if step.via == "q" else step.position
        if step.into is not None and not receivers:
            scores[step.name], groups[step.name] = np.zeros(len(senders)), Group(step.position, ())
            continue
        top = max((la for la, _, _ in receivers), default=L)
        mean = np.zeros(len(senders))
        for j, s in enumerate(senders):
            if s[0] >= top:
                continue
            got = path_patching(model, clean, corrupt, [s], sender_position=step.position, receivers=receivers,
                                receiver_position=r_pos, corrupt_positions=corrupt_pos)
            mean[j] = got.mean_score[0]
            passes += 2 + (1 if not receivers else 2)
        scores[step.name] = mean
        order = [i for i in np.argsort(mean, kind="stable") if mean[i] < 0]
        groups[step.name] = Group(step.position, tuple(sorted(senders[i] for i in order[: step.k])))
    return groups, scores, passes


def main(argv: list[str] | None = None) -> int:
    import torch

    from mechcheck.interventions import discover_circuit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("ci", "gpt2"), default="ci")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, clean, corrupt, corrupt_pos, steps = _setup(a.shape, a.prompts)
    best = {"shared": (np.inf, 0), "naive": (np.inf, 0)}
    for _ in range(a.repeats):
        t0 = time.process_time()
        got = discover_circuit(model, clean, corrupt, steps, corrupt_positions=corrupt_pos)
        best["shared"] = (min(best["shared"][0], time.process_time() - t0), got.forward_passes)
        print(f"  shared: {best['shared'][0]:.2f} s CPU so far", flush=True)
        t0 = time.process_time()
        groups, scores, passes = _naive(model, clean, corrupt, corrupt_pos, steps)
        best["naive"] = (min(best["naive"][0], time.process_time() - t0), passes)
        print(f"  naive: {best['naive'][0]:.2f} s CPU so far", flush=True)
    diff = max(float(np.abs(got.scores[s.name] - scores[s.name]).max()) for s in steps)
    same = {s.name: list(got.circuit.groups[s.name].heads) == list(groups[s.name].heads) for s in steps}
    print(f"shape {a.shape}: {model.n_layers} x {model.n_heads} heads, {a.prompts} prompt pairs x "
          f"{clean.tokens.shape[1]} tokens, 4 steps")
    for name, (sec, passes) in best.items():
        print(f"  {name:>6}: {passes:6d} forward passes  {sec:8.2f} s CPU")
    print(f"  ratio: {best['naive'][1] / best['shared'][1]:.2f}x fewer passes, "
          f"{best['naive'][0] / best['shared'][0]:.2f}x less CPU time; max |score difference| {diff:.1e}; "
          f"same groups: {all(same.values())}")
    return 0 if diff <= 1e-6 and all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
