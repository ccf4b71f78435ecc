"""Sample efficiency: how many training trials does each recipe need to reach a target accuracy?

For every trained role of the claim, every replicate seed and every training-set size N of the grid, the role's
fixture is rebuilt with ``train.n_train = N`` (a fixed training set of N trials drawn from the train split with
the replicate seed, so at one seed every role sees the very same N trials) and, optionally, a common step budget
(``steps``) so that every N gets the same number of optimiser steps. Each variant is an ordinary fixture build:
it is cached under its own key as soon as it is trained (a run killed midway keeps every model finished before),
and a fine-tune variant starts from the same parent replicate as the role's own fixture. Each variant's
per-example accuracy on the claim's eval batch gives one point of the accuracy-vs-N curve.

Definitions (METHODS.md Lin §1.2 item 6, §1.3):

  N@target  the smallest N at which the replicate's accuracy reaches `target`, interpolated linearly in
            log2 N between the last grid point below the target and the first one at or above it (the
            first crossing: a curve that dips back below later does not move it). Censored values are kept,
            never dropped: never reached -> "above" (the true value is > max N; max N stands in for it);
            reached already at the smallest N -> "below" (the true value is <= min N; min N stands in).
  AUC       the area under accuracy vs log2 N divided by the log2 span of the grid: the mean accuracy over
            the grid on a log scale, in [0, 1] (for a one-point grid, the accuracy there).

The checks (`samples_ratio_at_most`, `accuracy_at_n_at_least`) compare roles; which role is pretrained is
for the claim to say, nothing here assumes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.experiments import ExperimentContext
from mechcheck.registry import CHECKS, EXPERIMENTS, Param
from mechcheck.results import CheckResult
from mechcheck.tasks import TaskBatch

__all__ = ["SampleEfficiencyResult", "auc_log2", "n_at_target", "ratio_statistic", "sample_efficiency"]

_TRAINED = ("scratch", "pretrain", "finetune")


# ------------------------------------------------------------------------------------------ definitions


def n_at_target(grid: np.ndarray, accuracy: np.ndarray, target: float) -> tuple[float, str | None]:
    """(N@target, censoring) of one accuracy curve over the ascending `grid` (see the module docstring).

    censoring: None (interpolated inside the grid), "below" (reached at the first point: value = min N, an
    upper bound) or "above" (never reached: value = max N, a lower bound).
    """
    grid = np.asarray(grid, dtype=float)
    accuracy = np.asarray(accuracy, dtype=float)
    reached = np.flatnonzero(accuracy >= target)
    if reached.size == 0:
        return float(grid[-1]), "above"
    k = int(reached[0])
    if k == 0:
        return float(grid[0]), "below"
    a0, a1 = accuracy[k - 1], accuracy[k]
    x0, x1 = math.log2(grid[k - 1]), math.log2(grid[k])
    # a0 < target <= a1, so the fraction lies in (0, 1]
    return float(2.0 ** (x0 + (target - a0) / (a1 - a0) * (x1 - x0))), None


def auc_log2(grid: np.ndarray, accuracy: np.ndarray) -> float:
    """Area under accuracy vs log2 N over the grid, divided by the grid's log2 span (the accuracy at a lone N)."""
    x = np.log2(np.asarray(grid, dtype=float))
    y = np.asarray(accuracy, dtype=float)
    if len(x) == 1:
        return float(y[0])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def ratio_statistic(grid: np.ndarray, target: float):
    """Statistic for `stats.hierarchical_bootstrap`: geometric mean over replicates of N@(model) / N@(than).

    Each replicate's array is (n_examples, 2, len(grid)): per-example accuracy of the model (index 0) and of
    the role it is compared with (index 1) at every N, on the same eval examples, so resampling examples keeps
    the pairing. Censored values enter as the grid end that stands in for them.
    """

    def statistic(arrays: list[np.ndarray]) -> float:
        logs = []
        for a in arrays:
            curves = a.mean(axis=0)  # (2, G)
            m = n_at_target(grid, curves[0], target)[0]
            t = n_at_target(grid, curves[1], target)[0]
            logs.append(math.log(m) - math.log(t))
        return float(math.exp(np.mean(logs)))

    return statistic


