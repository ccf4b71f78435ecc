"""Figures of `head_ablation`: per-seed head x layer effect heatmaps with whole-layer effects, attention
shares, and, for several roles, the roles side by side with their (debiased) layer profiles."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechcheck.registry import FIGURES
from mechcheck.report.figures import grid as _grid, heatmap as _heatmap, matrices as _matrices, safe_name, save as _save
from mechcheck.report.figures import replicates_phrase, seed_labels as _seed_labels, value_format as _value_format
from mechcheck.results import ClaimResult

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["head_ablation_figures"]


@FIGURES.register("head_ablation")
def head_ablation_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    """Per role: a head x layer effect heatmap per seed plus whole-layer effects, and attention shares."""
    experiment = claim.experiment
    models = experiment.get("models")
    if not isinstance(models, Mapping):
        return []
    args = experiment.get("args") or {}
    written: list[Path] = []
    for role, data in models.items():
        if not isinstance(data, Mapping):
            continue
        base = f"{safe_name(claim.id)}__{safe_name(role)}"
        for suffix, draw in (("heads", _draw_head_effects), ("attention", _draw_attention)):
            try:
                fig = draw(claim, str(role), data, args)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                warnings.warn(f"{claim.id}: no {suffix} figure for role {role!r}: {exc}", stacklevel=2)
                continue
            if fig is None:
                continue
            fig_dir.mkdir(parents=True, exist_ok=True)
            path = fig_dir / f"{base}__{suffix}.png"
            _save(fig, path)
            written.append(path)
    if sum(isinstance(d, Mapping) for d in models.values()) >= 2:
        try:
            fig = _draw_comparison(models, args)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            warnings.warn(f"{claim.id}: no comparison figure: {exc}", stacklevel=2)
            fig = None
        if fig is not None:
            fig_dir.mkdir(parents=True, exist_ok=True)
            path = fig_dir / f"{safe_name(claim.id)}__compare.png"
            _save(fig, path)
            written.append(path)
    return written


def _draw_comparison(models: Mapping[str, Any], args: Mapping[str, Any]) -> Figure | None:
    """Roles side by side: head effects (mean over replicates) on one colour scale, then each layer profile.

    The layer profile is the share, per layer, of the heads' squared effects (each estimated from two halves of
    the examples: what `layer_centroid_higher` weighs), with the mean centroid marked, so models of different
    sizes of effect compare on one axis.
    """
    import numpy as np
    from matplotlib.figure import Figure

    roles = [r for r, d in models.items() if isinstance(d, Mapping)]
    per_seed = {r: _matrices(models[r]["head_effect"]) for r in roles}
    means = {r: np.nanmean(np.stack(per_seed[r]), axis=0) for r in roles}
    vmax = max(float(np.nanmax(np.abs(m))) for m in means.values()) or 1.0
    metric = str(args.get("metric", "accuracy"))
    fig = Figure(figsize=(3.2 * len(roles) + 3.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(roles) + 1, squeeze=False)[0]
    fmt = _value_format(vmax)
    im = None
    for ax, role in zip(axes, roles):
        im = _heatmap(ax, means[role], "RdBu_r", -vmax, vmax, fmt, lambda v: abs(v) > 0.6 * vmax)
        ax.set_title(f"{role}: {metric} drop ({replicates_phrase(len(per_seed[role]))})", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes[: len(roles)]), shrink=0.8)
    ax = axes[-1]
    for role in roles:
        data = models[role]
        if data.get("layer_profile"):  # the profile the centroid check uses (squared effects, from two halves)
            lp = np.nanmean(np.array(data["layer_profile"], dtype=float), axis=0)
        else:
            lp = np.clip(means[role], 0, None).sum(axis=1)
        share = lp / lp.sum() if lp.sum() > 0 else lp
        layers = np.arange(len(lp))
        line = ax.plot(layers, share, marker="o", label=role)[0]
        cents = [c for c in data.get("centroid") or [] if isinstance(c, (int, float))]
        if cents:
            ax.axvline(float(np.mean(cents)), color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xlabel("layer", fontsize=9)
    ax.set_ylabel("share of the squared head effects", fontsize=9)
    ax.set_title("layer profile (dashed: mean centroid)", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(labelsize=8)
    return fig


def _clean_value(data: Mapping[str, Any], metric: str, i: int) -> float | None:
    values = (data.get("clean") or {}).get(metric)
    if isinstance(values, Sequence) and i < len(values) and isinstance(values[i], (int, float)):
        return float(values[i])
    return None


def _draw_head_effects(claim: ClaimResult, role: str, data: Mapping[str, Any],
                       args: Mapping[str, Any]) -> Figure | None:
    """One heatmap per seed of the per-head effect (shared, zero-centred scale) plus a layer panel."""
    import numpy as np
    from matplotlib import colormaps

    if data.get("head_effect") is None:
        return None
    mats = _matrices(data["head_effect"])
    n_layers, n_heads = mats[0].shape
    layer = data.get("layer_effect")
    layers = None
    if layer is not None:
        layers = np.array(layer, dtype=float)
        if layers.ndim != 2 or layers.shape[1] != n_layers:
            raise ValueError(f"layer_effect must be seeds x {n_layers}, got shape {layers.shape}")

    metric = str(data.get("metric") or args.get("metric") or "metric")
    method = str(args.get("method") or "?")
    labels = _seed_labels(claim, role, len(mats))

    # one colour scale for all seeds, symmetric around 0: a head that *helps* when ablated shows blue
    finite = np.concatenate([m[np.isfinite(m)] for m in mats])
    vmax = float(np.max(np.abs(finite))) if finite.size else 0.0
    if not math.isfinite(vmax) or vmax == 0.0:
        vmax = 1.0
    cmap = colormaps["RdBu_r"].with_extremes(bad="#dddddd")
    fmt = _value_format(vmax)

    fig, axes, _ = _grid(len(mats) + (layers is not None), n_layers, n_heads)
    im = None
    for i, (ax, mat) in enumerate(zip(axes, mats)):
        im = _heatmap(ax, mat, cmap, -vmax, vmax, fmt, dark=lambda v: abs(v) > 0.6 * vmax)
        clean = _clean_value(data, metric, i)
        ax.set_title(labels[i] + (f" (clean {metric} {clean:.3f})" if clean is not None else ""), fontsize=9)
    fig.colorbar(im, ax=axes[: len(mats)], shrink=0.85, label=f"{metric} drop (clean − ablated)")

    if layers is not None:
        _layer_panel(axes[-1], layers, labels, metric)

    fixture = data.get("fixture", "?")
    positions = args.get("positions")
    where = f", positions {positions}" if positions else ""
    fig.suptitle(f"{claim.id}\nmodel '{role}' ({fixture}): {metric} drop per head, {method} ablation{where}",
                 fontsize=11)
    return fig


def _layer_panel(ax: Axes, layers: np.ndarray, labels: list[str], metric: str) -> None:
    """Bars of the across-seed mean whole-layer effect, one marker per seed on top."""
    import numpy as np

    n_seeds, n_layers = layers.shape
    y = np.arange(n_layers)
    with warnings.catch_warnings():
        # an all-NaN layer (not measured) is allowed: nanmean warns, the bar is simply missing
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(layers, axis=0)
    # one replicate: the bar is that replicate, not a mean (and a marker on it would repeat it)
    ax.barh(y, mean, height=0.6, color="#bbbbbb", edgecolor="#777777",
            label=replicates_phrase(n_seeds) if n_seeds > 1 else labels[0])
    if n_seeds == 1:
        ax.axvline(0.0, color="black", linewidth=0.8)
        _layer_axes(ax, y, n_layers, metric)
        return
    markers = "o^sDvP*X"
    offsets = np.linspace(-0.2, 0.2, n_seeds) if n_seeds > 1 else np.zeros(1)
    for s in range(n_seeds):
        ax.scatter(layers[s], y + offsets[s], s=18, marker=markers[s % len(markers)], zorder=3,
                   label=labels[s])
    ax.axvline(0.0, color="black", linewidth=0.8)
    _layer_axes(ax, y, n_layers, metric)


def _layer_axes(ax: Axes, y: np.ndarray, n_layers: int, metric: str) -> None:
    ax.set_yticks(y)
    ax.set_ylim(n_layers - 0.5, -0.5)  # layer 0 on top, as in the heatmaps
    ax.tick_params(labelsize=8, length=2)
    ax.set_xlabel(f"{metric} drop", fontsize=9)
    ax.set_ylabel("layer", fontsize=9)
    ax.set_title("whole layer ablated", fontsize=9)
    # outside the axes: inside it would cover the bars and markers it explains
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


def _draw_attention(claim: ClaimResult, role: str, data: Mapping[str, Any],
                    args: Mapping[str, Any]) -> Figure | None:
    """One heatmap per seed of each head's attention share (answer position -> one token group)."""
    from matplotlib import colormaps

    attention = data.get("attention")
    if not isinstance(attention, Mapping) or not attention:
        return None
    group = "numbers" if "numbers" in attention else next(iter(attention))
    mats = _matrices(attention[group])
    n_layers, n_heads = mats[0].shape
    labels = _seed_labels(claim, role, len(mats))
    cmap = colormaps["viridis"].with_extremes(bad="#dddddd")

    fig, axes, _ = _grid(len(mats), n_layers, n_heads)
    im = None
    for ax, mat, label in zip(axes, mats, labels):
        # a share lives in [0, 1]: a fixed scale keeps panels and figures comparable
        im = _heatmap(ax, mat, cmap, 0.0, 1.0, ".2f", dark=lambda v: v < 0.55)
        ax.set_title(label, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.85, label=f"share of attention to '{group}'")
    fixture = data.get("fixture", "?")
    others = [g for g in attention if g != group]
    note = f" (other groups in the JSON: {', '.join(map(str, others))})" if others else ""
    fig.suptitle(f"{claim.id}\nmodel '{role}' ({fixture}): attention from the answer position to "
                 f"'{group}'{note}", fontsize=11)
    return fig
