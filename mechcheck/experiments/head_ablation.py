"""Head ablation: how much does the model need each attention head?

For every layer L and head H, the head's output before the output projection (``blocks.{L}.attn.hook_z``,
``[batch, pos, head, d_head]``) is replaced, and the change of a per-example metric is recorded:

  zero ablation  z[:, :, H] := 0
  mean ablation  z[:, p, H] := mean over the eval set of z[:, p, H]   (position-specific, as in Prakash 2024;
                                                                       padding positions left out of the mean)

`positions: answer` restricts the replacement to each example's answer position. Whole layers (all heads of
a layer at once) are ablated too, because single-head effects hide redundancy (ablating one head can cost
<= 1.4 pp where the whole layer costs 24-46 pp).

Effects are exact: `mechcheck.interventions.ablation_sweep` runs each ablation from the ablated layer up,
from the clean run's kept block inputs (the lower blocks would compute the same bits), equal to a full forward
pass up to float rounding (its GPT-2 shortcuts, see `interventions.sweep`). An effect is clean
minus ablated, so positive means "the model needed this head". Metrics: `mechcheck.metrics`.

Units (each cached on its own): ``clean`` (shared with `evaluate`), ``sweep`` (every single head and every
whole layer), ``attention`` (share of attention from the answer position to each token group, per head), and,
on a check's request, ``ablation_set`` (chosen sets of heads ablated jointly, e.g. a check's top-3).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mechcheck import stats
from mechcheck.experiments import Plan, PlanContext
from mechcheck.experiments.evaluate import clean_summary
from mechcheck.measurements import Measurements, Request, UnitResult
from mechcheck.metrics import METRICS
from mechcheck.registry import EXPERIMENTS, UNITS, Param

__all__ = ["head_ablation", "sweep_unit", "attention_unit", "ablation_set_unit", "centroid", "SIGNIFICANCE"]

#: significance level of the per-head tests (one-sided, Holm): a top head "matters"; a replicate "has a profile"
SIGNIFICANCE = 0.05


def centroid(eff: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray) -> tuple[float, np.ndarray]:
    """(layer centroid, layer profile) of one replicate's (n, L, H) effects, without the bias of noise.

    Each head weighs by the square of its effect, estimated from two independent halves of the examples:
    w = mean_a * mean_b (an unbiased estimate of effect^2: the noise of the two halves is independent), and
    only when mean_a + mean_b > 0 (a head whose ablation *helps* is not relied on). For a head that does
    nothing the two means are independent and symmetric around 0, so its expected weight is exactly 0: noise
    adds no mass to any layer, however noisy the model. (Summing clipped estimated effects gave every layer
    the noise's positive part and pulled a noisier model's centroid to the middle; weighting only the heads
    found significant made the estimand depend on power: a noisier model missed small heads and "looked"
    elsewhere.) LP(l) sums the weights per layer; the centroid is sum_l l LP(l) / sum_l LP(l). NaN when no
    head's effect is significant on all the examples (one-sided, Holm over all heads): no profile at all.
    """
    n, L, H = eff.shape
    flat = eff.reshape(n, L * H)
    rows = np.concatenate([rows_a, rows_b])
    if not (stats.holm(stats.paired_pvalues(flat[rows])) < SIGNIFICANCE).any():
        return float("nan"), np.zeros(L)
    ma, mb = flat[rows_a].mean(0), flat[rows_b].mean(0)
    weight = np.where(ma + mb > 0, ma * mb, 0.0).reshape(L, H)
    profile = weight.sum(1)
    total = profile.sum()
    if total <= 0:
        return float("nan"), profile
    return float((np.arange(L) * profile).sum() / total), profile


def _reference(ctx, method: str, batch_size: int):
    """The eval set's position-specific mean of every layer's hook_z (for mean ablation), or None."""
    if method == "zero":
        return None
    from mechcheck.interventions import reference

    sites = [f"blocks.{layer}.attn.hook_z" for layer in range(ctx.model.n_layers)]
    return reference(ctx.model, ctx.batch, sites, batch_size=batch_size, examples=method == "resample")


@UNITS.register("sweep", version="2", doc="effect of ablating every head alone and every whole layer")
def sweep_unit(ctx) -> UnitResult:
    from mechcheck.interventions import Job, ablation_sweep

    a = ctx.args
    model = ctx.model
    L, H = model.n_layers, model.n_heads
    jobs = [Job(((layer, head),)) for layer in range(L) for head in range(H)]
    jobs += [Job(tuple((layer, head) for head in range(H))) for layer in range(L)]
    out = ablation_sweep(model, ctx.batch, jobs, method=a["method"], positions=a["positions"],
                         reference=_reference(ctx, a["method"], a["batch_size"]), batch_size=a["batch_size"],
                         progress=ctx.progress)
    n = len(ctx.batch)
    arrays = {}
    for m in METRICS:
        arrays[f"head/{m}"] = out.effects[m][:, : L * H].reshape(n, L, H)
        arrays[f"layer/{m}"] = out.effects[m][:, L * H:]
    return UnitResult(arrays)


@UNITS.register("ablation_set", version="2", doc="effect of ablating each of several sets of heads jointly")
def ablation_set_unit(ctx) -> UnitResult:
    from mechcheck.interventions import Job, ablation_sweep

    a = ctx.args
    jobs = [Job(tuple((int(layer), int(head)) for layer, head in s)) for s in a["sets"]]
    out = ablation_sweep(ctx.model, ctx.batch, jobs, method=a["method"], positions=a["positions"],
                         reference=_reference(ctx, a["method"], a["batch_size"]), batch_size=a["batch_size"],
                         progress=ctx.progress)
    return UnitResult({f"set/{m}": out.effects[m] for m in METRICS})


@UNITS.register("attention", version="1", doc="share of attention from the answer position to each token group")
def attention_unit(ctx) -> UnitResult:
    """Per token group, (n, L, H): the attention the answer position pays to that group's positions."""
    from mechcheck.interventions import Read, run

    model, batch = ctx.model, ctx.batch
    L = model.n_layers
    sites = [f"blocks.{layer}.attn.hook_pattern" for layer in range(L)]
    reads = run(model, batch, read=[Read(s) for s in sites], batch_size=ctx.args["batch_size"]).reads
    att = np.stack([reads[s] for s in sites], axis=1)  # (n, L, H, Tk): from the answer position
    return UnitResult({g: (att * batch.groups[g][:, None, None, :]).sum(-1).astype(np.float32)
                       for g in ctx.args["groups"]})


