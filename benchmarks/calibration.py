"""Calibration of every check's verdicts: synthetic measurements with planted effects through the real checks.

Each row of the table is one check in one scenario. A simulation draws `Measurements` whose truth is known
(arrays named and shaped as the experiments store them, `meta` as the runner fills it), fulfils the check's
requests (joint ablations) with the planted joint effect, calls `mechcheck.checks.run_check` and records the
outcome. A row reports the share of simulations that *passed*, with its Monte-Carlo standard error
sqrt(p (1 - p) / n_sims):

  at_threshold  the true effect equals the threshold: every pass is a false pass (target <= 5 %, nominal
                2.5 %: the 95 % interval's one-sided error)
  null          nothing there (no effect, identical models, no information): every pass is a false pass
  above         the claim is true by a margin (for "<=" checks: below the bound): the pass rate is power

Truth. Data follow the crossed design of `mechcheck.stats`: a value of replicate s on example x is
mu + a[s] + b[x] + e[s, x], where a is seed-to-seed variation (drawn per replicate; for a role whose scope is
"checkpoint" it is not drawn, because the estimand is that one model), b belongs to the example and is shared
by every replicate (they are evaluated on the same examples), e is the rest. 0/1 metrics are Bernoulli with
that probability, ablation effects on accuracy are -1/0/+1 flips with that mean, attention shares and
silhouettes are continuous. Per-example terms are bounded or far from the bounds, so the planted mean is the
true mean (no clipping bias). Two regimes: `seed>ex` (seed variance dominates the variance of a mean over the
eval set) and `ex>seed` (example noise dominates).

The `failed` column is the share judged failed: at the threshold a fail is as wrong as a pass (each is promised
at 2.5 %); in a null row whose truth lies on the failing side (e.g. "layer 0 holds the top heads" when it
holds none) failing is right.

Rows marked `limitation` are adversarial cases a reviewer would try (a recipe whose seeds sometimes fail, an
ablation effect at its ceiling, a rank selector whose choice is noise, significance filters whose result
depends on power); they are reported as they come out, even where they miss the target, and are neither
rerun nor gated by `tests/test_calibration.py`. A gated row above 5 % at `--sims` is rerun with `--confirm`
more simulations, so Monte-Carlo noise alone does not flag it.

    .venv/bin/python benchmarks/calibration.py [--sims 200] [--seed 0] [--quick] [--json PATH] [--only NAME]

Cost: the checks that average over examples take ~1-5 ms a simulation. Those with a within-replicate bootstrap
(top_heads_in_layers, layer_centroid_higher, samples_ratio_at_most) redo their selection in each of `--n-boot`
(200, the runner's default) draws per replicate, 20-300 ms a simulation, and take ~80 % of the run. Every
array is drawn for all replicates at once; n = 200 examples (halves of 100) is as small as the rank
selectors and sign tests allow.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mechcheck.checks import CheckContext, check_requests, run_check
from mechcheck.measurements import Measurements, Request, RoleData
from mechcheck.registry import CHECKS, EXPERIMENTS

#: examples per simulated eval set (halves of 100 for the rank selectors)
N = 200
#: the two noise regimes: (sd of a replicate's mean, sd of an example's effect)
REGIMES = {"seed>ex": (0.04, 0.10), "ex>seed": (0.005, 0.20)}
#: replicate layouts: (replicates, scope)
LAYOUTS = ((1, "checkpoint"), (1, "recipe"), (3, "recipe"), (5, "recipe"))
#: the cheap checks also get 2 seeds (where Welch-Satterthwaite degrees of freedom used to undercover)
LAYOUTS2 = ((1, "checkpoint"), (1, "recipe"), (2, "recipe"), (3, "recipe"), (5, "recipe"))

Build = Callable[[np.random.Generator, int], tuple[Measurements, dict[str, Any]]]


@dataclass
class Row:
    """One check in one scenario: how to draw its measurements, and what is true."""

    check: str
    scenario: str
    replicates: int
    planted: str  # at_threshold | null | above
    build: Build
    scope: str = "recipe"
    truth: float = math.nan
    threshold: float = math.nan
    limitation: bool = False
    note: str = ""
    #: a check with a within-replicate bootstrap: ~100x the cost of a simulation of the others
    heavy: bool = False

    @property
    def key(self) -> str:
        return f"{self.check}|{self.scenario}|{self.replicates}|{self.scope}|{self.planted}"


# ---------------------------------------------------------------------------------------- synthetic data


def _uniform(rng: np.random.Generator, sd: float, shape) -> np.ndarray:
    """Bounded noise with mean 0 and standard deviation `sd` (uniform on +-sd*sqrt(3))."""
    return sd * math.sqrt(3.0) * rng.uniform(-1.0, 1.0, shape)


def _seed_shift(rng: np.random.Generator, R: int, scope: str, sd: float, shape=()) -> np.ndarray:
    """Seed-to-seed variation of R replicates: none for a checkpoint (the estimand is that model)."""
    if scope == "checkpoint":
        return np.zeros((R, *shape))
    return rng.normal(0.0, sd, (R, *shape))


def bernoulli_crossed(rng, R: int, n: int, mu: float, seed_sd: float, example_sd: float, scope: str,
                      shift: np.ndarray | None = None, example: np.ndarray | None = None) -> np.ndarray:
    """(R, n) 0/1 values with P(1) = mu + a[s] + b[x] (b bounded, shared by the replicates)."""
    a = _seed_shift(rng, R, scope, seed_sd) if shift is None else shift
    b = _uniform(rng, example_sd, n) if example is None else example
    p = mu + a[:, None] + b[None, :]
    return (rng.random((R, n)) < np.clip(p, 0.0, 1.0)).astype(np.float64)


def normal_crossed(rng, R: int, n: int, mu: float, seed_sd: float, example_sd: float, resid_sd: float,
                   scope: str, example: np.ndarray | None = None) -> np.ndarray:
    """(R, n) continuous values mu + a[s] + b[x] + e[s, x]."""
    a = _seed_shift(rng, R, scope, seed_sd)
    b = rng.normal(0.0, example_sd, n) if example is None else example
    return mu + a[:, None] + b[None, :] + rng.normal(0.0, resid_sd, (R, n))


def head_effects(rng, R: int, n: int, mean: np.ndarray, seed_sd: float, example_sd: float, scope: str,
                 metric: str = "accuracy", flip: float = 0.02, resid_sd: float = 1.0,
                 silent: np.ndarray | None = None, example: np.ndarray | None = None) -> np.ndarray:
    """(R, n, L, H) per-example ablation effects (clean minus ablated) with true means `mean` (L, H).

    accuracy: -1/0/+1 with P(+1) = flip + max(m, 0), P(-1) = flip + max(-m, 0), m = mean + a + b, so the mean
    is m exactly (a flip in both directions at rate `flip` is the noise of a head that does nothing).
    logit_diff: m + normal noise of sd `resid_sd`. Seed variation only for heads whose mean is not 0 (a head
    that does nothing does nothing in every model). `silent` heads are exactly 0 on every example (ties).
    `example`: the (n, L, H) per-example terms b, when the caller correlates them across heads.
    """
    L, H = mean.shape
    active = mean != 0
    a = _seed_shift(rng, R, scope, seed_sd, (L, H)) * active
    quiet = np.zeros((L, H), dtype=bool) if silent is None else silent
    b = (_uniform(rng, example_sd, (n, L, H)) if example is None else example) * ~quiet
    m = mean[None, None] + a[:, None] + b[None]
    if metric == "logit_diff":
        out = m + rng.normal(0.0, resid_sd, (R, n, L, H))
    else:
        f = np.where(quiet, 0.0, flip)
        up = np.clip(f + np.maximum(m, 0.0), 0.0, 1.0)
        down = np.clip(f + np.maximum(-m, 0.0), 0.0, 1.0 - up)
        u = rng.random((R, n, L, H))
        out = (u < up).astype(np.float64) - ((u >= up) & (u < up + down))
    return np.where(quiet, 0.0, out)


def _role(arrays: list[dict[str, np.ndarray]], scope: str, L: int = 1, H: int = 1,
          meta: list[dict[str, Any]] | None = None) -> RoleData:
    R = len(arrays)
    return RoleData("synthetic", "load" if scope == "checkpoint" else "scratch", scope, L, H, list(range(R)),
                    [f"synthetic-{i}" for i in range(R)], arrays, [{} for _ in range(R)],
                    meta if meta is not None else [{} for _ in range(R)])


def _meas(experiment: str, args: dict[str, Any], roles: dict[str, RoleData], sim: int, n: int = N,
          n_candidates: int = 2, **facts: Any) -> Measurements:
    full = EXPERIMENTS.get(experiment).with_defaults(args)
    return Measurements(experiment, full, roles, n, n_candidates, seed=sim, **facts)


def fulfil(ctx: CheckContext, requests: list[Request]) -> None:
    """The synthetic engine's answer to check requests: a joint ablation's per-example effect is the sum of
    the heads' single effects in that replicate (additive effects of a continuous metric)."""
    for req in requests:
        if req.kind != "ablation_set":
            raise ValueError(f"the synthetic engine cannot answer a {req.kind!r} request")
        data = ctx.meas.roles[req.role]
        rep = data.replicates[req.replicate]
        arrays = {}
        for name, eff in rep.items():
            if name.startswith("sweep/head/"):
                metric = name.rsplit("/", 1)[1]
                cols = [sum(eff[:, int(layer), int(head)] for layer, head in s) for s in req.arguments["sets"]]
                arrays[f"set/{metric}"] = np.stack(cols, axis=1)  # (n, n_sets)
        data.extra[req.replicate][req.name] = arrays


