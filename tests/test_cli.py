"""End-to-end tests of the `mechcheck` command, each run in a subprocess (the pytest plugin: test_pytest_plugin.py).

Every CLI call runs `python -m mechcheck.cli` with the temporary project as its working directory and its own
MECHCHECK_CACHE_DIR, so nothing here reads or writes the user's model cache. Runs of the same test that do not
depend on each other are started together (two CPU cores halve the import and model-loading time).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import KNOWN_HEAD_PASSES, UNUSED_HEAD_FAILS, write, write_fixtures

from mechcheck.results import SCHEMA_VERSION, RunReport

#: `error: <file>:<line>: <field path>: <message>` (one line per problem, see docs/claim-format.md)
ERROR_LINE = re.compile(r"^error: (?P<file>[^:\s]+):(?P<line>\d+): (?P<field>[^:\s]+): (?P<message>.+)$")
RUN_ID = re.compile(r"^\d{8}-\d{6}-ci$")

# A claim with two problems: a typo'd check name (line 8) and an unknown top-level field (line 9).
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

# The flow mapping opened on line 3 is never closed; the parser notices on line 4.
YAML_SYNTAX_ERROR = """
    id: bad.syntax
    statement: broken YAML
    models: {m: one-head
    data: {task: copy6}
"""

# Valid, and it would train a model (so a run that did not validate first would write to the cache).
TINY_TRAINED = """
    id: tiny.machinery
    statement: the harness runs end to end on a freshly trained scratch model
    models: {m: tiny-cdm}
    data: {task: cdm9, n: 64}
    experiment: {head_ablation: {method: mean, metric: logit_diff, n_control: 2}}
    expect:
      - effect_at_least: {model: m, heads: [[1, 0]], value: -100.0}
      - attention_to: {model: m, heads: [[0, 0]], tokens: numbers, at_least: 0.0}
"""

BAD_HEAD = """
    id: err.bad_head
    statement: head 5 of layer 0 matters (the model has 2 heads)
    models: {m: one-head}
    data: {task: copy6, n: 50}
    experiment: {head_ablation: {method: zero}}
    expect:
      - effect_at_least: {model: m, heads: [[0, 5]], value: 0.3}
"""

MISSING_CHECKPOINT = """
    id: err.missing_checkpoint
    statement: the checkpoint directory is gone
    models:
      m: {recipe: load, path: ./no/such/checkpoint, task: copy6}
    data: {task: copy6, n: 50}
    experiment: {head_ablation: {method: zero}}
    expect:
      - accuracy_at_least: {model: m, value: 0.5}
"""

HUB_MODEL = """
    id: skip.hub_model
    statement: needs GPT-2 from the hub
    models:
      m: {recipe: load, hub: gpt2, task: copy6}
    data: {task: copy6, n: 50}
    experiment: {head_ablation: {method: zero}}
    expect:
      - accuracy_at_least: {model: m, value: 0.5}
"""


# ---------------------------------------------------------------------------------------------- helpers


def _env(cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FORCE_COLOR", None)  # plain text output, whatever the outer terminal asks for
    env["MECHCHECK_CACHE_DIR"] = str(cache)
    env.update(extra)
    return env


def start(args: list[str], cwd: Path, cache: Path, **env: str) -> subprocess.Popen:
    """Start `python -m mechcheck.cli ARGS` in `cwd` with its own model cache."""
    return subprocess.Popen([sys.executable, "-m", "mechcheck.cli", *args], cwd=cwd, env=_env(cache, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"mechcheck {proc.args[3:]} timed out\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def cli(args: list[str], cwd: Path, cache: Path, **env: str) -> subprocess.CompletedProcess:
    return finish(start(args, cwd, cache, **env))


def show(r: subprocess.CompletedProcess) -> str:
    """For assertion messages."""
    return f"exit {r.returncode}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stdout + r.stderr, show(r)


def the_report(report_dir: Path) -> tuple[Path, RunReport]:
    runs = [p for p in report_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0], RunReport.read_json(runs[0] / "report.json")


def claim_named(report: RunReport, claim_id: str):
    found = [c for c in report.claims if c.id == claim_id]
    assert len(found) == 1, [c.id for c in report.claims]
    return found[0]


def check_named(claim, name: str):
    found = [c for c in claim.checks if c.name == name]
    assert len(found) == 1, [c.name for c in claim.checks]
    return found[0]


# ------------------------------------------------------------------------------------------- validate


def test_validate_reports_every_problem_on_one_line_with_exit_2(claim_tree, tmp_path):
    claim_tree("claims/bad.yaml", TYPO_CLAIM)
    r = cli(["validate", "claims"], claim_tree.root, tmp_path / "cache")

    assert r.returncode == 2, show(r)
    no_traceback(r)
    errors = [ERROR_LINE.match(line) for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and all(errors), show(r)
    by_field = {m["field"]: m for m in errors}
    assert set(by_field) == {"expect[1].top_head_in_layers", "colour"}, show(r)

    typo = by_field["expect[1].top_head_in_layers"]
    assert typo["file"] == "claims/bad.yaml"
    assert typo["line"] == "8"
    assert "unknown check 'top_head_in_layers'" in typo["message"]
    assert "did you mean 'top_heads_in_layers'?" in typo["message"]

    unknown = by_field["colour"]
    assert unknown["file"] == "claims/bad.yaml"
    assert unknown["line"] == "9"
    assert "unknown field 'colour'" in unknown["message"] and "allowed:" in unknown["message"]

    assert "2 problems found; nothing was run." in r.stderr
    assert r.stdout == "", show(r)  # no "ok" next to errors


def test_validate_yaml_syntax_error_is_one_line_with_file_and_line(claim_tree, tmp_path):
    claim_tree("claims/broken.yaml", YAML_SYNTAX_ERROR)
    r = cli(["validate", "claims/broken.yaml"], claim_tree.root, tmp_path / "cache")

    assert r.returncode == 2, show(r)
    no_traceback(r)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, show(r)
    assert re.match(r"^error: claims/broken\.yaml:4: .*YAML", lines[0]), show(r)


def test_validate_valid_claims_says_ok(claim_tree, tmp_path):
    claim_tree("claims/known.yaml", KNOWN_HEAD_PASSES)
    claim_tree("claims/unused.yaml", UNUSED_HEAD_FAILS)
    r = cli(["validate", "claims"], claim_tree.root, tmp_path / "cache")

    assert r.returncode == 0, show(r)
    assert r.stdout.startswith("ok: 2 claims valid"), show(r)
    assert "error" not in r.stderr, show(r)


# ------------------------------------------------------------------------------------------------ run


def test_run_validates_the_whole_suite_before_building_anything(claim_tree, tmp_path):
    claim_tree("claims/a_good.yaml", TINY_TRAINED)  # sorts first: it would train if run before validating
    claim_tree("claims/b_bad.yaml", TYPO_CLAIM)
    cache = tmp_path / "cache"
    r = cli(["run", "claims"], claim_tree.root, cache)

    assert r.returncode == 2, show(r)
    no_traceback(r)
    assert re.search(r"^error: claims/b_bad\.yaml:8: expect\[1\]\.top_head_in_layers: ", r.stderr, re.M), show(r)
    assert "running" not in r.stderr, show(r)
    assert not (claim_tree.root / "reports").exists(), "a report directory was created for a run that never started"
    written = [p for p in cache.rglob("*")] if cache.exists() else []
    assert written == [], f"model cache entries were written: {written}"


def test_run_bad_arguments_exit_2_without_traceback(claim_tree, tmp_path):
    claim_tree("claims/known.yaml", KNOWN_HEAD_PASSES)
    seeds = start(["run", "claims", "--seeds", "0"], claim_tree.root, tmp_path / "cache")
    empty = start(["run", "nothing-here"], claim_tree.root, tmp_path / "cache")
    r, e = finish(seeds), finish(empty)

    assert r.returncode == 2, show(r)
    no_traceback(r)
    assert re.search(r"^error: .*--seeds must be at least 1", r.stderr, re.M), show(r)
    assert e.returncode == 2, show(e)
    no_traceback(e)
    assert re.search(r"^error: .*nothing-here", e.stderr, re.M), show(e)
    assert not (claim_tree.root / "reports").exists()


class KnownAnswerRuns:
    """Three runs on one known-answer project, started together and collected on first use."""

    def __init__(self, root: Path, cache: Path) -> None:
        self.root, self.cache = root, cache
        common = ["--n-boot", "300"]
        self._procs = {
            # a passing and a failing claim
            "both": start(["run", "claims/", "--report-dir", "out-both", *common], root, cache, MECHCHECK_THREADS="1"),
            # only the passing one
            "only": start(["run", "claims/known.yaml", "--report-dir", "out-only", *common], root, cache,
                          MECHCHECK_THREADS="1"),
            # a passing claim next to claims that end in error or skipped; an empty HF cache so gpt2 is not local
            "errors": start(["run", "claims-errors", "--report-dir", "out-errors", *common], root, cache,
                            MECHCHECK_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(cache.parent / "hf-home")),
        }
        self._done: dict[str, subprocess.CompletedProcess] = {}

    def __getitem__(self, name: str) -> subprocess.CompletedProcess:
        if name not in self._done:
            self._done[name] = finish(self._procs[name])
        return self._done[name]

    def kill(self) -> None:
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def known_runs(tmp_path_factory, known_answer_dir):
    root = tmp_path_factory.mktemp("known-project")
    write_fixtures(root, known_answer_dir)
    write(root, "claims/known.yaml", KNOWN_HEAD_PASSES)
    write(root, "claims/unused.yaml", UNUSED_HEAD_FAILS)
    write(root, "claims-errors/a_bad_head.yaml", BAD_HEAD)
    write(root, "claims-errors/b_missing.yaml", MISSING_CHECKPOINT)
    write(root, "claims-errors/c_hub.yaml", HUB_MODEL)
    write(root, "claims-errors/d_known.yaml", KNOWN_HEAD_PASSES)
    runs = KnownAnswerRuns(root, tmp_path_factory.mktemp("known-cache") / "cache")
    yield runs
    runs.kill()


def test_run_known_answer_project(known_runs):
    r, root, cache = known_runs["both"], known_runs.root, known_runs.cache

    # --- one claim failed: exit 1, and the table says so
    assert r.returncode == 1, show(r)
    no_traceback(r)
    assert re.search(r"known\.head_matters .* passed ", r.stdout), show(r)
    assert re.search(r"known\.unused_head_matters .* failed ", r.stdout), show(r)
    assert "2 claims: 1 passed, 1 failed, 0 inconclusive, 0 error, 0 skipped" in r.stdout, show(r)

    # --- the report directory: <run id>/report.json, report.md, figures
    run_dir, report = the_report(root / "out-both")
    assert RUN_ID.match(run_dir.name) and report.run_id == run_dir.name
    assert f"report: out-both/{run_dir.name}/report.md" in r.stdout, show(r)
    md = (run_dir / "report.md").read_text()
    assert "known.head_matters" in md and "known.unused_head_matters" in md
    pngs = sorted(run_dir.rglob("*.png"))
    assert pngs and all(p.stat().st_size > 0 for p in pngs), pngs

    # --- the environment is recorded
    raw = json.loads((run_dir / "report.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == report.schema_version
    for pkg in ("torch", "transformers", "transformer-lens"):
        assert report.versions.get(pkg) not in (None, "", "not installed"), report.versions
    assert report.device == "cpu" or report.device.startswith("cuda")
    assert report.started and report.finished
    assert report.cache_dir == str(cache)
    assert report.counts["passed"] == 1 and report.counts["failed"] == 1

    known = claim_named(report, "known.head_matters")
    assert known.outcome == "passed", known
    assert known.seeds == [0]
    assert {"prepare", "measure", "checks", "total"} <= set(known.durations), known.durations
    assert all(v >= 0 for v in known.durations.values())
    assert known.figures and all((run_dir / f).is_file() for f in known.figures), known.figures
    assert [c.outcome for c in known.checks] == ["passed", "passed", "passed"]
    drop = check_named(known, "effect_at_least").effect
    assert drop.estimate == pytest.approx(1.0, abs=1e-6)  # zero-ablating L0H0 makes every answer wrong
    assert drop.n == 200 and drop.n_seeds == 1
    assert [(m.role, m.fixture, m.recipe, m.cached) for m in known.models] == [("m", "one-head", "load", False)]

    unused = claim_named(report, "known.unused_head_matters")
    assert unused.outcome == "failed", unused
    check = check_named(unused, "effect_at_least")
    assert check.outcome == "failed"
    assert (check.effect.estimate, check.effect.lo, check.effect.hi) == (0.0, 0.0, 0.0)
    assert check.threshold == pytest.approx(0.05)


def test_run_only_passing_claims_exits_0(known_runs):
    r = known_runs["only"]
    assert r.returncode == 0, show(r)
    no_traceback(r)
    assert "1 claim: 1 passed, 0 failed" in r.stdout, show(r)
    _, report = the_report(known_runs.root / "out-only")
    assert [(c.id, c.outcome) for c in report.claims] == [("known.head_matters", "passed")]


def test_run_errors_and_skips_end_only_their_claim(known_runs):
    """A head beyond the model, a missing checkpoint and an offline hub model next to a passing claim."""
    r, root = known_runs["errors"], known_runs.root

    assert r.returncode == 3, show(r)  # a claim ended as error: the harness or set-up broke
    no_traceback(r)
    assert "4 claims: 1 passed, 0 failed, 0 inconclusive, 2 error, 1 skipped" in r.stdout, show(r)
    _, report = the_report(root / "out-errors")
    assert [c.id for c in report.claims] == ["err.bad_head", "err.missing_checkpoint", "skip.hub_model",
                                             "known.head_matters"]

    assert claim_named(report, "known.head_matters").outcome == "passed"

    bad_head = claim_named(report, "err.bad_head")
    assert bad_head.outcome == "error"
    for part in ("claims-errors/a_bad_head.yaml", "expect[0]", "[0, 5]", "0..1"):
        assert part in bad_head.reason, bad_head.reason
    assert bad_head.checks == []  # found from the loaded model's config, before anything was measured

    missing = claim_named(report, "err.missing_checkpoint")
    assert missing.outcome == "error"
    expected_path = str(root / "claims-errors" / "no" / "such" / "checkpoint")
    for part in ("claims-errors/b_missing.yaml", "models.m", expected_path, "does not exist"):
        assert part in missing.reason, missing.reason
    assert missing.checks == []

    hub = claim_named(report, "skip.hub_model")
    assert hub.outcome == "skipped"
    assert "hub" in hub.reason.lower() and "gpt2" in hub.reason, hub.reason

    # the console says why each claim did not run (the table cuts long reasons), without a traceback
    assert "0..1" in r.stderr and expected_path in r.stderr and "hub cannot be reached" in r.stderr, show(r)


@pytest.mark.slow
def test_run_trained_fixture_is_cached_and_deterministic(claim_tree, tmp_path):
    claim_tree("claims/tiny.yaml", TINY_TRAINED)
    root, cache = claim_tree.root, tmp_path / "cache"
    args = ["run", "claims", "--seeds", "2", "--n-boot", "300"]
    first = cli([*args, "--report-dir", "out-1"], root, cache)
    listed = start(["ls", "claims"], root, cache)
    second = cli([*args, "--report-dir", "out-2"], root, cache)
    listed = finish(listed)
    # `ls` finds the replicate `run` trained (the claim's own seeds: 1) under the key `run` gave it
    assert "m=tiny-cdm: 1/1 cached" in _claim_rows(listed.stdout)["tiny.machinery"], show(listed)

    reports = []
    for r, out in ((first, "out-1"), (second, "out-2")):
        assert r.returncode in (0, 1), show(r)
        no_traceback(r)
        _, report = the_report(root / out)
        claim = claim_named(report, "tiny.machinery")
        assert claim.outcome in ("passed", "failed", "inconclusive"), claim.reason
        reports.append(claim)
    a, b = reports

    assert [(m.role, m.fixture, m.seed, m.cached) for m in a.models] == [("m", "tiny-cdm", 0, False),
                                                                         ("m", "tiny-cdm", 1, False)]
    assert [(m.role, m.fixture, m.seed, m.cached) for m in b.models] == [("m", "tiny-cdm", 0, True),
                                                                         ("m", "tiny-cdm", 1, True)]
    assert [m.key for m in a.models] == [m.key for m in b.models]
    assert a.models[0].key != a.models[1].key  # two independent replicates, not one model twice
    entries = sorted(p.parent.name for p in (cache / "models").rglob("mechcheck.json"))
    assert entries == sorted(m.key for m in a.models)

    assert a.seeds == b.seeds == [0, 1]
    effects_a = [c.effect for c in a.checks]
    effects_b = [c.effect for c in b.checks]
    assert all(e is not None and e.n_seeds == 2 for e in effects_a), effects_a
    assert any(e.estimate != 0 for e in effects_a), "all-zero effects would make the comparison vacuous"
    assert effects_a == effects_b  # the cached models give exactly the numbers the freshly trained ones did
    assert a.experiment == b.experiment


# ------------------------------------------------------------------------------------------------- ls


def test_ls_lists_claims_fixtures_and_registries(claim_tree, tmp_path):
    claim_tree("claims/known.yaml", KNOWN_HEAD_PASSES)
    claim_tree("claims/unused.yaml", UNUSED_HEAD_FAILS)
    r = cli(["ls"], claim_tree.root, tmp_path / "cache")

    assert r.returncode == 0, show(r)
    no_traceback(r)
    for word in ("known.head_matters", "known.unused_head_matters", "m=one-head",  # claims
                 "one-head", "tiny-cdm", "copy6", "cdm9",  # fixtures
                 "head_ablation",  # experiments
                 "accuracy_at_least", "top_heads_in_layers", "effect_at_least", "effect_at_most", "attention_to",
                 "copy_first", "scratch", "finetune", "load"):  # tasks, recipes
        assert re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w-])", r.stdout), f"{word!r} not listed\n{show(r)}"
    assert "…" not in r.stdout.split("fixtures")[0], "claim table truncated\n" + show(r)


TAGGED_TRAINED = TINY_TRAINED.replace("id: tiny.machinery", "id: tiny.tagged").replace(
    "    models: {m: tiny-cdm}", "    tags: [machinery, smoke]\n    seeds: 2\n    models: {m: tiny-cdm, k: one-head}")


def _claim_rows(stdout: str) -> dict[str, str]:
    """The claims table as claim id -> the text of its rows (a claim's cells span several lines)."""
    table = stdout.split("└")[0]  # the claims table comes first
    rows: dict[str, str] = {}
    current = None
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if not cells:
            current = None
            continue
        if cells[0] and current is None:
            current = cells[0]
        if current:
            rows[current] = rows.get(current, "") + " " + " ".join(cells)
    return rows


def test_ls_shows_tags_roles_checks_and_which_models_are_ready(claim_tree, tmp_path):
    claim_tree("claims/tagged.yaml", TAGGED_TRAINED)
    claim_tree("claims/missing.yaml", MISSING_CHECKPOINT)
    r = cli(["ls", "claims"], claim_tree.root, tmp_path / "cache")

    assert r.returncode == 0, show(r)
    rows = _claim_rows(r.stdout)
    assert set(rows) == {"tiny.tagged", "err.missing_checkpoint"}, r.stdout
    tagged, missing = rows["tiny.tagged"], rows["err.missing_checkpoint"]
    for part in ("claims/tagged.yaml", "machinery, smoke", "m=tiny-cdm: 0/2 cached", "k=one-head: checkpoint present",
                 "head_ablation", "effect_at_least", "attention_to"):
        assert part in tagged, f"{part!r} not in the row of tiny.tagged\n{show(r)}"
    assert "m=err.missing_checkpoint.m: checkpoint missing" in missing, show(r)
    assert str(tmp_path / "cache") in r.stdout  # which cache was looked at


def test_selection_defaults_help_and_version(claim_tree, tmp_path):
    """-k / --tag select claims; validate and run default to claims/; every subcommand's --help shows its
    defaults, exit codes and an example; --version; a claim without fixtures/ names --fixtures-dir."""
    root, cache = claim_tree.root, tmp_path / "cache"
    claim_tree("claims/tagged.yaml", TAGGED_TRAINED)
    claim_tree("claims/known.yaml", KNOWN_HEAD_PASSES)
    runs = {name: start(args, root, cache) for name, args in {
        "default": ["validate"], "k": ["validate", "-k", "known and not tagged"], "tag": ["validate", "--tag", "smoke"],
        "none": ["run", "-k", "nothing_matches"], "bad": ["validate", "-k", "known or"],
        "version": ["--version"]}.items()}
    got = {name: finish(p) for name, p in runs.items()}
    assert got["default"].returncode == 0 and "2 claims valid" in got["default"].stdout, show(got["default"])
    assert "1 claim valid" in got["k"].stdout and "1 claim valid" in got["tag"].stdout, show(got["k"])
    assert got["none"].returncode == 2 and "no claims found that match" in got["none"].stderr, show(got["none"])
    assert got["bad"].returncode == 2 and "-k" in got["bad"].stderr, show(got["bad"])
    assert got["version"].returncode == 0 and got["version"].stdout.startswith("mechcheck "), show(got["version"])
    for sub in ("run", "validate", "ls", "compare", "baseline", "export", "schema", "new"):
        r = cli([sub, "--help"], root, cache)
        assert r.returncode == 0 and "exit codes:" in r.stdout and "example:" in r.stdout, show(r)
    assert "(default: ci)" in cli(["run", "--help"], root, cache).stdout

    lone = tmp_path.parent / f"{tmp_path.name}-lone" / "claim.yaml"  # no fixtures/ above it
    write(lone.parent, "claim.yaml", KNOWN_HEAD_PASSES)
    r = cli(["validate", str(lone)], lone.parent, cache)
    assert r.returncode == 2 and "--fixtures-dir" in r.stderr, show(r)
