"""Same claim, same seed: the same numbers and the same weights, whatever the process did before and however
many worker processes the engine uses.

Regression test (first half): with two training threads, the shipped ci fixture (seed 0) trained to one of two
different sets of weights (final loss 0.0796 or 0.0974) depending on the process's history, e.g. whether
`mechcheck run` had already started a subprocess to read the git sha. Training now runs single-threaded by
default (`mechcheck.train`) with MKL's dynamic threading off (`models.pin_mkl_threads`). Here a tiny fixture
stands in for the ci one (which takes minutes to train twice): a fresh process runs the claim with and without
the report's git subprocess first, and both give the same weights and the same report numbers.

Second half: the engine computes every unit single-threaded, so a run on one worker and a run on two worker
processes (each with its own cache) give the same measurements, bit for bit, and the same weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO
from mechcheck.spec import load_claims
from plans import plan_of

CLAIM = """
    id: det.tiny
    statement: a tiny scratch recipe, two seeds, head ablation (machinery only)
    models: {m: tiny-cdm}
    seeds: 2
    data: {task: cdm9, n: 100}
    experiment: {head_ablation: {method: mean}}
    expect:
      - accuracy_at_least: {model: m, value: 0.3}
      - effect_at_least: {model: m, heads: top_head, value: 0.0}
      - effect_at_least: {model: m, heads: top_2, value: 0.0}
"""

SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from mechcheck.runner import RunOptions, Runner, new_report
    from mechcheck.spec import load_claims

    cache, mode, claim_path, repo = sys.argv[1:5]
    options = RunOptions(cache_dir=cache, workers=1, n_boot=100)
    (claim,) = load_claims([Path(claim_path)])
    runner = Runner(options)
    if mode == "report":
        new_report(options, [], Path(repo), "cpu")  # versions and git sha (runs git in a subprocess)
    res = runner.run_claim(claim)
    print(json.dumps({"outcome": res.outcome, "reason": res.reason,
                      "weights": [m.info.get("weights_sha256") for m in res.models],
                      "checks": [[c.outcome, c.effect.estimate, c.effect.lo, c.effect.hi] for c in res.checks],
                      "experiment": res.experiment}))
""")


def _numbers(result) -> dict:
    """What a report says about a claim, without timings: outcome, weights' hashes, checks and summary."""
    return {"outcome": result.outcome, "weights": [m.info.get("weights_sha256") for m in result.models],
            "checks": [[c.outcome, c.effect.estimate, c.effect.lo, c.effect.hi] for c in result.checks],
            "experiment": json.loads(json.dumps(result.experiment))}


def _in_fresh_process(cache, mode: str, claim_path) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cache), mode, str(claim_path), str(REPO)],
                         capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_and_measuring_do_not_depend_on_what_the_process_did_before(claim_tree, tmp_path):
    path = claim_tree("claims/det.yaml", CLAIM)
    plain = _in_fresh_process(tmp_path / "plain", "plain", path)
    after_git = _in_fresh_process(tmp_path / "report", "report", path)
    assert plain["outcome"] != "error", plain["reason"]
    assert len(plain["weights"]) == 2 and all(len(h) == 64 for h in plain["weights"])
    assert plain["weights"][0] != plain["weights"][1]  # two seeds: two models
    assert after_git == plain


@pytest.mark.slow
def test_one_worker_and_two_workers_give_the_same_measurements(claim_tree, tmp_path):
    from mechcheck.measurements import MeasurementStore
    from mechcheck.runner import Runner, RunOptions

    (claim,) = load_claims([claim_tree("claims/det.yaml", CLAIM)])
    results = {}
    for workers in (1, 2):
        runner = Runner(RunOptions(cache_dir=tmp_path / f"w{workers}", workers=workers, n_boot=100))
        try:
            results[workers] = runner.run_claim(claim)
        finally:
            runner.close()
        assert runner.workers == workers and len(runner.trained) == 2  # each run trained both seeds itself
    one, two = results[1], results[2]
    assert one.outcome != "error", (one.reason, one.traceback)
    assert _numbers(two) == _numbers(one)
    # and the stored arrays behind those numbers, unit by unit (same keys: same code, data and environment)
    plan, _, _ = plan_of(claim, tmp_path / "w1")
    units = [u for reps in plan.values() for rep in reps for u in rep.values()]
    assert sorted(u.kind for u in units) == ["attention", "attention", "clean", "clean", "sweep", "sweep"]
    a, b = MeasurementStore(tmp_path / "w1"), MeasurementStore(tmp_path / "w2")
    for unit in units:
        x, y = a.get(unit.key), b.get(unit.key)
        assert x is not None and y is not None and sorted(x.arrays) == sorted(y.arrays)
        for name in x.arrays:
            np.testing.assert_array_equal(x.arrays[name], y.arrays[name], err_msg=f"{unit.label}: {name}")
