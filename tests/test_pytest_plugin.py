"""The pytest plugin: what it collects, how claims and checks become nodes, outcomes, markers, JUnit, report.

Collection tests run pytest in this process (`pytester.runpytest`, no model is touched); the tests that run
claims start pytest in a subprocess on the known-answer checkpoint (a loaded model: nothing is trained) and
are marked slow. The plugin is found through its pytest11 entry point, as in a user's project.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import KNOWN_HEAD_PASSES, write, write_fixtures

pytest_plugins = ["pytester"]

# One claim, two checks with different verdicts: the first passes, the second (L0H1 writes nothing) fails.
MIXED = """
    id: known.mixed
    statement: the model solves the task, and L0H1 (which writes nothing) matters
    tags: [ablation, false-claim]
    models: {m: one-head}
    data: {task: copy6, n: 200}
    experiment: {head_ablation: {method: zero}}
    expect:
      - accuracy_at_least: {model: m, value: 0.95}
      - effect_at_least: {model: m, heads: [[0, 1]], value: 0.05}
"""

MISSING_CHECKPOINT = """
    id: err.missing_checkpoint
    statement: the checkpoint directory is gone
    tags: [errors]
    models:
      m: {recipe: load, path: ./no/such/checkpoint, task: copy6}
    data: {task: copy6, n: 50}
    experiment: {head_ablation: {method: zero}}
    expect:
      - accuracy_at_least: {model: m, value: 0.5}
      - effect_at_least: {model: m, heads: [[0, 0]], value: 0.3}
"""

# A typo'd check name (line 8) and an unknown top-level field (line 9).
TYPO_CLAIM = """
    id: bad.typo
    statement: the check name has a typo and there is a field nobody knows
    models: {m: one-head}
    data: {task: copy6, n: 50}
    experiment: {head_ablation: {method: zero}}
    expect:
      - accuracy_at_least: {model: m, value: 0.5}
      - top_head_in_layers: {model: m, top: 1, layers: [0]}
    colour: red
"""

KNOWN_IDS = [
    "claims/known.yaml::known.head_matters::expect0-accuracy_at_least[model=m,value=0.95]",
    "claims/known.yaml::known.head_matters::expect1-effect_at_least[model=m,heads=[[0,0]],value=0.3]",
    "claims/known.yaml::known.head_matters::expect2-top_heads_in_layers[model=m,top=1,layers=[0]]",
]
MIXED_IDS = [
    "claims/mixed.yaml::known.mixed::expect0-accuracy_at_least[model=m,value=0.95]",
    "claims/mixed.yaml::known.mixed::expect1-effect_at_least[model=m,heads=[[0,1]],value=0.05]",
]


@pytest.fixture
def project(pytester: pytest.Pytester, known_answer_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A mechcheck project in pytester's folder (fixtures/ written); returns a writer of files in it."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("MECHCHECK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    write_fixtures(pytester.path, known_answer_dir)

    def add(rel: str, text: str) -> Path:
        return write(pytester.path, rel, text)

    add.root = pytester.path
    return add


def collected(result: pytest.RunResult) -> list[str]:
    """Node ids printed by ``--collect-only -q``."""
    return [line for line in result.outlines if "::" in line and not line.startswith(("ERROR", "FAILED"))]


def plain(text: str) -> None:
    """No Python traceback in any of pytest's formats."""
    assert "Traceback" not in text, text
    assert "pytest_plugin.py" not in text, text
    assert not re.search(r"^E\s", text, re.M), text


# ------------------------------------------------------------------------------------------ collection


