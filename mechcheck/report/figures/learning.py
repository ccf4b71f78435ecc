"""Figure of a `learning_curves` claim: held-out accuracy against training steps per role (reverse fine-tuning
against its baselines), drawn from the JSON summary.

One panel, log-scaled steps (the paper's Fig. 9 axis): per role one colour and one line per replicate seed (each
ends where its training ended: at `stop_at`, or at the step budget), the target accuracy dashed, and each
replicate's steps@target marked on it (an open triangle at the curve's end when censored: never reached).
"""

from __future__ import annotations

from pathlib import Path

from mechcheck.registry import FIGURES
from mechcheck.report.figures import guarded, safe_name, write
from mechcheck.results import ClaimResult

__all__ = ["learning_figures"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


@FIGURES.register("learning_curves")
def learning_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    models, target = exp.get("models") or {}, exp.get("target")
    if not models:
        return []

    def draw():
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.4, 3.8), layout="constrained")
        ax = fig.subplots()
        for j, (role, m) in enumerate(models.items()):
            colour = _COLOURS[j % len(_COLOURS)]
            at, censored = m.get("steps_at_target") or [], m.get("censored") or []
            for i, curve in enumerate(m.get("curves") or []):
                label = f"{role} ({m.get('fixture', '?')})" if i == 0 else None
                ax.plot(curve["step"], curve["accuracy"], color=colour, lw=1.2, alpha=0.8, label=label)
                if target is not None and i < len(at):
                    marker = "v" if i < len(censored) and censored[i] == "above" else "o"
                    face = "none" if marker == "v" else colour
                    y = curve["accuracy"][-1] if marker == "v" else target
                    ax.plot([at[i]], [y], marker=marker, ms=6, color=colour, mfc=face)
        if target is not None:
            ax.axhline(target, color="#555555", ls="--", lw=0.9, label=f"target {target:g}")
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training steps (log scale)", fontsize=9)
        ax.set_ylabel("held-out accuracy (training task)", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
        ax.set_title(f"{claim.id}\nlearning curves; filled: steps to the target, open: never reached", fontsize=9)
        return write(fig, fig_dir, f"{safe_name(claim.id)}_learning.png")

    path = guarded(claim.id, "learning-curve", draw)
    return [path] if path else []
