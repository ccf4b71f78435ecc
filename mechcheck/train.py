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

Resuming: with a `Checkpoint`, training saves its whole state (weights, AdamW, scheduler, both RNGs, history;
`mechcheck.train_state`) every `every_s` seconds and when interrupted by KeyboardInterrupt, and a later call
with the same checkpoint continues from it. Each step depends only on that state, so a resumed run ends with
exactly the bits of an uninterrupted one (same machine, same threads), and the cache key and weight hash of
a fixture do not depend on whether its training was interrupted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mechcheck.tasks import Task, TaskBatch
from mechcheck.train_state import Checkpoint

__all__ = ["HELD_OUT", "Checkpoint", "lm_inputs", "lm_loss", "hint_loss", "hints_problem", "train", "VERSION"]

#: Bump whenever the same recipe and seed would train different weights (it is part of every cache key).
#: 2: the `lm` loss no longer shifts the labels twice (version 1 trained pretrain fixtures two tokens ahead);
#:    the `answer` loss applies the output head at the answer position only (same loss, rounds differently).
VERSION = "2"

#: Size of the fixed held-out batch every evaluation (and `stop_at`) reads: the sample size behind each point
#: of a fixture's learning curve (changing it changes what `stop_at` stops at, so it goes with VERSION).
HELD_OUT = 512


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
    return _next_token_ce(model(tokens).logits, labels)


def _next_token_ce(logits, labels):
    import torch

    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                             ignore_index=-100)


def hints_problem(hints: Any) -> str | None:
    """Why a `train.hints` mapping is invalid (None when it is fine): {layer: int >= 1, weight: float > 0}."""
    if not isinstance(hints, dict):
        return "hints is a mapping {layer: L, weight: W}"
    unknown = set(hints) - {"layer", "weight"}
    if unknown or "layer" not in hints:
        return f"hints has the keys layer (required) and weight; got {sorted(hints)}"
    layer, weight = hints["layer"], hints.get("weight", 1.0)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
        return f"hints.layer is the number of blocks after which the hints are read (>= 1), got {layer!r}"
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        return f"hints.weight must be a number > 0, got {weight!r}"
    return None


def hint_loss(model, hidden_states, targets, layer: int):
    """The task's hints read from the residual stream after `layer` blocks through the model's own final norm
    and output head (the logit lens): per kind of hint, the mean cross-entropy over the positions that carry it,
    summed over kinds (each kind counts the same, however many positions it has). `targets`: kind -> (B, T)
    token ids, -100 where there is no hint; `hidden_states`: the model's output_hidden_states.

    A training aid for tasks whose solution is a chain of steps that a tiny model does not find on its own
    (docs/methods/prakash2024.md, "ci fixtures"): a hint says what an intermediate position should already
    know, never where to attend, and the model keeps no extra parameters.
    """
    import torch

    from mechcheck.interventions.sites import adapter_for

    if not 1 <= layer < len(hidden_states) - 1:
        raise ValueError(f"hints.layer {layer}: the model has {len(hidden_states) - 1} blocks; hints are read after "
                         "one of the blocks before the last")
    adapter = adapter_for(model)
    total = hidden_states[layer].new_zeros(())
    for kind in sorted(targets):
        where = targets[kind] != -100
        if not bool(where.any()):
            continue
        logits = adapter.unembed(model, adapter.final_norm(model, hidden_states[layer][where]))
        total = total + torch.nn.functional.cross_entropy(logits.float(), targets[kind][where])
    return total


