"""Validation that spans sections of a claim: checks vs the experiment they read, labels and token groups vs the
eval task, `within` values vs the experiment's arguments, head and layer indices vs the models' shapes, and the
selected profile vs the profiles the suite defines. Every error names its file, line and field path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO

from mechcheck import cli
from mechcheck.errors import SpecErrors
from mechcheck.registry import CHECKS, TASKS, Entry, Param
from mechcheck.spec import declared_shape, declared_shapes, load_claims, load_model_fixture, shape_errors

FIXTURES = {
    "fixtures/tasks/cdm.yaml": "name: cdm\ngenerator: cdm\nargs: {max_number: 9}\n",
    "fixtures/tasks/copy.yaml": "name: copy\ngenerator: copy_first\n",
    "fixtures/tasks/corpus.yaml": "name: corpus\ngenerator: corpus\nprofiles:\n  nightly: {}\n",
    "fixtures/models/scratch4.yaml": """\
        name: scratch4
        recipe: scratch
        architecture: {n_layer: 4, n_head: 4, n_embd: 32}
        task: cdm
        train: {steps: 1}
        profiles:
          paper:
            architecture: {n_layer: 12, n_head: 12, n_embd: 96}
        """,
    "fixtures/models/ft4.yaml": "name: ft4\nrecipe: finetune\nfrom: scratch4\ntask: cdm\ntrain: {steps: 1}\n",
    "fixtures/models/twin.yaml": "name: twin\nrecipe: scratch\nfrom: ft4\ntask: cdm\ntrain: {steps: 1}\n",
    "fixtures/models/loaded.yaml": "name: loaded\nrecipe: load\npath: ../weights/x\ntask: cdm\n",
}


def claim(experiment: str, *checks: str, task: str = "cdm") -> str:
    """A claim with the experiment on line 11 and one check per line from line 13 (more if a check spans lines).

    Roles: scratch (4 x 4), ft (a fine-tune of it), twin (a scratch model `from` ft), loaded (a load: unknown)."""
    lines = ["id: v1", "statement: s", "models:", "  scratch: scratch4", "  ft: ft4", "  twin: twin",
             "  loaded: loaded", "data:", f"  task: {task}", "experiment:", f"  {experiment}", "expect:"]
    return "\n".join(lines + [f"  - {c}" for c in checks]) + "\n"


EXP, FIRST = 11, 13  # the experiment's line and the first check's line in `claim`


def write(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (path -> dedented text) under `root`; return root."""
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def load(tmp_path: Path, text: str, profile: str = "ci"):
    """The claims of a project with `FIXTURES` and the claim file `text`."""
    root = write(tmp_path, {**FIXTURES, "claims/c.yaml": text})
    return load_claims([root / "claims"], profile=profile)


def errors(tmp_path: Path, text: str, profile: str = "ci") -> list:
    """The `SpecError`s of loading that project (fails if it loads)."""
    with pytest.raises(SpecErrors) as exc:
        load(tmp_path, text, profile)
    return exc.value.errors


HEAD_RANGE = "(fixture scratch4: 4 layers x 4 heads: layers 0..3, heads 0..3)"

