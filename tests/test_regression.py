"""End to end: CI regression on new checkpoints (`--override`, `--baseline`, `mechcheck compare`, `export`,
`--junit-xml`), with real tiny models and the CLI in a subprocess.

1. a checkpoint retrained with other seeds (exported with `mechcheck export`, one directory per replicate)
   passes the gate against the baseline of the original recipe;
2. a checkpoint whose mechanism is broken (the known-answer model with its carrying head's W_O zeroed) fails
   it, and the comparison names the broken check first;
3. a missing or pickled override is an `error` of the claims that use it (exit 3); a malformed `--override`
   argument is exit 2.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import KNOWN_HEAD_PASSES, write
from test_cli import cli, no_traceback, show, the_report

from mechcheck.results import RunReport

COPIER_FIXTURES = {
    "fixtures/tasks/copy6.yaml": """
        name: copy6
        generator: copy_first
        args: {length: 6}
    """,
    # one head: the only path from the first token to the last position, whichever seed trained it
    "fixtures/models/copier.yaml": """
        name: copier
        recipe: scratch
        architecture: {n_layer: 1, n_head: 1, n_embd: 32}
        task: copy6
        train: {steps: 120, batch_size: 64, lr: 1.0e-2, eval_every: 40}
    """,
    "claims/copier.yaml": """
        id: reg.copier
        statement: a one-layer model trained to copy the first token does it through its attention head
        models: {m: copier}
        data: {task: copy6, n: 200}
        seeds: 3
        experiment: {head_ablation: {method: zero}}
        expect:
          - accuracy_at_least: {model: m, value: 0.9}
          - effect_at_least: {model: m, heads: [[0, 0]], value: 0.2}
    """,
}


def _project(root: Path) -> Path:
    for rel, text in COPIER_FIXTURES.items():
        write(root, rel, text)
    return root


def _run_dir(report_dir: Path) -> Path:
    return the_report(report_dir)[0]


@pytest.mark.slow
def test_retrained_checkpoints_pass_the_gate(tmp_path):
    root, cache = _project(tmp_path / "proj"), tmp_path / "cache"
    base = cli(["run", "--report-dir", "base", "--workers", "1"], root, cache)
    assert base.returncode == 0, show(base)
    for i in range(3):  # replicates 3, 4, 5: the same recipe, other seeds
        r = cli(["export", "copier", f"new/seed{i}", "--seed", str(i + 3)], root, cache)
        assert r.returncode == 0, show(r)
    meta = json.loads((root / "new/seed0/mechcheck.json").read_text())
    assert meta["replicate"] == 3 and meta["vocabulary"] == "vocab.json"
    assert not list((root / "new/seed0").glob("*.bin"))

    gate = cli(["run", "--report-dir", "new-run", "--workers", "1", "--override", "copier=new/seed{i}",
                "--baseline", str(_run_dir(root / "base")), "--junit-xml", "junit.xml"], root, cache)
    assert gate.returncode == 0, show(gate)
    no_traceback(gate)
    assert "no regression" in gate.stdout, show(gate)
    run, report = the_report(root / "new-run")
    models = report.claims[0].models
    assert [m.recipe for m in models] == ["load"] * 3 and [m.seed for m in models] == [0, 1, 2]
    # loaded checkpoints carry their weight hash like trained ones: the exported files' hashes
    exported = {json.loads((root / f"new/seed{i}/mechcheck.json").read_text())["weights_sha256"] for i in range(3)}
    assert {m.info["weights_sha256"] for m in models} == exported
    assert all("replaces" in m.info for m in models)
    assert report.claims[0].checks[1].effect.scope == "recipe"  # a pattern keeps the claim about the recipe
    comparison = json.loads((run / "comparison.json").read_text())
    assert comparison["regressed"] is False and comparison["counts"] == {"unchanged": 2}
    assert "Compared with baseline" in (run / "report.md").read_text()
    suites = ET.parse(root / "junit.xml").getroot()
    assert suites.tag == "testsuites" and suites.get("tests") == "2" and suites.get("failures") == "0"


def _broken_known_answer(path: Path) -> Path:
    """The known-answer model with head L0H0's output projection (its W_O) zeroed: the answer has no path."""
    import torch

    from mechcheck.known_answer import single_head_copy_model

    model = single_head_copy_model()
    d_head = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        model.transformer.h[0].attn.c_proj.weight[0:d_head, :] = 0.0
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.slow
def test_broken_checkpoint_fails_the_gate_naming_the_check(claim_tree, tmp_path):
    claim_tree("claims/known.yaml", KNOWN_HEAD_PASSES)
    root, cache = claim_tree.root, tmp_path / "cache"
    base = cli(["run", "--report-dir", "base", "--workers", "1"], root, cache)
    again = cli(["run", "--report-dir", "again", "--workers", "1"], root, cache)
    assert base.returncode == 0 and again.returncode == 0, show(base) + show(again)
    same = cli(["compare", str(_run_dir(root / "base")), str(_run_dir(root / "again"))], root, cache)
    assert same.returncode == 0 and "no regression" in same.stdout, show(same)

    broken = _broken_known_answer(tmp_path / "broken")
    gate = cli(["run", "--report-dir", "gate", "--workers", "1", "--override", f"one-head={broken}",
                "--baseline", str(_run_dir(root / "base") / "report.json")], root, cache)
    assert gate.returncode == 1, show(gate)
    no_traceback(gate)
    assert "REGRESSION" in gate.stdout and "regressed: known.head_matters" in gate.stdout, show(gate)
    comparison = json.loads((_run_dir(root / "gate") / "comparison.json").read_text())
    first = comparison["checks"][0]
    assert first["status"] == "regressed" and first["claim"] == "known.head_matters"
    assert first["old_outcome"] == "passed" and first["new_outcome"] in ("failed", "inconclusive")
    # every check of the mechanism broke (accuracy, the head's effect, the top head's layer); none hides below
    assert [c["status"] for c in comparison["checks"]] == ["regressed"] * 3
    # the same through `mechcheck compare`, with an explicit tolerance
    r = cli(["compare", str(_run_dir(root / "base")), str(_run_dir(root / "gate")), "--tolerance", "0.1"], root, cache)
    assert r.returncode == 1 and "explicit" not in r.stderr, show(r)


