"""Representation experiments (Lin 2024): linear decoding, per-unit mixed selectivity, embedding geometry.

`linear_decoding` reads activations at each example's answer position and asks what a linear read-out can
recover from them (the Lin notes in docs/methods/lin2024.md):

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

Mixed selectivity (ours: the paper's definition is unknown, docs/methods/README.md). At the final hidden state, for
every unit (dimension) u and every binary variable v of `selectivity` (default context, motion_sign,
color_sign: the CDM variables that are independent by construction; `choice` is left out by default because
it is a function of them, so a unit carrying only the motion sign would also look "selective" for choice):
AUC(u, v) = P(x_u | v=1 > x_u | v=0) (Mann-Whitney U / n1 n0). u is *selective* for v when
|AUC - 0.5| >= `unit_auc` AND the two-sided Mann-Whitney p < `unit_alpha` / (units x variables) (Bonferroni).
A unit is *mixed-selective* when it is selective for >= 2 variables. Multi-class variables are skipped.

Units: ``read`` (the activations at the answer position, through `mechcheck.interventions`; shared with
`embedding_geometry` when it reads the same sites of the same models) and ``decode`` (the decoders, the null
and the selectivity, fitted from a stored ``read``: no model is loaded for it). The checks (in
`mechcheck.checks.decoding`) compute p-values and intervals from the stored correctness and null accuracies.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck.experiments import Plan, PlanContext
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["cv_correct", "decode_replicate", "linear_decoding", "null_pvalue", "shuffled_null", "site_names",
           "unit_selectivity", "majority"]

SITES = ("resid_final", "attn_out")
CLASSIFIERS = ("logistic", "linear_svm")
_SITE_HOOK = {"resid_final": "blocks.{l}.hook_resid_post", "attn_out": "blocks.{l}.attn.o.hook_out"}


def site_names(site: str, layers: str, n_layers: int) -> dict[int, str]:
    """Layer -> hook name of `site` for `layers` (last | all)."""
    picked = [n_layers - 1] if layers == "last" else list(range(n_layers))
    return {layer: _SITE_HOOK[site].format(l=layer) for layer in picked}


@UNITS.register("read", version="1", doc="activations at the answer position of the given sites")
def read_unit(ctx) -> UnitResult:
    from mechcheck.interventions import run

    out = run(ctx.model, ctx.batch, read=list(ctx.args["sites"]), batch_size=ctx.args["batch_size"])
    return UnitResult({name: a.astype(np.float32) for name, a in out.reads.items()})


def _classifier(kind: str):
    from mechcheck.interventions.probes import linear_classifier

    if kind not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {kind!r} (allowed: {', '.join(CLASSIFIERS)})")
    return linear_classifier(kind)


def _folds(y: np.ndarray, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.unique(y, return_inverse=True)[1])
    k = min(folds, int(counts.min()))
    if len(counts) < 2 or k < 2:  # one class, or a class too small to be in a training and a test fold
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


@dataclass
class _DecodeReplicate:
    """One replicate of one role: per variable, (n, n_decoded_layers) correctness and the null."""

    layers: list[int]
    correct: dict[str, np.ndarray]  # var -> (n, len(layers)) 0/1 (NaN: not decodable)
    null_acc: dict[str, np.ndarray]  # var -> (n_shuffle, len(layers))
    null_example: dict[str, np.ndarray]  # var -> (n, len(layers)) mean correctness over shuffles
    selectivity: dict[str, Any]
    not_converged: int = 0


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
    correct, null_acc, null_ex, not_conv = {}, {}, {}, 0
    for v in variables:
        y = np.asarray(labels[v])
        c = np.full((n, len(layers)), np.nan)
        na = np.full((n_shuffle, len(layers)), np.nan)
        ne = np.full((n, len(layers)), np.nan)
        for j, layer in enumerate(layers):
            c[:, j], bad = cv_correct(features[layer], y, classifier, folds, seed)
            not_conv += bad
            if n_shuffle > 0 and not np.isnan(c[:, j]).any():
                na[:, j], ne[:, j] = shuffled_null(features[layer], y, classifier, folds, n_shuffle, seed)
        correct[v], null_acc[v], null_ex[v] = c, na, ne
    sel = unit_selectivity(final, {v: np.asarray(labels[v]) for v in selectivity}, unit_auc, unit_alpha)
    return _DecodeReplicate(layers, correct, null_acc, null_ex, sel, not_conv)


def majority(y: np.ndarray) -> float:
    """The share of the most frequent class: what predicting a constant achieves."""
    return float(np.bincount(np.unique(y, return_inverse=True)[1]).max() / len(y))


@UNITS.register("decode", version="1", uses_model=False,
                doc="cross-validated decoders per variable and layer, shuffled-label null, unit selectivity")
def decode_unit(ctx) -> UnitResult:
    a = ctx.args
    acts = ctx.deps[0].arrays
    features = {int(layer): acts[name] for layer, name in a["features"]}
    rep = decode_replicate(features, acts[a["final"]], ctx.batch.labels, a["variables"], a["selectivity"],
                           a["classifier"], a["folds"], a["n_shuffle"], a["unit_auc"], a["unit_alpha"], a["seed"])
    arrays: dict[str, np.ndarray] = {}
    for v in a["variables"]:
        arrays[f"correct/{v}"] = rep.correct[v]
        arrays[f"null_acc/{v}"] = rep.null_acc[v]
        arrays[f"null_example/{v}"] = rep.null_example[v]
    sel = rep.selectivity
    arrays["sel/auc"] = sel["auc"]
    arrays["sel/selective"] = sel["selective"].astype(np.uint8)
    arrays["sel/mixed"] = sel["mixed"].astype(np.uint8)
    return UnitResult(arrays, {"layers": rep.layers, "selectivity_variables": list(sel["variables"]),
                               "not_converged": int(rep.not_converged)})


def p_values(correct: np.ndarray, null_acc: np.ndarray) -> np.ndarray:
    """(2, n_layers): t-based and rank p-values of each layer's accuracy against its shuffled null."""
    n = correct.shape[0]
    out = np.full((2, correct.shape[1]), np.nan)
    for j in range(correct.shape[1]):
        if not np.isnan(correct[:, j]).any() and null_acc.shape[0]:
            out[:, j] = null_pvalue(float(correct[:, j].mean()), null_acc[:, j], n)
    return out


