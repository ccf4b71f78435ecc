"""Geometry checks (experiment `embedding_geometry`): how well a label's clusters separate.

Per-example silhouettes are means over the shared eval examples: one role gets the crossed-design interval,
two roles the difference paired by example.
"""

from __future__ import annotations

from mechcheck import stats
from mechcheck.checks import MODEL, THAN, CheckContext
from mechcheck.checks.behaviour import scope_note
from mechcheck.registry import CHECKS, Param
from mechcheck.results import CheckResult

__all__ = ["silhouette_at_least", "silhouette_higher"]

_LABEL = Param("label", "label", required=True, within="labels", doc="a label of the experiment's `labels`")
_SPACE = Param("space", "choice", default="umap", choices=("umap", "raw"),
               doc="the 2-D UMAP embedding or the standardised hidden states")


@CHECKS.register("silhouette_at_least", params=(
    MODEL, _LABEL, _SPACE,
    Param("value", "float", required=True, min=-1.0, max=1.0, doc="smallest mean silhouette"),
), experiments=("embedding_geometry",))
def silhouette_at_least(ctx: CheckContext, model: str, label: str, value: float, space: str = "umap") -> CheckResult:
    """The mean silhouette of `label`'s clusters in `model`'s final states is more than `value`."""
    data = ctx.role(model)
    est = stats.bounded(stats.mean_estimate(data.values(f"geometry/silhouette/{space}/{label}"), data.scope,
                                            ctx.level), -1.0, 1.0)
    ctl = stats.mean_estimate(data.values(f"geometry/control/{space}/{label}"), data.scope, ctx.level)
    outcome = stats.judge(est, value, ">=")
    msg = (f"silhouette of '{label}' clusters in the {space} space of '{model}' = {est} (needs > {value}; "
           f"permuted labels: {ctl.estimate:.3f}){scope_note(est)}")
    return CheckResult("silhouette_at_least", {}, outcome, msg, est, value, ">=",
                       {"label": "permuted labels", "estimate": ctl.estimate, "lo": ctl.lo, "hi": ctl.hi})


@CHECKS.register("silhouette_higher", params=(
    MODEL, THAN, _LABEL, _SPACE,
    Param("by", "float", default=0.0, min=-2.0, max=2.0, doc="smallest difference of mean silhouettes"),
), experiments=("embedding_geometry",))
def silhouette_higher(ctx: CheckContext, model: str, than: str, label: str, space: str = "umap",
                      by: float = 0.0) -> CheckResult:
    """`label`'s clusters are more separated (mean silhouette) in `model` than in `than`."""
    A, B = ctx.role(model), ctx.role(than)
    name = f"geometry/silhouette/{space}/{label}"
    est = stats.bounded(stats.difference_estimate(A.values(name), B.values(name), A.scope, B.scope, ctx.level),
                        -2.0, 2.0)
    outcome = stats.judge(est, by, ">=")
    ctl_name = f"geometry/control/{space}/{label}"
    ctl = stats.difference_estimate(A.values(ctl_name), B.values(ctl_name), A.scope, B.scope, ctx.level)
    sa = sum(float(x.mean()) for x in A.values(name)) / A.n_replicates
    sb = sum(float(x.mean()) for x in B.values(name)) / B.n_replicates
    msg = (f"silhouette of '{label}' in the {space} space, '{model}' minus '{than}' = {est} (needs > {by}; "
           f"{sa:.3f} vs {sb:.3f}; with permuted labels: {ctl.estimate:.3f}){scope_note(est)}")
    return CheckResult("silhouette_higher", {}, outcome, msg, est, by, ">=",
                       {"label": "difference with permuted labels", "estimate": ctl.estimate, "lo": ctl.lo,
                        "hi": ctl.hi})