@pytest.mark.slow
def test_one_checkpoint_for_a_recipe_says_so(claim_tree, tmp_path, known_answer_dir):
    """A 3-seed recipe overridden by one checkpoint: one replicate, checkpoint scope, and a note in the report."""
    root, cache = _project(tmp_path / "proj"), tmp_path / "cache"
    r = cli(["run", "--report-dir", "r", "--workers", "1", "--override", f"copier={known_answer_dir}"], root, cache)
    assert r.returncode == 0, show(r)
    assert "no longer cover seed-to-seed variation" in r.stderr, show(r)
    run, report = the_report(root / "r")
    claim = report.claims[0]
    assert len(claim.models) == 1 and claim.checks[1].effect.scope == "checkpoint" and claim.notes
    assert "no longer cover seed-to-seed variation" in (run / "report.md").read_text()


@pytest.mark.slow
def test_bad_overrides(claim_tree, tmp_path):
    claim_tree("claims/known.yaml", KNOWN_HEAD_PASSES)
    root, cache = claim_tree.root, tmp_path / "cache"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    missing = cli(["run", "--report-dir", "r1", "--workers", "1", "--override", "one-head=no/such/dir"], root, cache)
    pickle = cli(["run", "--report-dir", "r2", "--workers", "1", "--override", f"one-head={pickled}"], root, cache)
    for r, words in ((missing, "does not exist"), (pickle, "pickled weights are refused")):
        assert r.returncode == 3, show(r)
        no_traceback(r)
        assert words in r.stdout + r.stderr, show(r)
    report = RunReport.read_json(_run_dir(root / "r1") / "report.json")
    assert report.claims[0].outcome == "error" and "no/such/dir" in report.claims[0].reason
    for bad in ("one-head", "one-head=", "=x", "no-such-fixture=x", "one-head=x/{seed}"):
        r = cli(["validate", "--override", bad], root, cache)
        assert r.returncode == 2, (bad, show(r))
        assert "--override" in r.stderr and "Traceback" not in r.stderr, show(r)


def test_single_checkpoint_override_scopes_the_claim(claim_tree, tmp_path, known_answer_dir):
    """One checkpoint in place of a 3-seed recipe: one replicate, the claim is about that checkpoint (no run)."""
    from mechcheck.spec import load_claims
    from mechcheck.spec.overrides import parse_overrides

    write(claim_tree.root, "claims/t.yaml", """
        id: t.tiny
        statement: x
        models: {m: tiny-cdm}
        data: {task: cdm9, n: 64}
        seeds: 3
        experiment: {head_ablation: {method: zero}}
        expect:
          - accuracy_at_least: {model: m, value: 0.5}
    """)
    claims = load_claims([claim_tree.root / "claims/t.yaml"],
                         overrides=parse_overrides([f"tiny-cdm={known_answer_dir}"]))
    spec = claims[0].models["m"]
    assert spec.recipe == "load" and spec.path == str(known_answer_dir) and "scratch" in spec.replaces
    from mechcheck.recipes import is_fixed, replicates

    assert is_fixed(spec) and replicates(spec, 3) == 1
    pattern = load_claims([claim_tree.root / "claims/t.yaml"], overrides=parse_overrides(["tiny-cdm=ck/seed{i}"]))
    assert replicates(pattern[0].models["m"], 3) == 3
