"""Markdown rendering of a `RunReport`, and the PNG figures it embeds.

Figures are drawn from `ClaimResult.experiment`; experiments whose data shape is not recognised here
simply get no figure (the JSON keeps their data). Matplotlib is imported lazily and only through its
object API with the Agg canvas, so rendering never touches a display or pyplot's global state.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechcheck.report.console import (
    format_check_label,
    format_control,
    format_number,
    format_seconds,
    format_threshold,
    one_line,
)
from mechcheck.results import OUTCOMES, CheckResult, ClaimResult, ModelRun, RunReport

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["render_markdown", "write_figures", "safe_name", "figure_drawer"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

#: upper bound on a figure's width in inches; wider grids wrap onto more rows
_MAX_FIG_WIDTH = 20.0
#: above this many cells per panel the per-cell numbers would be illegible, so only colours are drawn
_MAX_ANNOTATED_CELLS = 24 * 24


def safe_name(text: str) -> str:
    """`text` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (for file names)."""
    return _UNSAFE.sub("_", str(text)) or "_"


# --------------------------------------------------------------------------------------------------
# Markdown


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell (pipes escaped, line breaks turned into <br>)."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _anchor(claim_id: str) -> str:
    return "claim-" + safe_name(claim_id).lower()


def _outcome(outcome: str) -> str:
    return f"**{outcome}**"


def _fence(text: str) -> str:
    # the fence must be longer than any backtick run inside, or a traceback quoting Markdown breaks out
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _format_source(source: Mapping[str, Any]) -> str:
    parts = []
    if source.get("paper"):
        parts.append(str(source["paper"]))
    arxiv = source.get("arxiv")
    if arxiv:
        arxiv = str(arxiv).removeprefix("arXiv:").removeprefix("arxiv:")
        parts.append(f"[arXiv:{arxiv}](https://arxiv.org/abs/{arxiv})")
    for key, value in source.items():
        if key in ("paper", "arxiv") or value in (None, "", [], {}):
            continue
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


_INFO_FORMATS: tuple[tuple[str, Callable[[Any], str]], ...] = (
    ("steps", lambda v: f"{v} steps"),
    ("epochs", lambda v: f"{v} epochs"),
    ("accuracy", lambda v: f"acc {format_number(v)}"),
    ("acc", lambda v: f"acc {format_number(v)}"),
    ("train_accuracy", lambda v: f"train acc {format_number(v)}"),
    ("eval_accuracy", lambda v: f"eval acc {format_number(v)}"),
    ("final_loss", lambda v: f"loss {format_number(v, 4)}"),
    ("loss", lambda v: f"loss {format_number(v, 4)}"),
    ("seconds", lambda v: format_seconds(v)),
)


def _format_info(info: Mapping[str, Any], max_len: int = 100) -> str:
    """Training/load summary of a model: known keys first in a fixed order, other scalars after."""
    parts = []
    known = {k for k, _ in _INFO_FORMATS}
    for key, fmt in _INFO_FORMATS:
        if info.get(key) is not None:
            parts.append(fmt(info[key]))
    for key, value in info.items():
        if key in known or value is None or isinstance(value, (dict, list)):
            continue
        parts.append(f"{key} {format_number(value, 4) if isinstance(value, float) else value}")
    return one_line(", ".join(parts), max_len) or "—"


def _checks_passed(claim: ClaimResult) -> str:
    if not claim.checks:
        return "—"
    return f"{sum(c.outcome == 'passed' for c in claim.checks)}/{len(claim.checks)}"


def _ci(check: CheckResult) -> str:
    effect = check.effect
    if effect is None:
        return "—"
    level = f"{effect.level:.0%} " if isinstance(effect.level, (int, float)) else ""
    return f"{level}[{format_number(effect.lo)}, {format_number(effect.hi)}]"


def _header(report: RunReport) -> list[str]:
    lines = [f"# mechcheck run `{report.run_id}`", ""]
    counts = report.counts
    summary = ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o))
    verdict = "all claims passed" if report.ok else "not all claims passed"
    lines += [f"**{len(report.claims)} claims: {summary or 'none'}** ({verdict})", ""]
    device = report.device + (f" ({report.threads} threads)" if report.threads else "")
    rows = [
        ("profile", f"`{report.profile}`"),
        ("started", report.started),
        ("finished", report.finished or "— (did not finish)"),
        ("git sha", f"`{report.git_sha}`" if report.git_sha else "—"),
        ("device", device),
    ]
    if report.argv:
        rows.append(("command", "`" + " ".join(report.argv).replace("`", "'") + "`"))
    if report.cache_dir:
        rows.append(("cache", f"`{report.cache_dir}`"))
    rows.append(("schema version", str(report.schema_version)))
    lines += _table(("run", f"`{report.run_id}`"), rows) + [""]
    if report.versions:
        lines += ["## Versions", ""]
        lines += _table(("package", "version"), sorted(report.versions.items())) + [""]
    return lines


def _summary(report: RunReport) -> list[str]:
    lines = ["## Summary", ""]
    if not report.claims:
        return lines + ["No claims were run.", ""]
    rows = [
        (f"[`{c.id}`](#{_anchor(c.id)})", _outcome(c.outcome), _checks_passed(c), format_seconds(c.durations.get("total")))
        for c in report.claims
    ]
    return lines + _table(("claim", "outcome", "checks passed", "time"), rows) + [""]


def _experiment_line(experiment: Mapping[str, Any]) -> str | None:
    name = experiment.get("name")
    if not name:
        return None
    args = experiment.get("args") or {}
    arg_text = ", ".join(f"{k}={v}" for k, v in args.items() if not isinstance(v, (dict, list)))
    return f"- experiment: `{name}`" + (f" ({arg_text})" if arg_text else "")


def _claim_section(claim: ClaimResult) -> list[str]:
    lines = [f'<a id="{_anchor(claim.id)}"></a>', "", f"## `{claim.id}`: {claim.outcome}", ""]
    if claim.statement:
        lines += ["> " + line for line in claim.statement.strip().splitlines()] + [""]
    # continuation lines indented so that a multi-line reason stays inside its list item
    reason = "\n  ".join(claim.reason.strip().splitlines()) if claim.reason else ""
    facts = [f"- outcome: {_outcome(claim.outcome)}" + (f": {reason}" if reason else "")]
    if claim.file:
        facts.append(f"- file: `{claim.file}`")
    if claim.source:
        facts.append(f"- source: {_format_source(claim.source)}")
    facts.append(f"- profile: `{claim.profile}`; seeds: {', '.join(map(str, claim.seeds)) or '—'}")
    exp_line = _experiment_line(claim.experiment)
    if exp_line:
        facts.append(exp_line)
    if claim.durations:
        facts.append("- time: " + ", ".join(f"{k} {format_seconds(v)}" for k, v in claim.durations.items()))
    lines += facts + [""]

    if claim.checks:
        rows = [
            (
                f"`{format_check_label(c)}`",
                _outcome(c.outcome),
                format_number(c.effect.estimate) if c.effect else "—",
                _ci(c),
                c.effect.n if c.effect else "—",
                c.effect.n_seeds if c.effect else "—",
                format_threshold(c),
                format_control(c.control, max_len=60),
                c.message or "",
            )
            for c in claim.checks
        ]
        lines += ["### Checks", ""]
        lines += _table(("check", "outcome", "effect", "CI", "n", "seeds", "threshold", "control", "message"), rows)
        lines += [""]

    if claim.models:
        lines += ["### Models", ""]
        lines += _table(("role", "fixture", "seed", "cache key", "cached", "size", "training"), [_model_row(m) for m in claim.models])
        lines += [""]

    if claim.figures:
        lines += ["### Figures", ""]
        for fig in claim.figures:
            lines += [f"![{Path(fig).stem}]({fig})", ""]

    if claim.traceback:
        tb = claim.traceback.rstrip()
        fence = _fence(tb)
        lines += ["<details><summary>Traceback</summary>", "", f"{fence}text", tb, fence, "", "</details>", ""]
    return lines


def _model_row(model: ModelRun) -> tuple[Any, ...]:
    size = f"{model.n_layers}L × {model.n_heads}H" if model.n_layers or model.n_heads else "—"
    return (
        model.role,
        f"`{model.fixture}`",
        model.seed,
        f"`{model.key[:12]}`" if model.key else "—",
        "yes" if model.cached else "no",
        size,
        _format_info(model.info or {}),
    )


def render_markdown(report: RunReport) -> str:
    """The whole run as a Markdown document; figure links are `claim.figures` (relative to the report)."""
    lines = _header(report) + _summary(report)
    for claim in report.claims:
        lines += _claim_section(claim)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------------------------------
# Figures


def write_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    """Draw the figures of one claim's experiment under `fig_dir`; returns the PNG paths written.

    A claim without experiment data (error, skipped) or with an experiment this module does not know
    gets no figures. A role whose data is malformed is skipped with a warning rather than an exception,
    because losing a plot must never cost the report itself.
    """
    _load_figure_modules()
    experiment = claim.experiment or {}
    drawer = _FIGURE_DRAWERS.get(str(experiment.get("name")))
    if drawer is None:
        return []
    return drawer(claim, Path(fig_dir))


def _head_ablation_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
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
    """Roles side by side: mean-over-seeds head effects on one colour scale, then each role's layer profile.

    The layer profile is the share of the summed positive head effects that falls in each layer (what the
    `layer_centroid_higher` check weighs), with its centroid marked, so models of different sizes of
    effect compare on one axis.
    """
    import numpy as np
    from matplotlib.figure import Figure

    roles = [r for r, d in models.items() if isinstance(d, Mapping)]
    means = {r: np.nanmean(np.stack(_matrices(models[r]["head_effect"])), axis=0) for r in roles}
    vmax = max(float(np.nanmax(np.abs(m))) for m in means.values()) or 1.0
    metric = str(args.get("metric", "accuracy"))
    fig = Figure(figsize=(3.2 * len(roles) + 3.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(roles) + 1, squeeze=False)[0]
    fmt = _value_format(vmax)
    im = None
    for ax, role in zip(axes, roles):
        im = _heatmap(ax, means[role], "RdBu_r", -vmax, vmax, fmt, lambda v: abs(v) > 0.6 * vmax)
        ax.set_title(f"{role}: {metric} drop (mean of seeds)", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes[: len(roles)]), shrink=0.8)
    ax = axes[-1]
    for role in roles:
        lp = np.clip(means[role], 0, None).sum(axis=1)
        share = lp / lp.sum() if lp.sum() > 0 else lp
        layers = np.arange(len(lp))
        line = ax.plot(layers, share, marker="o", label=role)[0]
        if lp.sum() > 0:
            ax.axvline(float((layers * share).sum()), color=line.get_color(), linestyle="--", linewidth=1)
    ax.set_xlabel("layer", fontsize=9)
    ax.set_ylabel("share of summed positive effect", fontsize=9)
    ax.set_title("layer profile (dashed: centroid)", fontsize=9)
    ax.legend(fontsize=8)
    ax.tick_params(labelsize=8)
    return fig


_FIGURE_DRAWERS: dict[str, Callable[[ClaimResult, Path], list[Path]]] = {
    "head_ablation": _head_ablation_figures,
}


#: modules under mechcheck/report/ that register drawers for other experiments with `figure_drawer`
_FIGURE_MODULES: tuple[str, ...] = ("mechcheck.report.efficiency_figures", "mechcheck.report.decoding_figures")


def _load_figure_modules() -> None:
    import importlib

    for mod in _FIGURE_MODULES:
        importlib.import_module(mod)


def figure_drawer(experiment: str) -> Callable[[Callable[[ClaimResult, Path], list[Path]]],
                                                Callable[[ClaimResult, Path], list[Path]]]:
    """Decorator: `func(claim, fig_dir) -> [png paths]` draws the figures of claims that ran `experiment`.

    It reads only ``claim.experiment`` (the experiment's JSON summary), so a report can be redrawn from
    report.json alone. Modules that register experiments register their drawers the same way.
    """

    def deco(func: Callable[[ClaimResult, Path], list[Path]]) -> Callable[[ClaimResult, Path], list[Path]]:
        _FIGURE_DRAWERS[experiment] = func
        return func

    return deco


def _save(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # an explicit Agg canvas: no pyplot, no GUI backend, safe to call from worker threads
    FigureCanvasAgg(fig)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)


def _matrices(per_seed: Any) -> list[np.ndarray]:
    """Per-seed L x H matrices as float arrays (JSON None -> NaN); raises ValueError on a bad shape."""
    import numpy as np

    if not isinstance(per_seed, Sequence) or not per_seed:
        raise ValueError("expected a non-empty list of per-seed matrices")
    mats = [np.array(m, dtype=float) for m in per_seed]
    shapes = {m.shape for m in mats}
    if len(shapes) != 1 or mats[0].ndim != 2 or 0 in mats[0].shape:
        raise ValueError(f"per-seed matrices must share one 2-d shape, got {sorted(shapes)}")
    return mats


def _seed_labels(claim: ClaimResult, role: str, n: int) -> list[str]:
    seeds = [m.seed for m in claim.models if m.role == role]
    if len(seeds) != n:
        seeds = list(claim.seeds)
    if len(seeds) != n:
        return [f"replicate {i}" for i in range(n)]
    return [f"seed {s}" for s in seeds]


def _grid(n_panels: int, n_layers: int, n_heads: int) -> tuple[Figure, list[Axes], float]:
    """A figure with `n_panels` equally sized panels, wrapped so that it stays under _MAX_FIG_WIDTH."""
    from matplotlib.figure import Figure

    # cell size chosen so that a "-0.12" annotation at 7 pt fits inside a cell
    cell = 0.5 if n_heads <= 16 else max(0.18, 8.0 / n_heads)
    panel_w = max(2.6, n_heads * cell + 1.0)
    panel_h = max(2.2, n_layers * cell * 0.9 + 1.1)
    ncols = max(1, min(n_panels, int(_MAX_FIG_WIDTH // panel_w)))
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(ncols * panel_w + 1.2, nrows * panel_h + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels], cell


def _heatmap(ax: Axes, mat: np.ndarray, cmap: Any, vmin: float, vmax: float, fmt: str,
             dark: Callable[[float], bool]) -> Any:
    """Draw one L x H panel (layer 0 at the top) with per-cell numbers when they stay legible."""
    import numpy as np

    n_layers, n_heads = mat.shape
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest")
    if mat.size <= _MAX_ANNOTATED_CELLS:
        size = 7 if n_heads <= 16 else 5.5
        for (layer, head), value in np.ndenumerate(mat):
            if not math.isfinite(value):
                continue
            text = format(value, fmt)
            if text.startswith("-") and float(text) == 0.0:
                text = text[1:]  # "-0.00" suggests a sign the value does not have at this precision
            ax.text(head, layer, text, ha="center", va="center", fontsize=size,
                    color="white" if dark(value) else "black")
    step_x = 1 if n_heads <= 16 else max(1, n_heads // 12)
    step_y = 1 if n_layers <= 24 else max(1, n_layers // 16)
    ax.set_xticks(range(0, n_heads, step_x))
    ax.set_yticks(range(0, n_layers, step_y))
    ax.tick_params(labelsize=8, length=2)
    ax.set_xlabel("head", fontsize=9)
    ax.set_ylabel("layer", fontsize=9)
    return im


def _value_format(vmax: float) -> str:
    if vmax >= 100:
        return ".0f"
    if vmax >= 10:
        return ".1f"
    return ".2f"


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
    ax.barh(y, mean, height=0.6, color="#bbbbbb", edgecolor="#777777", label="mean over seeds")
    markers = "o^sDvP*X"
    offsets = np.linspace(-0.2, 0.2, n_seeds) if n_seeds > 1 else np.zeros(1)
    for s in range(n_seeds):
        ax.scatter(layers[s], y + offsets[s], s=18, marker=markers[s % len(markers)], zorder=3,
                   label=labels[s])
    ax.axvline(0.0, color="black", linewidth=0.8)
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
