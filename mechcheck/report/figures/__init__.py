"""Report figures: one drawer per experiment, registered in `mechcheck.registry.FIGURES`.

A drawer is ``draw(claim, fig_dir) -> [png paths]``; it reads only ``claim.experiment`` (the experiment's
JSON summary), so a report can be redrawn from report.json alone. Drawers register like every other entry
(the built-in ones through the built-in plugin); an experiment without a drawer simply gets no figure.
Matplotlib is imported lazily and used only through its object API with the Agg canvas, so drawing never
touches a display or pyplot's global state.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechcheck.results import ClaimResult

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_figures", "safe_name", "save", "write", "fit_cell_labels", "replicates_phrase"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

#: upper bound on a figure's width in inches; wider grids wrap onto more rows
_MAX_FIG_WIDTH = 20.0
#: above this many cells per panel the per-cell numbers would be illegible, so only colours are drawn
_MAX_ANNOTATED_CELLS = 24 * 24
#: the `gid` of a heatmap's per-cell numbers, so that `fit_cell_labels` finds them at save time
CELL_LABEL = "cell-label"
#: the smallest font (points) a cell number is shrunk to before the panel shows colours only
_MIN_LABEL_PT = 5.5
#: share of a cell's width and height a number may fill (the rest keeps neighbours apart)
_CELL_FILL = (0.9, 0.8)


def safe_name(text: str) -> str:
    """`text` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_`` (for file names)."""
    return _UNSAFE.sub("_", str(text)) or "_"


def write_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    """Draw the figures of one claim's experiment under `fig_dir`; returns the PNG paths written.

    A claim without experiment data (error, skipped), or whose experiment has no registered drawer, gets no
    figures. A drawer that finds malformed data warns rather than raises: losing a plot must never cost the
    report itself.
    """
    from mechcheck.registry import FIGURES

    name = str((claim.experiment or {}).get("name"))
    if name not in FIGURES:
        return []
    return FIGURES.get(name).func(claim, Path(fig_dir))


def write(fig, fig_dir: Path, name: str) -> Path:
    """Save `fig` as ``fig_dir/name`` (atomically); returns the path."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    path = fig_dir / name
    save(fig, path)
    return path


def guarded(claim_id: str, what: str, draw: Callable[[], Any]) -> Any:
    """``draw()``, or None with a warning when the summary it reads is malformed."""
    try:
        return draw()
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        warnings.warn(f"{claim_id}: no {what} figure: {exc}", stacklevel=3)
        return None


def save(fig: Figure, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # an explicit Agg canvas: no pyplot, no GUI backend, safe to call from worker threads
    FigureCanvasAgg(fig)
    fit_cell_labels(fig)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=110)
    tmp.replace(path)


def fit_cell_labels(fig: Figure) -> None:
    """Keep a heatmap's per-cell numbers only where they fit their cells at the figure's real size.

    Cell size is only known once the layout is done (a colorbar or a neighbour panel takes its share), so
    this runs at save time: per panel, the widest number is measured against the cell, in points; the font
    shrinks down to `_MIN_LABEL_PT`, and if the numbers still do not fit they are removed — colours alone
    read better than numbers running into each other ("0.000.000.00").
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    panels = [(ax, [t for t in ax.texts if t.get_gid() == CELL_LABEL]) for ax in fig.axes]
    panels = [(ax, texts) for ax, texts in panels if texts and ax.images]
    if not panels:
        return
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.draw_without_rendering()  # runs the layout: axes now have their final size
    renderer = canvas.get_renderer()
    for ax, texts in panels:
        n_rows, n_cols = ax.images[0].get_array().shape[:2]
        box = ax.get_window_extent(renderer)
        cell_w, cell_h = box.width / n_cols, box.height / n_rows  # pixels, as the texts' extents
        size = float(texts[0].get_fontsize())
        while True:
            extents = [t.get_window_extent(renderer) for t in texts]
            if (max(e.width for e in extents) <= _CELL_FILL[0] * cell_w and
                    max(e.height for e in extents) <= _CELL_FILL[1] * cell_h):
                break
            if size <= _MIN_LABEL_PT:
                for t in texts:
                    t.remove()
                break
            size = max(_MIN_LABEL_PT, size - 0.5)
            for t in texts:
                t.set_fontsize(size)


def replicates_phrase(n: int | Sequence[int]) -> str:
    """What a value averaged over `n` replicates is, for a title: "one replicate", "mean of 3 replicates".

    A title that says "mean of seeds" over one loaded model promises a seed-to-seed average it does not have.
    """
    counts = sorted({int(n)} if isinstance(n, int) else {int(k) for k in n})
    if not counts or counts == [1]:
        return "one replicate"
    if len(counts) == 1:
        return f"mean of {counts[0]} replicates"
    return f"mean of {counts[0]}–{counts[-1]} replicates"


def matrices(per_seed: Any) -> list[np.ndarray]:
    """Per-seed L x H matrices as float arrays (JSON None -> NaN); raises ValueError on a bad shape."""
    import numpy as np

    if not isinstance(per_seed, Sequence) or not per_seed:
        raise ValueError("expected a non-empty list of per-seed matrices")
    mats = [np.array(m, dtype=float) for m in per_seed]
    shapes = {m.shape for m in mats}
    if len(shapes) != 1 or mats[0].ndim != 2 or 0 in mats[0].shape:
        raise ValueError(f"per-seed matrices must share one 2-d shape, got {sorted(shapes)}")
    return mats


def seed_labels(claim: ClaimResult, role: str, n: int) -> list[str]:
    seeds = [m.seed for m in claim.models if m.role == role]
    if len(seeds) != n:
        seeds = list(claim.seeds)
    if len(seeds) != n:
        return [f"replicate {i}" for i in range(n)]
    return [f"seed {s}" for s in seeds]


def grid(n_panels: int, n_layers: int, n_heads: int) -> tuple[Figure, list[Axes], float]:
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


def heatmap(ax: Axes, mat: np.ndarray, cmap: Any, vmin: float, vmax: float, fmt: str,
             dark: Callable[[float], bool]) -> Any:
    """Draw one L x H panel (layer 0 at the top) with per-cell numbers; `save` keeps them where they fit."""
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
            ax.text(head, layer, text, ha="center", va="center", fontsize=size, gid=CELL_LABEL,
                    color="white" if dark(value) else "black")
    step_x = 1 if n_heads <= 16 else max(1, n_heads // 12)
    step_y = 1 if n_layers <= 24 else max(1, n_layers // 16)
    ax.set_xticks(range(0, n_heads, step_x))
    ax.set_yticks(range(0, n_layers, step_y))
    ax.tick_params(labelsize=8, length=2)
    ax.set_xlabel("head", fontsize=9)
    ax.set_ylabel("layer", fontsize=9)
    return im


def value_format(vmax: float) -> str:
    if vmax >= 100:
        return ".0f"
    if vmax >= 10:
        return ".1f"
    return ".2f"