# ------------------------------------------------------------------------------------------- experiment


@dataclass
class _Variant:
    """One trained variant: a role's fixture at one seed and one N."""

    key: str
    cached: bool
    seconds: float | None
    train_accuracy: float | None
    weights_sha256: str | None


class SampleEfficiencyResult:
    """Per role (trained roles only): per replicate seed and grid point, per-example accuracy on the eval batch."""

    def __init__(self, args: dict[str, Any], batch: TaskBatch, fixtures: dict[str, str], recipes: dict[str, str],
                 accuracy: dict[str, np.ndarray], reference: dict[str, list[float]],
                 variants: dict[str, list[list[_Variant]]]) -> None:
        self.args, self.batch, self.fixtures, self.recipes = args, batch, fixtures, recipes
        #: role -> (n_seeds, len(grid), n_examples) per-example accuracy
        self.accuracy = accuracy
        #: role -> per seed, accuracy of the role's own fixture (its full training), for comparison
        self.reference = reference
        self.variants = variants

    @property
    def grid(self) -> np.ndarray:
        return np.asarray(self.args["n_train"], dtype=float)

    @property
    def target(self) -> float:
        return float(self.args["target"])

    @property
    def roles(self) -> list[str]:
        return list(self.accuracy)

    def curves(self, role: str) -> np.ndarray:
        """(n_seeds, len(grid)) accuracy of each replicate at each N."""
        return self.accuracy[role].mean(axis=2)

    def n_at_target(self, role: str) -> list[tuple[float, str | None]]:
        """Per replicate, (N@target, censoring) (see `n_at_target`)."""
        return [n_at_target(self.grid, c, self.target) for c in self.curves(role)]

    def auc(self, role: str) -> list[float]:
        return [auc_log2(self.grid, c) for c in self.curves(role)]

    def summary(self) -> dict[str, Any]:
        """JSON-able summary with every curve, so the figure and a later reader need nothing else."""
        models = {}
        for role in self.roles:
            at = self.n_at_target(role)
            models[role] = {
                "fixture": self.fixtures.get(role, role),
                "recipe": self.recipes.get(role),
                "accuracy": np.round(self.curves(role), 5).tolist(),  # [seed][grid point]
                "n_at_target": [round(v, 2) for v, _ in at],
                "censored": [c for _, c in at],
                "auc": [round(v, 5) for v in self.auc(role)],
                "reference_accuracy": [round(v, 5) for v in self.reference.get(role, [])],
                "variants": [[dataclasses.asdict(v) for v in per_n] for per_n in self.variants[role]],
            }
        return {"name": "sample_efficiency", "args": dict(self.args), "n": len(self.batch),
                "grid": [int(n) for n in self.args["n_train"]], "target": self.target,
                "chance": 1.0 / len(self.batch.candidates), "models": models}


def _variant_spec(spec, n: int, steps: int | None, batch_size: int | None):
    """`spec` trained on a fixed set of `n` trials (and, if given, `steps` steps of `batch_size`)."""
    train = dataclasses.replace(spec.train, n_train=n, **({"steps": steps} if steps else {}),
                                **({"batch_size": batch_size} if batch_size else {}))
    # The name only labels progress output; cache keys are built from the recipe, not the name.
    return dataclasses.replace(spec, name=f"{spec.name}@n{n}", train=train)


