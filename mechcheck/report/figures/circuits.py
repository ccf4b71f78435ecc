"""Figures of the circuit experiments, from their JSON summaries: the circuit on a layer x head grid coloured
by group; faithfulness bars with the random-circuit null; the CMAP bars (group patched -> accuracy, against the
base and the source); the DCM role table (group x desideratum)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mechcheck.registry import FIGURES
from mechcheck.report.figures import CELL_LABEL, guarded, replicates_phrase, safe_name, write
from mechcheck.results import ClaimResult

__all__ = ["faithfulness_figures", "cmap_figures", "dcm_figures", "overlap_figures", "draw_circuit"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _mean(values: Any) -> float:
    vals = [float(v) for v in (values or []) if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else math.nan


def draw_circuit(ax, circuit: Mapping[str, Any], shape, title: str) -> None:
    """`circuit` ({group: {position, heads}}) on an L x H grid: a coloured square per head, one colour per group
    (a head in several groups shows the first, with a dot for each other)."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    L, H = int(shape[0]), int(shape[1])
    grid = np.full((L, H), np.nan)
    extra: dict[tuple[int, int], int] = {}
    names = list(circuit)
    for g, name in enumerate(names):
        for la, h in circuit[name]["heads"]:
            if math.isnan(grid[la, h]):
                grid[la, h] = g
            else:
                extra[(la, h)] = extra.get((la, h), 0) + 1
    cmap = ListedColormap([_COLORS[i % len(_COLORS)] for i in range(max(len(names), 1))])
    cmap.set_bad("#f2f2f2")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=max(len(names), 1) - 0.5, aspect="auto",
              origin="lower")
    for (la, h), k in extra.items():
        ax.text(h, la, "•" * k, ha="center", va="center", fontsize=8, gid=CELL_LABEL)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    ax.set_title(title, fontsize=9)
    for g, name in enumerate(names):
        pos = circuit[name]["position"]
        ax.plot([], [], "s", color=_COLORS[g % len(_COLORS)], label=f"{name} @ {pos} ({len(circuit[name]['heads'])})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


@FIGURES.register("circuit_faithfulness")
def faithfulness_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    models, circuit = exp.get("models") or {}, exp.get("circuit")
    if not models:
        return []
    out = []

    def bars():
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(6.0, 2.2 * len(models) + 3.5), 3.8), layout="constrained")
        ax = fig.subplots()
        for i, (role, m) in enumerate(models.items()):
            full, circ = _mean(m["model_accuracy"]), _mean(m["circuit_accuracy"])
            ax.bar(i - 0.2, full, 0.38, color="#999999", label="whole model" if i == 0 else None)
            ax.bar(i + 0.2, circ, 0.38, color="#1f77b4", label="circuit only" if i == 0 else None)
            draws = [_mean(d) for d in zip(*m["random_accuracy"])] if m["random_accuracy"] else []
            if draws:
                ax.scatter([i + 0.2] * len(draws), draws, s=9, color="#d62728", zorder=3,
                           label="random circuits (null)" if i == 0 else None)
            ax.text(i + 0.2, circ, f"{circ / full:.2f}" if full else "", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(models)), [f"{r}\n({m['fixture']})" for r, m in models.items()], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy (over the candidates)")
        n = [len(m["model_accuracy"]) for m in models.values()]
        ax.set_title(f"{claim.id}\nfaithfulness = circuit / whole model ({replicates_phrase(n)})", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return write(fig, fig_dir, f"{safe_name(claim.id)}_faithfulness.png")

    def grid():
        from matplotlib.figure import Figure

        shape = next(iter(models.values())).get("shape")
        fig = Figure(figsize=(5.5, 0.45 * shape[0] + 2.0), layout="constrained")
        draw_circuit(fig.subplots(), circuit, shape, f"{claim.id}: the circuit")
        return write(fig, fig_dir, f"{safe_name(claim.id)}_circuit.png")

    for what, draw in (("faithfulness", bars), ("circuit", grid if circuit else None)):
        if draw is not None:
            path = guarded(claim.id, what, draw)
            if path is not None:
                out.append(path)
    return out


@FIGURES.register("cross_model_patching")
def cmap_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    acc = exp.get("accuracy") or {}
    if not acc.get("groups"):
        return []

    def draw():
        from matplotlib.figure import Figure

        groups = list(acc["groups"])
        fig = Figure(figsize=(max(6.0, 1.2 * len(groups) + 4.0), 3.8), layout="constrained")
        ax = fig.subplots()
        ax.bar(range(len(groups)), [_mean(acc["groups"][g]) for g in groups], color="#1f77b4")
        base, source = _mean(acc["base"]), _mean(acc["source"])
        ax.axhline(base, color="#999999", ls="--", label=f"{exp.get('into')} alone {base:.2f}")
        ax.axhline(source, color="#2ca02c", ls="--", label=f"{exp.get('from')} alone {source:.2f}")
        ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy of the patched base")
        ax.set_title(f"{claim.id}\nCMAP: each group patched from {exp.get('from')} into {exp.get('into')} "
                     f"({replicates_phrase(len(acc['source']))})", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return write(fig, fig_dir, f"{safe_name(claim.id)}_cmap.png")

    path = guarded(claim.id, "cmap", draw)
    return [path] if path else []


@FIGURES.register("desiderata_patching")
def dcm_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    models = (claim.experiment or {}).get("models") or {}
    if not models:
        return []

    def draw():
        import numpy as np
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(5.0, 3.4 * len(models) + 1.0), 3.4), layout="constrained")
        axes = fig.subplots(1, len(models), squeeze=False)[0]
        for ax, (role, m) in zip(axes, models.items()):
            keys = list(m["accuracy"])
            groups = list(dict.fromkeys(k.split("/")[0] for k in keys))
            des = list(dict.fromkeys(k.split("/")[1] for k in keys))
            table = np.array([[_mean(m["accuracy"].get(f"{g}/{d}")) for d in des] for g in groups])
            ax.imshow(table, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for i in range(len(groups)):
                for j in range(len(des)):
                    ax.text(j, i, f"{table[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if table[i, j] > 0.6 else "white", gid=CELL_LABEL)
            ax.set_xticks(range(len(des)), des, fontsize=7, rotation=20)
            ax.set_yticks(range(len(groups)), groups, fontsize=7)
            ax.set_title(f"{role} ({m['fixture']})", fontsize=9)
        fig.suptitle(f"{claim.id}\npatching the DCM-selected heads: accuracy w.r.t. each desideratum", fontsize=9)
        return write(fig, fig_dir, f"{safe_name(claim.id)}_dcm.png")

    path = guarded(claim.id, "dcm", draw)
    return [path] if path else []


@FIGURES.register("circuit_overlap")
def overlap_figures(claim: ClaimResult, fig_dir: Path) -> list[Path]:
    exp = claim.experiment or {}
    circuits, shapes = exp.get("circuits") or {}, exp.get("shapes") or {}
    if not circuits:
        return []

    def draw():
        from matplotlib.figure import Figure

        roles = [r for r in circuits if circuits[r] and circuits[r][0]]
        shape = shapes[roles[0]]
        fig = Figure(figsize=(5.0 * len(roles), 0.45 * shape[0] + 2.0), layout="constrained")
        axes = fig.subplots(1, len(roles), squeeze=False)[0]
        for ax, role in zip(axes, roles):
            draw_circuit(ax, circuits[role][0], shapes[role], f"{role} (replicate 0)")
        return write(fig, fig_dir, f"{safe_name(claim.id)}_circuits.png")

    path = guarded(claim.id, "circuit overlap", draw)
    return [path] if path else []
