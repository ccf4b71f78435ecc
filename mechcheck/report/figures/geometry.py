"""Figures of `embedding_geometry`: the UMAP scatter of the first replicate, one panel per role, one row per
label, from the experiment's JSON summary."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechcheck.registry import FIGURES
from mechcheck.report.figures import safe_name, write as _write
from mechcheck.results import ClaimResult

__all__ = ["geometry_figures"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


@FIGURES.register("embedding_geometry")
def geometry_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    """UMAP scatter (first replicate) coloured by each label: rows = labels, columns = roles."""
    from matplotlib.figure import Figure

    exp = claim.experiment
    models = exp.get("models")
    labels = exp.get("point_labels") or {}
    if not isinstance(models, Mapping) or not labels:
        return []
    roles = [r for r, m in models.items() if (m.get("replicates") or [{}])[0].get("points")]
    if not roles:
        return []
    try:
        fig = Figure(figsize=(3.3 * len(roles) + 0.5, 3.0 * len(labels) + 0.8), layout="constrained")
        axes = fig.subplots(len(labels), len(roles), squeeze=False)
        for i, (lab, ys) in enumerate(labels.items()):
            for j, role in enumerate(roles):
                rep = models[role]["replicates"][0]
                pts = rep["points"]
                ax = axes[i][j]
                for k, cls in enumerate(sorted(set(ys))):
                    sel = [p for p, y in zip(pts, ys) if y == cls]
                    ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=5, alpha=0.7,
                               color=_COLORS[k % len(_COLORS)], label=f"{lab}={cls}")
                sil = _num(((rep.get("silhouette") or {}).get("umap") or {}).get(lab))
                ax.set_title(f"{role}: {lab} (silhouette {sil:.2f})", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.legend(fontsize=7, markerscale=2, frameon=False)
        fig.suptitle(f"{claim.id}\nUMAP of the final hidden state at the answer position (replicate 0, "
                     f"{len(labels[next(iter(labels))])} points)", fontsize=10)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        warnings.warn(f"{claim.id}: no umap figure: {exc}", stacklevel=2)
        return []
    return [_write(fig, fig_dir, f"{safe_name(claim.id)}__umap.png")]
