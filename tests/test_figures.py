"""Figures at their real sizes: heatmap cell numbers only where they fit, titles that say what was averaged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mechcheck.report.figures import CELL_LABEL, fit_cell_labels, replicates_phrase, save
from mechcheck.report.figures.ablation import _draw_comparison, _draw_head_effects
from mechcheck.results import ClaimResult


def _roles(n_layers: int, n_heads: int, seeds: int) -> dict:
    rng = np.random.default_rng(0)
    return {role: {"fixture": f"fx-{role}", "head_effect": [rng.normal(0, 0.05, (n_layers, n_heads)).round(4).tolist()
                                                             for _ in range(seeds)]}
            for role in ("finetuned", "scratch")}


def _labels(fig):
    return {ax: [t for t in ax.texts if t.get_gid() == CELL_LABEL] for ax in fig.axes if ax.images}


def _fit_in_cells(fig) -> bool:
    """Every cell number kept is narrower and lower than its cell (measured after the layout)."""
    renderer = fig.canvas.get_renderer()
    for ax, texts in _labels(fig).items():
        rows, cols = ax.images[0].get_array().shape
        box = ax.get_window_extent(renderer)
        for t in texts:
            e = t.get_window_extent(renderer)
            if e.width > box.width / cols or e.height > box.height / rows:
                return False
    return True


def test_a_minilm_sized_comparison_drops_numbers_that_would_run_together(tmp_path: Path):
    fig = _draw_comparison(_roles(6, 12, seeds=1), {"metric": "accuracy"})
    before = _labels(fig)
    assert [len(t) for t in before.values()] == [72, 72]  # drawn, but 12 signed numbers across ~2.3 in
    save(fig, tmp_path / "compare.png")
    assert all(not texts for texts in _labels(fig).values())
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["finetuned: accuracy drop (one replicate)", "scratch: accuracy drop (one replicate)"]


def test_a_small_heatmap_keeps_its_numbers_at_full_size(tmp_path: Path):
    fig = _draw_comparison(_roles(4, 4, seeds=3), {"metric": "logit_diff"})
    save(fig, tmp_path / "compare.png")
    kept = _labels(fig)
    assert [len(t) for t in kept.values()] == [16, 16]
    assert {t.get_fontsize() for texts in kept.values() for t in texts} == {7.0}
    assert _fit_in_cells(fig)
    assert [ax.get_title() for ax in fig.axes if ax.images] == [
        "finetuned: logit_diff drop (mean of 3 replicates)", "scratch: logit_diff drop (mean of 3 replicates)"]


@pytest.mark.parametrize("shape", [(6, 12), (4, 4), (12, 12), (2, 24)])
def test_numbers_kept_always_fit_their_cells(tmp_path: Path, shape):
    claim = ClaimResult(id="x", file="x.yaml", statement="s", outcome="passed", seeds=[0])
    data = _roles(*shape, seeds=1)["scratch"]
    fig = _draw_head_effects(claim, "scratch", data, {"method": "mean"})
    fit_cell_labels(fig)
    assert _fit_in_cells(fig)


def test_the_layer_panel_of_one_replicate_is_not_called_a_mean():
    claim = ClaimResult(id="x", file="x.yaml", statement="s", outcome="passed", seeds=[0])
    data = {**_roles(2, 4, seeds=1)["scratch"], "layer_effect": [[0.1, 0.3]]}
    fig = _draw_head_effects(claim, "scratch", data, {"method": "mean"})
    legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert legend == ["seed 0"]


def test_replicates_phrase():
    assert replicates_phrase(1) == "one replicate"
    assert replicates_phrase([1, 1]) == "one replicate"
    assert replicates_phrase(3) == "mean of 3 replicates"
    assert replicates_phrase([1, 3]) == "mean of 1–3 replicates"
