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


def _evaluate_claim(sets: list[str], seeds: int) -> ClaimResult:
    rng = np.random.default_rng(1)
    models = {role: {"fixture": f"fx-{role}", "sets": sets,
                     "by_set": {s: {"accuracy": rng.uniform(0, 1, seeds).round(3).tolist()} for s in sets}}
              for role in ("ft_prior_a", "ft_prior_b", "pretrained")}
    experiment = {"name": "evaluate", "args": {}, "n": 200, "sets": sets, "models": models}
    return ClaimResult(id="jain.relevance", file="x.yaml", statement="s", outcome="passed", seeds=list(range(seeds)),
                       experiment=experiment)


def test_the_accuracy_grid_has_a_row_per_role_and_a_column_per_eval_set(tmp_path: Path):
    from mechcheck.report.figures.evaluate import _draw_grid, evaluate_figures

    claim = _evaluate_claim(["data", "c0", "pretrain"], seeds=3)
    fig = _draw_grid(claim.id, claim.experiment["models"], claim.experiment["sets"])
    ax = next(a for a in fig.axes if a.images)
    assert ax.images[0].get_array().shape == (3, 3) and ax.images[0].get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["data", "c0", "pretrain"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ft_prior_a (fx-ft_prior_a)", "ft_prior_b (fx-ft_prior_b)",
                                                            "pretrained (fx-pretrained)"]
    values = claim.experiment["models"]["ft_prior_b"]["by_set"]["c0"]["accuracy"]
    cell = [t.get_text() for t in _labels(fig)[ax]][4]  # row 1, column 1
    assert cell == f"{sum(values) / 3:.2f}\n{min(values):.2f}–{max(values):.2f}"
    assert fig._suptitle.get_text() == "jain.relevance\naccuracy per model and eval set (mean of 3 replicates)"
    save(fig, tmp_path / "grid.png")
    assert len(_labels(fig)[ax]) == 9 and _fit_in_cells(fig)
    paths = evaluate_figures(claim, tmp_path)
    assert [p.name for p in paths] == ["jain.relevance_accuracy.png"] and paths[0].is_file()


def test_an_evaluate_claim_on_its_data_alone_gets_no_figure(tmp_path: Path):
    from mechcheck.registry import load_builtins
    from mechcheck.report.figures import write_figures

    load_builtins()
    assert write_figures(_evaluate_claim(["data", "c0"], seeds=3), tmp_path / "two")  # drawn with two sets
    assert write_figures(_evaluate_claim(["data"], seeds=3), tmp_path) == []
    # a report written before `sets` existed (Lin's claims): nothing either
    old = ClaimResult(id="lin", file="x.yaml", statement="s", outcome="passed", seeds=[0],
                      experiment={"name": "evaluate", "args": {}, "n": 10, "models": {"m": {"fixture": "f",
                                  "clean": {"accuracy": [1.0]}}}})
    assert write_figures(old, tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["two"]
    one = _evaluate_claim(["data", "c0"], seeds=1)
    from mechcheck.report.figures.evaluate import _draw_grid

    fig = _draw_grid(one.id, one.experiment["models"], one.experiment["sets"])
    assert "\n" not in [t.get_text() for t in _labels(fig)[fig.axes[0]]][0]  # one replicate: no range
    assert fig._suptitle.get_text().endswith("(one replicate)")
