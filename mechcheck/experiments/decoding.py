"""Representation experiments (Lin 2024): linear decoding, per-unit mixed selectivity, embedding geometry.

`linear_decoding` reads activations at each example's answer position and asks what a linear read-out can
recover from them (METHODS.md §1.2 items 3-4):

  sites     resid_final  ``blocks.{l}.hook_resid_post``: the residual stream after block l; with
                         ``layers: last`` the last layer's hidden state, which Lin decodes (before the final
                         layer norm: TransformerLens' resid_post, not HF's ``hidden_states[-1]`` for GPT-2)
            attn_out     ``blocks.{l}.attn.o.hook_out``: the attention output after W_O (and b_O), summed over
                         heads, before it is added to the residual stream. For GPT-2 this equals
                         ``hook_attn_out``; for BERT (post-LN) the bridge's ``hook_attn_out`` is
                         LayerNorm(x + attention), i.e. already the residual stream, so it is *not* used.
  decoder   StandardScaler + LogisticRegression(C=1, max_iter=2000) or + LinearSVC(C=1); `folds`-fold
            stratified CV (shuffled, seeded by the claim's data seed); every example is predicted by a decoder
            that did not see it, and its 0/1 correctness is kept so checks can bootstrap replicates, then
            examples.
  null      the same CV on `n_shuffle` permutations of the labels (same folds seed). The p-value of the
            observed accuracy against it is a t prediction interval for one more draw of the null
            (p = P(T_{k-1} >= (acc - mean) / (sd * sqrt(1 + 1/k))), k shuffles): accuracies are means of many
            0/1s and close to normal, and with 20 shuffles an empirical rank p-value cannot go below 1/21.
            The empirical rank p-value is reported too, and `decoding_above_null` also requires the observed
            accuracy to beat every shuffle.
  chance    the share of the majority class (what predicting a constant achieves).

Mixed selectivity (ours: the paper's definition is unknown, METHODS.md §1.0). At the final hidden state, for
every unit (dimension) u and every binary variable v of `selectivity` (default context, motion_sign,
color_sign: the CDM variables that are independent by construction; `choice` is left out by default because
it is a function of them, so a unit carrying only the motion sign would also look "selective" for choice):
AUC(u, v) = P(x_u | v=1 > x_u | v=0) (Mann-Whitney U / n1 n0). u is *selective* for v when
|AUC - 0.5| >= `unit_auc` AND the two-sided Mann-Whitney p < `unit_alpha` / (units x variables) (Bonferroni).
A unit is *mixed-selective* when it is selective for >= 2 variables. Multi-class variables are skipped.

`embedding_geometry` (UMAP claim, METHODS.md §1.2 item 5): the final hidden state at the answer position,
standardised, embedded in 2-D with ``umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed)``, and the
per-example silhouette (sklearn ``silhouette_samples``) of each label's clusters in the 2-D embedding and in
the standardised raw space. A control silhouette with permuted labels (one permutation) is kept alongside.

Bootstrap: checks resample replicates, then examples (decoding, silhouette) or units (selectivity); for
a comparison of two models each side is resampled independently (`stats.bootstrap_difference`). Selectivity CIs
treat each unit's selectivity as measured (units are resampled, examples are not).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.experiments import ExperimentContext
from mechcheck.registry import CHECKS, EXPERIMENTS, Param
from mechcheck.results import CheckResult, Estimate

__all__ = [
    "DecodingResult",
    "GeometryResult",
    "collect_activations",
    "cv_correct",
    "embedding_geometry",
    "linear_decoding",
    "null_pvalue",
    "shuffled_null",
    "site_names",
    "two_sample_bootstrap",
    "unit_selectivity",
]

SITES = ("resid_final", "attn_out")
CLASSIFIERS = ("logistic", "linear_svm")
_SITE_HOOK = {"resid_final": "blocks.{l}.hook_resid_post", "attn_out": "blocks.{l}.attn.o.hook_out"}
_MAX_LAYER = 127


# -------------------------------------------------------------------------------------------- activations


def site_names(site: str, layers: str, n_layers: int) -> dict[int, str]:
    """Layer -> hook name of `site` for `layers` (last | all)."""
    picked = [n_layers - 1] if layers == "last" else list(range(n_layers))
    return {layer: _SITE_HOOK[site].format(l=layer) for layer in picked}


def _valid_mask(tokens: np.ndarray, pad_id: int) -> np.ndarray:
    """(B, T) attention mask of right-padded prompts: 1 up to the last non-pad token of each row."""
    not_pad = tokens != pad_id
    T = tokens.shape[1]
    last = T - 1 - np.argmax(not_pad[:, ::-1], axis=1)  # index of the last non-pad token
    return (np.arange(T)[None, :] <= last[:, None]).astype(np.int64)


def collect_activations(handle, batch, names: list[str], batch_size: int = 500) -> dict[str, np.ndarray]:
    """Per hook name, (n, d) float32 activations at each example's answer position (no grad).

    A bidirectional model (BERT) would let every position attend to the right-padding, so it gets an
    attention mask of the non-pad prefix; a causal model needs none (the answer position sees no padding).
    """
    import torch

    missing = [n for n in names if n not in handle.bridge.hook_dict]
    if missing:
        raise ValueError(f"the bridge of this model has no hook {missing[0]!r} (hooks of block 0: "
                         f"{', '.join(k for k in handle.bridge.hook_dict if k.startswith('blocks.0.'))})")
    bidirectional = getattr(handle.bridge.cfg, "attention_dir", "causal") == "bidirectional"
    wanted = set(names)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.no_grad():
        for start in range(0, len(batch), batch_size):
            sl = slice(start, min(len(batch), start + batch_size))
            tokens = torch.as_tensor(batch.tokens[sl], device=handle.device)
            kwargs = {}
            if bidirectional:
                kwargs["attention_mask"] = torch.as_tensor(_valid_mask(batch.tokens[sl], batch.pad_id),
                                                           device=handle.device)
            _, cache = handle.bridge.run_with_cache(tokens, names_filter=lambda n: n in wanted, **kwargs)
            rows = torch.arange(tokens.shape[0], device=tokens.device)
            pos = torch.as_tensor(batch.answer_pos[sl], device=tokens.device)
            for n in names:
                out[n].append(cache[n][rows, pos].float().cpu().numpy())  # (B, d)
    return {n: np.concatenate(v) for n, v in out.items()}


# ------------------------------------------------------------------------------------------------ decoders


def _classifier(kind: str):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if kind == "linear_svm":
        return make_pipeline(StandardScaler(), LinearSVC(C=1.0))
    raise ValueError(f"unknown classifier {kind!r} (allowed: {', '.join(CLASSIFIERS)})")


def _folds(y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int(np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if k < 2:
        return None
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def cv_correct(X: np.ndarray, y: np.ndarray, classifier: str = "logistic", folds: int = 5, seed: int = 0,
               _splits=None) -> tuple[np.ndarray, int]:
    """(n,) out-of-fold 0/1 correctness of the decoder, and how many fits did not converge.

    All NaN when `y` has one class, or a class with fewer than 2 examples (nothing to cross-validate).
    """
    from sklearn.exceptions import ConvergenceWarning

    splits = _splits if _splits is not None else _folds(y, folds, seed)
    if splits is None:
        return np.full(len(y), np.nan), 0
    correct = np.zeros(len(y))
    not_converged = 0
    for train, test in splits:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = _classifier(classifier).fit(X[train], y[train])
        not_converged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        correct[test] = model.predict(X[test]) == y[test]
    return correct, not_converged


def shuffled_null(X: np.ndarray, y: np.ndarray, classifier: str = "logistic", folds: int = 5,
                  n_shuffle: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The same CV on `n_shuffle` label permutations: (n_shuffle,) accuracies, (n,) per-example mean correctness."""
    rng = np.random.default_rng([seed, 0x5A])
    accs, per_example = np.full(n_shuffle, np.nan), np.zeros(len(y))
    for k in range(n_shuffle):
        yk = rng.permutation(y)
        correct, _ = cv_correct(X, yk, classifier, folds, seed)
        accs[k] = correct.mean()
        per_example += correct
    return accs, per_example / max(1, n_shuffle)