@EXPERIMENTS.register("sample_efficiency", params=(
    Param("n_train", "ints", required=True, min=1,
          doc="grid of training-set sizes N (trials), e.g. [32, 64, 128, 256, 512]"),
    Param("target", "float", default=0.9, min=0.0, max=1.0, doc="accuracy whose N is reported (N@target)"),
    Param("steps", "int", min=1, doc="training steps for every N (default: each fixture's own steps)"),
    Param("batch_size", "int", min=1, doc="training batch size for every N (default: each fixture's own)"),
    Param("models", "strings", doc="roles to measure (default: every role whose recipe trains)"),
    Param("eval_batch_size", "int", default=500, min=1, doc="examples per forward pass when measuring"),
))
def sample_efficiency(ctx: ExperimentContext, n_train: list[int], target: float = 0.9, steps: int | None = None,
                      batch_size: int | None = None, models: list[str] | None = None,
                      eval_batch_size: int = 500) -> SampleEfficiencyResult:
    """Train each role's fixture on N trials for every N of the grid and seed; measure eval accuracy."""
    from mechcheck.progress import progress_bar

    from mechcheck.errors import SpecError
    from mechcheck.experiments.head_ablation import forward_metrics
    from mechcheck.fixtures import build_model, replicates
    from mechcheck.models import wrap

    grid = sorted(int(n) for n in n_train)
    args = {"n_train": grid, "target": target, "steps": steps, "batch_size": batch_size, "models": models,
            "eval_batch_size": eval_batch_size}
    if ctx.specs is None or ctx.build is None:
        raise SpecError("experiment 'sample_efficiency' trains fixture variants and needs the fixtures' specs and "
                        "build context (run it through the Runner)")
    roles = list(models) if models else [r for r, s in ctx.specs.items() if s.recipe in _TRAINED]
    for role in roles:
        if role not in ctx.specs:
            raise SpecError(f"sample_efficiency: models: unknown role '{role}'", field_path="experiment",
                            allowed=tuple(ctx.specs))
        if ctx.specs[role].recipe not in _TRAINED or ctx.specs[role].train is None:
            raise SpecError(f"sample_efficiency: role '{role}' (recipe '{ctx.specs[role].recipe}') is not trained, "
                            "so it has no training-set size to vary", field_path="experiment")
    if not roles:
        raise SpecError("sample_efficiency: the claim has no trained role (recipe scratch, pretrain or finetune)",
                        field_path="experiment")

    batch = ctx.batch
    # The nested training bars of `train` would fight this one for the terminal: variants build quietly,
    # with the same cache, device and memo.
    quiet = dataclasses.replace(ctx.build, console=None)
    # Seed-major: a run stopped early has whole replicates of every role (and the cache keeps what it trained).
    plan = [(role, seed, n) for seed in range(ctx.n_seeds) for role in roles
            if seed < replicates(ctx.specs[role], ctx.n_seeds) for n in grid]
    accuracy: dict[str, np.ndarray] = {}
    variants: dict[str, list[list[_Variant]]] = {}
    console = ctx.console
    show = console is not None and console.is_terminal
    progress = progress_bar(console)
    with progress:
        bar = progress.add_task("sample efficiency", total=len(plan))
        for role, seed, n in plan:
            spec = ctx.specs[role]
            n_rep = replicates(spec, ctx.n_seeds)
            if role not in accuracy:
                accuracy[role] = np.zeros((n_rep, len(grid), len(batch)), dtype=np.float32)
                variants[role] = [[] for _ in range(n_rep)]
            progress.update(bar, description=f"sample efficiency: {role} seed {seed} N={n}")
            t0 = time.perf_counter()
            known = set(quiet.memo)
            built = build_model(_variant_spec(spec, n, steps, batch_size), seed, quiet)
            acc = forward_metrics(wrap(built.model, quiet.device), batch, batch_size=eval_batch_size)["accuracy"]
            accuracy[role][seed, grid.index(n)] = acc
            info = built.info or {}
            variants[role][seed].append(_Variant(built.key, built.cached, info.get("seconds"),
                                                 info.get("train_accuracy"), info.get("weights_sha256")))
            # Variants are used only here: the cache keeps them, the per-run memo need not hold every one
            # (but a variant that is some fixture of the run itself stays).
            if built.key not in known:
                quiet.memo.pop(built.key, None)
            if show:
                how = "cached" if built.cached else f"trained in {time.perf_counter() - t0:.1f} s"
                progress.console.print(f"  {role} seed {seed} N={n}: accuracy {acc.mean():.3f} ({how})")
            progress.advance(bar)

    reference: dict[str, list[float]] = {}
    for role in roles:
        handles = ctx.models.get(role) or []
        reference[role] = [float(forward_metrics(h, batch, batch_size=eval_batch_size)["accuracy"].mean())
                           for h in handles]
    recipes = {r: ctx.specs[r].recipe for r in roles}
    return SampleEfficiencyResult(args, batch, dict(ctx.fixtures), recipes, accuracy, reference, variants)