# (case id, claim text, line, field path, fragments of the message and its allowed / nearest part)
CASES = [
    ("check-reads-another-experiment",
     claim("head_ablation: {}", "decoding_accuracy_at_least: {model: scratch, variable: choice, value: 0.9}"),
     FIRST, "expect[0].decoding_accuracy_at_least",
     ["check 'decoding_accuracy_at_least' cannot judge experiment 'head_ablation'", f"experiment, line {EXP}",
      "it reads the measurements of linear_decoding"]),
    ("silhouette-on-decoding",
     claim("linear_decoding: {}", "accuracy_at_least: {model: scratch, value: 0.5}",
           "silhouette_at_least: {model: scratch, label: choice, value: 0.2}"),
     FIRST + 1, "expect[1].silhouette_at_least", ["reads the measurements of embedding_geometry"]),
    ("head-beyond-model-flow",
     claim("head_ablation: {}", "effect_at_least: {model: scratch, heads: [[3, 7]], value: 0.1}"),
     FIRST, "expect[0].effect_at_least.heads[0]",
     [f"head [3, 7] does not exist in model 'scratch' {HEAD_RANGE}"]),
    ("head-beyond-model-block",  # the item's own line
     claim("head_ablation: {}", "accuracy_at_least: {model: scratch, value: 0.9}",
           "effect_at_least:\n      model: scratch\n      heads:\n        - [0, 1]\n        - [4, 0]\n"
           "      value: 0.1"),
     FIRST + 5, "expect[1].effect_at_least.heads[1]", ["head [4, 0] does not exist in model 'scratch'"]),
    ("effect-higher-head-beyond-model",  # both head sets are checked against the model
     claim("head_ablation: {}", "effect_higher: {model: scratch, heads: [[4, 0]], than: [[0, 1]]}"),
     FIRST, "expect[0].effect_higher.heads[0]", [f"head [4, 0] does not exist in model 'scratch' {HEAD_RANGE}"]),
    ("effect-higher-selector-beyond-model",
     claim("head_ablation: {}", "effect_higher: {model: ft, heads: [[0, 0]], than: top_17}"),
     FIRST, "expect[0].effect_higher.than", ["'top_17' selects 17 heads, more than the 16 of model 'ft'"]),
    ("effect-higher-reads-head-ablation",
     claim("evaluate: {}", "effect_higher: {model: scratch, heads: [[0, 0]], than: [[0, 1]]}"),
     FIRST, "expect[0].effect_higher", ["check 'effect_higher' cannot judge experiment 'evaluate'",
                                        "it reads the measurements of head_ablation"]),
    ("layer-beyond-model",
     claim("head_ablation: {}", "top_heads_in_layers:\n      model: scratch\n      top: 2\n      layers:\n"
                                "        - 0\n        - 4"),
     FIRST + 5, "expect[0].top_heads_in_layers.layers[1]", [f"layer 4 does not exist in model 'scratch' {HEAD_RANGE}"]),
    ("top-more-than-heads",
     claim("head_ablation: {}", "top_heads_in_layers: {model: scratch, top: 20, layers: [0]}"),
     FIRST, "expect[0].top_heads_in_layers.top", ["20 is more than the 16 heads of model 'scratch'"]),
    ("top-k-selector-more-than-heads",
     claim("head_ablation: {}", "effect_at_least: {model: scratch, heads: top_17, value: 0.1}"),
     FIRST, "expect[0].effect_at_least.heads", ["'top_17' selects 17 heads, more than the 16 of model 'scratch'"]),
    ("expected-heads-beyond-model",
     claim("head_ablation: {}", "layer_centroid_higher: {model: scratch, than: ft, expected_heads: [[5, 7]]}"),
     FIRST, "expect[0].layer_centroid_higher.expected_heads[0]", ["head [5, 7] does not exist"]),
    ("finetune-has-its-parents-shape",
     claim("head_ablation: {}", "effect_at_most: {model: ft, heads: [[0, 4]], value: 0.1}"),
     FIRST, "expect[0].effect_at_most.heads[0]",
     ["head [0, 4] does not exist in model 'ft' (fixture ft4: 4 layers x 4 heads"]),
    ("scratch-from-has-its-parents-shape",
     claim("head_ablation: {}", "effect_at_most: {model: twin, heads: [[4, 0]], value: 0.1}"),
     FIRST, "expect[0].effect_at_most.heads[0]", ["in model 'twin' (fixture twin: 4 layers x 4 heads"]),
    ("decoding-layer-beyond-model",
     claim("linear_decoding: {layers: all}", "decoding_accuracy_at_least: {model: scratch, variable: choice, "
                                             "value: 0.9, layer: 4}"),
     FIRST, "expect[0].decoding_accuracy_at_least.layer", ["layer 4 does not exist in model 'scratch'"]),
    ("variable-not-decoded",
     claim("linear_decoding: {variables: [context, choice]}",
           "decoding_accuracy_at_least: {model: scratch, variable: motion_sign, value: 0.9}"),
     FIRST, "expect[0].decoding_accuracy_at_least.variable",
     [f"'motion_sign' is not one of the values of the experiment's `variables` (linear_decoding, line {EXP})",
      "allowed: context, choice"]),
    ("variable-not-decoded-nearest",
     claim("linear_decoding: {variables: [context, color_sign]}", "decoding_above_null: {model: scratch, "
                                                                  "variable: motion_sign}"),
     FIRST, "expect[0].decoding_above_null.variable", ["did you mean 'color_sign'?"]),
    ("silhouette-label-not-scored",
     claim("embedding_geometry: {labels: [context]}", "silhouette_higher: {model: ft, than: scratch, label: choice}"),
     FIRST, "expect[0].silhouette_higher.label", ["'choice' is not one of the values of the experiment's `labels`",
                                                  "allowed: context"]),
    ("label-the-task-lacks-in-variables",
     claim("linear_decoding: {variables: [context, chioce]}", "decoding_above_null: {model: scratch, "
                                                              "variable: context}"),
     EXP, "experiment.linear_decoding.variables[1]",
     ["unknown label 'chioce' of task 'cdm' (generator cdm)", "allowed: context, motion_sign, color_sign, choice, "
      "congruent, response_type", "did you mean 'choice'?"]),
    ("label-the-task-lacks-in-a-check",
     claim("linear_decoding: {}", "decoding_above_null: {model: scratch, variable: contxt}"),
     FIRST, "expect[0].decoding_above_null.variable", ["unknown label 'contxt' of task 'cdm'",
                                                       "did you mean 'context'?"]),
    ("default-labels-the-task-lacks",
     claim("linear_decoding: {n_shuffle: 2}", "decoding_above_null: {model: scratch, variable: source}",
           task="copy"),
     EXP, "experiment.linear_decoding.variables",
     ["the default of 'variables' names labels that task 'copy' (generator copy_first) does not have (context, "
      "motion_sign, color_sign, choice): set 'variables'", "allowed: source"]),
    ("task-without-labels",
     claim("embedding_geometry: {labels: [choice]}", "silhouette_at_least: {model: scratch, label: choice, value: 0}",
           task="corpus"),
     EXP, "experiment.embedding_geometry.labels[0]", ["unknown label 'choice' of task 'corpus' (generator corpus) "
                                                      "(it has no labels)"]),
    ("unknown-token-group",
     claim("head_ablation: {}", "attention_to: {model: scratch, heads: top_head, tokens: number, at_least: 0.3}"),
     FIRST, "expect[0].attention_to.tokens",
     ["unknown token group 'number' of task 'cdm' (generator cdm)", "did you mean 'numbers'?",
      "allowed: context, numbers, motion_numbers, color_numbers, answer"]),
    ("n-not-in-the-grid",
     claim("sample_efficiency: {n_train: [16, 64]}", "accuracy_at_n_at_least: {model: scratch, n: 32, value: 0.9}"),
     FIRST, "expect[0].accuracy_at_n_at_least.n", ["32 is not one of the values of the experiment's `n_train`",
                                                   "allowed: 16, 64"]),
]