def _rnd(a) -> list[float | None]:
    return [None if not math.isfinite(x) else round(float(x), 4) for x in np.asarray(a, dtype=float)]


def _summary(meas: Measurements) -> dict[str, Any]:
    """JSON-able: per role and replicate, accuracy / null mean / null 95th pct per variable and layer,
    p-values, selective and mixed shares."""
    variables = list(meas.args["variables"])
    models = {}
    for role, data in meas.roles.items():
        reps = []
        for arrays, meta in zip(data.replicates, data.meta):
            acc, null_mean, null_p95, p_t, p_rank = {}, {}, {}, {}, {}
            for v in variables:
                c, na = arrays[f"decode/correct/{v}"], arrays[f"decode/null_acc/{v}"]
                acc[v] = _rnd(np.nanmean(c, 0) if not np.isnan(c).all() else np.full(c.shape[1], np.nan))
                null_mean[v] = _rnd(na.mean(0)) if na.size else []
                null_p95[v] = _rnd(np.quantile(na, 0.95, axis=0)) if na.size else []
                p = p_values(c, na)
                p_t[v], p_rank[v] = _rnd(p[0]), _rnd(p[1])
            sel_vars = meta.get("decode", {}).get("selectivity_variables", [])
            selective = arrays["decode/sel/selective"].astype(bool)
            mixed = arrays["decode/sel/mixed"].astype(bool)
            reps.append({
                "accuracy": acc, "null_mean": null_mean, "null_p95": null_p95, "p_value": p_t, "p_rank": p_rank,
                "selectivity": {
                    "units": int(mixed.size), "variables": sel_vars,
                    "selective_share": {v: round(float(s), 4) for v, s in zip(sel_vars, selective.mean(1))},
                    "any_selective_share": round(float(selective.any(0).mean()), 4) if selective.size else 0.0,
                    "mixed_share": round(float(mixed.mean()), 4) if mixed.size else 0.0,
                },
                "not_converged": int(meta.get("decode", {}).get("not_converged", 0)),
            })
        layers = data.meta[0].get("decode", {}).get("layers", []) if data.meta else []
        models[role] = {"fixture": data.fixture, "n_layers": data.n_layers, "layers": list(layers), "replicates": reps}
    chance = {v: round(majority(meas.labels[v]), 4) for v in variables}
    return {"name": "linear_decoding", "args": dict(meas.args), "n": meas.n, "chance": chance, "models": models}


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
), summary=_summary)
def linear_decoding(ctx: PlanContext, site: str = "resid_final", layers: str = "last",
                    variables: list[str] = _VARIABLES, classifier: str = "logistic", folds: int = 5,
                    n_shuffle: int = 20, selectivity: list[str] = ("context", "motion_sign", "color_sign"),
                    unit_auc: float = 0.1, unit_alpha: float = 0.01, batch_size: int = 500) -> Plan:
    """Cross-validated linear decoding of task labels at the answer position, with a shuffled-label null,
    and per-unit mixed selectivity of the final hidden state."""

    def units(role, i, ref):
        L = ctx.shapes[role][0]
        names = site_names(site, layers, L)
        final = f"blocks.{L - 1}.hook_resid_post"
        read = ctx.unit("read", (ref,), sites=sorted(set(names.values()) | {final}), batch_size=batch_size)
        decode = ctx.unit("decode", deps=(read,), features=[[layer, name] for layer, name in sorted(names.items())],
                          final=final, variables=list(variables), selectivity=list(selectivity),
                          classifier=classifier, folds=folds, n_shuffle=n_shuffle, unit_auc=unit_auc,
                          unit_alpha=unit_alpha, seed=ctx.seed)
        return {"decode": decode}

    return ctx.per_replicate(units)