# ----------------------------------------------------------------------------------------------- checks


def _result(ctx) -> SampleEfficiencyResult:
    if not isinstance(ctx.result, SampleEfficiencyResult):
        try:
            name = ctx.result.summary()["name"]
        except (AttributeError, KeyError, TypeError):
            name = type(ctx.result).__name__
        raise ctx.error(f"this check needs the experiment 'sample_efficiency', but the claim ran '{name}'")
    return ctx.result


def _role(ctx, res: SampleEfficiencyResult, role: str) -> None:
    if role not in res.accuracy:
        raise ctx.error(f"model '{role}' was not measured by sample_efficiency (measured: {', '.join(res.roles)}; "
                        "only roles whose recipe trains have a training-set size to vary)", allowed=tuple(res.roles))


def _grid_text(res: SampleEfficiencyResult) -> str:
    return "[" + ", ".join(str(int(n)) for n in res.grid) + "]"


def _n_text(values: list[tuple[float, str | None]]) -> str:
    def one(v: float, c: str | None) -> str:
        return f">{v:.0f}" if c == "above" else f"<={v:.0f}" if c == "below" else f"{v:.0f}"

    return ", ".join(one(v, c) for v, c in values)


def _geomean(values: list[float]) -> float:
    return float(math.exp(np.mean(np.log(values))))


@CHECKS.register("samples_ratio_at_most", params=(
    Param("model", "model", required=True, doc="role that should need fewer samples"),
    Param("than", "model", required=True, doc="role it is compared with (e.g. the one trained from scratch)"),
    Param("value", "float", required=True, min=0.0, doc="largest ratio N@target(model) / N@target(than)"),
), experiments=("sample_efficiency",))
def samples_ratio_at_most(ctx, model: str, than: str, value: float) -> CheckResult:
    """N@target(model) / N@target(than) (geometric mean over seeds) is at most `value`."""
    res = _result(ctx)
    _role(ctx, res, model)
    _role(ctx, res, than)
    if model == than:
        raise ctx.error(f"model and than are both '{model}': a role compared with itself says nothing")
    a, b = res.accuracy[model], res.accuracy[than]
    if a.shape[0] != b.shape[0]:
        raise ctx.error(f"'{model}' has {a.shape[0]} replicates and '{than}' {b.shape[0]}: the ratio pairs them seed "
                        "by seed (same training trials at each seed), so both must be trained per seed")
    grid, target = res.grid, res.target
    # seed i: (n_examples, 2, G), model first; the two roles saw the same N trials and are measured on the
    # same eval examples, so seeds pair them and resampling examples keeps the pairing
    per_seed = [np.stack([a[i].T, b[i].T], axis=1) for i in range(a.shape[0])]
    est = ctx.bootstrap(per_seed, statistic=ratio_statistic(grid, target))
    outcome = stats.judge(est, value, "<=")
    at_m, at_t = res.n_at_target(model), res.n_at_target(than)
    # Which way censoring biases the ratio: a censored numerator above (model never reached the target) or
    # denominator below makes the ratio a lower bound; the other two make it an upper bound.
    low = sum(cm == "above" or ct == "below" for (_, cm), (_, ct) in zip(at_m, at_t))
    high = sum(cm == "below" or ct == "above" for (_, cm), (_, ct) in zip(at_m, at_t))
    notes = []
    n_seeds = len(at_m)
    never_m = sum(c == "above" for _, c in at_m)
    never_t = sum(c == "above" for _, c in at_t)
    if never_t:
        notes.append(f"'{than}' never reached {target:g} by N={grid[-1]:.0f} in {never_t} of {n_seeds} seeds "
                     "(counted as the largest N: the ratio is an upper bound)")
    if never_m:
        notes.append(f"'{model}' never reached {target:g} by N={grid[-1]:.0f} in {never_m} of {n_seeds} seeds "
                     "(it cannot pass)")
    if any(c == "below" for _, c in at_m + at_t):
        notes.append(f"reached already at the smallest N={grid[0]:.0f} in some seeds: extend the grid downwards")
    if outcome == "passed" and low:
        outcome = "inconclusive"  # a lower bound below the threshold says nothing about the true ratio
    if outcome == "failed" and high:
        outcome = "inconclusive"  # an upper bound above the threshold says nothing either
    gm_m = _geomean([v for v, _ in at_m])
    gm_t = _geomean([v for v, _ in at_t])
    msg = (f"N@{target:g} of '{model}' / '{than}' = {est} (geometric mean over {n_seeds} seeds, needs <= {value:g}); "
           f"N@{target:g}: '{model}' {_n_text(at_m)}, '{than}' {_n_text(at_t)}; grid {_grid_text(res)}")
    if notes:
        msg += " — " + "; ".join(notes)
    curve_t = res.curves(than).mean(axis=0)
    control = {"label": f"'{than}' N@{target:g} (geometric mean)", "estimate": gm_t,
               "curve": {str(int(n)): round(float(c), 4) for n, c in zip(grid, curve_t)}}
    details = {"n_at_target": {model: [v for v, _ in at_m], than: [v for v, _ in at_t]},
               "censored": {model: [c for _, c in at_m], than: [c for _, c in at_t]},
               "geomean_n_at_target": {model: gm_m, than: gm_t}, "grid": [int(n) for n in grid],
               "target": target, "bound": "upper" if high and not low else "lower" if low and not high else
               "mixed" if low and high else "exact"}
    return CheckResult("samples_ratio_at_most", {}, outcome, msg, est, value, "<=", control, details)


