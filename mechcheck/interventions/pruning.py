"""Pruning neurons chosen by gradient x weight: does a few neurons' removal revive a capability?

A *neuron* is one output unit of a weight matrix inside a block: every ``torch.nn.Linear`` and every GPT-2
``Conv1D`` of the attention and the MLP of every block (the adapter's `blocks`; layer norms and embeddings are
not candidates). Its weights are the ones that compute that output: a **row** of ``Linear.weight`` (out, in)
and a **column** of ``Conv1D.weight`` (in, out) -- Conv1D computes ``x @ W + b`` -- and its bias entry. It is
named by `Neuron(layer, module, index)`: the block, the module's path inside the block (``"mlp.c_fc"``,
``"attn.c_attn"``, ``"self_attn.q_proj"``...) and the output unit. Pruning a neuron makes that output 0.

`neuron_scores(model, batch)`: forward `batch` (the data of the capability to revive), loss = mean cross-entropy
of the answer token over the *whole* vocabulary at each example's answer position, gradient g of every
candidate weight; a neuron's score is the sum of ``theta * g`` over its weights and its bias entry (the bias
too, since pruning zeroes it: ``bias=False`` scores and prunes the weights only). To first order, zeroing
parameters theta_i changes the loss by ``-sum g_i theta_i``, so the neurons with the *largest* scores are the
ones whose removal lowers that loss most: `NeuronScores.top(k)`.

`prune(model, neurons)`: a with-block in which those neurons' weights (and bias entries) are 0; on exit every
zeroed entry gets its own value back, bit for bit, also when the block raises. This is the one intervention
that writes the weights (temporarily): every code path that reads them sees the pruned model.

`pruning_curve(model, score_batch, eval_batches, ks)`: the accuracy on each evaluation batch (e.g. the
pretraining task and the fine-tuning task) after pruning the top-K neurons, for each K; the per-example
accuracy is `mechcheck.metrics` over the batch's candidates, as everywhere (`interventions.run`).
`random_neurons` draws the null: K neurons chosen uniformly, pruned in the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck.interventions.run import chunks, forward, run, valid_positions

__all__ = ["Neuron", "NeuronScores", "PruningCurve", "candidate_modules", "candidate_neurons", "neuron_scores",
           "prune", "pruning_curve", "random_neurons"]

_NAME_RE = re.compile(r"^blocks\.(\d+)\.([A-Za-z0-9_.]+)\[(\d+)\]$")


@dataclass(frozen=True, order=True)
class Neuron:
    """One output unit `index` of the weight matrix at `module` (its path inside block `layer`)."""

    layer: int
    module: str
    index: int

    def __str__(self) -> str:
        return f"blocks.{self.layer}.{self.module}[{self.index}]"

    @classmethod
    def parse(cls, name: str | Neuron) -> Neuron:
        """The neuron ``blocks.{layer}.{module}[{index}]`` names (the form `str` gives)."""
        if isinstance(name, Neuron):
            return name
        m = _NAME_RE.match(str(name))
        if not m:
            raise ValueError(f"not a neuron name: {name!r} (form: blocks.<layer>.<module>[<index>], e.g. "
                             "blocks.0.mlp.c_fc[3])")
        return cls(int(m.group(1)), m.group(2), int(m.group(3)))


def _is_conv1d(module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


def candidate_modules(model) -> dict[tuple[int, str], Any]:
    """(layer, path inside the block) -> module, for every Linear / Conv1D of every block, in model order."""
    import torch

    out = {}
    for layer, block in enumerate(model.adapter.blocks(model.hf)):
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) or _is_conv1d(module):
                out[(layer, name)] = module
    return out


def _n_units(module) -> int:
    return int(module.weight.shape[1] if _is_conv1d(module) else module.weight.shape[0])


def candidate_neurons(model) -> list[Neuron]:
    """Every neuron `neuron_scores` scores, in its order (block, module, unit)."""
    return [Neuron(layer, name, i) for (layer, name), m in candidate_modules(model).items() for i in range(_n_units(m))]


@dataclass
class NeuronScores:
    """Gradient x weight per neuron: `neurons` (N,) with `scores` (N,), and the mean loss they were taken at."""

    neurons: list[Neuron]
    scores: np.ndarray
    loss: float

    def order(self) -> np.ndarray:
        """Indices of `neurons` from the largest score down (ties: in model order)."""
        return np.argsort(-self.scores, kind="stable")

    def top(self, k: int) -> list[Neuron]:
        """The `k` neurons whose removal lowers the loss most, to first order."""
        return [self.neurons[i] for i in self.order()[:k]]

    def rank(self, neuron: Neuron | str) -> int:
        """0-based position of `neuron` in `order()`."""
        neuron = Neuron.parse(neuron)
        where = np.flatnonzero(self.order() == self.neurons.index(neuron))
        return int(where[0])

    def score(self, neuron: Neuron | str) -> float:
        return float(self.scores[self.neurons.index(Neuron.parse(neuron))])


@contextmanager
def _trainable(params):
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def neuron_scores(model, batch, *, bias: bool = True, batch_size: int = 256) -> NeuronScores:
    """Gradient x weight of every candidate neuron on `batch` (module docstring); the model is not changed and
    no ``.grad`` is written."""
    import torch

    modules = candidate_modules(model)
    if not modules:
        raise ValueError(f"{type(model.hf).__name__}: no Linear / Conv1D weights in its blocks to prune")
    params = []
    for m in modules.values():
        params.append(m.weight)
        if bias and m.bias is not None:
            params.append(m.bias)
    grads = [torch.zeros_like(p) for p in params]
    valid = valid_positions(batch.tokens, batch.pad_id)
    answers = torch.as_tensor(batch.answer_ids, device=model.device)
    n, total = len(batch), 0.0
    if n == 0:
        raise ValueError("neuron_scores needs a non-empty batch")
    with _trainable(params), torch.enable_grad():
        for sl in chunks(n, batch_size):
            tokens = torch.as_tensor(batch.tokens[sl], device=model.device)
            pos = torch.as_tensor(batch.answer_pos[sl], device=model.device)
            logits = forward(model, tokens, pos, valid[sl]).float()  # (B, V): the whole vocabulary
            loss = torch.nn.functional.cross_entropy(logits, answers[sl], reduction="sum") / n
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc += g
            total += float(loss.detach())
    neurons, scores = [], []
    k = 0
    with torch.no_grad():
        for (layer, name), m in modules.items():
            wg = m.weight * grads[k]
            k += 1
            s = wg.sum(0) if _is_conv1d(m) else wg.sum(1)  # Conv1D (in, out): a column per unit
            if bias and m.bias is not None:
                s = s + m.bias * grads[k]
                k += 1
            scores.append(s.double().cpu().numpy())
            neurons.extend(Neuron(layer, name, i) for i in range(s.shape[0]))
    return NeuronScores(neurons, np.concatenate(scores), total)


def _grouped(model, neurons: Iterable[Neuron | str]) -> list[tuple[Any, list[int]]]:
    """(module, sorted unit indices) per module named by `neurons`; ValueError for unknown ones."""
    modules = candidate_modules(model)
    groups: dict[tuple[int, str], set[int]] = {}
    for nr in neurons:
        nr = Neuron.parse(nr)
        key = (nr.layer, nr.module)
        if key not in modules:
            names = sorted({name for _, name in modules})
            raise ValueError(f"{nr}: block {nr.layer} has no prunable module {nr.module!r} (modules: "
                             f"{', '.join(names)}; blocks 0..{max(layer for layer, _ in modules)})")
        if not 0 <= nr.index < _n_units(modules[key]):
            raise ValueError(f"{nr}: {nr.module} has {_n_units(modules[key])} output units")
        groups.setdefault(key, set()).add(nr.index)
    return [(modules[key], sorted(idx)) for key, idx in groups.items()]


@contextmanager
def prune(model, neurons: Iterable[Neuron | str], *, bias: bool = True):
    """Within the block, `neurons`' weights (a Linear row, a Conv1D column) and bias entries are 0; every entry
    is restored bit for bit on exit. ``bias=False`` leaves the bias entries alone (the unit then outputs its
    bias)."""
    import torch

    groups = _grouped(model, neurons)
    saved: list[tuple[Any, Any, Any]] = []  # (tensor, index, original values)
    try:
        with torch.no_grad():
            for module, idx in groups:
                i = torch.as_tensor(idx, dtype=torch.long, device=module.weight.device)
                where = (slice(None), i) if _is_conv1d(module) else (i,)
                saved.append((module.weight, where, module.weight[where].clone()))
                module.weight[where] = 0
                if bias and module.bias is not None:
                    saved.append((module.bias, (i,), module.bias[i].clone()))
                    module.bias[i] = 0
        yield
    finally:
        with torch.no_grad():
            for tensor, where, values in reversed(saved):
                tensor[where] = values


def random_neurons(model, k: int, seed: int = 0, exclude: Iterable[Neuron | str] = ()) -> list[Neuron]:
    """`k` distinct candidate neurons drawn uniformly (seeded), none of `exclude`: the null of a pruning curve."""
    skip = {Neuron.parse(n) for n in exclude}
    pool = [n for n in candidate_neurons(model) if n not in skip]
    if k > len(pool):
        raise ValueError(f"asked for {k} random neurons, the model has {len(pool)} candidates")
    idx = np.random.default_rng([seed, 0x9E]).choice(len(pool), size=k, replace=False)
    return [pool[i] for i in idx]


@dataclass
class PruningCurve:
    """Per-example accuracy after pruning the first K of `neurons`, for each K of `ks`.

    correct: eval batch name -> (len(ks), n) 0/1; `accuracy(name)` its mean per K. `scores`: the gradient x
    weight scores the order came from (None when the neurons were given).
    """

    ks: list[int]
    neurons: list[Neuron]
    correct: dict[str, np.ndarray]
    logit_diff: dict[str, np.ndarray]
    scores: NeuronScores | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, name: str) -> np.ndarray:
        return self.correct[name].mean(axis=1)

    def revival(self, name: str) -> np.ndarray:
        """Accuracy after pruning K neurons minus accuracy with none pruned (K = ks[0] when 0 is not in ks)."""
        acc = self.accuracy(name)
        return acc - acc[self.ks.index(0) if 0 in self.ks else 0]

    def smallest_k(self, name: str, at_least: float) -> int | None:
        """The smallest K of `ks` whose accuracy on `name` is >= `at_least` (None: none reaches it)."""
        for k, a in zip(self.ks, self.accuracy(name)):
            if a >= at_least:
                return k
        return None


def pruning_curve(model, score_batch, eval_batches: Mapping[str, Any], ks: Sequence[int] = tuple(range(16)), *,
                  neurons: Sequence[Neuron | str] | None = None, bias: bool = True,
                  batch_size: int = 500) -> PruningCurve:
    """Accuracy on each of `eval_batches` after pruning the top-K neurons by gradient x weight on `score_batch`
    (or the first K of the given `neurons`, e.g. `random_neurons` for the null), for each K in `ks`."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 0:
        raise ValueError(f"ks must be K >= 0, got {ks}")
    scores = None
    if neurons is None:
        scores = neuron_scores(model, score_batch, bias=bias)
        neurons = scores.top(ks[-1])
    neurons = [Neuron.parse(n) for n in neurons]
    if len(neurons) < ks[-1]:
        raise ValueError(f"pruning up to K={ks[-1]} needs that many neurons, {len(neurons)} given")
    correct = {name: np.zeros((len(ks), len(b))) for name, b in eval_batches.items()}
    diff = {name: np.zeros((len(ks), len(b))) for name, b in eval_batches.items()}
    for i, k in enumerate(ks):
        with prune(model, neurons[:k], bias=bias):
            for name, b in eval_batches.items():
                out = run(model, b, batch_size=batch_size)
                correct[name][i] = out.metrics["accuracy"]
                diff[name][i] = out.metrics["logit_diff"]
    return PruningCurve(ks, neurons[:ks[-1]], correct, diff, scores)