def null_pvalue(observed: float, null: np.ndarray, n: int) -> tuple[float, float]:
    """(t-based p, empirical rank p) of `observed` accuracy against shuffled-label accuracies `null`.

    t-based: a one-sided t prediction interval for one more draw of the null. The null's sd is floored at
    half the binomial sd of the null mean (n examples) so that a degenerate null cannot give p = 0.
    """
    null = np.asarray(null, dtype=float)
    if not math.isfinite(observed) or null.size == 0 or np.isnan(null).any():
        return math.nan, math.nan
    from scipy import stats as st

    k, mean = null.size, float(null.mean())
    sd = float(null.std(ddof=1)) if k > 1 else 0.0
    sd = max(sd, 0.5 * math.sqrt(max(mean * (1 - mean), 1e-6) / n))
    df = max(k - 1, 1)
    p_t = float(st.t.sf((observed - mean) / (sd * math.sqrt(1 + 1 / k)), df))
    p_rank = float((1 + (null >= observed).sum()) / (1 + k))
    return p_t, p_rank


def unit_selectivity(X: np.ndarray, labels: dict[str, np.ndarray], unit_auc: float = 0.1,
                     alpha: float = 0.01) -> dict[str, Any]:
    """Per-unit selectivity of (n, d) activations `X` for binary `labels` (module docstring).

    Returns auc (V, d), selective (V, d) bool, mixed (d,) bool, and the variables used (multi-class and
    constant ones are skipped).
    """
    from scipy.stats import mannwhitneyu

    used = [v for v, y in labels.items() if len(np.unique(y)) == 2]
    d = X.shape[1]
    auc = np.full((len(used), d), 0.5)
    selective = np.zeros((len(used), d), dtype=bool)
    level = alpha / max(1, len(used) * d)
    for i, v in enumerate(used):
        y = labels[v]
        hi = y == np.max(y)
        a, b = X[hi], X[~hi]
        with np.errstate(all="ignore"):
            res = mannwhitneyu(a, b, axis=0, alternative="two-sided", method="asymptotic")
        auc[i] = res.statistic / (len(a) * len(b))
        p = np.nan_to_num(np.asarray(res.pvalue, dtype=float), nan=1.0)
        selective[i] = (np.abs(auc[i] - 0.5) >= unit_auc) & (p < level)
    mixed = selective.sum(0) >= 2
    return {"variables": used, "auc": auc, "selective": selective, "mixed": mixed}


