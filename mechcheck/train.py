"""One training loop for every recipe: scratch, pretrain, fine-tune (and, later, reverse fine-tune).

Two losses:
  answer  cross-entropy of the answer token at the answer position only (the task as a classifier)
  lm      next-token cross-entropy at every position of prompt + answer (generic pretraining)

AdamW with linear warm-up and cosine decay to 10 %. Every `eval_every` steps, accuracy (answer restricted to
the task's candidates) is measured on a fixed held-out batch drawn from the *train* partition, so the eval
split stays unseen until the experiment.

Determinism: on the CPU, training runs on `threads` threads (default 1). Measured on a 2-core machine,
two-threaded training of the ci fixture was *not* bit-reproducible across processes: the same seed gave two
different sets of weights (final loss 0.0796 vs 0.0974) depending on what the process had done before, even
with MKL's dynamic threading off, because which threads split a reduction changes its rounding, and training
amplifies the difference. Single-threaded training gave identical weights every time, at 1.75x the time
(24 s vs 14 s per 100 steps). Pass more threads when speed matters more than bit-identical replicates.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from mechcheck.tasks import Task, TaskBatch

__all__ = ["lm_inputs", "lm_loss", "train", "VERSION"]

#: Bump whenever the same recipe and seed would train different weights (it is part of every cache key).
#: 2: the `lm` loss no longer shifts the labels twice (version 1 trained pretrain fixtures two tokens ahead);
#:    the `answer` loss applies the output head at the answer position only (same loss, rounds differently).
VERSION = "2"


def lm_inputs(batch: TaskBatch) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, labels) for next-token training on prompt + answer; padding is masked with -100."""
    n, T = batch.tokens.shape
    tokens = np.concatenate([batch.tokens, np.full((n, 1), batch.pad_id, dtype=np.int64)], axis=1)
    tokens[np.arange(n), batch.answer_pos + 1] = batch.answer_ids
    labels = np.full_like(tokens, -100)
    labels[:, :-1] = tokens[:, 1:]
    pos = np.arange(T + 1)[None, :]
    labels[pos > batch.answer_pos[:, None]] = -100  # nothing to predict after the answer
    return tokens, labels


def lm_loss(model, tokens, labels):
    """Mean next-token cross-entropy: logits at position p against labels[p] (already shifted by `lm_inputs`).

    Not `model(tokens, labels=labels)`: Hugging Face causal LMs shift the labels themselves, so passing the
    shifted labels there would train the model to predict the token *two* ahead.
    """
    import torch

    logits = model(tokens).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100)


def _lr_at(step: int, steps: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _accuracy(model, batch: TaskBatch, device: str) -> float:
    import torch

    from mechcheck.metrics import answer_metrics
    from mechcheck.models import answer_logits

    with torch.no_grad():
        answer = answer_logits(model, torch.as_tensor(batch.tokens, device=device),
                               torch.as_tensor(batch.answer_pos, device=device))  # (B, V)
        metrics = answer_metrics(answer[:, None, :], torch.zeros(len(batch), dtype=torch.long, device=device),
                                 torch.as_tensor(batch.candidates, device=device),
                                 torch.as_tensor(batch.target, device=device))
    return float(metrics["accuracy"].mean())


def train(model, task: Task, spec: Any, seed: int, device: str, label: str = "training",
          console: Any = None, threads: int | None = 1) -> dict[str, Any]:
    """Train `model` in place on `task` as `spec` (a `mechcheck.spec.TrainSpec`) says; returns a summary.

    Shows a rich progress bar (step, loss, accuracy) when `console` is a terminal, nothing otherwise.
    `threads`: torch threads while training (None: leave as is); see the module docstring.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(model, task, spec, seed, device, label, console)
    finally:
        torch.set_num_threads(previous)


def _train(model, task: Task, spec: Any, seed: int, device: str, label: str, console: Any) -> dict[str, Any]:
    import torch
    from mechcheck.progress import progress_bar

    from mechcheck.models import answer_logits, pin_mkl_threads

    pin_mkl_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x7A1])
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, spec.steps, spec.warmup_steps))
    fixed = task.sample(spec.n_train, "train", seed) if spec.n_train else None
    held_out = task.sample(512, "train", 10_000_019 + seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    loss_value, acc = float("nan"), float("nan")

    progress = progress_bar(console, "loss {task.fields[loss]}  acc {task.fields[acc]}")
    with progress:
        bar = progress.add_task(label, total=spec.steps, loss="-", acc="-")
        for step in range(spec.steps):
            if fixed is not None:
                batch = fixed.subset(rng.integers(0, len(fixed), spec.batch_size))
            else:
                batch = task.sample(spec.batch_size, "train", int(rng.integers(0, 2**31 - 1)))
            if spec.loss == "lm":
                tokens, labels = lm_inputs(batch)
                loss = lm_loss(model, torch.as_tensor(tokens, device=device), torch.as_tensor(labels, device=device))
            else:
                # the output head at the answer position only (the rest of the logits would be thrown away)
                answer = answer_logits(model, torch.as_tensor(batch.tokens, device=device),
                                       torch.as_tensor(batch.answer_pos, device=device))  # (B, V)
                loss = torch.nn.functional.cross_entropy(answer, torch.as_tensor(batch.answer_ids, device=device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            opt.step()
            sched.step()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"{label}: loss became {loss_value} at step {step} (lower the lr?)")
            if (step + 1) % spec.eval_every == 0 or step + 1 == spec.steps:
                model.eval()
                acc = _accuracy(model, held_out, device)
                model.train()
                history.append({"step": step + 1, "loss": round(loss_value, 5), "accuracy": round(acc, 4)})
            progress.update(bar, advance=1, loss=f"{loss_value:.3f}", acc="-" if math.isnan(acc) else f"{acc:.2f}")
    model.eval()
    return {
        "steps": spec.steps,
        "final_loss": loss_value,
        "train_accuracy": acc,
        "seconds": round(time.perf_counter() - t0, 2),
        "history": history,
    }
