"""Embedding geometry (the Lin UMAP claim): do the final hidden states cluster by a task variable?

The final hidden state at the answer position, standardised, embedded in 2-D with
``umap.UMAP(n_neighbors=15, min_dist=0.1, random_state=seed)``, and the per-example silhouette (sklearn
``silhouette_samples``) of each label's clusters in the 2-D embedding and in the standardised raw space. A
control silhouette with permuted labels (one permutation) is kept alongside.

Units: ``read`` (the same unit `linear_decoding` reads the final state with: one forward pass serves both
experiments) and ``geometry`` (UMAP and silhouettes from the stored read; no model is loaded for it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck.experiments import Plan, PlanContext
from mechcheck.measurements import Measurements, UnitResult
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["embedding_geometry", "geometry_replicate"]


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


@UNITS.register("geometry", version="1", uses_model=False, doc="UMAP embedding and per-example silhouettes")
def geometry_unit(ctx) -> UnitResult:
    a = ctx.args
    X = ctx.deps[0].arrays[a["site"]]
    labels = {v: np.asarray(ctx.batch.labels[v]) for v in a["labels"]}
    rep = geometry_replicate(X, labels, a["n_neighbors"], a["min_dist"], a["seed"])
    arrays = {"embedding": rep.embedding}
    for space, by_label in rep.silhouette.items():
        for lab, v in by_label.items():
            arrays[f"silhouette/{space}/{lab}"] = np.asarray(v, dtype=np.float64)
            arrays[f"control/{space}/{lab}"] = np.asarray(rep.control[space][lab], dtype=np.float64)
    return UnitResult(arrays)


def _summary(meas: Measurements) -> dict[str, Any]:
    """Per role and replicate: mean silhouettes per space and label, and a subsample of embedded points."""
    args = meas.args
    keep = np.sort(np.random.default_rng([meas.seed, 0x500]).permutation(meas.n)[: args["max_points"]])
    models = {}
    for role, data in meas.roles.items():
        reps = []
        for arrays in data.replicates:
            sil: dict[str, dict[str, float]] = {}
            ctl: dict[str, dict[str, float]] = {}
            for name, v in arrays.items():
                parts = name.split("/")
                if len(parts) == 4 and parts[1] in ("silhouette", "control"):
                    target = sil if parts[1] == "silhouette" else ctl
                    target.setdefault(parts[2], {})[parts[3]] = round(float(np.mean(v)), 4)
            reps.append({"silhouette": sil, "control": ctl,
                         "points": np.round(arrays["geometry/embedding"][keep], 3).tolist()})
        models[role] = {"fixture": data.fixture, "replicates": reps}
    return {"name": "embedding_geometry", "args": dict(args), "n": meas.n, "point_index": keep.tolist(),
            "point_labels": {lab: np.asarray(meas.labels[lab])[keep].astype(int).tolist() for lab in args["labels"]},
            "models": models}


@EXPERIMENTS.register("embedding_geometry", params=(
    Param("labels", "labels", default=["context", "choice"], doc="labels whose clusters are scored"),
    Param("n_neighbors", "int", default=15, min=2, doc="UMAP n_neighbors"),
    Param("min_dist", "float", default=0.1, min=0.0, doc="UMAP min_dist"),
    Param("max_points", "int", default=500, min=1, doc="embedded points per replicate kept for the scatter plot"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
), summary=_summary)
def embedding_geometry(ctx: PlanContext, labels: list[str] = ("context", "choice"), n_neighbors: int = 15,
                       min_dist: float = 0.1, max_points: int = 500, batch_size: int = 500) -> Plan:
    """UMAP of the final hidden state at the answer position; silhouette of label clusters in 2-D and raw."""

    def units(role, i, ref):
        site = f"blocks.{ctx.shapes[role][0] - 1}.hook_resid_post"
        read = ctx.unit("read", (ref,), sites=[site], batch_size=batch_size)
        return {"geometry": ctx.unit("geometry", deps=(read,), site=site, labels=list(labels),
                                     n_neighbors=n_neighbors, min_dist=min_dist, seed=ctx.seed)}

    return ctx.per_replicate(units)
