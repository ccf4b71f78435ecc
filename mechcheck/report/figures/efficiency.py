"""Figure of a `sample_efficiency` claim: accuracy vs training-set size per role, drawn from the JSON summary.

One panel: per role one colour, one thin line per replicate seed, the mean over seeds bold, the target
accuracy dashed, and each replicate's N@target marked on the target line (an open triangle at the grid end
when censored: never reached, or reached already at the smallest N).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from mechcheck.registry import FIGURES
from mechcheck.report.figures import safe_name, save as _save
from mechcheck.results import ClaimResult

__all__ = ["sample_efficiency_figures"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


@FIGURES.register("sample_efficiency")
def sample_efficiency_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    """Draw `<claim>__sample_efficiency.png`; a malformed summary gives a warning and no figure."""
    experiment = claim.experiment or {}
    try:
        fig = _draw(claim, experiment)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        warnings.warn(f"{claim.id}: no sample-efficiency figure: {exc}", stacklevel=2)
        return []
    if fig is None:
        return []
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / f"{safe_name(claim.id)}__sample_efficiency.png"
    _save(fig, path)
    return [path]


def _draw(claim: ClaimResult, experiment: Mapping):
    import numpy as np
    from matplotlib.figure import Figure

    models = experiment.get("models")
    grid = experiment.get("grid")
    if not isinstance(models, Mapping) or not models or not isinstance(grid, Sequence) or not grid:
        return None
    x = np.asarray(grid, dtype=float)
    target = float(experiment.get("target", 0.9))
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.subplots()
    for i, (role, data) in enumerate(models.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        curves = np.array(data["accuracy"], dtype=float)  # (seeds, grid)
        if curves.ndim != 2 or curves.shape[1] != len(x):
            raise ValueError(f"role {role!r}: accuracy must be seeds x {len(x)}, got shape {curves.shape}")
        for c in curves:
            ax.plot(x, c, color=colour, linewidth=0.8, alpha=0.45)
        label = f"{role} ({data.get('fixture', '?')}, {len(curves)} seed{'s' if len(curves) != 1 else ''})"
        ax.plot(x, curves.mean(axis=0), color=colour, linewidth=2.4, marker="o", markersize=4, label=label)
        for n, cens in zip(data.get("n_at_target") or [], data.get("censored") or []):
            if n is None or not math.isfinite(float(n)):
                continue
            marker = ">" if cens == "above" else "<" if cens == "below" else "D"
            face = "none" if cens else colour
            ax.scatter([float(n)], [target], marker=marker, s=42, facecolors=face, edgecolors=colour,
                       linewidths=1.2, zorder=4)
    ax.axhline(target, color="black", linestyle="--", linewidth=1.0)
    ax.text(x[0], target, f" target {target:g}", va="bottom", ha="left", fontsize=8)
    chance = float(experiment.get("chance") or 0.5)
    ax.axhline(chance, color="#999999", linestyle=":", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x)
    ax.set_xticklabels([str(int(n)) for n in x], fontsize=8)
    ax.set_xlabel("training trials N (log scale)")
    ax.set_ylabel(f"eval accuracy (n={experiment.get('n', '?')})")
    ax.set_ylim(min(0.4, float(np.nanmin([np.nanmin(np.array(d["accuracy"], dtype=float)) for d in models.values()])) - 0.02),
                1.02)
    ax.legend(fontsize=8, loc="lower right")
    steps = (experiment.get("args") or {}).get("steps")
    budget = f", {steps} steps each" if steps else ""
    ax.set_title(f"{claim.id}\naccuracy vs training-set size{budget}; "
                 f"markers: N@{target:g} per seed (open: censored)", fontsize=10)
    return fig
