"""Linear probes per block: can a linear read-out recover a per-example label from the residual stream?

`block_probes(model, batch, label)` reads the residual stream at each example's answer position entering block 0
(block 0 = the embeddings) and leaving every block (block l = ``blocks.{l-1}.hook_resid_post``: for GPT-2 before
the final layer norm), through `interventions.run`. On each block it fits a multinomial logistic regression
(standardised features, C = 1, lbfgs) to the label on a seeded train split and reports its accuracy on the
held-out rest. Two nulls, with the same split and probe:

  shuffled   the labels permuted (seeded) before the split: what the probe reaches with no relation between
             activations and labels (about the majority-class share)
  untrained  the activations of a randomly initialised model of the same configuration (the architecture's own
             initialiser, seeded): what the architecture and the input give without any training -- a random
             model's attention already mixes earlier tokens into the answer position, so this null need not be
             at chance

`chance` is the share of the held-out examples in the training split's majority class (what a constant
prediction gets). Everything is deterministic given `seed`.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck.interventions.run import run

__all__ = ["ProbeResult", "block_probes", "block_reads", "block_sites", "fit_probe", "linear_classifier",
           "untrained_like"]


def block_sites(n_layers: int) -> list[str]:
    """The residual stream entering block 0 (the embeddings), then leaving each block: n_layers + 1 sites."""
    return ["blocks.0.hook_resid_pre", *(f"blocks.{layer}.hook_resid_post" for layer in range(n_layers))]


def block_reads(model, batch, *, batch_size: int = 500) -> np.ndarray:
    """(n_layers + 1, n, d_model) residual stream at each example's answer position, per `block_sites`."""
    sites = block_sites(model.n_layers)
    reads = run(model, batch, read=sites, batch_size=batch_size).reads
    return np.stack([reads[s] for s in sites])


def untrained_like(model, seed: int = 0):
    """A randomly initialised model of `model`'s class and configuration (its own initialiser, seeded; the global
    torch RNG is left as it was), ready for interventions on the same device."""
    import torch

    from mechcheck.models import prepare

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf = type(model.hf)(copy.deepcopy(model.hf.config))
    return prepare(hf, model.device)


def linear_classifier(kind: str = "logistic", C: float = 1.0, max_iter: int = 2000):
    """The linear read-out every decoder and probe of mechcheck uses: standardised inputs, then multinomial
    logistic regression or a linear SVM (`linear_decoding`'s `classifier` choice)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    if kind == "linear_svm":
        return make_pipeline(StandardScaler(), LinearSVC(C=C))
    raise ValueError(f"unknown classifier {kind!r} (allowed: logistic, linear_svm)")


def fit_probe(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, *, C: float = 1.0,
              max_iter: int = 2000) -> tuple[np.ndarray, bool]:
    """Predictions of a probe fitted on (X_train, y_train) for X_test, and whether the fit converged. A training
    split with one class predicts that class."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    classes = np.unique(y_train)
    if len(classes) < 2:
        return np.full(len(X_test), classes[0] if len(classes) else 0), True
    # one BLAS thread: small fits gain nothing from threads, and oversubscribe a shared machine
    with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe = linear_classifier("logistic", C, max_iter).fit(X_train, y_train)
        pred = probe.predict(X_test)
    return pred, not any(issubclass(w.category, ConvergenceWarning) for w in caught)


@dataclass
class ProbeResult:
    """Held-out probe accuracy per block (index 0 = embeddings): the probe, and its two nulls.

    correct: (n_blocks, n_test) 0/1 of the probe on the held-out examples `test` (indices into the batch);
    untrained is None when that null was not asked for. not_converged counts fits that hit max_iter.
    shuffled_correct / untrained_correct: the nulls' (n_blocks, n_test) 0/1 on the same held-out examples (the
    shuffled probe scored against the shuffled labels), so a probe and its null can be compared example by example.
    """

    label: str
    accuracy: np.ndarray
    shuffled: np.ndarray
    untrained: np.ndarray | None
    chance: float
    correct: np.ndarray
    train: np.ndarray
    test: np.ndarray
    not_converged: int = 0
    shuffled_correct: np.ndarray | None = None
    untrained_correct: np.ndarray | None = None

    @property
    def blocks(self) -> list[int]:
        return list(range(len(self.accuracy)))


def _split(n: int, train_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < train_frac < 1:
        raise ValueError(f"train_frac must be strictly between 0 and 1, got {train_frac}")
    perm = np.random.default_rng([seed, 0x9B]).permutation(n)
    k = int(round(train_frac * n))
    if k < 1 or k >= n:
        raise ValueError(f"a batch of {n} examples leaves no train or no test split at train_frac={train_frac}")
    return np.sort(perm[:k]), np.sort(perm[k:])


def _held_out(X: np.ndarray, y: np.ndarray, train, test, C, max_iter):
    """Per block of X (blocks, n, d): held-out 0/1 correctness (blocks, n_test) and how many fits did not converge."""
    correct = np.zeros((X.shape[0], len(test)))
    not_converged = 0
    for b in range(X.shape[0]):
        pred, ok = fit_probe(X[b, train], y[train], X[b, test], C=C, max_iter=max_iter)
        correct[b] = pred == y[test]
        not_converged += not ok
    return correct, not_converged


def block_probes(model, batch, label: str | Any, *, train_frac: float = 0.5, seed: int = 0,
                 untrained: bool | Any = True, C: float = 1.0, max_iter: int = 2000,
                 batch_size: int = 500) -> ProbeResult:
    """Per-block linear probes of `label` (a name in ``batch.labels`` or an (n,) integer array) at the answer
    position, with the shuffled-label and untrained-model nulls (module docstring). `untrained`: True builds the
    random model with `untrained_like(model, seed)`; a model handle uses that one; False skips the null."""
    name = label if isinstance(label, str) else "label"
    if isinstance(label, str):
        if label not in batch.labels:
            raise ValueError(f"the batch has no label {label!r} (labels: {', '.join(batch.labels) or 'none'})")
        label = batch.labels[label]
    y = np.asarray(label)
    if y.shape != (len(batch),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"a probe label is one integer per example, shape ({len(batch)},); got {y.shape} {y.dtype}")
    train, test = _split(len(batch), train_frac, seed)
    X = block_reads(model, batch, batch_size=batch_size)
    correct, not_converged = _held_out(X, y, train, test, C, max_iter)
    y_shuffled = np.random.default_rng([seed, 0x5A]).permutation(y)
    shuffled, nc = _held_out(X, y_shuffled, train, test, C, max_iter)
    not_converged += nc
    untrained_acc = u = None
    if untrained is not False:
        other = untrained_like(model, seed) if untrained is True else untrained
        u, nc = _held_out(block_reads(other, batch, batch_size=batch_size), y, train, test, C, max_iter)
        untrained_acc, not_converged = u.mean(axis=1), not_converged + nc
    values, counts = np.unique(y[train], return_counts=True)
    chance = float(np.mean(y[test] == values[np.argmax(counts)]))
    return ProbeResult(name, correct.mean(axis=1), shuffled.mean(axis=1), untrained_acc, chance, correct, train,
                       test, not_converged, shuffled, u)