@pytest.mark.parametrize("text, line, path, fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cross_section_errors_name_file_line_and_field(tmp_path, text, line, path, fragments):
    found = errors(tmp_path, text)
    [err] = [e for e in found if e.field_path == path] or found  # the case's error (a case may have others)
    assert (Path(err.file), err.line, err.field_path) == (tmp_path / "claims" / "c.yaml", line, path), str(err)
    for fragment in fragments:
        assert fragment in str(err), f"{fragment!r} not in:\n{err}"


def test_the_paper_profile_of_a_fixture_changes_the_declared_shape(tmp_path):
    text = claim("head_ablation: {}", "effect_at_least: {model: scratch, heads: [[11, 11]], value: 0.1}")
    [c] = load(tmp_path, text, profile="paper")  # 12 x 12 at paper
    assert declared_shapes(c) == {"scratch": (12, 12), "ft": (12, 12), "twin": (12, 12)}
    [err] = errors(tmp_path, text)  # 4 x 4 at ci
    assert err.line == FIRST and "head [11, 11] does not exist in model 'scratch'" in str(err)


def test_valid_cross_section_claims_load(tmp_path):
    [c] = load(tmp_path, claim(
        "linear_decoding: {variables: choice, layers: all}",  # a single label is a list of one
        "decoding_accuracy_at_least: {model: scratch, variable: choice, value: 0.9, layer: 3}",
        "decoding_above_null: {model: ft, variable: choice}",
        "mixed_selectivity_higher: {model: ft, than: scratch}"))
    assert c.experiment.args["variables"] == ["choice"]
    [c] = load(tmp_path, claim(
        "head_ablation: {}",
        "top_heads_in_layers: {model: scratch, top: 16, layers: [0, 3]}",
        "effect_at_least: {model: scratch, heads: top_16, value: 0.1}",
        "effect_at_least: {model: loaded, heads: [[9, 9]], value: 0.1}",  # a load's shape is unknown here
        "accuracy_at_least: {model: loaded, value: 0.5}"))
    assert [check.name for check in c.expect][:2] == ["top_heads_in_layers", "effect_at_least"]
    assert c.expect[0].lines == {"model": FIRST, "top": FIRST, "layers": FIRST, "layers[0]": FIRST,
                                 "layers[1]": FIRST}
    assert c.expect[0].line_of("at_least") == FIRST  # a default: the check's own line


def test_a_check_registered_without_experiments_reads_any(tmp_path, monkeypatch):
    CHECKS.names()  # the built-ins first, then a plugin-like check for this test only
    probe = Entry("probe_check", lambda ctx, model: None, (Param("model", "model", required=True),))
    monkeypatch.setitem(CHECKS._entries, "probe_check", probe)
    for experiment in ("head_ablation: {}", "linear_decoding: {}", "evaluate"):
        [c] = load(tmp_path, claim(experiment, "probe_check: {model: scratch}"))
        assert c.expect[0].name == "probe_check"


def test_shape_errors_with_the_built_models_shapes(tmp_path):
    """What the runner calls once the models are built: a `load` is checked only then."""
    [c] = load(tmp_path, claim(
        "head_ablation: {}",
        "effect_at_least:\n      model: loaded\n      heads:\n        - [0, 0]\n        - [0, 5]\n      value: 0.1",
        "top_heads_in_layers: {model: loaded, top: 3, layers: [1]}",
        "attention_to: {model: loaded, heads: top_2, tokens: numbers, at_least: 0.1}"))
    assert declared_shapes(c) == {"scratch": (4, 4), "ft": (4, 4), "twin": (4, 4)}
    assert declared_shape(c.models["loaded"]) is None
    assert shape_errors(c, declared_shapes(c)) == []
    assert shape_errors(c, {}) == [] and shape_errors(c, {"loaded": (2, 6)}) == []
    got = shape_errors(c, {"loaded": (1, 2)})
    assert [(Path(e.file).name, e.line, e.field_path) for e in got] == [
        ("c.yaml", FIRST + 4, "expect[0].effect_at_least.heads[1]"),
        ("c.yaml", FIRST + 6, "expect[1].top_heads_in_layers.top"),
        ("c.yaml", FIRST + 6, "expect[1].top_heads_in_layers.layers[0]"),
    ]
    assert str(got[0]).endswith("expect[0].effect_at_least.heads[1]: head [0, 5] does not exist in model 'loaded' "
                                "(fixture loaded: 1 layer x 2 heads: layer 0, heads 0..1)")
    assert "3 is more than the 2 heads of model 'loaded'" in str(got[1])


def test_declared_shape_follows_the_from_chain(tmp_path):
    root = write(tmp_path, FIXTURES)
    assert declared_shape(load_model_fixture("twin", root / "fixtures")) == (4, 4)
    assert declared_shape(load_model_fixture("ft4", root / "fixtures", "paper")) == (12, 12)
    assert declared_shape(load_model_fixture("loaded", root / "fixtures")) is None


@pytest.mark.parametrize("name, kwargs", [("cdm", {}), ("copy_first", {}), ("corpus", {})])
def test_tasks_declare_the_labels_and_token_groups_their_batches_carry(name, kwargs):
    entry = TASKS.get(name)
    batch = entry.func(**kwargs).sample(8, "eval", 0)
    assert tuple(sorted(batch.labels)) == tuple(sorted(entry.meta["labels"]))
    assert tuple(sorted(batch.groups)) == tuple(sorted(entry.meta["token_groups"]))


def test_a_profile_no_file_defines_is_an_error(tmp_path):
    text = claim("head_ablation: {}", "accuracy_at_least: {model: scratch, value: 0.9}")
    [err] = errors(tmp_path, text, profile="paperr")
    assert str(err) == "<input>: profile: unknown profile 'paperr' (allowed: ci, paper; did you mean 'paper'?)"
    assert load(tmp_path, text, profile="ci")  # the base profile always exists
    # a profile that only a fixture the claims do not use defines (corpus.yaml: nightly) does not count
    [err] = errors(tmp_path, text, profile="nightly")
    assert err.allowed == ("ci", "paper")


def test_cli_validate_unknown_profile_exits_2(capsys):
    rc = cli.main(["validate", str(REPO / "claims"), "--profile", "paperr"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.splitlines() == ["error: <command line>: profile: unknown profile 'paperr' (allowed: ci, paper; "
                                "did you mean 'paper'?)", "1 problem found; nothing was run."]


def test_cli_validate_unknown_profile_in_a_subprocess():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "mechcheck.cli", "validate", "claims/", "--profile", "paperr"],
                       cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    assert ("error: <command line>: profile: unknown profile 'paperr' (allowed: ci, paper; did you mean "
            "'paper'?)") in r.stderr.splitlines()


@pytest.mark.parametrize("profile", ["ci", "paper"])
def test_cli_validates_the_shipped_suite(capsys, profile):
    assert cli.main(["validate", str(REPO / "claims"), "--profile", profile]) == 0
    out, err = capsys.readouterr()
    shipped = len(list((REPO / "claims").rglob("*.yaml")))
    assert shipped >= 17 and out.startswith(f"ok: {shipped} claims valid (profile {profile})") and err == ""


def test_registration_keywords_are_checked_when_registered():
    with pytest.raises(ValueError, match="limit 'layers' needs kind 'int'"):
        Param("top", "int", limit="layers")
    with pytest.raises(ValueError, match="limit 'heads' needs kind 'int'"):
        Param("top", "float", limit="heads")
    with pytest.raises(ValueError, match="experiments must be a tuple of names"):
        CHECKS.register("never_registered", experiments="head_ablation")  # a string, not a tuple
    assert CHECKS.get("effect_at_least").meta["experiments"] == ("head_ablation",)
    assert CHECKS.get("top_heads_in_layers").param("top").limit == "heads"
    assert CHECKS.get("decoding_above_null").param("variable").within == "variables"
