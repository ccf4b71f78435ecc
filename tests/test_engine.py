"""The engine: work is done once (across claims, across runs, across processes), failures stay local, stored
measurements are judged again without a model, and a run killed at any point resumes with what it finished.

Integration tier: tiny trained models (a few seconds each). The CLI tests run `mechcheck run` in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from mechcheck.runner import RunOptions, Runner
from mechcheck.spec import load_claims

TINY_ABLATION = """
    id: tiny.{name}
    statement: a tiny trained model's heads ({name})
    models: {{m: tiny-cdm}}
    data: {{task: cdm9, n: 120}}
    seeds: 2
    experiment: {{head_ablation: {{method: mean}}}}
    expect:
      - accuracy_at_least: {{model: m, value: {value}}}
      - effect_at_least: {{model: m, heads: top_2, value: -1.0}}
"""


class Recorder:
    """Collects the engine's events: which pieces of work started, and which were computed."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.computed: list[str] = []

    def __call__(self, event) -> None:
        if event.what == "start":
            self.started.append(event.label)
        elif event.what == "end" and event.computed:
            self.computed.append(event.label)


def run(paths, cache: Path, **options):
    recorder = Recorder()
    runner = Runner(RunOptions(cache_dir=cache, **{"workers": 1, **options}))
    runner.on_event = recorder
    try:
        return runner.run_claims(load_claims(paths)), recorder
    finally:
        runner.close()


