"""Figure of `evaluate` with `also` sets, from its JSON summary: the accuracy of every model on every eval set.

Drawn only when the claim measured two or more eval sets (the claim's data and at least one `also` set; a claim
on its data alone says everything in its check messages). One heat map: a row per role ("role (fixture)"), a
column per eval set in the claim's order ('data' first), each cell the mean accuracy over the role's
replicates (with the range of the replicates' accuracies when there are several), coloured on 0..1. With roles
that are fine-tunes under different priors and eval sets with and without a spurious correlation, this is
Jain et al.'s relevance grid.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mechcheck.registry import FIGURES
from mechcheck.report.figures import CELL_LABEL, guarded, replicates_phrase, safe_name, write
from mechcheck.results import ClaimResult

__all__ = ["evaluate_figures"]


def _accuracies(m: dict[str, Any], name: str) -> list[float]:
    """One role's per-replicate accuracies on eval set `name` (empty when that set was not measured)."""
    got = ((m.get("by_set") or {}).get(name) or {}).get("accuracy") or []
    return [float(v) for v in got if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def _cell_text(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{sum(values) / len(values):.2f}\n{min(values):.2f}–{max(values):.2f}"


def _draw_grid(claim_id: str, models: dict[str, Any], sets: list[str]):
    """The roles x eval sets heat map of mean accuracy, as a Matplotlib figure (not saved)."""
    import numpy as np
    from matplotlib.figure import Figure

    roles = list(models)
    cells = [[_accuracies(models[r], s) for s in sets] for r in roles]
    mat = np.array([[sum(v) / len(v) if v else math.nan for v in row] for row in cells])
    fig = Figure(figsize=(2.4 + 1.3 * len(sets) + 1.0, 1.3 + 0.6 * len(roles)), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(mat), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest")
    for (i, j), value in np.ndenumerate(mat):
        if math.isfinite(value):
            ax.text(j, i, _cell_text(cells[i][j]), ha="center", va="center", fontsize=7, gid=CELL_LABEL,
                    color="white" if value < 0.55 else "black")
    ax.set_xticks(range(len(sets)), sets, fontsize=8)
    ax.set_yticks(range(len(roles)), [f"{r} ({models[r].get('fixture', '?')})" for r in roles], fontsize=8)
    ax.tick_params(length=2)
    ax.set_xlabel("eval set ('data': the claim's data)", fontsize=9)
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label("accuracy", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    counts = [len(v) for row in cells for v in row if v]
    fig.suptitle(f"{claim_id}\naccuracy per model and eval set ({replicates_phrase(counts or [1])})", fontsize=9)
    return fig


@FIGURES.register("evaluate")
def evaluate_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    models, sets = exp.get("models") or {}, list(exp.get("sets") or [])
    if not models or len(sets) < 2:
        return []

    def draw():
        return write(_draw_grid(claim.id, models, sets), fig_dir, f"{safe_name(claim.id)}_accuracy.png")

    path = guarded(claim.id, "accuracy grid", draw)
    return [path] if path else []
