"""`mechcheck.compare` and `mechcheck.baseline` on synthetic reports (no models): matching, the calibrated
tolerance, outcome changes, ordering, the baseline's contents, JUnit XML, and the README table in sync with the
committed baseline."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from conftest import REPO

from mechcheck.baseline import readme_section, readme_table, summarise, update_readme, write_baseline
from mechcheck.compare import check_id, compare_reports
from mechcheck.report.junit import junit_tree
from mechcheck.results import CheckResult, ClaimResult, Estimate, RunReport


def _est(x, se, reps=(), scope="recipe", n=200, df=2.0):
    return Estimate(x, x - 4.3 * se, x + 4.3 * se, n, max(len(reps), 1), se=se, df=df, scope=scope,
                    replicates=list(reps))


def _report(run_id, checks, outcome=None):
    claim = ClaimResult("c.one", "claims/c.yaml", "s", outcome or ("passed" if all(
        c.outcome == "passed" for c in checks) else "failed"), checks=checks, seeds=[0, 1, 2])
    return RunReport(run_id, "2026-12-01T00:00:00+00:00", "ci", finished="2026-12-01T00:01:00+00:00", claims=[claim])


def _check(est, outcome="passed", value=0.2, name="effect_at_least", model="m"):
    return CheckResult(name, {"model": model, "heads": [[0, 0]], "value": value}, outcome, "", est, value, ">=")


def test_same_numbers_do_not_regress():
    c = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)))
    comp = compare_reports(_report("a", [c]), _report("b", [c]))
    assert not comp.regressed and [d.status for d in comp.checks] == ["unchanged"]
    assert comp.checks[0].diff == 0 and comp.checks[0].tolerance > 0


def test_drift_within_seed_noise_is_not_a_regression_and_beyond_it_is():
    old = _check(_est(0.5, 0.05, (0.42, 0.5, 0.58)))
    small = _check(_est(0.45, 0.05, (0.37, 0.45, 0.53)))
    big = _check(_est(0.2, 0.02, (0.18, 0.2, 0.22)), outcome="inconclusive")
    assert not compare_reports(_report("a", [old]), _report("b", [small])).regressed
    comp = compare_reports(_report("a", [old]), _report("b", [big]))
    d = comp.checks[0]
    assert comp.regressed and d.status == "regressed" and d.diff == pytest.approx(-0.3)
    assert any("outcome passed -> inconclusive" in r for r in d.reasons)
    assert any("moved against the claim" in r for r in d.reasons)


def test_one_checkpoint_against_a_recipe_is_widened_by_the_baseline_seed_variance():
    old = _check(_est(0.5, 0.05, (0.4, 0.5, 0.6)))
    # one checkpoint: a tight example-level interval, yet it is one draw from the recipe
    new = _check(Estimate(0.4, 0.38, 0.42, 200, 1, se=0.01, df=float("inf"), scope="checkpoint", replicates=[0.4]))
    d = compare_reports(_report("a", [old]), _report("b", [new])).checks[0]
    assert d.status == "unchanged", d
    without = _check(Estimate(0.4, 0.38, 0.42, 200, 1, se=0.01, df=float("inf"), scope="recipe", replicates=[0.4]))
    assert compare_reports(_report("a", [old]), _report("b", [without])).checks[0].tolerance < d.tolerance


def test_direction_and_explicit_tolerance():
    le = CheckResult("samples_ratio_at_most", {"value": 0.5}, "passed", "", _est(0.2, 0.02, (0.18, 0.2, 0.22)), 0.5,
                     "<=")
    up = CheckResult("samples_ratio_at_most", {"value": 0.5}, "passed", "", _est(0.35, 0.02, (0.33, 0.35, 0.37)), 0.5,
                     "<=")
    assert compare_reports(_report("a", [le]), _report("b", [up])).regressed  # up is against a <= claim
    assert compare_reports(_report("a", [up]), _report("b", [le])).checks[0].status == "improved"
    assert not compare_reports(_report("a", [le]), _report("b", [up]), tolerance=0.2).regressed
    with pytest.raises(ValueError):
        compare_reports(_report("a", [le]), _report("b", [up]), tolerance=-1)


def test_an_accuracy_of_one_tolerates_one_example():
    one = _check(Estimate(1.0, 1.0, 1.0, 200, 3, se=0.0, df=2.0, replicates=[1, 1, 1]), name="accuracy_at_least")
    slip = _check(Estimate(0.995, 0.99, 1.0, 200, 3, se=0.003, df=2.0, replicates=[1, 0.99, 0.995]),
                  name="accuracy_at_least")
    assert not compare_reports(_report("a", [one]), _report("b", [slip])).regressed


def test_matching_new_missing_and_order():
    a = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)))
    b = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)), model="other")
    broken = _check(_est(0.0, 0.01, (0.0, 0.0, 0.0)), outcome="failed", model="other")
    changed_args = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)), value=0.3)
    assert check_id("c.one", 0, a) != check_id("c.one", 0, changed_args) != check_id("c.one", 1, a)
    comp = compare_reports(_report("a", [a, b]), _report("b", [changed_args, broken]))
    assert [d.status for d in comp.checks] == ["regressed", "new", "missing"]
    assert comp.checks[0].args["model"] == "other"


def test_claim_that_errors_regresses_every_check_it_had():
    a = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)))
    errored = _report("b", [], outcome="error")
    errored.claims[0].reason = "checkpoint gone"
    comp = compare_reports(_report("a", [a]), errored)
    assert comp.regressed and comp.checks[0].new_outcome == "error"


def test_baseline_is_small_and_readable(tmp_path):
    c = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)))
    c.details = {"profile": list(range(100)), "share": 0.5, "note": "short"}
    report = _report("r1", [c])
    report.claims[0].experiment = {"name": "head_ablation", "matrices": [[0.0] * 50] * 50}
    report.claims[0].traceback = "long"
    base = write_baseline(report, tmp_path / "ci.json")
    assert base.baseline_of == "r1" and base.claims[0].experiment == {"name": "head_ablation"}
    assert base.claims[0].checks[0].details == {"share": 0.5, "note": "short"}
    back = RunReport.read_json(tmp_path / "ci.json")
    assert back.claims[0].checks[0].effect == c.effect
    assert not compare_reports(report, back).regressed
    report.finished = None
    with pytest.raises(ValueError, match="did not finish"):
        write_baseline(report, tmp_path / "x.json")


def test_readme_table_round_trip(tmp_path):
    from mechcheck.baseline import README_BEGIN, README_END

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold\n{README_END}\nafter\n")
    base = summarise(_report("r1", [_check(_est(0.5, 0.03, (0.47, 0.5, 0.53)))]))
    assert update_readme(readme, base)
    assert readme_section(readme) == readme_table(base)
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("after\n")
    assert "| `c.one` | 3 | **passed** |" in readme_table(base)


def test_junit_tree_one_case_per_check():
    ok = _check(_est(0.5, 0.03, (0.47, 0.5, 0.53)))
    bad = _check(_est(0.0, 0.01, (0.0, 0.0, 0.0)), outcome="inconclusive", model="x")
    root = junit_tree(_report("r", [ok, bad])).getroot()
    assert root.get("tests") == "2" and root.get("failures") == "1"
    cases = root.findall("./testsuite/testcase")
    assert [c.find("failure") is not None for c in cases] == [False, True]
    props = {p.get("name"): p.get("value") for p in cases[0].find("properties")}
    assert props["effect"] == "0.5" and props["threshold"] == ">= 0.2"
    ET.fromstring(ET.tostring(root))  # well-formed


def test_committed_baseline_matches_the_readme():
    """The README's outcome table is generated from reports/baselines/ci.json: no number in it is hand-copied."""
    path = REPO / "reports" / "baselines" / "ci.json"
    base = RunReport.read_json(path)
    assert base.baseline_of and base.profile == "ci" and base.finished
    # small enough to review in a diff: about 8 KB a claim (outcomes, effects, replicate values), no arrays
    assert path.stat().st_size < 12_000 * len(base.claims)
    shipped = sorted(p.stem for p in (REPO / "claims").rglob("*.yaml"))
    assert sorted(c.file.rsplit("/", 1)[-1].removesuffix(".yaml") for c in base.claims) == shipped
    assert readme_section(REPO / "README.md") == readme_table(base), (
        "README.md's outcome table is stale: run `mechcheck baseline update --profile ci`")