def _loss_with_hints(model, task: Task, batch: TaskBatch, spec: Any, device: str, label: str):
    """The answer (or lm) loss plus `hints.weight` x `hint_loss`, from one forward pass."""
    import torch

    if task.hints is None:
        raise ValueError(f"{label}: train.hints is set but task {task.name!r} defines no hints")
    rows = torch.arange(len(batch), device=device)
    if spec.loss == "lm":
        tokens, labels = lm_inputs(batch)
        tokens, labels = torch.as_tensor(tokens, device=device), torch.as_tensor(labels, device=device)
        out = model(tokens, output_hidden_states=True)
        loss = _next_token_ce(out.logits, labels)
        targets = {k: np.pad(v, ((0, 0), (0, 1)), constant_values=-100)  # the appended answer token
                   for k, v in task.hints(batch).items()}
    else:
        out = model(torch.as_tensor(batch.tokens, device=device), output_hidden_states=True)
        answer = out.logits[rows, torch.as_tensor(batch.answer_pos, device=device)]
        loss = torch.nn.functional.cross_entropy(answer.float(), torch.as_tensor(batch.answer_ids, device=device))
        targets = task.hints(batch)
    hint = hint_loss(model, out.hidden_states, {k: torch.as_tensor(v, device=device) for k, v in targets.items()},
                     int(spec.hints["layer"]))
    return loss + float(spec.hints.get("weight", 1.0)) * hint


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
          console: Any = None, threads: int | None = 1, *, checkpoint: Checkpoint | None = None,
          progress: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train `model` in place on `task` as `spec` (a `mechcheck.spec.TrainSpec`) says; returns a summary.

    Shows a rich progress bar (step, loss, accuracy) when `console` is a terminal, nothing otherwise.
    `threads`: torch threads while training (None: leave as is); see the module docstring.
    `checkpoint`: save a resumable state there every `checkpoint.interval()` seconds and on KeyboardInterrupt,
    and resume from a usable one (see the module docstring); the summary's `resumed_from_step` says from
    which step (0: from the start). `progress(done, total, {"loss", "accuracy"})`: called after every step
    (accuracy None until the first evaluation), e.g. to forward progress out of a worker process.
    """
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(model, task, spec, seed, device, label, console, threads, checkpoint, progress)
    finally:
        torch.set_num_threads(previous)


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message, highlight=False, soft_wrap=True)


def _train(model, task: Task, spec: Any, seed: int, device: str, label: str, console: Any, threads: int | None,
           checkpoint: Checkpoint | None, progress: Callable | None) -> dict[str, Any]:
    import torch
    from mechcheck.progress import progress_bar

    from mechcheck.models import answer_logits, pin_mkl_threads
    from mechcheck.train_state import fingerprint, load_state, save_state

    pin_mkl_threads()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 0x7A1])
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_at(s, spec.steps, spec.warmup_steps))
    fixed = task.sample(spec.n_train, "train", seed) if spec.n_train else None
    held_out = task.sample(HELD_OUT, "train", 10_000_019 + seed)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    loss_value, acc = float("nan"), float("nan")
    start, seconds_before, extra = 0, 0.0, {}
    cuda = device.startswith("cuda")

    if checkpoint is not None:
        # Before any state is loaded: the initial weights are part of what a state must belong to.
        state_id = fingerprint(checkpoint.fingerprint, spec, seed, device, threads, VERSION, model)
        every_s = checkpoint.interval()
        state, notes = load_state(checkpoint.dir, state_id, model, opt, sched)
        for note in notes:
            _say(console, f"{label}: {note}; training from step 0" if state is None else f"{label}: {note}")
        if notes:
            extra["ignored_state"] = notes
        if state is not None:
            start, history, seconds_before = state.step, state.history, state.seconds
            loss_value, acc = state.loss, state.accuracy
            rng.bit_generator.state = state.numpy_rng
            torch.set_rng_state(state.torch_rng)
            if cuda and state.cuda_rng is not None:
                torch.cuda.set_rng_state(state.cuda_rng, device)
            _say(console, f"{label}: resuming from step {start} of {spec.steps} ({state.path})")

        def save(done: int, rng_states: tuple) -> None:
            numpy_state, torch_state, cuda_state = rng_states
            save_state(checkpoint.dir, fingerprint=state_id, step=done, model=model, optimizer=opt, scheduler=sched,
                       numpy_rng=numpy_state, torch_rng=torch_state, cuda_rng=cuda_state, history=history,
                       loss=loss_value, accuracy=acc, seconds=seconds_before + time.perf_counter() - t0)

    def rng_now() -> tuple:
        return (rng.bit_generator.state, torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)

    def finish_step(step: int, loss) -> None:
        """Record the loss and, when due, the accuracy of step `step` (idempotent: an interrupt may redo it)."""
        nonlocal loss_value, acc
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"{label}: loss became {loss_value} at step {step} (lower the lr?)")
        due = (step + 1) % spec.eval_every == 0 or step + 1 == spec.steps
        if due and not (history and history[-1]["step"] == step + 1):
            model.eval()
            acc = _accuracy(model, held_out, device)
            model.train()
            history.append({"step": step + 1, "loss": round(loss_value, 5), "accuracy": round(acc, 4)})

    def reached() -> bool:
        """`stop_at` met at the last evaluation (the step just finished)."""
        return stop_at is not None and bool(history) and history[-1]["step"] == done and \
            history[-1]["accuracy"] >= stop_at

    # Where an interrupt lands decides what can be saved: during "compute" nothing persistent has changed
    # since the step began (but the RNGs have moved: `at_start` holds them); during "update" the optimizer
    # is half-way through its parameters, so nothing consistent exists; from "after" on the weights are
    # those of step + 1 and only the bookkeeping may be missing.
    phase, done, at_start, loss = "between", start, None, None
    stop_at = getattr(spec, "stop_at", None)
    stopped = reached()  # a state saved at the stopping step (an interrupt right after it) is already done
    last_save = time.monotonic()
    bar_view = progress_bar(console, "loss {task.fields[loss]}  acc {task.fields[acc]}")
    try:
        with bar_view:
            bar = bar_view.add_task(label, total=spec.steps, completed=start, loss="-", acc="-")
            for step in range(start, spec.steps if not stopped else start):
                if checkpoint is not None:
                    at_start = rng_now()
                phase = "compute"
                if fixed is not None:
                    batch = fixed.subset(rng.integers(0, len(fixed), spec.batch_size))
                else:
                    batch = task.sample(spec.batch_size, "train", int(rng.integers(0, 2**31 - 1)))
                if spec.hints is not None:
                    loss = _loss_with_hints(model, task, batch, spec, device, label)
                elif spec.loss == "lm":
                    tokens, labels = lm_inputs(batch)
                    loss = lm_loss(model, torch.as_tensor(tokens, device=device),
                                   torch.as_tensor(labels, device=device))
                else:
                    # the output head at the answer position only (the rest of the logits would be thrown away)
                    answer = answer_logits(model, torch.as_tensor(batch.tokens, device=device),
                                           torch.as_tensor(batch.answer_pos, device=device))  # (B, V)
                    loss = torch.nn.functional.cross_entropy(answer,
                                                             torch.as_tensor(batch.answer_ids, device=device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
                phase = "update"
                opt.step()
                sched.step()
                phase = "after"
                finish_step(step, loss)
                done, phase = step + 1, "between"
                shown_acc = None if math.isnan(acc) else acc
                bar_view.update(bar, advance=1, loss=f"{loss_value:.3f}",
                                acc="-" if shown_acc is None else f"{shown_acc:.2f}")
                if progress is not None:
                    progress(done, spec.steps, {"loss": loss_value, "accuracy": shown_acc})
                if reached():
                    stopped = True
                    break
                if checkpoint is not None and done < spec.steps and time.monotonic() - last_save >= every_s:
                    save(done, rng_now())
                    last_save = time.monotonic()
    except KeyboardInterrupt:
        if checkpoint is not None:
            if phase == "compute":
                save(done, at_start)
            elif phase in ("after", "between"):
                if phase == "after":
                    finish_step(done, loss)
                    done += 1
                save(done, rng_now())
            else:
                _say(console, f"{label}: interrupted inside an optimizer step; the state saved before it is kept")
        raise
    model.eval()
    return {
        "steps": done,
        **({"max_steps": spec.steps, "stopped_at_accuracy": stopped} if stop_at is not None else {}),
        "final_loss": loss_value,
        "train_accuracy": acc,
        "seconds": round(seconds_before + time.perf_counter() - t0, 2),
        "history": history,
        "resumed_from_step": start,
        **extra,
    }