# ----------------------------------------------------------------------------------- rows, by check family


def _accuracy_rows() -> list[Row]:
    rows = []

    def build(mu, value, R, scope, regime, experiment="evaluate", key="clean/accuracy", grid=None):
        seed_sd, ex_sd = REGIMES[regime] if isinstance(regime, str) else regime

        def make(rng, sim):
            y = bernoulli_crossed(rng, R, N, mu, seed_sd, ex_sd, scope)
            if grid is None:
                reps = [{key: y[i]} for i in range(R)]
                return _meas(experiment, {}, {"m": _role(reps, scope)}, sim), {"model": "m", "value": value}
            # sample efficiency: the judged grid point carries the planted accuracy, the others a lower one
            reps = [{f"n{g}/accuracy": (y[i] if g == grid[1] else (rng.random(N) < mu - 0.1).astype(float))
                     for g in grid} | {"reference/accuracy": y[i]} for i in range(R)]
            return (_meas("sample_efficiency", {"n_train": list(grid)}, {"m": _role(reps, scope)}, sim),
                    {"model": "m", "n": grid[1], "value": value, "than": None})
        return make

    # accuracy_at_most is the mirror of accuracy_at_least: "above" is a true accuracy below the bound by the margin
    cases = {"accuracy_at_least": (("at_threshold", 0.6, 0.6), ("null", 0.5, 0.5), ("above", 0.66, 0.6)),
             "accuracy_at_most": (("at_threshold", 0.4, 0.4), ("null", 0.5, 0.5), ("above", 0.34, 0.4))}
    for check, planted_cases in cases.items():
        for regime in REGIMES:
            for R, scope in LAYOUTS2:
                for planted, mu, value in planted_cases:
                    if scope == "recipe" and R == 1 and planted == "null":
                        continue
                    rows.append(Row(check, regime, R, planted, build(mu, value, R, scope, regime), scope, mu, value))
    grid = (64, 128, 256)
    for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
        for planted, mu, value in (("at_threshold", 0.8, 0.8), ("null", 0.5, 0.5), ("above", 0.86, 0.8)):
            rows.append(Row("accuracy_at_n_at_least", "seed>ex", R, planted,
                            build(mu, value, R, scope, "seed>ex", grid=grid), scope, mu, value))
    # at the ceiling: 0/1 data whose mean is near 1 (a claim "accuracy > 0.95" on a model that has 0.98)
    for R, scope in ((1, "checkpoint"), (2, "recipe"), (3, "recipe"), (5, "recipe")):
        rows.append(Row("accuracy_at_least", "ceiling 0.98", R, "at_threshold",
                        build(0.98, 0.98, R, scope, (0.002, 0.01)), scope, 0.98, 0.98,
                        note="0/1 accuracy at 0.98 with n=200: a mean near the bound, its variance near 0 "
                             "(one checkpoint: 11.5 % false passes with the t interval, before the exact one)"))
    # at the floor: a model that (almost) never does a task ("accuracy on count-a < 0.02 after fine-tuning")
    for R, scope in ((1, "checkpoint"), (2, "recipe"), (3, "recipe"), (5, "recipe")):
        rows.append(Row("accuracy_at_most", "floor 0.02", R, "at_threshold",
                        build(0.02, 0.02, R, scope, (0.002, 0.01)), scope, 0.02, 0.02,
                        note="0/1 accuracy at 0.02 with n=200: the mirror of the ceiling row"))
    # a recipe whose seeds sometimes fail: 1 seed in 5 stays at 0.5, the rest reach 0.95 (mean 0.86)
    for R in (3, 5):
        rows.append(Row("accuracy_at_least", "bimodal seeds (1 in 5 fails)", R, "at_threshold", _bimodal(R), "recipe",
                        0.86, 0.86, limitation=True,
                        note="a t interval over 3-5 seeds cannot see a failure mode most draws do not contain"))
    return rows


def _bimodal(R: int) -> Build:
    def make(rng, sim):
        fails = rng.random(R) < 0.2
        shift = np.where(fails, 0.5, 0.95) - 0.86
        y = bernoulli_crossed(rng, R, N, 0.86, 0.0, 0.02, "recipe", shift=shift)
        return (_meas("evaluate", {}, {"m": _role([{"clean/accuracy": y[i]} for i in range(R)], "recipe")}, sim),
                {"model": "m", "value": 0.86})
    return make


def _accuracy_higher_rows() -> list[Row]:
    """accuracy_higher: two roles on the same examples (the example terms b are shared), each in its own scope;
    the true difference is mu(model) - mu(than)."""
    rows = []

    def build(Ra, sa, Rb, sb, base, diff, by, regime):
        seed_sd, ex_sd = REGIMES[regime] if isinstance(regime, str) else regime

        def make(rng, sim):
            ex = _uniform(rng, ex_sd, N)
            a = bernoulli_crossed(rng, Ra, N, base + diff, seed_sd, ex_sd, sa, example=ex)
            b = bernoulli_crossed(rng, Rb, N, base, seed_sd, ex_sd, sb, example=ex)
            roles = {"ft": _role([{"clean/accuracy": a[i]} for i in range(Ra)], sa),
                     "base": _role([{"clean/accuracy": b[i]} for i in range(Rb)], sb)}
            return _meas("evaluate", {}, roles, sim), {"model": "ft", "than": "base", "by": by}
        return make

    pairs = (((3, "recipe"), (3, "recipe")), ((2, "recipe"), (2, "recipe")), ((3, "recipe"), (1, "checkpoint")),
             ((5, "recipe"), (1, "checkpoint")), ((1, "checkpoint"), (3, "recipe")),
             ((1, "checkpoint"), (1, "checkpoint")))
    for regime in REGIMES:
        for (Ra, sa), (Rb, sb) in pairs:
            scenario = f"{regime}, {Ra} {sa} vs {Rb} {sb}"
            # null: identical models (same accuracy on every example); above: the difference exceeds by by 0.1
            for planted, diff, by in (("at_threshold", 0.1, 0.1), ("null", 0.0, 0.0), ("above", 0.2, 0.1)):
                rows.append(Row("accuracy_higher", scenario, Ra, planted, build(Ra, sa, Rb, sb, 0.55, diff, by, regime),
                                sa, diff, by))
    # near the ceiling: 0.99 vs 0.97 (most per-example differences are 0)
    for (Ra, sa), (Rb, sb) in (((1, "checkpoint"), (1, "checkpoint")), ((3, "recipe"), (1, "checkpoint"))):
        rows.append(Row("accuracy_higher", f"ceiling 0.99 vs 0.97, {Ra} {sa} vs {Rb} {sb}", Ra,
                        "at_threshold", build(Ra, sa, Rb, sb, 0.97, 0.02, 0.02, (0.002, 0.01)), sa, 0.02, 0.02,
                        note="a handful of discordant pairs: 6.5 % false fails with the t interval alone, before "
                             "the paired score interval"))
    return rows


# -- head ablation ---------------------------------------------------------------------------------------


def _ablation_role(rng, R, scope, mean, regime, metric="accuracy", flip=0.02, silent=None, n=N,
                   attention=None, example_sd=None) -> RoleData:
    seed_sd, ex_sd = REGIMES[regime]
    if metric == "logit_diff":  # logit units: larger effects, larger noise
        seed_sd, ex_sd = 5 * seed_sd, 5 * ex_sd
    if example_sd is not None:
        ex_sd = example_sd
    L, H = mean.shape
    eff = head_effects(rng, R, n, mean, seed_sd, ex_sd, scope, metric, flip, silent=silent)
    reps = []
    for i in range(R):
        rep = {f"sweep/head/{metric}": eff[i], f"sweep/layer/{metric}": eff[i].sum(2),
               "clean/accuracy": (rng.random(n) < 0.9).astype(np.float64)}
        if attention is not None:
            rep["attention/numbers"] = attention[i]
        reps.append(rep)
    return _role(reps, scope, L, H)


def _ablation_meas(roles: dict[str, RoleData], sim: int, metric: str, n: int = N) -> Measurements:
    T = 8
    groups = {"numbers": np.zeros((n, T), dtype=bool)}
    groups["numbers"][:, 2:4] = True
    return _meas("head_ablation", {"metric": metric}, roles, sim, n, groups=groups,
                 answer_pos=np.full(n, T - 1, dtype=np.int64))


