"""Figures of `linear_decoding`, from its JSON summary.

Decoding: accuracy bars per variable and role (mean over replicates, one dot per replicate) with the
shuffled-label null (mean: grey bar, 95th percentile: black tick) and chance (dashed); with ``layers: all``
also a per-layer accuracy profile per variable (one line per role, mean over replicates, null dotted).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechcheck.registry import FIGURES
from mechcheck.report.figures import replicates_phrase, safe_name, write as _write
from mechcheck.results import ClaimResult

__all__ = ["decoding_figures"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _mean(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _at(rep: Mapping[str, Any], key: str, var: str, j: int) -> float:
    seq = (rep.get(key) or {}).get(var) or []
    return _num(seq[j]) if j < len(seq) else math.nan


def _bars(claim: ClaimResult, exp: Mapping[str, Any]):
    """Accuracy at the last decoded layer, per variable (groups) and role (bars)."""
    from matplotlib.figure import Figure

    models = exp["models"]
    variables = list((exp.get("args") or {}).get("variables") or [])
    roles = list(models)
    if not variables or not roles:
        return None
    fig = Figure(figsize=(max(4.5, 1.3 * len(variables) * max(1, len(roles)) ** 0.5 + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(roles)
    for r, role in enumerate(roles):
        reps = models[role].get("replicates") or []
        layers = models[role].get("layers") or [0]
        j = len(layers) - 1
        for i, var in enumerate(variables):
            x = i - 0.4 + width * (r + 0.5)
            accs = [_at(rep, "accuracy", var, j) for rep in reps]
            nulls = [_at(rep, "null_mean", var, j) for rep in reps]
            p95 = [_at(rep, "null_p95", var, j) for rep in reps]
            ax.bar(x, _mean(accs), width * 0.9, color=_COLORS[r % len(_COLORS)], alpha=0.85,
                   label=f"{role} (layer {layers[j]})" if i == 0 else None)
            ax.scatter([x] * len(accs), accs, s=10, color="black", zorder=3)
            if math.isfinite(_mean(nulls)):
                ax.bar(x, _mean(nulls), width * 0.5, color="#999999", zorder=2,
                       label="shuffled-label null (mean)" if i == 0 and r == 0 else None)
                ax.plot([x - width * 0.35, x + width * 0.35], [_mean(p95)] * 2, color="black", lw=1.5, zorder=4,
                        label="null 95th pct" if i == 0 and r == 0 else None)
    for i, var in enumerate(variables):
        chance = _num((exp.get("chance") or {}).get(var))
        if math.isfinite(chance):
            ax.plot([i - 0.45, i + 0.45], [chance] * 2, color="black", ls="--", lw=0.8,
                    label="chance (majority class)" if i == 0 else None)
    ax.set_xticks(range(len(variables)), variables, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("cross-validated accuracy", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    args = exp.get("args") or {}
    fig.suptitle(f"{claim.id}\n{args.get('classifier', '?')} decoding from {args.get('site', '?')} at the answer "
                 "position", fontsize=10)
    return fig


def _profiles(claim: ClaimResult, exp: Mapping[str, Any]):
    """Per variable, accuracy per layer: one line per role (mean over replicates), null dotted."""
    from matplotlib.figure import Figure

    models = exp["models"]
    variables = list((exp.get("args") or {}).get("variables") or [])
    if not any(len(m.get("layers") or []) > 1 for m in models.values()) or not variables:
        return None
    ncols = min(4, len(variables))
    nrows = math.ceil(len(variables) / ncols)
    fig = Figure(figsize=(3.2 * ncols + 1.5, 2.8 * nrows + 0.8), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(variables):]:
        ax.set_visible(False)
    for ax, var in zip(axes, variables):
        for r, (role, m) in enumerate(models.items()):
            layers = m.get("layers") or []
            reps = m.get("replicates") or []
            acc = [_mean([_at(rep, "accuracy", var, j) for rep in reps]) for j in range(len(layers))]
            null = [_mean([_at(rep, "null_mean", var, j) for rep in reps]) for j in range(len(layers))]
            color = _COLORS[r % len(_COLORS)]
            ax.plot(layers, acc, marker="o", color=color, label=role)
            ax.plot(layers, null, ls=":", color=color, label=f"{role} null")
        chance = _num((exp.get("chance") or {}).get(var))
        if math.isfinite(chance):
            ax.axhline(chance, color="black", ls="--", lw=0.8)
        ax.set_title(var, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("accuracy", fontsize=9)
    axes[0].legend(fontsize=7, frameon=False)
    args = exp.get("args") or {}
    phrase = replicates_phrase([len(m.get("replicates") or []) for m in models.values()])
    fig.suptitle(f"{claim.id}\naccuracy per layer ({args.get('site', '?')}, {phrase})", fontsize=10)
    return fig


@FIGURES.register("linear_decoding")
def decoding_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    """Accuracy bars with the null, and layer profiles when several layers were decoded."""
    exp = claim.experiment
    if not isinstance(exp.get("models"), Mapping):
        return []
    written = []
    for suffix, draw in (("decoding", _bars), ("decoding_layers", _profiles)):
        try:
            fig = draw(claim, exp)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            warnings.warn(f"{claim.id}: no {suffix} figure: {exc}", stacklevel=2)
            continue
        if fig is not None:
            written.append(_write(fig, fig_dir, f"{safe_name(claim.id)}__{suffix}.png"))
    return written