def kinds(labels: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        kind = label.split(" ", 1)[0]
        out[kind] = out.get(kind, 0) + 1
    return out


@pytest.mark.slow
def test_claims_share_units_and_a_warm_run_computes_nothing(claim_tree, tmp_path):
    a = claim_tree("claims/a.yaml", TINY_ABLATION.format(name="a", value=0.0))
    b = claim_tree("claims/b.yaml", TINY_ABLATION.format(name="b", value=0.1))
    c = claim_tree("claims/c.yaml", """
        id: tiny.eval
        statement: the same models, evaluated only
        models: {m: tiny-cdm}
        data: {task: cdm9, n: 120}
        seeds: 2
        experiment: evaluate
        expect:
          - accuracy_at_least: {model: m, value: 0.0}
    """)
    cache = tmp_path / "cache"
    results, rec = run([a, b, c], cache)
    assert all(r.outcome != "error" for r in results), [r.reason for r in results]
    done = kinds(rec.computed)
    # 2 replicates: each trained once, swept once and evaluated once, although three claims read them
    assert done == {"build": 2, "clean": 2, "sweep": 2, "attention": 2, "ablation_set": 2}, done
    again, rec2 = run([a, b, c], cache)
    assert rec2.started == []  # nothing built, loaded or measured
    for x, y in zip(results, again):
        assert [(ch.outcome, ch.effect.estimate, ch.effect.lo) for ch in x.checks] == \
            [(ch.outcome, ch.effect.estimate, ch.effect.lo) for ch in y.checks]


@pytest.mark.slow
def test_a_changed_threshold_is_judged_again_without_any_model(claim_tree, tmp_path):
    path = claim_tree("claims/a.yaml", TINY_ABLATION.format(name="a", value=0.0))
    cache = tmp_path / "cache"
    (first,), _ = run([path], cache)
    shutil.rmtree(cache / "models")  # no model is left to load
    path.write_text(path.read_text().replace("value: 0.0}", "value: 0.99}"))
    t0 = time.perf_counter()
    (second,), rec = run([path], cache)
    assert rec.started == [] and second.outcome == "failed"
    assert second.checks[0].effect.estimate == first.checks[0].effect.estimate
    assert second.checks[0].threshold == 0.99
    assert "measurement store" in second.models[0].info["note"]
    assert time.perf_counter() - t0 < 60  # generous: re-judging reads a few arrays


@pytest.mark.slow
def test_a_stored_unit_of_other_weights_is_computed_again(claim_tree, tmp_path):
    path = claim_tree("claims/a.yaml", TINY_ABLATION.format(name="a", value=0.0))
    cache = tmp_path / "cache"
    run([path], cache)
    # As if the measurement store came from another machine whose training gave other bits for this key.
    for meta_file in (cache / "measurements").rglob("mechcheck.json"):
        meta = json.loads(meta_file.read_text())
        if meta["unit"]["kind"] == "clean":
            meta["meta"]["models"][0]["weights_sha256"] = "0" * 64
            meta_file.write_text(json.dumps(meta))
    # (the edited metadata is not one of the hashed files, so the entry still verifies)
    _, rec = run([path], cache)
    assert kinds(rec.computed) == {"clean": 2}


@pytest.mark.slow
def test_a_failed_build_fails_only_the_claims_that_need_it(claim_tree, tmp_path):
    claim_tree("fixtures/models/diverges.yaml", """
        name: diverges
        recipe: scratch
        architecture: {n_layer: 1, n_head: 2, n_embd: 16}
        task: cdm9
        train: {steps: 30, batch_size: 16, lr: 1.0e+30, eval_every: 10}
    """)
    bad = claim_tree("claims/bad.yaml", """
        id: tiny.diverges
        statement: a model whose training diverges
        models: {m: diverges}
        data: {task: cdm9, n: 60}
        seeds: 2
        experiment: evaluate
        expect:
          - accuracy_at_least: {model: m, value: 0.0}
    """)
    good = claim_tree("claims/good.yaml", TINY_ABLATION.format(name="good", value=0.0))
    (b, g), _ = run([bad, good], tmp_path / "cache")
    assert b.outcome == "error" and "loss became" in b.reason and b.traceback
    assert g.outcome != "error", g.reason


# ------------------------------------------------------------------------------------------ processes


LONG_FIXTURE = """
    name: long-cdm
    recipe: scratch
    architecture: {n_layer: 1, n_head: 2, n_embd: 16}
    task: cdm9
    train: {steps: 600, batch_size: 16, lr: 3.0e-3, eval_every: 100}
"""
LONG_CLAIM = """
    id: long.{name}
    statement: claims on a model that trains for a while
    models: {{m: long-cdm}}
    data: {{task: cdm9, n: 100}}
    seeds: 2
    experiment: {{head_ablation: {{method: zero}}}}
    expect:
      - accuracy_at_least: {{model: m, value: 0.0}}
"""


def _cli(root: Path, cache: Path, *extra: str, **env: str) -> subprocess.Popen:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MECHCHECK_")}
    environ.update(MECHCHECK_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")]), **env)
    return subprocess.Popen([sys.executable, "-m", "mechcheck.cli", "run", "claims", "--report-dir", "reports",
                             *extra], cwd=root, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_foreground)


def _foreground() -> None:
    """A child that reacts to Ctrl-C as a run started from a terminal does: SIGINT at its default. A process
    inherits an ignored SIGINT (a test runner or a shell's background job may ignore it), and Python then keeps
    ignoring it, so an interrupt test would see a run that cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _report(root: Path) -> dict:
    (path,) = sorted((root / "reports").glob("*/report.json"))[-1:]
    return json.loads(path.read_text())


def _numbers(report: dict) -> list:
    return [(c["id"], c["outcome"], [(ch["outcome"], ch["effect"]["estimate"]) for ch in c["checks"]],
             [m["info"].get("weights_sha256") for m in c["models"]]) for c in report["claims"]]


@pytest.fixture
def long_project(claim_tree):
    claim_tree("fixtures/models/long-cdm.yaml", LONG_FIXTURE)
    for name in ("a", "b"):
        claim_tree(f"claims/{name}.yaml", LONG_CLAIM.format(name=name))
    return claim_tree.root


@pytest.mark.slow
def test_two_concurrent_runs_on_one_cache_train_each_model_once(long_project, tmp_path):
    cache = tmp_path / "shared-cache"
    other = tmp_path / "other"
    shutil.copytree(long_project, other)
    first = _cli(long_project, cache, "--workers", "1")
    second = _cli(other, cache, "--workers", "1")
    out1, err1 = first.communicate(timeout=600)
    out2, err2 = second.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    trained = [line for line in (err1 + err2).splitlines() if line.strip().startswith("trained ")]
    assert len(trained) == 2, trained  # two replicates, each trained by exactly one of the runs
    assert _numbers(_report(long_project)) == _numbers(_report(other))
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".") and p.is_dir()]
    assert not leftovers and not list((cache / "partial").glob("*"))


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_with_the_bits_of_an_uninterrupted_run(long_project, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(long_project, reference)
    ref = _cli(reference, tmp_path / "reference-cache", "--workers", "1")
    assert ref.wait(timeout=600) == 0

    cache = tmp_path / "cache"
    proc = _cli(long_project, cache, "--workers", "1", MECHCHECK_CHECKPOINT_EVERY="0.05")
    deadline = time.time() + 300
    partial = cache / "partial"
    while time.time() < deadline and not any(partial.glob("*/step-*")):
        time.sleep(0.05)
    assert any(partial.glob("*/step-*")), "no training state was saved before the deadline"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    # the report written before the kill names every claim, none of them judged
    killed = _report(long_project)
    assert [c["outcome"] for c in killed["claims"]] == ["interrupted", "interrupted"]
    assert "stopped before" in killed["claims"][0]["reason"]

    again = _cli(long_project, cache, "--workers", "1")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert "resumed from step" in err  # the training state was picked up, not thrown away
    assert _numbers(_report(long_project)) == _numbers(_report(reference))


@pytest.mark.slow
def test_interrupt_marks_unfinished_claims_and_exits_130(long_project, tmp_path):
    cache = tmp_path / "cache"
    # ten times the steps of the other tests: the interrupt must land while a model trains, and on a loaded
    # machine 600 steps were over before a poll saw the first saved state
    fixture = long_project / "fixtures/models/long-cdm.yaml"
    fixture.write_text(fixture.read_text().replace("steps: 600", "steps: 6000"))
    proc = _cli(long_project, cache, "--workers", "1", MECHCHECK_CHECKPOINT_EVERY="0.05")
    deadline = time.time() + 300
    while time.time() < deadline and not any((cache / "partial").glob("*/step-*")):
        assert proc.poll() is None, "the run ended before any training state was saved"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = _report(long_project)
    assert {c["outcome"] for c in report["claims"]} == {"interrupted"}
    assert report["finished"]