def test_unrelated_yaml_is_never_collected(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    """A project of its own with a claims/ folder of other YAML and no fixtures/: pytest sees no tests there."""
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    write(pytester.path, "claims/settings.yaml", "colour: red\nid: [not, a, claim]\n")
    write(pytester.path, "claims/deep/other.yml", "- just\n- a list\n")

    # (--mechcheck-profile: an unknown option if the plugin were not loaded)
    result = pytester.runpytest("--collect-only", "-q", "--mechcheck-profile", "ci", "claims")

    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()
    assert "error" not in result.stdout.str().lower()


def test_claims_are_collected_only_under_the_configured_paths(project, pytester: pytest.Pytester):
    project("claims/known.yaml", KNOWN_HEAD_PASSES)
    project("claims/.drafts/draft.yaml", "not: [a, claim")  # hidden folders below a claims path are skipped
    project("other/mixed.yaml", MIXED)  # a valid claim, but outside the configured paths
    project("docs/example.yaml", "just: data\n")

    result = pytester.runpytest("--collect-only", "-q", "claims", "other", "docs")
    assert collected(result) == KNOWN_IDS, result.stdout.str()

    # mechcheck_paths moves the suite; claims/ is then an ordinary folder
    pytester.makeini("[pytest]\nmechcheck_paths = other\n")
    result = pytester.runpytest("--collect-only", "-q", "claims", "other")
    assert collected(result) == [i.replace("claims/", "other/") for i in MIXED_IDS], result.stdout.str()


def test_a_fixtures_folder_above_the_rootdir_does_not_count(project, pytester: pytest.Pytester):
    """The nearest fixtures/ must belong to the project pytest runs in, not to some folder above it."""
    project("sub/claims/known.yaml", KNOWN_HEAD_PASSES)  # only ../fixtures exists for it
    project("sub/pytest.ini", "[pytest]\n")

    result = pytester.runpytest("--collect-only", "-q", "sub/claims")

    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()


def test_one_item_per_check_below_one_node_per_claim(project, pytester: pytest.Pytester):
    project("claims/known.yaml", KNOWN_HEAD_PASSES)
    project("claims/mixed.yaml", MIXED)

    result = pytester.runpytest("--collect-only", "claims")

    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    tree = [line.strip() for line in result.outlines if line.strip().startswith("<")]
    assert tree[tree.index("<ClaimFile known.yaml>") + 1] == "<ClaimNode known.head_matters>", tree
    assert sum(line.startswith("<CheckItem expect") for line in tree) == 5, tree
    result = pytester.runpytest("--collect-only", "-q", "claims")
    assert collected(result) == KNOWN_IDS + MIXED_IDS, result.stdout.str()


def test_tags_are_registered_markers(project, pytester: pytest.Pytester):
    project("claims/known.yaml", KNOWN_HEAD_PASSES)
    project("claims/mixed.yaml", MIXED)

    result = pytester.runpytest("--collect-only", "-q", "--strict-markers", "-m", "ablation", "claims")
    assert collected(result) == MIXED_IDS, result.stdout.str()
    result = pytester.runpytest("--collect-only", "-q", "--strict-markers", "-m", "not false-claim", "claims")
    assert collected(result) == KNOWN_IDS, result.stdout.str()
    # -k sees tags, claim ids, file names and check names
    result = pytester.runpytest("--collect-only", "-q", "-k", "ablation and effect_at_least", "claims")
    assert collected(result) == MIXED_IDS[1:], result.stdout.str()
    result = pytester.runpytest("--collect-only", "-q", "-k", "known.yaml and not top_heads", "claims")
    assert collected(result) == KNOWN_IDS[:2], result.stdout.str()


def test_invalid_claim_is_a_collection_error_with_the_spec_errors(project, pytester: pytest.Pytester, tmp_path):
    project("claims/bad.yaml", TYPO_CLAIM)

    result = pytester.runpytest("claims")

    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    plain(out)
    assert re.search(r"^claims/bad\.yaml:8: expect\[1\]\.top_head_in_layers: unknown check 'top_head_in_layers' "
                     r".*did you mean 'top_heads_in_layers'\?\)$", out, re.M), out
    assert re.search(r"^claims/bad\.yaml:9: colour: unknown field 'colour'", out, re.M), out
    assert not (tmp_path / "cache").exists()
    assert not (project.root / "reports").exists()  # nothing ran, nothing is reported


def test_duplicate_ids_across_files_are_an_error_of_the_suite(project, pytester: pytest.Pytester):
    project("claims/a/known.yaml", KNOWN_HEAD_PASSES)
    project("claims/b/again.yaml", KNOWN_HEAD_PASSES)

    result = pytester.runpytest("--collect-only", "-q", "claims")

    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    out = result.stdout.str()
    assert re.search(r"^claims/b/again\.yaml:1: id: duplicate claim id 'known\.head_matters' "
                     r"\(also in claims/a/known\.yaml:1\)$", out, re.M), out
    # the file collected alone still sees the whole suite: the duplicate is an error there too
    result = pytester.runpytest("--collect-only", "-q", "claims/b/again.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED and "duplicate claim id" in result.stdout.str()


def test_an_unknown_profile_is_reported_on_the_command_line(project, pytester: pytest.Pytester):
    project("claims/known.yaml", KNOWN_HEAD_PASSES)

    result = pytester.runpytest("--collect-only", "-q", "--mechcheck-profile", "paperr", "claims")

    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert re.search(r"^<command line>: profile: .*paperr", result.stdout.str(), re.M), result.stdout.str()


# ------------------------------------------------------------------------------------------ running


def _junit_cases(path: Path) -> dict[str, ET.Element]:
    """testcases by node id, rebuilt from JUnit's classname (file and claim, dotted) and name (the check)."""
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        file, claim = re.fullmatch(r"(claims\.\w+\.yaml)\.(.+)", case.get("classname")).groups()
        cases[f"{file.replace('.', '/', 1)}::{claim}::{case.get('name')}"] = case
    return cases


def _properties(case: ET.Element) -> dict[str, str]:
    return {p.get("name"): p.get("value") for p in case.iter("property")}


def _reports(root: Path) -> list[Path]:
    return sorted(p for p in (root / "reports").iterdir() if p.is_dir()) if (root / "reports").exists() else []


@pytest.mark.slow
def test_each_check_reports_its_own_outcome_in_junit_and_the_report(project, pytester: pytest.Pytester):
    project("claims/known.yaml", KNOWN_HEAD_PASSES)
    project("claims/mixed.yaml", MIXED)
    project("claims/missing.yaml", MISSING_CHECKPOINT)

    # no -p: the pytest11 entry point loads the plugin, as in a user's project
    result = pytester.runpytest_subprocess("claims", "--junit-xml=junit.xml", "--strict-markers",
                                           "--mechcheck-workers", "1", timeout=300)

    result.assert_outcomes(passed=4, failed=1, errors=2)
    out = result.stdout.str()
    plain(out + result.stderr.str())
    # the failing check: its message, effect with CI, and threshold
    assert re.search(r"^known\.mixed expect1-effect_at_least\[.*\]: failed$", out, re.M), out
    assert re.search(r"^  message: +accuracy drop when ablating L0H1 in 'm' = 0\.000 \[0\.000, 0\.000\]", out,
                     re.M), out
    assert re.search(r"^  effect: +0\.000, 95% CI \[0\.000, 0\.000\] \(n=200, 1 seed\)$", out, re.M), out
    assert re.search(r"^  threshold: >= 0\.05 ", out, re.M), out
    # a claim that broke before its checks ran errors each of its checks with the one-line reason
    missing = str(project.root / "claims" / "no" / "such" / "checkpoint")
    reason = rf"err\.missing_checkpoint: error: claims/missing\.yaml:\d+: models\.m\.path: .*{re.escape(missing)}"
    assert len(re.findall(rf"^{reason}", out, re.M)) == 2, out

    cases = _junit_cases(project.root / "junit.xml")
    missing_ids = ["claims/missing.yaml::err.missing_checkpoint::" + name for name in (
        "expect0-accuracy_at_least[model=m,value=0.5]", "expect1-effect_at_least[model=m,heads=[[0,0]],value=0.3]")]
    assert sorted(cases) == sorted(KNOWN_IDS + MIXED_IDS + missing_ids)
    failing = cases[MIXED_IDS[1]]
    assert failing.find("failure") is not None and "needs > 0.05" in failing.find("failure").text
    assert _properties(failing) == {"mechcheck_outcome": "failed", "effect": "0", "ci": "[0, 0]",
                                    "threshold": ">= 0.05"}
    for node in KNOWN_IDS + MIXED_IDS[:1]:
        assert [e.tag for e in cases[node]] == ["properties"], node  # no failure, error or skipped element
        assert _properties(cases[node])["mechcheck_outcome"] == "passed"
    for node in missing_ids:
        assert [e.tag for e in cases[node]] == ["error"], node
        assert "models.m.path" in cases[node].find("error").get("message")

    # the report `mechcheck run` writes, for the claims that ran
    runs = _reports(project.root)
    assert len(runs) == 1 and (runs[0] / "report.md").is_file(), runs
    assert f"mechcheck report: reports/{runs[0].name}/report.md" in out
    report = json.loads((runs[0] / "report.json").read_text())
    outcomes = {c["id"]: c["outcome"] for c in report["claims"]}
    assert outcomes == {"known.head_matters": "passed", "known.mixed": "failed", "err.missing_checkpoint": "error"}
    mixed = next(c for c in report["claims"] if c["id"] == "known.mixed")
    assert [c["outcome"] for c in mixed["checks"]] == ["passed", "failed"]
    assert report["argv"][0] == "pytest" and "--junit-xml=junit.xml" in report["argv"] and report["finished"]


@pytest.mark.slow
def test_under_xdist_the_workers_results_make_one_report(project, pytester: pytest.Pytester):
    project("claims/known.yaml", KNOWN_HEAD_PASSES)
    project("claims/mixed.yaml", MIXED)
    project("claims/missing.yaml", MISSING_CHECKPOINT)

    result = pytester.runpytest_subprocess("claims", "-n", "2", "--dist", "loadscope", "-k", "not missing",
                                           "--mechcheck-report-dir", "out", timeout=300)

    result.assert_outcomes(passed=4, failed=1)
    runs = sorted(p for p in (project.root / "out").iterdir() if p.is_dir())
    assert len(runs) == 1, runs  # one report for the session, not one per worker
    report = json.loads((runs[0] / "report.json").read_text())
    assert sorted(c["id"] for c in report["claims"]) == ["known.head_matters", "known.mixed"]  # those that ran
    assert (runs[0] / "report.md").is_file()
    assert not _reports(project.root)


# ------------------------------------------------------------------------------------------ texts


def test_failure_text_and_properties_of_an_inconclusive_check():
    from types import SimpleNamespace

    from mechcheck.pytest_plugin import _failure_text, _properties
    from mechcheck.results import CheckResult, Estimate

    claim = SimpleNamespace(id="c.one", statement="  a statement\n  on two lines ")
    effect = Estimate(0.04, -0.01, 0.09, n=100, n_seeds=3)
    check = CheckResult("effect_at_least", {}, "inconclusive", "drop = 0.040 [-0.010, 0.090] (needs > 0.05)",
                        effect, 0.05, ">=")

    text = _failure_text(claim, "expect0-effect_at_least[value=0.05]", check)

    assert text.splitlines() == [
        "c.one expect0-effect_at_least[value=0.05]: inconclusive",
        "  claim:     a statement on two lines",
        "  message:   drop = 0.040 [-0.010, 0.090] (needs > 0.05)",
        "  effect:    0.040, 95% CI [-0.010, 0.090] (n=100, 3 seeds)",
        "  threshold: >= 0.05 (passes when the whole CI lies at or above it)",
        "  (inconclusive: the interval straddles the threshold; more seeds or examples may decide it)",
    ]
    assert _properties(check) == [("mechcheck_outcome", "inconclusive"), ("effect", "0.04"),
                                  ("ci", "[-0.01, 0.09]"), ("threshold", ">= 0.05")]
    no_ci = CheckResult("x", {}, "inconclusive", "", Estimate(0.5, 0.5, 0.5, 10, 1, insufficient="one seed"))
    assert "no interval: one seed" in _failure_text(claim, "expect0-x", no_ci)
    assert _properties(no_ci)[2] == ("ci", "none")


def test_check_names_show_the_written_arguments_shortened():
    from mechcheck.pytest_plugin import _check_name
    from mechcheck.spec import CheckSpec

    check = CheckSpec("top_heads_in_layers", {"model": "m", "top": 1, "layers": [0], "level": 0.95},
                      lines={"model": 3, "top": 3, "layers": 3, "layers[0]": 3})
    assert _check_name(2, check) == "expect2-top_heads_in_layers[model=m,top=1,layers=[0]]"  # no default shown
    long = CheckSpec("effect_at_least", {"heads": [[0, i] for i in range(20)]}, lines={"heads": 1})
    name = _check_name(0, long)
    assert name.startswith("expect0-effect_at_least[heads=[[0,0],") and name.endswith("...]") and len(name) < 90
    assert _check_name(1, CheckSpec("anything", {}, lines={})) == "expect1-anything"