@CHECKS.register("accuracy_at_n_at_least", params=(
    Param("model", "model", required=True, doc="role of the model in the claim's `models`"),
    Param("n", "int", required=True, min=1, within="n_train",
          doc="training-set size; must be a point of the experiment's grid"),
    Param("value", "float", required=True, min=0.0, max=1.0, doc="accuracy threshold"),
    Param("than", "model", doc="role whose accuracy at the same N is reported as the control"),
), experiments=("sample_efficiency",))
def accuracy_at_n_at_least(ctx, model: str, n: int, value: float, than: str | None = None) -> CheckResult:
    """Eval accuracy of `model` trained on `n` trials is at least `value`."""
    res = _result(ctx)
    _role(ctx, res, model)
    grid = [int(g) for g in res.grid]
    if n not in grid:
        raise ctx.error(f"n: {n} is not a point of the experiment's grid {grid}", allowed=tuple(map(str, grid)))
    k = grid.index(n)
    est = ctx.bootstrap([acc[k] for acc in res.accuracy[model]])
    outcome = stats.judge(est, value, ">=")
    control = {"label": "chance", "estimate": 1.0 / len(res.batch.candidates)}
    if than is not None:
        _role(ctx, res, than)
        c = ctx.bootstrap([acc[k] for acc in res.accuracy[than]])
        control = {"label": f"'{than}' at N={n}", "estimate": c.estimate, "lo": c.lo, "hi": c.hi}
    msg = (f"accuracy of '{model}' trained on N={n} trials = {est} ({est.n_seeds} seeds; needs >= {value:g}; "
           f"{control['label']}: {control['estimate']:.3f}); grid {_grid_text(res)}")
    return CheckResult("accuracy_at_n_at_least", {}, outcome, msg, est, value, ">=", control,
                       {"curve": np.round(res.curves(model).mean(axis=0), 4).tolist(), "grid": grid})