def _summary(meas: Measurements) -> dict[str, Any]:
    """Per role: seed-level means of the head and layer effects and of the attention shares (no per-example
    arrays; the measurement store keeps those)."""
    metric = meas.args["metric"]
    clean = clean_summary(meas)
    a, b = stats.split_halves(meas.n, meas.seed)
    models = {}
    for role, data in meas.roles.items():
        profiles = [centroid(e, a, b) for e in data.values(f"sweep/head/{metric}")]
        models[role] = {
            # the debiased layer profile of `layer_centroid_higher` (significant heads only), per replicate
            "layer_profile": [np.round(p, 5).tolist() for _, p in profiles],
            "centroid": [None if np.isnan(c) else round(c, 4) for c, _ in profiles],
            "fixture": data.fixture, "n_layers": data.n_layers, "n_heads": data.n_heads, "metric": metric,
            "clean": clean[role]["clean"],
            "head_effect": [np.round(e.mean(0), 5).tolist() for e in data.values(f"sweep/head/{metric}")],
            "layer_effect": [np.round(e.mean(0), 5).tolist() for e in data.values(f"sweep/layer/{metric}")],
            "attention": {g: [np.round(a.mean(0), 4).tolist() for a in data.values(f"attention/{g}")]
                          for g in meas.groups},
        }
    return {"name": "head_ablation", "args": dict(meas.args), "n": meas.n, "models": models}


def _request(ctx: PlanContext, args: dict[str, Any], request: Request, ref):
    """The unit that answers a check's request (joint ablations of head sets, with this experiment's method)."""
    if request.kind != "ablation_set":
        raise ValueError(f"head_ablation cannot answer a request for {request.kind!r}")
    sets = request.arguments["sets"]
    return ctx.unit("ablation_set", (ref,), method=args["method"], positions=args["positions"],
                    batch_size=args["batch_size"], sets=sets)


@EXPERIMENTS.register("head_ablation", params=(
    Param("method", "choice", default="mean", choices=("zero", "mean"),
          doc="replace the head's output (hook_z) by 0 or by its mean over the eval set, per position"),
    Param("metric", "choice", default="accuracy", choices=METRICS,
          doc="primary per-example metric (both are recorded)"),
    Param("positions", "choice", default="all", choices=("all", "answer"),
          doc="ablate at every position, or only at the answer position"),
    Param("batch_size", "int", default=500, min=1, doc="examples per forward pass"),
    Param("n_control", "int", default=10, min=1, doc="random head sets drawn for matched controls"),
), summary=_summary, request=_request)
def head_ablation(ctx: PlanContext, method: str = "mean", metric: str = "accuracy", positions: str = "all",
                  batch_size: int = 500, n_control: int = 10) -> Plan:
    """Ablate every head, and every whole layer, one at a time; record the per-example change of the metric."""
    groups = sorted(ctx.batch.groups)

    def units(role, i, ref):
        return {"clean": ctx.unit("clean", (ref,), batch_size=batch_size),
                "sweep": ctx.unit("sweep", (ref,), method=method, positions=positions, batch_size=batch_size),
                "attention": ctx.unit("attention", (ref,), groups=groups, batch_size=batch_size)}

    return ctx.per_replicate(units)
