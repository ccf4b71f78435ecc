"""Figures of `pruning_revival` and `block_probes`, from their JSON summaries.

Pruning: one panel per role, the accuracy on each eval set ('data': the claim's task, the capability to
revive; then the `also` sets, e.g. the fine-tuning task) against the number K of top neurons pruned (solid), with
the same after pruning K random neurons (dotted): mean over replicates, one thin line per replicate.

Probes: one panel per role, the held-out accuracy of the linear probe per block (0 = the embeddings) against the
shuffled-label null (dotted), the untrained-model null (dashed) and chance (the majority class, grey).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mechcheck.registry import FIGURES
from mechcheck.report.figures import guarded, replicates_phrase, safe_name, write
from mechcheck.results import ClaimResult

__all__ = ["pruning_figures", "probe_figures"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _mean_curve(curves: list[list[float]]) -> list[float]:
    cols = list(zip(*curves)) if curves else []
    return [sum(c) / len(c) for c in cols]


def _panels(n: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.2, 3.8 * n + 1.4), 3.4), layout="constrained")
    return fig, fig.subplots(1, n, squeeze=False)[0]


@FIGURES.register("pruning_revival")
def pruning_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    models, ks = exp.get("models") or {}, exp.get("ks") or []
    if not models or not ks:
        return []

    def draw():
        fig, axes = _panels(len(models))
        counts = []
        for ax, (role, m) in zip(axes, models.items()):
            for j, name in enumerate(m.get("sets") or []):
                color = _COLORS[j % len(_COLORS)]
                curves = (m.get("acc") or {}).get(name) or []
                counts.append(len(curves))
                for c in curves if len(curves) > 1 else []:
                    ax.plot(ks, c, color=color, lw=0.6, alpha=0.35)
                ax.plot(ks, _mean_curve(curves), color=color, lw=1.8, marker="o", ms=3, label=f"{name}: top-K")
                null = (m.get("null") or {}).get(name)
                if null:
                    ax.plot(ks, _mean_curve(null), color=color, lw=1.2, ls=":", label=f"{name}: K random")
            ax.set_ylim(-0.02, 1.02)
            if len(ks) <= 16:
                ax.set_xticks(ks)
            ax.set_xlabel("neurons pruned (K)", fontsize=9)
            ax.set_ylabel("accuracy", fontsize=9)
            ax.set_title(f"{role} ({m.get('fixture', '?')})", fontsize=9)
            ax.legend(fontsize=7, frameon=False)
        fig.suptitle(f"{claim.id}\naccuracy after pruning the top-K neurons by gradient x weight "
                     f"({replicates_phrase(counts or [1])})", fontsize=9)
        return write(fig, fig_dir, f"{safe_name(claim.id)}_pruning.png")

    path = guarded(claim.id, "pruning", draw)
    return [path] if path else []


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


@FIGURES.register("block_probes")
def probe_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    models = exp.get("models") or {}
    if not models:
        return []

    def draw():
        fig, axes = _panels(len(models))
        counts = []
        for ax, (role, m) in zip(axes, models.items()):
            acc = m.get("accuracy") or []
            counts.append(len(acc))
            blocks = list(range(len(acc[0]))) if acc else []
            for c in acc if len(acc) > 1 else []:
                ax.plot(blocks, c, color=_COLORS[0], lw=0.6, alpha=0.35)
            ax.plot(blocks, _mean_curve(acc), color=_COLORS[0], lw=1.8, marker="o", ms=3, label="probe")
            if m.get("shuffled"):
                ax.plot(blocks, _mean_curve(m["shuffled"]), color="#555555", ls=":", lw=1.2, label="shuffled labels")
            if m.get("untrained"):
                ax.plot(blocks, _mean_curve(m["untrained"]), color=_COLORS[1], ls="--", lw=1.2,
                        label="untrained model")
            chance = [_num(c) for c in m.get("chance") or []]
            chance = [c for c in chance if math.isfinite(c)]
            if chance and blocks:
                ax.axhline(sum(chance) / len(chance), color="#999999", lw=0.8, label="chance (majority)")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xticks(blocks)
            ax.set_xlabel("block (0 = embeddings)", fontsize=9)
            ax.set_ylabel("held-out accuracy", fontsize=9)
            ax.set_title(f"{role} ({m.get('fixture', '?')})", fontsize=9)
            ax.legend(fontsize=7, frameon=False)
        label = (exp.get("args") or {}).get("label", "?")
        fig.suptitle(f"{claim.id}\nlinear probe of '{label}' at the answer position "
                     f"({replicates_phrase(counts or [1])})", fontsize=9)
        return write(fig, fig_dir, f"{safe_name(claim.id)}_probes.png")

    path = guarded(claim.id, "probes", draw)
    return [path] if path else []