# ------------------------------------------------------------------------------------------ bootstrapping


def two_sample_bootstrap(a: list[np.ndarray], b: list[np.ndarray], n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> Estimate:
    """Mean of seed means of `a` minus that of `b`; each side resampled independently (replicates, then rows).

    A thin wrapper of `stats.bootstrap_difference` (flattening each replicate's array), kept so the checks
    here read the same whatever the rows are (examples or units).
    """
    return stats.bootstrap_difference([np.asarray(x, dtype=float).ravel() for x in a],
                                      [np.asarray(x, dtype=float).ravel() for x in b], n_boot=n_boot, level=level,
                                      seed=seed)


# -------------------------------------------------------------------------------------------- decoding


@dataclass
class _DecodeReplicate:
    """One replicate of one role: per variable, (n, n_decoded_layers) correctness and the null."""

    layers: list[int]
    correct: dict[str, np.ndarray]  # var -> (n, len(layers)) 0/1 (NaN: not decodable)
    null_acc: dict[str, np.ndarray]  # var -> (n_shuffle, len(layers))
    null_example: dict[str, np.ndarray]  # var -> (n, len(layers)) mean correctness over shuffles
    selectivity: dict[str, Any]
    not_converged: int = 0
    p_values: dict[str, np.ndarray] = field(default_factory=dict)  # var -> (2, len(layers)) t-based, rank


def decode_replicate(features: dict[int, np.ndarray], final: np.ndarray, labels: dict[str, np.ndarray],
                     variables: list[str], selectivity: list[str], classifier: str = "logistic", folds: int = 5,
                     n_shuffle: int = 20, unit_auc: float = 0.1, unit_alpha: float = 0.01,
                     seed: int = 0) -> _DecodeReplicate:
    """Decode `variables` from each layer's (n, d) features; selectivity of the (n, d) `final` states."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: thousands of small fits gain nothing from threads, and on a busy 2-core machine
    # oversubscribed BLAS threads made each fit ~8x slower (measured: 94 ms -> 11 ms per 800 x 128 fit).
    with threadpool_limits(limits=1):
        return _decode_replicate(features, final, labels, variables, selectivity, classifier, folds, n_shuffle,
                                 unit_auc, unit_alpha, seed)


def _decode_replicate(features, final, labels, variables, selectivity, classifier, folds, n_shuffle, unit_auc,
                      unit_alpha, seed) -> _DecodeReplicate:
    layers = sorted(features)
    n = len(final)
    correct, null_acc, null_ex, pvals, not_conv = {}, {}, {}, {}, 0
    for v in variables:
        y = np.asarray(labels[v])
        c = np.full((n, len(layers)), np.nan)
        na = np.full((n_shuffle, len(layers)), np.nan)
        ne = np.full((n, len(layers)), np.nan)
        p = np.full((2, len(layers)), np.nan)
        for j, layer in enumerate(layers):
            c[:, j], bad = cv_correct(features[layer], y, classifier, folds, seed)
            not_conv += bad
            if n_shuffle > 0 and not np.isnan(c[:, j]).any():
                na[:, j], ne[:, j] = shuffled_null(features[layer], y, classifier, folds, n_shuffle, seed)
                p[:, j] = null_pvalue(float(c[:, j].mean()), na[:, j], n)
        correct[v], null_acc[v], null_ex[v], pvals[v] = c, na, ne, p
    sel = unit_selectivity(final, {v: np.asarray(labels[v]) for v in selectivity}, unit_auc, unit_alpha)
    return _DecodeReplicate(layers, correct, null_acc, null_ex, sel, not_conv, pvals)


def _majority(y: np.ndarray) -> float:
    return float(np.bincount(np.unique(y, return_inverse=True)[1]).max() / len(y))


class DecodingResult:
    """Per role and replicate: decoding correctness per variable and layer, its shuffled null, selectivity."""

    name = "linear_decoding"

    def __init__(self, args: dict[str, Any], labels: dict[str, np.ndarray], fixtures: dict[str, str],
                 n_layers: dict[str, int], runs: dict[str, list[_DecodeReplicate]]) -> None:
        self.args, self.labels, self.fixtures, self.n_layers, self.runs = args, labels, fixtures, n_layers, runs

    @property
    def variables(self) -> list[str]:
        return list(self.args["variables"])

    def layers(self, role: str) -> list[int]:
        return self.runs[role][0].layers

    def chance(self, variable: str) -> float:
        return _majority(np.asarray(self.labels[variable]))

    def correct(self, role: str, variable: str) -> list[np.ndarray]:
        """Per replicate, (n, len(layers)) out-of-fold 0/1 correctness."""
        return [r.correct[variable] for r in self.runs[role]]

    def null_accuracy(self, role: str, variable: str) -> list[np.ndarray]:
        return [r.null_acc[variable] for r in self.runs[role]]

    def null_examples(self, role: str, variable: str) -> list[np.ndarray]:
        return [r.null_example[variable] for r in self.runs[role]]

    def p_values(self, role: str, variable: str) -> list[np.ndarray]:
        """Per replicate, (2, len(layers)): t-based and empirical rank p-values against the null."""
        return [r.p_values[variable] for r in self.runs[role]]

    def mixed(self, role: str) -> list[np.ndarray]:
        """Per replicate, (d,) 0/1: unit is mixed-selective."""
        return [r.selectivity["mixed"].astype(float) for r in self.runs[role]]

    def selective_any(self, role: str) -> list[np.ndarray]:
        return [r.selectivity["selective"].any(0).astype(float) for r in self.runs[role]]

    def selective_shares(self, role: str) -> list[dict[str, float]]:
        return [{v: float(s) for v, s in zip(r.selectivity["variables"], r.selectivity["selective"].mean(1))}
                for r in self.runs[role]]

    def summary(self) -> dict[str, Any]:
        """JSON-able: per role and replicate, accuracy / null mean / null 95th pct per variable and layer,
        p-values, selective and mixed shares."""
        def rnd(a):
            return [None if not math.isfinite(x) else round(float(x), 4) for x in np.asarray(a, dtype=float)]

        models = {}
        for role, runs in self.runs.items():
            reps = []
            for r in runs:
                sel = r.selectivity
                reps.append({
                    "accuracy": {v: rnd(np.nanmean(r.correct[v], 0) if not np.isnan(r.correct[v]).all()
                                        else np.full(len(r.layers), np.nan)) for v in r.correct},
                    "null_mean": {v: rnd(r.null_acc[v].mean(0)) for v in r.null_acc},
                    "null_p95": {v: rnd(np.quantile(r.null_acc[v], 0.95, axis=0)) if r.null_acc[v].size
                                 else [] for v in r.null_acc},
                    "p_value": {v: rnd(r.p_values[v][0]) for v in r.p_values},
                    "p_rank": {v: rnd(r.p_values[v][1]) for v in r.p_values},
                    "selectivity": {
                        "units": int(sel["mixed"].size),
                        "variables": list(sel["variables"]),
                        "selective_share": {v: round(float(s), 4) for v, s in
                                            zip(sel["variables"], sel["selective"].mean(1))},
                        "any_selective_share": round(float(sel["selective"].any(0).mean()), 4),
                        "mixed_share": round(float(sel["mixed"].mean()), 4),
                    },
                    "not_converged": int(r.not_converged),
                })
            models[role] = {"fixture": self.fixtures.get(role, role), "n_layers": self.n_layers[role],
                            "layers": list(runs[0].layers), "replicates": reps}
        chance = {v: round(self.chance(v), 4) for v in self.variables}
        return {"name": self.name, "args": dict(self.args), "n": len(next(iter(self.labels.values()))),
                "chance": chance, "models": models}


def _check_labels(batch, names: list[str], what: str) -> None:
    from mechcheck.errors import SpecError

    missing = [v for v in names if v not in batch.labels]
    if missing:
        raise SpecError(f"{what}: the eval task has no label {missing[0]!r}", field_path=f"experiment.{what}",
                        allowed=tuple(sorted(batch.labels)))


_VARIABLES = ("context", "motion_sign", "color_sign", "choice")


@EXPERIMENTS.register("linear_decoding", params=(
    Param("site", "choice", default="resid_final", choices=SITES,
          doc="resid_final: blocks.{l}.hook_resid_post; attn_out: attention output after W_O (attn.o.hook_out)"),
    Param("layers", "choice", default="last", choices=("last", "all"), doc="decode the last layer or every layer"),
    Param("variables", "labels", default=list(_VARIABLES), doc="labels of the eval task to decode"),
    Param("classifier", "choice", default="logistic", choices=CLASSIFIERS,
          doc="StandardScaler + LogisticRegression(C=1) or + LinearSVC(C=1)"),
    Param("folds", "int", default=5, min=2, doc="stratified CV folds"),
    Param("n_shuffle", "int", default=20, min=0, doc="label permutations for the shuffled-label null"),
    Param("selectivity", "labels", default=["context", "motion_sign", "color_sign"],
          doc="binary labels for per-unit (mixed) selectivity at the final hidden state"),
    Param("unit_auc", "float", default=0.1, min=0.0, max=0.5, doc="selective: |AUC - 0.5| at least this"),
    Param("unit_alpha", "float", default=0.01, min=0.0, max=1.0,
          doc="selective: Mann-Whitney p below this / (units x variables)"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
))
def linear_decoding(ctx: ExperimentContext, site: str = "resid_final", layers: str = "last",
                    variables: list[str] = _VARIABLES, classifier: str = "logistic", folds: int = 5,
                    n_shuffle: int = 20, selectivity: list[str] = ("context", "motion_sign", "color_sign"),
                    unit_auc: float = 0.1, unit_alpha: float = 0.01, batch_size: int = 500) -> DecodingResult:
    """Cross-validated linear decoding of task labels at the answer position, with a shuffled-label null,
    and per-unit mixed selectivity of the final hidden state."""
    args = {"site": site, "layers": layers, "variables": list(variables), "classifier": classifier, "folds": folds,
            "n_shuffle": n_shuffle, "selectivity": list(selectivity), "unit_auc": unit_auc,
            "unit_alpha": unit_alpha, "batch_size": batch_size}
    batch = ctx.batch
    _check_labels(batch, list(variables), "variables")
    _check_labels(batch, list(selectivity), "selectivity")
    from mechcheck.progress import progress_bar

    runs: dict[str, list[_DecodeReplicate]] = {}
    n_layers: dict[str, int] = {}
    with progress_bar(ctx.console) as progress:
        bar = progress.add_task("linear decoding", total=sum(len(hs) for hs in ctx.models.values()))
        for role, handle in ((r, h) for r, hs in ctx.models.items() for h in hs):
            runs.setdefault(role, [])
            progress.update(bar, description=f"linear decoding: {role} (replicate {len(runs[role]) + 1})")
            L = handle.n_layers
            n_layers[role] = L
            names = site_names(site, layers, L)
            final = f"blocks.{L - 1}.hook_resid_post"
            acts = collect_activations(handle, batch, sorted(set(names.values()) | {final}), batch_size)
            feats = {layer: acts[name] for layer, name in names.items()}
            runs[role].append(decode_replicate(feats, acts[final], batch.labels, list(variables), list(selectivity),
                                               classifier, folds, n_shuffle, unit_auc, unit_alpha, ctx.seed))
            progress.advance(bar)
    labels = {v: np.asarray(batch.labels[v]) for v in set(variables) | set(selectivity)}
    return DecodingResult(args, labels, dict(ctx.fixtures), n_layers, runs)


# --------------------------------------------------------------------------------------------- geometry


@dataclass
class _GeometryReplicate:
    embedding: np.ndarray  # (n, 2)
    silhouette: dict[str, dict[str, np.ndarray]]  # space -> label -> (n,)
    control: dict[str, dict[str, np.ndarray]]  # same, with permuted labels


def geometry_replicate(X: np.ndarray, labels: dict[str, np.ndarray], n_neighbors: int = 15, min_dist: float = 0.1,
                       seed: int = 0, embed: bool = True) -> _GeometryReplicate:
    """Standardise (n, d) states, embed them with UMAP (unless `embed` is False) and score label clusters."""
    from sklearn.metrics import silhouette_samples
    from sklearn.preprocessing import StandardScaler

    Z = StandardScaler().fit_transform(X)
    spaces = {"raw": Z}
    emb = np.zeros((len(X), 2))
    if embed:
        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": determinism is the point
            emb = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed).fit_transform(Z)
        spaces["umap"] = emb
    rng = np.random.default_rng([seed, 0x51])
    sil: dict[str, dict[str, np.ndarray]] = {s: {} for s in spaces}
    ctl: dict[str, dict[str, np.ndarray]] = {s: {} for s in spaces}
    for lab, y in labels.items():
        y = np.asarray(y)
        perm = rng.permutation(y)
        for s, P in spaces.items():
            ok = 2 <= len(np.unique(y)) < len(y)
            sil[s][lab] = silhouette_samples(P, y) if ok else np.full(len(y), np.nan)
            ctl[s][lab] = silhouette_samples(P, perm) if ok else np.full(len(y), np.nan)
    return _GeometryReplicate(np.asarray(emb, dtype=np.float32), sil, ctl)


class GeometryResult:
    """Per role and replicate: the 2-D UMAP embedding and per-example silhouettes per label and space."""

    name = "embedding_geometry"

    def __init__(self, args: dict[str, Any], labels: dict[str, np.ndarray], fixtures: dict[str, str],
                 runs: dict[str, list[_GeometryReplicate]], seed: int = 0) -> None:
        self.args, self.labels, self.fixtures, self.runs, self.seed = args, labels, fixtures, runs, seed

    def silhouette(self, role: str, label: str, space: str) -> list[np.ndarray]:
        return [r.silhouette[space][label] for r in self.runs[role]]

    def control(self, role: str, label: str, space: str) -> list[np.ndarray]:
        return [r.control[space][label] for r in self.runs[role]]

    def summary(self) -> dict[str, Any]:
        n = len(next(iter(self.labels.values())))
        keep = np.sort(np.random.default_rng([self.seed, 0x500]).permutation(n)[: self.args["max_points"]])
        models = {}
        for role, runs in self.runs.items():
            reps = []
            for r in runs:
                reps.append({
                    "silhouette": {s: {lab: round(float(np.mean(v)), 4) for lab, v in d.items()}
                                   for s, d in r.silhouette.items()},
                    "control": {s: {lab: round(float(np.mean(v)), 4) for lab, v in d.items()}
                                for s, d in r.control.items()},
                    "points": np.round(r.embedding[keep], 3).tolist() if "umap" in r.silhouette else [],
                })
            models[role] = {"fixture": self.fixtures.get(role, role), "replicates": reps}
        return {"name": self.name, "args": dict(self.args), "n": n, "point_index": keep.tolist(),
                "point_labels": {lab: np.asarray(y)[keep].astype(int).tolist() for lab, y in self.labels.items()},
                "models": models}


@EXPERIMENTS.register("embedding_geometry", params=(
    Param("labels", "labels", default=["context", "choice"], doc="labels whose clusters are scored"),
    Param("n_neighbors", "int", default=15, min=2, doc="UMAP n_neighbors"),
    Param("min_dist", "float", default=0.1, min=0.0, doc="UMAP min_dist"),
    Param("max_points", "int", default=500, min=1, doc="embedded points per replicate kept for the scatter plot"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
))
def embedding_geometry(ctx: ExperimentContext, labels: list[str] = ("context", "choice"), n_neighbors: int = 15,
                       min_dist: float = 0.1, max_points: int = 500, batch_size: int = 500) -> GeometryResult:
    """UMAP of the final hidden state at the answer position; silhouette of label clusters in 2-D and raw."""
    args = {"labels": list(labels), "n_neighbors": n_neighbors, "min_dist": min_dist, "max_points": max_points,
            "batch_size": batch_size}
    batch = ctx.batch
    _check_labels(batch, list(labels), "labels")
    lab = {v: np.asarray(batch.labels[v]) for v in labels}
    from mechcheck.progress import progress_bar

    runs: dict[str, list[_GeometryReplicate]] = {}
    with progress_bar(ctx.console) as progress:
        bar = progress.add_task("UMAP", total=sum(len(hs) for hs in ctx.models.values()))
        for role, handle in ((r, h) for r, hs in ctx.models.items() for h in hs):
            runs.setdefault(role, [])
            progress.update(bar, description=f"UMAP: {role} (replicate {len(runs[role]) + 1})")
            name = f"blocks.{handle.n_layers - 1}.hook_resid_post"
            X = collect_activations(handle, batch, [name], batch_size)[name]
            runs[role].append(geometry_replicate(X, lab, n_neighbors, min_dist, ctx.seed))
            progress.advance(bar)
    return GeometryResult(args, lab, dict(ctx.fixtures), runs, ctx.seed)


# ------------------------------------------------------------------------------------------------ checks

_MODEL = Param("model", "model", required=True, doc="role of the model in the claim's `models`")
_THAN = Param("than", "model", required=True, doc="role of the model it is compared with")


def _expect(ctx, cls, experiment: str):
    if not isinstance(ctx.result, cls):
        raise ctx.error(f"this check needs the experiment '{experiment}', but the claim ran "
                        f"'{getattr(ctx.result, 'name', type(ctx.result).__name__)}'")
    return ctx.result


def _variable(ctx, res: DecodingResult, variable: str) -> None:
    if variable not in res.variables:
        raise ctx.error(f"variable: {variable!r} was not decoded (the experiment's `variables`)",
                        allowed=tuple(res.variables))


def _layer_index(ctx, res: DecodingResult, role: str, layer: Any) -> int:
    layers = res.layers(role)
    if layer == "last":
        return len(layers) - 1
    if layer not in layers:
        raise ctx.error(f"layer: {layer} was not decoded in model '{role}' (decoded layers: {layers}; "
                        f"the experiment's `layers: all` decodes every layer)")
    return layers.index(layer)


@CHECKS.register("decoding_accuracy_at_least", params=(
    _MODEL,
    Param("variable", "label", required=True, within="variables", doc="a decoded label, e.g. context"),
    Param("value", "float", required=True, min=0.0, max=1.0, doc="smallest cross-validated accuracy"),
    Param("layer", "choice", default="last", choices=("last", *range(_MAX_LAYER + 1)),
          doc="'last' or a decoded layer index"),
), experiments=("linear_decoding",))
def decoding_accuracy_at_least(ctx, model: str, variable: str, value: float, layer: Any = "last") -> CheckResult:
    """The linear decoder's cross-validated accuracy for `variable` is at least `value`."""
    res = _expect(ctx, DecodingResult, "linear_decoding")
    _variable(ctx, res, variable)
    j = _layer_index(ctx, res, model, layer)
    est = ctx.bootstrap([c[:, j] for c in res.correct(model, variable)])
    outcome = stats.judge(est, value, ">=")
    null = res.null_accuracy(model, variable)
    if null[0].size:
        ctl = ctx.bootstrap([e[:, j] for e in res.null_examples(model, variable)])
        p95 = float(np.mean([np.quantile(a[:, j], 0.95) for a in null]))
        control = {"label": f"shuffled labels ({null[0].shape[0]} permutations)", "estimate": ctl.estimate,
                   "lo": ctl.lo, "hi": ctl.hi, "p95": p95, "chance": res.chance(variable)}
        ctl_text = f"shuffled-label null {ctl.estimate:.3f} (95th pct {p95:.3f})"
    else:
        control = {"label": "chance (majority class)", "estimate": res.chance(variable)}
        ctl_text = f"chance {res.chance(variable):.3f}"
    at = res.layers(model)[j]
    msg = (f"{res.args['classifier']} decoding of '{variable}' from {res.args['site']} layer {at} of '{model}' = "
           f"{est} (needs >= {value}; {ctl_text})")
    return CheckResult("decoding_accuracy_at_least", {}, outcome, msg, est, value, ">=", control,
                       {"layer": at, "site": res.args["site"]})


@CHECKS.register("decoding_above_null", params=(
    _MODEL,
    Param("variable", "label", required=True, within="variables", doc="a decoded label, e.g. context"),
    Param("alpha", "float", default=0.01, min=0.0, max=1.0, doc="significance level (Holm over decoded layers)"),
), experiments=("linear_decoding",))
def decoding_above_null(ctx, model: str, variable: str, alpha: float = 0.01) -> CheckResult:
    """In every replicate the decoder beats its shuffled-label null (at some layer, Holm over layers)."""
    res = _expect(ctx, DecodingResult, "linear_decoding")
    _variable(ctx, res, variable)
    if res.args["n_shuffle"] < 1:
        raise ctx.error("decoding_above_null needs a shuffled-label null: set the experiment's n_shuffle >= 1")
    layers = res.layers(model)
    correct, null, null_ex = res.correct(model, variable), res.null_accuracy(model, variable), \
        res.null_examples(model, variable)
    per_rep, beats, diffs = [], 0, []
    for c, na, ne, p in zip(correct, null, null_ex, res.p_values(model, variable)):
        acc = np.nanmean(c, 0) if not np.isnan(c).all() else np.full(len(layers), np.nan)
        if np.isnan(p[0]).any():
            p_holm = np.full(len(layers), np.nan)
        else:
            p_holm = stats.holm(p[0])
        above_all = acc > na.max(0)
        ok = (p_holm < alpha) & above_all
        best = int(np.nanargmin(p_holm)) if not np.isnan(p_holm).all() else 0
        beats += bool(ok.any())
        diffs.append(c[:, best] - ne[:, best])
        per_rep.append({"best_layer": layers[best], "accuracy": [round(float(a), 4) for a in acc],
                        "null_mean": [round(float(x), 4) for x in na.mean(0)],
                        "p_holm": [round(float(x), 6) for x in p_holm], "beats_null": bool(ok.any())})
    est = ctx.bootstrap(diffs)
    n_rep = len(correct)
    if any(np.isnan(c).all() for c in correct):
        outcome = "error"
    else:
        outcome = "passed" if beats == n_rep else "failed" if beats == 0 else "inconclusive"
    where = f"best layer per replicate {[r['best_layer'] for r in per_rep]}" if len(layers) > 1 else f"layer {layers[0]}"
    msg = (f"decoding '{variable}' from '{model}' beats its shuffled-label null in {beats}/{n_rep} replicates "
           f"(p < {alpha}{', Holm over layers' if len(layers) > 1 else ''}, and above every shuffle); "
           f"accuracy minus null = {est} at the {where}")
    control = {"label": f"shuffled labels ({res.args['n_shuffle']} permutations)",
               "estimate": float(np.mean([r["null_mean"][layers.index(r["best_layer"])] for r in per_rep])),
               "chance": res.chance(variable)}
    return CheckResult("decoding_above_null", {}, outcome, msg, est, 0.0, ">=", control,
                       {"replicates": per_rep, "layers": layers, "significant_replicates": beats})


def _independent_mixed_share(shares: list[dict[str, float]]) -> float:
    """Expected share of units selective for >= 2 variables if selectivity for each variable were independent."""
    out = []
    for s in shares:
        p = np.array(list(s.values()))
        none = np.prod(1 - p)
        one = sum(p[i] * np.prod(np.delete(1 - p, i)) for i in range(len(p)))
        out.append(1 - none - one)
    return float(np.mean(out)) if out else math.nan


@CHECKS.register("mixed_selectivity_higher", params=(
    _MODEL, _THAN,
    Param("by", "float", default=0.0, min=-1.0, max=1.0, doc="smallest difference of mixed-selective shares"),
), experiments=("linear_decoding",))
def mixed_selectivity_higher(ctx, model: str, than: str, by: float = 0.0) -> CheckResult:
    """The share of mixed-selective final-layer units in `model` exceeds that in `than` by at least `by`."""
    res = _expect(ctx, DecodingResult, "linear_decoding")
    a, b = res.mixed(model), res.mixed(than)
    est = two_sample_bootstrap(a, b, ctx.n_boot, ctx.seed)
    outcome = stats.judge(est, by, ">=")
    share_a, share_b = float(np.mean([x.mean() for x in a])), float(np.mean([x.mean() for x in b]))
    indep_a = _independent_mixed_share(res.selective_shares(model))
    msg = (f"share of mixed-selective units (>= 2 of {res.args['selectivity']}) in '{model}' minus '{than}' = {est} "
           f"(needs >= {by}; {share_a:.3f} vs {share_b:.3f}; '{model}' if its units were selective independently: "
           f"{indep_a:.3f})")
    control = {"label": f"'{model}' expected if selectivity were independent across variables", "estimate": indep_a,
               "than_share": share_b}
    details = {role: {"mixed_share": [float(x.mean()) for x in res.mixed(role)],
                      "any_selective_share": [float(x.mean()) for x in res.selective_any(role)],
                      "selective_share": res.selective_shares(role)} for role in (model, than)}
    return CheckResult("mixed_selectivity_higher", {}, outcome, msg, est, by, ">=", control, details)


_LABEL = Param("label", "label", required=True, within="labels", doc="a label of the experiment's `labels`")
_SPACE = Param("space", "choice", default="umap", choices=("umap", "raw"),
               doc="the 2-D UMAP embedding or the standardised hidden states")


def _geometry_label(ctx, res: GeometryResult, label: str) -> None:
    if label not in res.args["labels"]:
        raise ctx.error(f"label: {label!r} was not scored (the experiment's `labels`)",
                        allowed=tuple(res.args["labels"]))


@CHECKS.register("silhouette_at_least", params=(
    _MODEL, _LABEL, _SPACE,
    Param("value", "float", required=True, min=-1.0, max=1.0, doc="smallest mean silhouette"),
), experiments=("embedding_geometry",))
def silhouette_at_least(ctx, model: str, label: str, value: float, space: str = "umap") -> CheckResult:
    """The mean silhouette of `label`'s clusters in `model`'s final states is at least `value`."""
    res = _expect(ctx, GeometryResult, "embedding_geometry")
    _geometry_label(ctx, res, label)
    est = ctx.bootstrap(res.silhouette(model, label, space))
    ctl = ctx.bootstrap(res.control(model, label, space))
    outcome = stats.judge(est, value, ">=")
    msg = (f"silhouette of '{label}' clusters in the {space} space of '{model}' = {est} (needs >= {value}; "
           f"permuted labels: {ctl.estimate:.3f})")
    return CheckResult("silhouette_at_least", {}, outcome, msg, est, value, ">=",
                       {"label": "permuted labels", "estimate": ctl.estimate, "lo": ctl.lo, "hi": ctl.hi})


@CHECKS.register("silhouette_higher", params=(
    _MODEL, _THAN, _LABEL, _SPACE,
    Param("by", "float", default=0.0, min=-2.0, max=2.0, doc="smallest difference of mean silhouettes"),
), experiments=("embedding_geometry",))
def silhouette_higher(ctx, model: str, than: str, label: str, space: str = "umap", by: float = 0.0) -> CheckResult:
    """`label`'s clusters are more separated (mean silhouette) in `model` than in `than`."""
    res = _expect(ctx, GeometryResult, "embedding_geometry")
    _geometry_label(ctx, res, label)
    est = two_sample_bootstrap(res.silhouette(model, label, space), res.silhouette(than, label, space),
                               ctx.n_boot, ctx.seed)
    outcome = stats.judge(est, by, ">=")
    sa = float(np.mean([x.mean() for x in res.silhouette(model, label, space)]))
    sb = float(np.mean([x.mean() for x in res.silhouette(than, label, space)]))
    ctl = two_sample_bootstrap(res.control(model, label, space), res.control(than, label, space), ctx.n_boot, ctx.seed)
    msg = (f"silhouette of '{label}' in the {space} space, '{model}' minus '{than}' = {est} (needs >= {by}; "
           f"{sa:.3f} vs {sb:.3f}; with permuted labels: {ctl.estimate:.3f})")
    return CheckResult("silhouette_higher", {}, outcome, msg, est, by, ">=",
                       {"label": "difference with permuted labels", "estimate": ctl.estimate, "lo": ctl.lo,
                        "hi": ctl.hi})