def _effect_rows() -> list[Row]:
    rows = []

    def build(R, scope, regime, heads, mean, value, metric, flip=0.02, name="effect_at_least"):
        def make(rng, sim):
            role = _ablation_role(rng, R, scope, mean, regime, metric, flip)
            return (_ablation_meas({"m": role}, sim, metric),
                    {"model": "m", "heads": heads, "value": value, "metric": None})
        return make

    def planted_mean(L, H, where, total):
        m = np.zeros((L, H))
        for layer, head in where:
            m[layer, head] = total / len(where)
        return m

    # one named head, accuracy flips: the head's true effect is 0.1
    one = [[1, 2]]
    for regime in REGIMES:
        for R, scope in LAYOUTS:
            if scope == "recipe" and R == 1:
                continue
            for planted, total, value in (("at_threshold", 0.1, 0.1), ("null", 0.0, 0.0), ("above", 0.16, 0.1)):
                rows.append(Row("effect_at_least", f"named 1 head, {regime}", R, planted,
                                build(R, scope, regime, one, planted_mean(4, 4, one, total), value, "accuracy"),
                                scope, total, value))
    # rank selectors and joint ablations (logit_diff, additive), 16 and 144 heads
    for L, H in ((4, 4), (12, 12)):
        three = [[0, 1], [L // 2, 0], [L - 1, H - 1]]
        for heads, where in (("top_head", [[L - 1, 1]]), ("top_3", three), (three, three)):
            label = heads if isinstance(heads, str) else "named 3 heads"
            metric = "accuracy" if heads == "top_head" else "logit_diff"
            total, step = (0.1, 0.06) if metric == "accuracy" else (1.0, 0.6)
            for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
                if L == 12 and R == 5:
                    continue
                for planted, t, value in (("at_threshold", total, total), ("null", 0.0, 0.0),
                                          ("above", total + step, total)):
                    mean = planted_mean(L, H, where, t) if t else np.zeros((L, H))
                    rows.append(Row("effect_at_least", f"{label}, {L * H} heads", R, planted,
                                    build(R, scope, "seed>ex", heads, mean, value, metric), scope, t, value))
    # a head that breaks almost every answer, on one checkpoint: effects in {0, 1} with mean 0.98, where the t
    # interval over examples is a Wald interval at its worst (the exact binomial one is only for proportions)
    def ceiling(rng, sim):
        role = _ablation_role(rng, 1, "checkpoint", planted_mean(4, 4, one, 0.98), "seed>ex", flip=0.0,
                              example_sd=0.0)
        return _ablation_meas({"m": role}, sim, "accuracy"), {"model": "m", "heads": one, "value": 0.98,
                                                                "metric": None}
    rows.append(Row("effect_at_least", "named 1 head at the ceiling 0.98", 1, "at_threshold", ceiling,
                    "checkpoint", 0.98, 0.98,
                    note="ternary effect near its bound, one checkpoint: the t interval alone passed 9 %; "
                         "widened to the score interval of a {-1, 0, 1} mean"))
    # effect_at_most: "these heads do not matter" (direction <=): true effect at the bound, or well below it
    for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
        for heads, where, metric, bound in (([[1, 2]], [[1, 2]], "accuracy", 0.05),
                                            ("top_3", [[0, 1], [2, 0], [3, 3]], "logit_diff", 0.5)):
            label = "named 1 head" if not isinstance(heads, str) else heads
            for planted, t in (("at_threshold", bound), ("above", 0.0)):
                mean = planted_mean(4, 4, where, t) if t else np.zeros((4, 4))
                rows.append(Row("effect_at_most", f"{label}, 16 heads", R, planted,
                                build(R, scope, "seed>ex", heads, mean, bound, metric, name="effect_at_most"),
                                scope, t, bound,
                                note="above: the true effect is 0, below the bound (the claim holds)"))
    return rows


def _higher_rows() -> list[Row]:
    """effect_higher: two head sets of one model. Each head's per-example term is 0.8 of a term shared by every
    head plus 0.6 of its own (the same examples are hard for both sets, as in a real model), and every
    replicate is evaluated on the same examples: the pairing the check relies on."""
    rows = []
    L, H = 4, 4

    def build(R, scope, regime, heads, than, planted, by, metric):
        seed_sd, ex_sd = REGIMES[regime]
        if metric == "logit_diff":  # logit units: larger effects, larger noise
            seed_sd, ex_sd = 5 * seed_sd, 5 * ex_sd
        mean = np.zeros((L, H))
        for (layer, head), v in planted.items():
            mean[layer, head] = v

        def make(rng, sim):
            b = 0.8 * _uniform(rng, ex_sd, N)[:, None, None] + 0.6 * _uniform(rng, ex_sd, (N, L, H))
            eff = head_effects(rng, R, N, mean, seed_sd, ex_sd, scope, metric, example=b)
            reps = [{f"sweep/head/{metric}": eff[i], f"sweep/layer/{metric}": eff[i].sum(2),
                     "clean/accuracy": (rng.random(N) < 0.9).astype(np.float64)} for i in range(R)]
            return (_ablation_meas({"m": _role(reps, scope, L, H)}, sim, metric),
                    {"model": "m", "heads": heads, "than": than, "by": by, "metric": None})
        return make

    def spread(heads, total):
        return {tuple(h): total / len(heads) for h in heads}

    # (label, heads, than, metric, regimes, {planted: (effect of heads, effect of than, by)})
    a1, b1, a2, b2 = [[3, 0]], [[0, 0]], [[3, 0], [3, 1]], [[0, 0], [0, 1]]
    cases = [
        ("named 1 vs 1 head", a1, b1, "accuracy", tuple(REGIMES),
         {"at_threshold": (0.2, 0.1, 0.1), "null": (0.15, 0.15, 0.0), "above": (0.3, 0.1, 0.1)}),
        ("named 2 vs 2 heads, logit_diff", a2, b2, "logit_diff", ("seed>ex",),
         {"at_threshold": (1.5, 1.0, 0.5), "null": (1.0, 1.0, 0.0), "above": (2.5, 1.0, 0.5)}),
        # the top head (3, 0) is the only other head that matters
        ("top_head vs named head, 16 heads", "top_head", b1, "accuracy", ("seed>ex",),
         {"at_threshold": (0.2, 0.1, 0.1), "null": (0.15, 0.15, 0.0), "above": (0.3, 0.1, 0.1)}),
        # a set of two weaker heads against the top head, whose choice is the than side's
        ("named 2 heads vs top_head, 16 heads", [[1, 2], [2, 2]], "top_head", "accuracy", ("seed>ex",),
         {"at_threshold": (0.3, 0.2, 0.1), "null": (0.3, 0.3, 0.0), "above": (0.5, 0.2, 0.1)}),
    ]
    for label, heads, than, metric, regimes, planted in cases:
        for regime in regimes:
            name = f"{label}, {regime}" if len(regimes) > 1 else label
            for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
                for kind, (ea, eb, by) in planted.items():
                    where = spread(heads, ea) if not isinstance(heads, str) else {(3, 0): ea}
                    if isinstance(than, str):  # the than side's top head
                        where |= {(3, 0): eb}
                    else:
                        where |= spread(than, eb)
                    rows.append(Row("effect_higher", name, R, kind,
                                    build(R, scope, regime, heads, than, where, by, metric), scope, ea - eb, by))
    return rows


def _attention_rows() -> list[Row]:
    rows = []
    L, H = 4, 4

    def build(R, scope, heads, share, at_least, tied=False, others=0.2, top_effect=0.3):
        def make(rng, sim):
            seed_sd, ex_sd = 0.03, 0.1
            m = np.full((L, H), others)
            m[2, 1] = share
            if tied:
                m[:] = share
            a = _seed_shift(rng, R, scope, seed_sd, (L, H))
            b = rng.normal(0.0, ex_sd, (N, L, H))
            att = np.clip(m[None, None] + a[:, None] + b[None] + rng.normal(0, 0.1, (R, N, L, H)), 0.0, 1.0)
            mean = np.zeros((L, H))
            silent = None
            if tied:
                silent = np.ones((L, H), dtype=bool)  # every head's ablation effect is exactly 0: a tie
            else:
                mean[2, 1] = top_effect
            role = _ablation_role(rng, R, scope, mean, "seed>ex", silent=silent, attention=att)
            return (_ablation_meas({"m": role}, sim, "accuracy"),
                    {"model": "m", "heads": heads, "tokens": "numbers", "at_least": at_least})
        return make

    uniform = 2 / 8
    for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
        for heads, label in (([[2, 1]], "named head"), ("top_head", "top_head")):
            for planted, share, at_least in (("at_threshold", 0.5, 0.5), ("null", uniform, uniform),
                                             ("above", 0.58, 0.5)):
                rows.append(Row("attention_to", label, R, planted, build(R, scope, heads, share, at_least), scope,
                                share, at_least,
                                note="null: the head attends as uniform attention would" if planted == "null" else ""))
        rows.append(Row("attention_to", "top_head, all heads tied at 0", R, "at_threshold",
                        build(R, scope, "top_head", 0.5, 0.5, tied=True), scope, 0.5, 0.5,
                        note="the selected head is a random one; every head attends 0.5"))
        rows.append(Row("attention_to", "top_head weak (0.05), other heads attend 0.7", R, "at_threshold",
                        build(R, scope, "top_head", 0.5, 0.5, others=0.7, top_effect=0.05), scope, 0.5, 0.5,
                        note="a noisy choice measures another head's attention (it passed 26-68 %); the interval "
                             "now spans every head that could be the top one"))
    return rows


def _top_heads_rows() -> list[Row]:
    rows = []

    def build(R, scope, L, H, heads, top, layers, at_least, silent_rest=False, regime="seed>ex"):
        def make(rng, sim):
            mean = np.zeros((L, H))
            for (layer, head), v in heads.items():
                mean[layer, head] = v
            silent = (mean == 0) if silent_rest else None
            role = _ablation_role(rng, R, scope, mean, regime, silent=silent)
            return (_ablation_meas({"m": role}, sim, "accuracy"),
                    {"model": "m", "top": top, "layers": layers, "at_least": at_least, "metric": None})
        return make

    for L, H in ((4, 4), (12, 12)):
        layouts = LAYOUTS if L == 4 else ((1, "checkpoint"), (3, "recipe"))
        for R, scope in layouts:
            cases = [
                # the true top 2 are one layer-0 head and one elsewhere: share 0.5 exactly, at the threshold
                ("at_threshold", "share exactly 0.5", {(0, 1): 0.3, (2, 3): 0.3}, 2, [0], 0.5, False, 0.5),
                # layer 0 does nothing; the heads that matter are elsewhere
                ("null", "layer 0 does nothing", {(1, 0): 0.3, (2, 2): 0.25, (L - 1, 1): 0.2}, 3, [0], 0.5,
                 False, 0.0),
                # one head matters (layer 2), all others exactly 0: the old tie-break filled the top 3 from layer 0
                ("null", "tied heads at exactly 0", {(2, 1): 0.3}, 3, [0], 0.3, True, 0.0),
                # one head matters (last layer), the others are noise: noise heads in layer 0 must not count
                ("null", "noise heads, at_least 0.3", {(L - 1, 1): 0.3}, 3, [0], 0.3, False, 0.0),
                ("above", "3 of 3 in layer 0", {(0, 0): 0.3, (0, 1): 0.25, (0, 2): 0.2, (2, 0): 0.1}, 3, [0], 0.5,
                 False, 1.0),
            ]
            for planted, label, heads, top, layers, at_least, silent, truth in cases:
                if scope == "recipe" and R == 1 and planted != "above":
                    continue
                rows.append(Row("top_heads_in_layers", f"{label}, {L * H} heads", R, planted,
                                build(R, scope, L, H, heads, top, layers, at_least, silent), scope, truth, at_least,
                                heavy=True))
    # all heads tied at exactly 0: the share is 0 whatever the tie-break
    for R, scope in ((1, "checkpoint"), (3, "recipe")):
        rows.append(Row("top_heads_in_layers", "all heads exactly 0, 16 heads", R, "null",
                        build(R, scope, 4, 4, {}, 3, [0], 0.2, True), scope, 0.0, 0.2, heavy=True))
    return rows


def _centroid_rows() -> list[Row]:
    rows = []

    def build(R, scope, L, H, model_heads, than_heads, by, flip_model=0.02, flip_than=0.02, regime="seed>ex"):
        def make(rng, sim):
            roles = {}
            for role, heads, flip in (("m", model_heads, flip_model), ("t", than_heads, flip_than)):
                mean = np.zeros((L, H))
                for (layer, head), v in heads.items():
                    mean[layer, head] = v
                roles[role] = _ablation_role(rng, R, scope, mean, regime, flip=flip)
            return (_ablation_meas(roles, sim, "accuracy"),
                    {"model": "m", "than": "t", "by": by, "critical": 0.05, "expected_heads": None, "metric": None})
        return make

    def centroid_of(heads):
        w = np.array(list(heads.values()))
        return float(sum(layer * v for (layer, _), v in heads.items()) / w.sum())

    for L, H in ((4, 4), (12, 12)):
        # heads large enough to be found significant in (almost) every replicate, so the estimand is the
        # centroid of the planted profile; the identical profile sits early (centroid 0.4), where the old
        # clipped profile's noise mass pulled a noisier model's centroid up towards the middle layer
        early = {(0, 0): 0.3, (0, 2): 0.3, (1, 1): 0.4}
        late = {(0, 0): 0.3, (1, 2): 0.3, (2, 1): 0.4}  # centroid 1.1: 0.7 layers later than `early`
        at_m = {(1, 0): 0.3, (2, 0): 0.3}  # centroid 1.5
        at_t = {(1, 0): 0.3, (1, 1): 0.3}  # centroid 1.0: the difference is exactly `by` = 0.5
        layouts = ((1, "checkpoint"), (1, "recipe"), (3, "recipe"), (5, "recipe")) if L == 4 else \
            ((1, "checkpoint"), (3, "recipe"))
        for R, scope in layouts:
            cases = [
                ("null", "identical models", early, early, 0.0, 0.02, 0.02),
                ("null", "noisier but identical", early, early, 0.0, 0.15, 0.02),
                ("at_threshold", "centroids 1.5 vs 1.0, by 0.5", at_m, at_t, 0.5, 0.02, 0.02),
                ("above", "later heads, by 0.5", late, early, 0.5, 0.02, 0.02),
            ]
            for planted, label, mh, th, by, fm, ft in cases:
                if scope == "recipe" and R == 1 and planted != "above":
                    continue
                truth = centroid_of(mh) - centroid_of(th)
                rows.append(Row("layer_centroid_higher", f"{label}, {L * H} heads", R, planted,
                                build(R, scope, L, H, mh, th, by, fm, ft), scope, truth, by, heavy=True))
    # small early heads that a test would find in the cleaner model (flips 0.02) but mostly not in the noisier
    # one (0.15): a profile of significant heads only made the noisier model "look later" 16-24 % of the time
    small_early = {(0, 0): 0.15, (0, 1): 0.15, (0, 2): 0.15, (2, 0): 0.4}
    for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
        rows.append(Row("layer_centroid_higher", "noisier but identical, small early heads, 16 heads", R, "null",
                        build(R, scope, 4, 4, small_early, small_early, 0.0, 0.15, 0.02), scope, 0.0, 0.0,
                        heavy=True, note="weights must not depend on how well each model's heads are detected"))
    return rows


# -- decoding, geometry, efficiency ----------------------------------------------------------------------


def _decode_arrays(rng, R, scope, mu, layers, regime, n_shuffle=20, informative_layer=None) -> list[dict]:
    seed_sd, ex_sd = REGIMES[regime]
    reps = [dict() for _ in range(R)]
    for j in range(len(layers)):
        m = mu if informative_layer is None or j == informative_layer else 0.5
        c = bernoulli_crossed(rng, R, N, m, seed_sd if m != 0.5 else 0.0, ex_sd, scope)
        for i in range(R):
            reps[i].setdefault("correct", []).append(c[i])
    for i in range(R):
        # the shuffled-label null: accuracies of decoders without information, and per-example means
        null = rng.binomial(N, 0.5, (n_shuffle, len(layers))) / N
        null_ex = rng.binomial(n_shuffle, 0.5, (N, len(layers))) / n_shuffle
        reps[i] = {"decode/correct/context": np.stack(reps[i]["correct"], 1), "decode/null_acc/context": null,
                   "decode/null_example/context": null_ex}
    return reps


def _decode_meas(roles, sim, layers_arg="last") -> Measurements:
    labels = {"context": np.arange(N) % 2}
    return _meas("linear_decoding", {"variables": ["context"], "layers": layers_arg}, roles, sim, labels=labels)


def _decode_meta(R, layers):
    return [{"decode": {"layers": list(layers), "selectivity_variables": ["context"], "not_converged": 0}}
            for _ in range(R)]


def _decoding_rows() -> list[Row]:
    rows = []

    def acc_build(R, scope, mu, value, regime):
        def make(rng, sim):
            reps = _decode_arrays(rng, R, scope, mu, [3], regime)
            role = _role(reps, scope, 4, 4, _decode_meta(R, [3]))
            return _decode_meas({"m": role}, sim), {"model": "m", "variable": "context", "value": value,
                                                    "layer": "last"}
        return make

    for regime in REGIMES:
        for R, scope in ((1, "checkpoint"), (3, "recipe"), (5, "recipe")):
            for planted, mu, value in (("at_threshold", 0.7, 0.7), ("null", 0.5, 0.5), ("above", 0.76, 0.7)):
                rows.append(Row("decoding_accuracy_at_least", regime, R, planted,
                                acc_build(R, scope, mu, value, regime), scope, mu, value))

    def null_build(R, scope, mu, layers, informative=None):
        def make(rng, sim):
            reps = _decode_arrays(rng, R, scope, mu, layers, "ex>seed", informative_layer=informative)
            role = _role(reps, scope, 4, 4, _decode_meta(R, layers))
            return (_decode_meas({"m": role}, sim, "last" if len(layers) == 1 else "all"),
                    {"model": "m", "variable": "context", "alpha": 0.01})
        return make

    for R, scope in LAYOUTS:
        for layers, label in (([3], "last layer"), ([0, 1, 2, 3], "4 layers, Holm")):
            rows.append(Row("decoding_above_null", label, R, "null", null_build(R, scope, 0.5, layers), scope, 0.0,
                            0.0, note="no information: observed accuracy exchangeable with the shuffles (alpha 0.01)"))
            rows.append(Row("decoding_above_null", label, R, "above",
                            null_build(R, scope, 0.62, layers, informative=len(layers) - 1), scope, 0.12, 0.0))

    def mixed_build(Ra, sa, Rb, sb, pa, pb, by):
        def make(rng, sim):
            roles = {}
            d = 128
            for role, R, scope, p in (("a", Ra, sa, pa), ("b", Rb, sb, pb)):
                shares = p + _seed_shift(rng, R, scope, 0.03)
                reps = []
                for i in range(R):
                    sel = rng.random((3, d)) < 0.4
                    mixed = rng.random(d) < shares[i]
                    reps.append({"decode/sel/mixed": mixed.astype(np.uint8),
                                 "decode/sel/selective": sel.astype(np.uint8)})
                roles[role] = _role(reps, scope, 4, 4, _decode_meta(R, [3]))
            return _decode_meas(roles, sim), {"model": "a", "than": "b", "by": by}
        return make

    for (Ra, sa), (Rb, sb) in (((3, "recipe"), (1, "checkpoint")), ((5, "recipe"), (1, "checkpoint")),
                               ((3, "recipe"), (3, "recipe")), ((1, "checkpoint"), (1, "checkpoint"))):
        label = f"{Ra} {sa} vs {Rb} {sb}"
        for planted, pa, pb, by in (("null", 0.2, 0.2, 0.0), ("at_threshold", 0.25, 0.2, 0.05),
                                    ("above", 0.35, 0.2, 0.05)):
            rows.append(Row("mixed_selectivity_higher", label, Ra, planted, mixed_build(Ra, sa, Rb, sb, pa, pb, by),
                            sa, pa - pb, by, note="128 units, seed sd of the share 0.03"))
    return rows


def _geometry_rows() -> list[Row]:
    rows = []

    def one_build(R, scope, mu, value, regime):
        seed_sd, ex_sd = REGIMES[regime]

        def make(rng, sim):
            y = np.clip(normal_crossed(rng, R, N, mu, seed_sd, ex_sd, 0.15, scope), -1, 1)
            ctl = rng.normal(0.0, 0.05, (R, N))
            reps = [{"geometry/silhouette/umap/choice": y[i], "geometry/control/umap/choice": ctl[i]}
                    for i in range(R)]
            return (_meas("embedding_geometry", {"labels": ["choice"]}, {"m": _role(reps, scope)}, sim),
                    {"model": "m", "label": "choice", "value": value, "space": "umap"})
        return make

    for regime in REGIMES:
        for R, scope in LAYOUTS2:
            for planted, mu, value in (("at_threshold", 0.3, 0.3), ("null", 0.0, 0.0), ("above", 0.36, 0.3)):
                if scope == "recipe" and R == 1 and planted == "null":
                    continue
                rows.append(Row("silhouette_at_least", regime, R, planted, one_build(R, scope, mu, value, regime),
                                scope, mu, value))

    def two_build(Ra, sa, Rb, sb, diff, by, regime):
        seed_sd, ex_sd = REGIMES[regime]

        def make(rng, sim):
            # the same examples are hard for both models: example effects correlated 0.8
            shared = rng.normal(0.0, ex_sd, N)
            own = rng.normal(0.0, ex_sd, (2, N))
            ex = [0.8 * shared + 0.6 * own[0], 0.8 * shared + 0.6 * own[1]]
            roles = {}
            for role, R, scope, mu, b in (("a", Ra, sa, 0.3 + diff, ex[0]), ("b", Rb, sb, 0.3, ex[1])):
                y = normal_crossed(rng, R, N, mu, seed_sd, ex_sd, 0.15, scope, example=b)
                ctl = rng.normal(0.0, 0.05, (R, N))
                roles[role] = _role([{"geometry/silhouette/umap/choice": y[i], "geometry/control/umap/choice": ctl[i]}
                                     for i in range(R)], scope)
            return (_meas("embedding_geometry", {"labels": ["choice"]}, roles, sim),
                    {"model": "a", "than": "b", "label": "choice", "space": "umap", "by": by})
        return make

    for regime in REGIMES:
        for (Ra, sa), (Rb, sb) in (((1, "checkpoint"), (1, "checkpoint")), ((3, "recipe"), (1, "checkpoint")),
                                   ((3, "recipe"), (3, "recipe")), ((5, "recipe"), (5, "recipe"))):
            label = f"{regime}, {Ra} {sa} vs {Rb} {sb}"
            for planted, diff, by in (("null", 0.0, 0.0), ("at_threshold", 0.1, 0.1), ("above", 0.2, 0.1)):
                rows.append(Row("silhouette_higher", label, Ra, planted, two_build(Ra, sa, Rb, sb, diff, by, regime),
                                sa, diff, by))
    return rows


GRID = (32, 64, 128, 256, 512, 1024)


def _curve(log2n_at_target: np.ndarray) -> np.ndarray:
    """(R, G) true accuracy: 0.9 at log2 N = c, 0.1 per doubling, linear in log2 N between 0.5 and 0.95 (so
    interpolating the population curve in log2 N between grid points is exact)."""
    x = np.log2(np.asarray(GRID, dtype=float))
    return np.clip(0.9 + 0.1 * (x[None, :] - log2n_at_target[:, None]), 0.5, 0.95)


def _efficiency_rows() -> list[Row]:
    rows = []

    def build(R, scope, c_model, c_than, value, seed_sd):
        def make(rng, sim):
            ex = _uniform(rng, 0.025, N)  # shared by every role, seed and N (|b| <= 0.043)
            roles = {}
            for role, c in (("m", c_model), ("t", c_than)):
                cs = c + _seed_shift(rng, R, scope, seed_sd)
                p = _curve(cs)[:, :, None] + ex[None, None, :]  # (R, G, n)
                y = (rng.random(p.shape) < p).astype(np.float64)
                reps = [{f"n{g}/accuracy": y[i, k] for k, g in enumerate(GRID)} |
                        {"reference/accuracy": y[i, -1]} for i in range(R)]
                roles[role] = _role(reps, scope)
            return (_meas("sample_efficiency", {"n_train": list(GRID), "target": 0.9}, roles, sim),
                    {"model": "m", "than": "t", "value": value})
        return make

    for regime, seed_sd in (("seed>ex", 0.4), ("ex>seed", 0.05)):
        for R, scope in LAYOUTS:
            cases = [("at_threshold", 6.0, 8.0, 0.25), ("null", 7.0, 7.0, 1.0), ("above", 6.0, 8.0, 0.5)]
            for planted, cm, ct, value in cases:
                if scope == "recipe" and R == 1 and planted != "above":
                    continue
                rows.append(Row("samples_ratio_at_most", regime, R, planted, build(R, scope, cm, ct, value, seed_sd),
                                scope, 2.0 ** (cm - ct), value, heavy=True,
                                note="N@0.9 of model 2^6, than 2^8 (ratio 0.25)" if planted != "null" else ""))
    # censored: the model reaches the target near the grid's start (some seeds at the first point)
    for R, scope in ((3, "recipe"), (5, "recipe")):
        rows.append(Row("samples_ratio_at_most", "censored below (model at 2^5.3)", R, "at_threshold",
                        build(R, scope, 5.3, 7.3, 0.25, 0.4), scope, 0.25, 0.25, heavy=True, limitation=True,
                        note="censored seeds make the ratio a bound; passes on a lower bound become inconclusive"))
    return rows


EVAL_STEPS = np.arange(10, 301, 10, dtype=float)
HELD_OUT = 512


def _learning_curve(log2_steps_at_target: np.ndarray) -> np.ndarray:
    """(R, E) true held-out accuracy at EVAL_STEPS: 0.9 at log2 steps = c, 0.3 per doubling, within [0.05,
    0.99] (linear in log2 steps around the target, so interpolating between evaluations is exact)."""
    x = np.log2(EVAL_STEPS)
    return np.clip(0.9 + 0.3 * (x[None, :] - log2_steps_at_target[:, None]), 0.05, 0.99)


def _curve_role(rng, R: int, scope: str, p: np.ndarray) -> RoleData:
    """A `learning_curves` role whose recorded curves are binomial draws on HELD_OUT examples around `p`."""
    acc = rng.binomial(HELD_OUT, p) / HELD_OUT
    reps = [{"curve/step": EVAL_STEPS.copy(), "curve/accuracy": acc[i], "curve/loss": 1 - acc[i]} for i in range(R)]
    meta = [{"curve": {"steps": 300, "max_steps": 300, "stop_at": None, "stopped_at_accuracy": False,
                       "held_out": HELD_OUT}} for _ in range(R)]
    return _role(reps, scope, meta=meta)


def _layout_rows(check: str, regimes, cases, build, truth, heavy: bool = False, note: str = "") -> list[Row]:
    """One row per regime (name, seed sd) x layout of LAYOUTS2 x case (planted, model's, than's, threshold);
    one recipe seed gets only the `above` case (it cannot pass: every pass would be a bug)."""
    rows = []
    for regime, seed_sd in regimes:
        for R, scope in LAYOUTS2:
            for planted, a, b, value in cases:
                if scope == "recipe" and R == 1 and planted != "above":
                    continue
                rows.append(Row(check, regime, R, planted, build(R, scope, a, b, value, seed_sd), scope, truth(a, b),
                                value, heavy=heavy, note=note if planted != "null" else ""))
    return rows


def _learning_rows() -> list[Row]:
    """steps_ratio_at_most (planted ratios of steps@0.9) and curve_accuracy_higher (planted accuracies at step
    300), seed variation on the log2 steps (the accuracy) plus binomial noise on each evaluation."""
    rows = []

    def ratio(R, scope, c_model, c_than, value, seed_sd):
        def make(rng, sim):
            roles = {role: _curve_role(rng, R, scope, _learning_curve(c + _seed_shift(rng, R, scope, seed_sd)))
                     for role, c in (("m", c_model), ("t", c_than))}
            return (_meas("learning_curves", {"target": 0.9}, roles, sim, n=0),
                    {"model": "m", "than": "t", "value": value})
        return make

    rows += _layout_rows("steps_ratio_at_most", (("seed>ex", 0.4), ("ex>seed", 0.03)),
                         (("at_threshold", 5.0, 7.0, 0.25), ("null", 6.0, 6.0, 1.0), ("above", 5.0, 7.0, 0.5)),
                         ratio, lambda cm, ct: 2.0 ** (cm - ct), heavy=True,
                         note="steps@0.9 of model 2^5, than 2^7 (ratio 0.25)")

    def higher(R, scope, p_model, p_than, by, seed_sd):
        def make(rng, sim):
            roles = {}
            for role, p in (("m", p_model), ("t", p_than)):
                level = p + _seed_shift(rng, R, scope, seed_sd)
                roles[role] = _curve_role(rng, R, scope, np.repeat(level[:, None], EVAL_STEPS.size, axis=1))
            return (_meas("learning_curves", {"target": 0.9}, roles, sim, n=0),
                    {"model": "m", "than": "t", "step": 300, "by": by})
        return make

    rows += _layout_rows("curve_accuracy_higher", (("seed>ex", 0.04), ("ex>seed", 0.003)),
                         (("at_threshold", 0.6, 0.5, 0.1), ("null", 0.5, 0.5, 0.0), ("above", 0.7, 0.5, 0.1)),
                         higher, lambda pm, pt: pm - pt)
    return rows


def _circuit_rows() -> list[Row]:
    """Circuit checks on `faithfulness` units: per replicate, the clean model's 0/1 correctness m, the circuit's c
    (correct only where the model is, with probability rho: faithfulness rho), and random circuits' (draws, n)."""
    rows = []

    def faith(R, scope, p_model, rho, value):
        def make(rng, sim):
            m = bernoulli_crossed(rng, R, N, p_model, 0.04, 0.1, scope)
            rhos = np.clip(rho + _seed_shift(rng, R, scope, 0.03), 0.0, 1.0)
            c = m * (rng.random((R, N)) < rhos[:, None])
            reps = [{"faithfulness/model": m[i], "faithfulness/circuit": c[i],
                     "faithfulness/random": np.zeros((2, N))} for i in range(R)]
            return (_meas("circuit_faithfulness", {"circuit": {}}, {"m": _role(reps, scope)}, sim, n_candidates=7),
                    {"model": "m", "value": value})
        return make

    def beats(R, scope, p_than, diff):
        def make(rng, sim):
            b = _uniform(rng, 0.1, N)  # example difficulty, shared by both models
            c = bernoulli_crossed(rng, R, N, p_than + diff, 0.04, 0.1, scope, example=b)
            m = bernoulli_crossed(rng, 1, N, p_than, 0.0, 0.1, "checkpoint", example=b)
            ft = [{"faithfulness/model": c[i], "faithfulness/circuit": c[i], "faithfulness/random": np.zeros((2, N))}
                  for i in range(R)]
            base = [{"faithfulness/model": m[0], "faithfulness/circuit": m[0], "faithfulness/random": np.zeros((2, N))}]
            return (_meas("circuit_faithfulness", {"circuit": {}}, {"ft": _role(ft, scope),
                                                                    "base": _role(base, "checkpoint")}, sim,
                          n_candidates=7), {"model": "ft", "than": "base", "by": 0.0})
        return make

    def random_below(R, scope, mu, value, draws=20):
        def make(rng, sim):
            per_draw = np.clip(mu + rng.normal(0.0, 0.05, draws), 0.0, 1.0)
            reps = []
            for _ in range(R):
                r = (rng.random((draws, N)) < per_draw[:, None]).astype(np.float64)
                reps.append({"faithfulness/model": np.ones(N), "faithfulness/circuit": np.ones(N) * 0.9,
                             "faithfulness/random": r})
            return (_meas("circuit_faithfulness", {"circuit": {}}, {"m": _role(reps, scope)}, sim, n_candidates=7),
                    {"model": "m", "value": value})
        return make

    def recovers(R, scope, frac, value, direction):
        def make(rng, sim):
            ex = _uniform(rng, 0.1, N)
            b = bernoulli_crossed(rng, 1, N, 0.6, 0.0, 0.1, "checkpoint", example=ex)[0]  # one base checkpoint
            shift = _seed_shift(rng, R, scope, 0.03)
            src = bernoulli_crossed(rng, R, N, 0.8, 0.0, 0.1, scope, shift=shift, example=ex)
            pat = bernoulli_crossed(rng, R, N, 0.6 + frac * 0.2, 0.0, 0.1, scope, shift=shift * frac, example=ex)
            reps = [{"cmap/base": b, "cmap/source": src[i], "cmap/group/g": pat[i]} for i in range(R)]
            return (_meas("cross_model_patching", {"source": "ft", "into": "base", "groups": {}},
                          {"ft": _role(reps, scope)}, sim, n_candidates=7),
                    {"model": "ft", "group": "g", "value": value})
        return make

    for R, scope in LAYOUTS:
        if scope == "recipe" and R == 1:
            continue
        for planted, frac in (("at_threshold", 0.8), ("null", 0.5), ("above", 1.0)):
            rows.append(Row("cmap_recovers_at_least", "base 0.6, source 0.8", R, planted,
                            recovers(R, scope, frac, 0.8, ">="), scope, frac, 0.8))
        for planted, frac in (("at_threshold", 0.5), ("null", 0.8), ("above", 0.0)):
            rows.append(Row("cmap_recovers_at_most", "base 0.6, source 0.8", R, planted,
                            recovers(R, scope, frac, 0.5, "<="), scope, frac, 0.5))
        for planted, rho in (("at_threshold", 0.9), ("null", 0.8), ("above", 0.97)):
            rows.append(Row("faithfulness_at_least", "model 0.7, seed>ex", R, planted, faith(R, scope, 0.7, rho, 0.9),
                            scope, rho, 0.9))
        for planted, diff in (("at_threshold", 0.0), ("null", -0.05), ("above", 0.12)):
            rows.append(Row("circuit_beats_model", "recipe vs one checkpoint", R, planted, beats(R, scope, 0.66, diff),
                            scope, diff, 0.0))
        for planted, mu in (("at_threshold", 0.3), ("null", 0.35), ("above", 0.14)):
            rows.append(Row("random_circuits_below", "20 draws, sd 0.05 between draws", R, planted,
                            random_below(R, scope, mu, 0.3), scope, mu, 0.3))
    return rows


def _dcm_rows() -> list[Row]:
    """Desiderata-patching checks: per replicate, 0/1 per held-out pair (the model followed the desideratum)."""
    rows = []

    def bound(R, scope, mu, value):
        def make(rng, sim):
            y = bernoulli_crossed(rng, R, N, mu, 0.04, 0.1, scope)
            reps = [{"dcm/acc/g/d": y[i]} for i in range(R)]
            return (_meas("desiderata_patching", {"circuit": {}}, {"m": _role(reps, scope)}, sim, n_candidates=7),
                    {"model": "m", "group": "g", "desideratum": "d", "value": value})
        return make

    def higher(R, scope, diff):
        def make(rng, sim):
            ex = _uniform(rng, 0.1, N)
            a = bernoulli_crossed(rng, R, N, 0.5 + diff, 0.04, 0.1, scope, example=ex)
            b = bernoulli_crossed(rng, 1, N, 0.5, 0.0, 0.1, "checkpoint", example=ex)
            roles = {"ft": _role([{"dcm/acc/g/d": a[i]} for i in range(R)], scope),
                     "base": _role([{"dcm/acc/g/d": b[0]}], "checkpoint")}
            return (_meas("desiderata_patching", {"circuit": {}}, roles, sim, n_candidates=7),
                    {"model": "ft", "than": "base", "group": "g", "desideratum": "d"})
        return make

    for R, scope in LAYOUTS:
        if scope == "recipe" and R == 1:
            continue
        for planted, mu in (("at_threshold", 0.45), ("null", 0.35), ("above", 0.55)):
            rows.append(Row("patching_accuracy_at_least", "seed>ex", R, planted, bound(R, scope, mu, 0.45), scope,
                            mu, 0.45))
        for planted, mu in (("at_threshold", 0.2), ("null", 0.3), ("above", 0.1)):
            rows.append(Row("patching_accuracy_at_most", "seed>ex", R, planted, bound(R, scope, mu, 0.2), scope,
                            mu, 0.2))
        for planted, diff in (("at_threshold", 0.0), ("null", -0.05), ("above", 0.15)):
            rows.append(Row("patching_accuracy_higher", "recipe vs one checkpoint, same pairs", R, planted,
                            higher(R, scope, diff), scope, diff, 0.0))
    return rows


def _overlap_rows() -> list[Row]:
    """circuit_contains: a reference circuit of 10 heads; each replicate's circuit keeps each of them with
    probability p (the true precision), plus 5 other heads, in a 4 x 8 model."""
    rows = []
    ref = [[0, h] for h in range(8)] + [[1, 0], [1, 1]]

    def build(R, scope, p):
        def make(rng, sim):
            metas = []
            for _ in range(R):
                kept = [h for h in ref if rng.random() < p]
                metas.append({"discovery": {"circuit": {"g": {"position": "last",
                                                              "heads": kept + [[3, h] for h in range(5)]}}}})
            base = [{"discovery": {"circuit": {"g": {"position": "last", "heads": ref}}}}]
            roles = {"ft": _role([{} for _ in range(R)], scope, 4, 8, metas),
                     "base": _role([{}], "checkpoint", 4, 8, base)}
            return (_meas("circuit_overlap", {"steps": {}}, roles, sim, n_candidates=7),
                    {"model": "ft", "than": "base", "value": 0.6})
        return make

    for R in (1, 3, 5):
        for planted, p in (("at_threshold", 0.6), ("null", 0.5), ("above", 0.9)):
            rows.append(Row("circuit_contains", "10 reference heads, 4 x 8 model", R, planted, build(R, "recipe", p),
                            "recipe", p, 0.6))
    return rows


def _pruning_rows() -> list[Row]:
    """Pruning checks: per replicate, (len(ks), n) 0/1 correctness on the eval set at K = 0, 1, 4. The unpruned
    accuracy is p0 + a[s] + b[x]; pruning the top 4 neurons adds `gain` to every example's probability (with a
    share of the examples that were right turning wrong, so the flips are -1/0/+1); the null is unchanged."""
    rows = []

    def build(R, scope, gain, value, name, p0=0.3, regime="seed>ex"):
        seed_sd, ex_sd = REGIMES[regime]

        def make(rng, sim):
            a = _seed_shift(rng, R, scope, seed_sd)
            b = _uniform(rng, ex_sd, N)
            base = np.clip(p0 + a[:, None] + b[None, :], 0.0, 1.0)
            # K = 0 and K = 1: base; K = 4: base + gain, drawn from one uniform so that most examples keep their
            # answer (a flip is -1 only where the draws differ): the effect's mean is exactly `gain`
            u0, u4 = rng.random((R, N)), rng.random((R, N))
            keep = rng.random((R, N)) < 0.7
            u4 = np.where(keep, u0, u4)
            acc0 = (u0 < base).astype(float)
            acc4 = (u4 < np.clip(base + gain, 0.0, 1.0)).astype(float)
            sign = 1.0 if name == "pruning_revives_at_least" else -1.0
            if sign < 0:  # the fine-tuning set falls: the same draws with the roles of K = 0 and K = 4 swapped
                acc0, acc4 = acc4, acc0
            reps = [{"curve/acc/data": np.stack([acc0[i], acc0[i], acc4[i]]),
                     "curve/null/data": np.stack([acc0[i]] * 3)} for i in range(R)]
            return (_meas("pruning_revival", {"ks": [0, 1, 4]}, {"m": _role(reps, scope)}, sim, n_candidates=4),
                    {"model": "m", "k": 4, "value": value, "task": "data"})
        return make

    for name in ("pruning_revives_at_least", "pruning_drops_at_least"):
        for regime in REGIMES:
            for R, scope in LAYOUTS2:
                if scope == "recipe" and R == 1:
                    continue
                for planted, gain, value in (("at_threshold", 0.3, 0.3), ("null", 0.0, 0.0), ("above", 0.4, 0.3)):
                    rows.append(Row(name, f"K=4 of ks 0,1,4, {regime}", R, planted,
                                    build(R, scope, gain, value, name, regime=regime), scope, gain, value))
    return rows


def _probe_rows() -> list[Row]:
    """Probe checks: per replicate, (blocks, n_test) 0/1 held-out correctness of the probe and of its nulls, the
    same held-out examples in every replicate and role (crossed)."""
    rows = []

    def arrays(rng, R, scope, mu, null_mu, ex=None):
        acc = bernoulli_crossed(rng, R, N, mu, 0.04, 0.1, scope, example=ex)
        null = bernoulli_crossed(rng, R, N, null_mu, 0.02, 0.1, scope)
        return [{"probe/correct": np.stack([null[i], acc[i]]),
                 "probe/accuracy": np.array([null[i].mean(), acc[i].mean()]),
                 "probe/shuffled_correct": np.stack([null[i], null[i]]),
                 "probe/shuffled": np.array([null[i].mean()] * 2),
                 "probe/untrained_correct": np.stack([null[i], null[i]]),
                 "probe/untrained": np.array([null[i].mean()] * 2)} for i in range(R)]

    def meta(R):
        return [{"probe": {"chance": 0.5}} for _ in range(R)]

    def bound(R, scope, mu):
        def make(rng, sim):
            roles = {"m": _role(arrays(rng, R, scope, mu, 0.5), scope, meta=meta(R))}
            return (_meas("block_probes", {"label": "x"}, roles, sim, n_candidates=4),
                    {"model": "m", "block": 1, "value": 0.7})
        return make

    def above(R, scope, diff, against):
        def make(rng, sim):
            roles = {"m": _role(arrays(rng, R, scope, 0.5 + diff, 0.5), scope, meta=meta(R))}
            return (_meas("block_probes", {"label": "x"}, roles, sim, n_candidates=4),
                    {"model": "m", "block": 1, "against": against, "by": 0.1})
        return make

    def close(R, scope, diff):
        def make(rng, sim):
            ex = _uniform(rng, 0.1, N)
            roles = {"ft": _role(arrays(rng, R, scope, 0.7 + diff, 0.5, ex), scope, meta=meta(R)),
                     "base": _role(arrays(rng, 1, "checkpoint", 0.7, 0.5, ex), "checkpoint", meta=meta(1))}
            return (_meas("block_probes", {"label": "x"}, roles, sim, n_candidates=4),
                    {"model": "ft", "than": "base", "block": 1, "within": 0.1})
        return make

    for R, scope in LAYOUTS:
        if scope == "recipe" and R == 1:
            continue
        for planted, mu in (("at_threshold", 0.7), ("null", 0.5), ("above", 0.8)):
            rows.append(Row("probe_accuracy_at_least", "block 1, seed>ex", R, planted, bound(R, scope, mu), scope,
                            mu, 0.7))
        for against in ("shuffled", "untrained"):
            for planted, diff in (("at_threshold", 0.1), ("null", 0.0), ("above", 0.2)):
                rows.append(Row("probe_above_null", f"{against} null 0.5, by 0.1", R, planted,
                                above(R, scope, diff, against), scope, diff, 0.1))
        for planted, diff in (("at_threshold", 0.1), ("null", 0.15), ("above", 0.0)):
            rows.append(Row("probe_accuracy_close", "recipe vs one checkpoint, within 0.1", R, planted,
                            close(R, scope, diff), scope, diff, 0.1,
                            note="at_threshold: |d| = within; above: d = 0 (the claim holds)"))
        for planted, diff in (("at_threshold", -0.1),):
            rows.append(Row("probe_accuracy_close", "recipe vs one checkpoint, within 0.1, d < 0", R, planted,
                            close(R, scope, diff), scope, diff, 0.1))
    return rows


def all_rows() -> list[Row]:
    rows = (_accuracy_rows() + _accuracy_higher_rows() + _effect_rows() + _higher_rows() + _attention_rows()
            + _top_heads_rows() + _centroid_rows()
            + _decoding_rows() + _geometry_rows() + _efficiency_rows() + _circuit_rows()
            + _dcm_rows() + _overlap_rows() + _pruning_rows() + _probe_rows() + _learning_rows())
    missing = set(CHECKS.names()) - {r.check for r in rows}
    if missing:
        raise RuntimeError(f"checks without calibration rows: {sorted(missing)}")
    return rows


#: the --quick subset (also what tests/test_calibration.py gates on): (check, scenario, replicates, scope, planted)
QUICK = (
    ("steps_ratio_at_most", "seed>ex", 3, "recipe", "at_threshold"),
    ("curve_accuracy_higher", "seed>ex", 1, "checkpoint", "at_threshold"),
    ("accuracy_at_least", "seed>ex", 3, "recipe", "at_threshold"),
    ("accuracy_at_least", "ex>seed", 3, "recipe", "at_threshold"),
    ("accuracy_at_least", "ex>seed", 1, "checkpoint", "at_threshold"),
    ("accuracy_at_least", "seed>ex", 5, "recipe", "above"),
    ("effect_at_least", "named 1 head, seed>ex", 3, "recipe", "at_threshold"),
    ("effect_at_least", "top_3, 16 heads", 3, "recipe", "at_threshold"),
    ("effect_at_least", "top_3, 144 heads", 1, "checkpoint", "at_threshold"),
    ("effect_at_least", "top_head, 16 heads", 1, "checkpoint", "null"),
    ("effect_at_most", "top_3, 16 heads", 1, "checkpoint", "at_threshold"),
    ("effect_higher", "named 1 vs 1 head, seed>ex", 3, "recipe", "at_threshold"),
    ("effect_higher", "named 1 vs 1 head, ex>seed", 1, "checkpoint", "null"),
    ("effect_higher", "top_head vs named head, 16 heads", 3, "recipe", "at_threshold"),
    ("effect_higher", "named 2 vs 2 heads, logit_diff", 5, "recipe", "above"),
    ("accuracy_at_least", "ceiling 0.98", 1, "checkpoint", "at_threshold"),
    ("accuracy_at_most", "ex>seed", 3, "recipe", "at_threshold"),
    ("accuracy_at_most", "seed>ex", 1, "checkpoint", "at_threshold"),
    ("accuracy_higher", "seed>ex, 3 recipe vs 1 checkpoint", 3, "recipe", "at_threshold"),
    ("accuracy_higher", "ex>seed, 1 checkpoint vs 1 checkpoint", 1, "checkpoint", "null"),
    ("accuracy_higher", "ceiling 0.99 vs 0.97, 1 checkpoint vs 1 checkpoint", 1, "checkpoint", "at_threshold"),
    ("top_heads_in_layers", "share exactly 0.5, 16 heads", 1, "checkpoint", "at_threshold"),
    ("silhouette_higher", "ex>seed, 3 recipe vs 3 recipe", 3, "recipe", "null"),
    ("silhouette_higher", "seed>ex, 3 recipe vs 1 checkpoint", 3, "recipe", "at_threshold"),
    ("mixed_selectivity_higher", "3 recipe vs 1 checkpoint", 3, "recipe", "null"),
    ("decoding_above_null", "4 layers, Holm", 1, "checkpoint", "null"),
    ("top_heads_in_layers", "tied heads at exactly 0, 16 heads", 3, "recipe", "null"),
    ("layer_centroid_higher", "noisier but identical, 16 heads", 3, "recipe", "null"),
    ("faithfulness_at_least", "model 0.7, seed>ex", 3, "recipe", "at_threshold"),
    ("faithfulness_at_least", "model 0.7, seed>ex", 1, "checkpoint", "at_threshold"),
    ("circuit_beats_model", "recipe vs one checkpoint", 3, "recipe", "at_threshold"),
    ("random_circuits_below", "20 draws, sd 0.05 between draws", 1, "checkpoint", "at_threshold"),
    ("cmap_recovers_at_least", "base 0.6, source 0.8", 3, "recipe", "at_threshold"),
    ("cmap_recovers_at_most", "base 0.6, source 0.8", 1, "checkpoint", "at_threshold"),
    ("patching_accuracy_at_least", "seed>ex", 3, "recipe", "at_threshold"),
    ("patching_accuracy_higher", "recipe vs one checkpoint, same pairs", 3, "recipe", "at_threshold"),
    ("circuit_contains", "10 reference heads, 4 x 8 model", 3, "recipe", "at_threshold"),
    ("pruning_revives_at_least", "K=4 of ks 0,1,4, seed>ex", 3, "recipe", "at_threshold"),
    ("pruning_drops_at_least", "K=4 of ks 0,1,4, ex>seed", 1, "checkpoint", "at_threshold"),
    ("probe_accuracy_at_least", "block 1, seed>ex", 1, "checkpoint", "at_threshold"),
    ("probe_above_null", "untrained null 0.5, by 0.1", 3, "recipe", "at_threshold"),
    ("probe_accuracy_close", "recipe vs one checkpoint, within 0.1", 3, "recipe", "at_threshold"),
)


def quick_rows() -> list[Row]:
    by_key = {(r.check, r.scenario, r.replicates, r.scope, r.planted): r for r in all_rows()}
    return [by_key[k] for k in QUICK]


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Result:
    row: Row
    n_sims: int
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return self.counts.get("passed", 0) / self.n_sims

    @property
    def se(self) -> float:
        p = self.pass_rate
        return math.sqrt(p * (1 - p) / self.n_sims)

    @property
    def misses(self) -> bool:
        """A false-pass row whose rate is above the 5 % target."""
        return self.row.planted != "above" and self.pass_rate > 0.05

    def to_dict(self) -> dict[str, Any]:
        r = self.row
        return {"check": r.check, "scenario": r.scenario, "replicates": r.replicates, "planted": r.planted,
                "n_sims": self.n_sims, "pass_rate": self.pass_rate, "se": self.se, "scope": r.scope,
                "truth": r.truth, "threshold": r.threshold, "limitation": r.limitation, "note": r.note,
                "outcomes": {k: v / self.n_sims for k, v in sorted(self.counts.items())}}


def simulate(row: Row, n_sims: int, seed: int = 0, n_boot: int = 200, start: int = 0) -> Result:
    """Run `row` `n_sims` times through the real check (simulations start..start+n_sims-1); count outcomes."""
    result = Result(row, n_sims)
    stream = zlib.crc32(row.key.encode())
    for sim in range(start, start + n_sims):
        rng = np.random.default_rng([seed, stream, sim])
        meas, args = row.build(rng, sim)
        ctx = CheckContext(meas, claim_file="calibration", n_boot=n_boot)
        full = CHECKS.get(row.check).with_defaults(args)
        fulfil(ctx, check_requests(ctx, row.check, full))
        outcome = run_check(ctx, row.check, full).outcome
        result.counts[outcome] = result.counts.get(outcome, 0) + 1
    return result


def confirm(res: Result, n_more: int, seed: int, n_boot: int) -> Result:
    """`res` with `n_more` further simulations (a row above the target at 200 simulations may be noise: at a
    true 2.5 %, 11 or more passes in 200 happen about 1 % of the time, so a table of ~190 false-pass rows
    shows one or two by chance). Limitation rows are reported as they come."""
    more = simulate(res.row, n_more, seed, n_boot, start=res.n_sims)
    counts = dict(res.counts)
    for k, v in more.counts.items():
        counts[k] = counts.get(k, 0) + v
    return Result(res.row, res.n_sims + n_more, counts)


def _line(res: Result) -> str:
    r = res.row
    flag = "  MISS" if res.misses else ""
    tag = " [limitation]" if r.limitation else ""
    fail = res.counts.get("failed", 0) / res.n_sims
    return (f"{r.check:28s} {r.scenario[:46]:46s} {r.replicates:>2d} {r.scope[:5]:5s} {r.planted:12s} "
            f"{100 * res.pass_rate:6.1f} ± {100 * res.se:4.1f} %  {100 * fail:5.1f} %  {res.n_sims:5d}{flag}{tag}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=200, help="simulations per row (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the small subset that tests/test_calibration.py runs")
    ap.add_argument("--json", type=Path, help="write the table as a JSON list of rows")
    ap.add_argument("--only", default="", help="rows whose check name contains this")
    ap.add_argument("--n-boot", type=int, default=200, help="within-replicate bootstrap draws (the runner's default)")
    ap.add_argument("--confirm", type=int, default=1000,
                    help="further simulations for a false-pass row above 5 %% (0: none)")
    args = ap.parse_args(argv)
    rows = quick_rows() if args.quick else all_rows()
    rows = [r for r in rows if args.only in r.check]
    print(f"{'check':28s} {'scenario':46s} {'R':>2s} {'scope':5s} {'planted':12s} {'pass rate ± se':>16s}  "
          f"{'failed':>7s}  {'sims':>5s}")
    results = []
    for row in rows:
        res = simulate(row, args.sims, args.seed, args.n_boot)
        if res.misses and args.confirm and not row.limitation:
            res = confirm(res, args.confirm, args.seed, args.n_boot)
        results.append(res)
        print(_line(res), flush=True)
    misses = [r for r in results if r.misses]
    print(f"\n{len(results)} rows, {args.sims} simulations each (gated rows above 5 % rerun with {args.confirm} more); "
          f"false-pass rows above 5 %: {len(misses)} ({sum(r.row.limitation for r in misses)} of them limitation "
          "rows). 'failed': the share of simulations judged failed (at the threshold: false fails).")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
