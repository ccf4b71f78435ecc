"""The statistics behind every verdict: intervals that keep their promise with few seeds.

What a claim estimates. A claim about a training *recipe* ("a model trained from scratch relies on layer-0
heads") is about the distribution of models the recipe produces, evaluated on the task's distribution of
inputs. Data arrive as one array of per-example values per independently trained replicate, and every
replicate is evaluated on the *same* eval examples. Two sources of noise matter, and they are crossed:

    y[s, x] = mu + a[s] + b[x] + e[s, x]      (s: replicate, x: example)

- `a`: which model the recipe happened to train (seed-to-seed variation);
- `b`: which examples were drawn for the eval set; shared by every replicate, so it does not average out
  over replicates (resampling examples independently per replicate ignores that, and was measured to give
  13 % false passes at the threshold);
- `e`: the rest.

`mean_estimate` uses the crossed-design variance  Var(mean) ~= s2(replicate means) / R + s2(example means) / n,
which estimates sigma_a^2/R + sigma_b^2/n plus twice the (small) interaction term: conservative by
sigma_e^2/(nR). Its degrees of freedom come from Welch-Satterthwaite, so with few seeds and real seed
variation the interval is a t interval with about R - 1 degrees of freedom (a percentile bootstrap over 3
seeds covers only ~71-75 %: its 2.5 % quantile is the smallest seed mean), and with seeds that barely differ
it becomes the example-level interval. Simulated coverage is in `benchmarks/calibration.py`.

A statistic computed per replicate (a layer centroid, a share of heads, a log ratio) gets a t interval on the
replicate values with R - 1 degrees of freedom (`replicate_estimate`); its within-replicate sampling variance
(from a bootstrap over examples, selection redone inside each draw) floors the between-replicate variance, so
a statistic that happens to take the same value in 3 replicates is not treated as known exactly. Two roles
are compared with a Welch interval (`replicate_difference`), or, for per-example values measured on the same
examples, with the crossed variance of the difference (`difference_estimate`).

Scope. A role that is one fixed model (a loaded checkpoint, a fixture trained with a fixed seed) makes the
claim about *that checkpoint*: its interval covers the eval examples only, and the report says so. A role
trained per seed needs at least 2 replicates: with 1 the estimate is marked *insufficient*, and the verdict
is `inconclusive` with the reason, never a pass on example noise alone. One checkpoint's per-example flips
in {-1, 0, 1} (an ablation's effect on accuracy) get the score interval of their mean (the variance taken at
each candidate mean, as in Wilson's interval), which holds near a boundary where the t interval did not (9 %
false passes at an effect of 0.98). One checkpoint's proportion (0/1
values: accuracy, decoder correctness) gets the exact binomial (Clopper-Pearson) interval: the t interval over
examples is a Wald interval there, whose one-sided error grows towards the bounds, where accuracy claims
live (exactly 4.3 / 5.7 / 6.2 / 8.9 % false passes at a true accuracy of 0.8 / 0.9 / 0.95 / 0.98 with 200
examples, 11.8 % at 0.95 with 100; Clopper-Pearson stays at or below 2.5 % on both sides for every n and p,
and the Wilson interval's upper end failed up to 8 % near 1). Two checkpoints' proportions compared on the same
examples (`difference_estimate`) get the paired score interval of Tango (1998) as well, which holds near a bound
where the t interval over the paired differences gave 6.5 % false fails (0.99 vs 0.97, 200 examples).

Verdicts compare the whole interval with the threshold, strictly: `lo > threshold` passes, `hi < threshold`
fails, anything else (equality included, so a discrete statistic cannot pass on a tie) is inconclusive.
The two-sided 95 % interval gives each one-sided verdict a 2.5 % error rate.
"""

from mechcheck.stats.intervals import (  # noqa: F401  (the public API of mechcheck.stats)
    CHECKPOINT,
    RECIPE,
    bootstrap_variance,
    bounded,
    difference_estimate,
    insufficient,
    judge,
    mean_estimate,
    replicate_difference,
    replicate_estimate,
)
from mechcheck.stats.selection import random_head_sets, split_halves, top_k, top_k_credit  # noqa: F401
from mechcheck.stats.significance import bonferroni_level, holm, paired_pvalue, paired_pvalues  # noqa: F401

__all__ = [
    "RECIPE", "CHECKPOINT", "mean_estimate", "difference_estimate", "replicate_estimate", "replicate_difference",
    "bootstrap_variance", "bounded", "insufficient", "judge", "paired_pvalue", "paired_pvalues", "holm",
    "bonferroni_level", "split_halves", "top_k", "top_k_credit", "random_head_sets",
]
