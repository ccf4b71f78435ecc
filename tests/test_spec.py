"""Tests of mechcheck.spec: YAML claim / fixture files -> validated frozen specs, and every error's location."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from mechcheck.errors import SpecErrors
from mechcheck.spec import (
    ClaimSpec, ModelSpec, TrainSpec, discover, find_fixtures_dir, list_fixtures, load_claims,
    load_model_fixture, load_task_fixture,
)

# A small valid tree: two tasks, a scratch model (with a `paper` profile), a finetune on top of it, a loaded one.
FIXTURES = {
    "fixtures/tasks/cdm_words.yaml": """\
        name: cdm_words
        generator: cdm
        args:
          max_number: 9
        profiles:
          paper:
            args: {max_number: 20}
        """,
    "fixtures/tasks/copy.yaml": """\
        name: copy
        generator: copy_first
        """,
    "fixtures/models/tiny_cdm.yaml": """\
        name: tiny_cdm
        recipe: scratch
        architecture: {n_layer: 2, n_head: 4, n_embd: 64}
        task: cdm_words
        train:
          steps: 100
        profiles:
          paper:
            train: {steps: 3000}
        """,
    "fixtures/models/ft_cdm.yaml": """\
        name: ft_cdm
        recipe: finetune
        from: tiny_cdm
        task: copy
        train: {steps: 10, lr: 1e-4}
        """,
    "fixtures/models/gpt2_local.yaml": """\
        name: gpt2_local
        recipe: load
        path: ../weights/gpt2
        """,
}

# The minimal valid claim the bad cases below vary; its line numbers matter (1: id ... 10: the check).
BASE_LINES = [
    "id: c1",
    "statement: s",
    "models:",
    "  base: tiny_cdm",
    "data:",
    "  task: cdm_words",
    "experiment:",
    "  head_ablation: {}",
    "expect:",
    "  - accuracy_at_least: {model: base, value: 0.9}",
]


def claim(replace: dict[int, str] | None = None, append: str = "") -> str:
    """The base claim with lines (1-based) replaced and text appended."""
    lines = list(BASE_LINES)
    for i, text in (replace or {}).items():
        lines[i - 1] = text
    return "\n".join(lines) + "\n" + textwrap.dedent(append)


def write(root: Path, files: dict[str, str]) -> Path:
    """Write `files` (path -> dedented text) under `root`; return root."""
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def errors_of(root: Path, target: str = "claims", profile: str = "ci") -> str:
    """The rendered SpecErrors of loading `target` under `root` (fails if it loads)."""
    with pytest.raises(SpecErrors) as exc:
        load_claims([root / target], profile=profile)
    return str(exc.value)


BAD_CASES = [
    # (case id, extra/overriding files, profile, expected fragments of the error text)
    ("unknown-top-level-key", {"claims/bad.yaml": claim({9: "expcet:"})}, "ci",
     ["bad.yaml:9: expcet: unknown field 'expcet'", "did you mean 'expect'?", "allowed: id, statement"]),
    ("unknown-check", {"claims/bad.yaml": claim({10: "  - top_head_in_layers: {model: base, top: 2, layers: [1]}"})},
     "ci", ["bad.yaml:10: expect[0].top_head_in_layers: unknown check", "did you mean 'top_heads_in_layers'?"]),
    ("unknown-experiment", {"claims/bad.yaml": claim({8: "  head_ablaton: {}"})}, "ci",
     ["bad.yaml:8: experiment.head_ablaton: unknown experiment", "did you mean 'head_ablation'?"]),
    ("unknown-experiment-arg", {"claims/bad.yaml": claim({8: "  head_ablation: {metod: zero}"})}, "ci",
     ["bad.yaml:8: experiment.head_ablation.metod: unknown argument", "allowed: method, metric",
      "did you mean 'method'?"]),
    ("str-for-int", {"claims/bad.yaml": claim({8: "  head_ablation: {batch_size: big}"})}, "ci",
     ["bad.yaml:8: experiment.head_ablation.batch_size: expected an integer, got 'big'"]),
    ("bool-for-int", {"claims/bad.yaml": claim({5: "data: {task: cdm_words, n: true}", 6: "seeds: 1"})}, "ci",
     ["bad.yaml:5: data.n: expected an integer, got true"]),
    ("bad-choice", {"claims/bad.yaml": claim({8: "  head_ablation: {method: zeros}"})}, "ci",
     ["bad.yaml:8: experiment.head_ablation.method: invalid value 'zeros'", "allowed: zero, mean",
      "did you mean 'zero'?"]),
    ("out-of-range", {"claims/bad.yaml": claim({10: "  - accuracy_at_least: {model: base, value: 1.5}"})}, "ci",
     ["bad.yaml:10: expect[0].accuracy_at_least.value: must be <= 1, got 1.5"]),
    ("missing-required-field", {"claims/bad.yaml": claim({2: "tags: [x]"})}, "ci",
     ["bad.yaml:1: statement: missing required field 'statement'"]),
    ("missing-required-arg", {"claims/bad.yaml": claim({10: "  - accuracy_at_least: {model: base}"})}, "ci",
     ["bad.yaml:10: expect[0].accuracy_at_least.value: missing required argument 'value'"]),
    ("unknown-role", {"claims/bad.yaml": claim({10: "  - accuracy_at_least: {model: bsae, value: 0.9}"})}, "ci",
     ["bad.yaml:10: expect[0].accuracy_at_least.model: unknown model role 'bsae'", "allowed: base",
      "did you mean 'base'?"]),
    ("unknown-model-fixture", {"claims/bad.yaml": claim({4: "  base: tiny_cmd"})}, "ci",
     ["bad.yaml:4: models.base: unknown model fixture 'tiny_cmd'", "did you mean 'tiny_cdm'?", "gpt2_local"]),
    ("unknown-task-fixture", {"claims/bad.yaml": claim({6: "  task: cdm_word"})}, "ci",
     ["bad.yaml:6: data.task: unknown task fixture 'cdm_word'", "did you mean 'cdm_words'?"]),
    ("unknown-token-group", {"claims/bad.yaml": claim(
        {10: "  - attention_to: {model: base, heads: top_head, tokens: number, at_least: 0.3}"})}, "ci",
     ["bad.yaml:10: expect[0].attention_to.tokens: unknown token group 'number'", "did you mean 'numbers'?",
      "allowed: context, numbers"]),
    ("heads-selector-top0", {"claims/bad.yaml": claim(
        {10: "  - effect_at_least: {model: base, heads: top_0, value: 0}"})}, "ci",
     ["bad.yaml:10: expect[0].effect_at_least.heads: invalid heads selector 'top_0'"]),
    ("heads-short-pair", {"claims/bad.yaml": claim(
        {10: "  - effect_at_least:\n      model: base\n      heads: [[1]]\n      value: 0.1"})}, "ci",
     ["bad.yaml:12: expect[0].effect_at_least.heads[0]: expected a head as [layer, head]"]),
    ("layers-negative", {"claims/bad.yaml": claim(
        {10: "  - top_heads_in_layers:\n      model: base\n      top: 2\n      layers:\n        - 1\n        - -1"})},
     "ci", ["bad.yaml:15: expect[0].top_heads_in_layers.layers[1]: expected a layer index"]),
    ("n-embd-not-divisible", {"fixtures/models/tiny_cdm.yaml": """\
        name: tiny_cdm
        recipe: scratch
        architecture:
          n_layer: 2
          n_head: 3
          n_embd: 64
        task: cdm_words
        train: {steps: 1}
        """, "claims/bad.yaml": claim()}, "ci",
     ["tiny_cdm.yaml:6: architecture.n_embd: n_embd (64) must be divisible by n_head (3)"]),
    ("from-on-scratch", {"fixtures/models/tiny_cdm.yaml": """\
        name: tiny_cdm
        recipe: scratch
        architecture: {n_layer: 1, n_head: 1, n_embd: 8}
        task: cdm_words
        train: {steps: 1}
        from: gpt2_local
        """, "claims/bad.yaml": claim()}, "ci",
     ["tiny_cdm.yaml:6: from: recipe 'scratch' needs exactly one of 'architecture' (a GPT-2 shape) or 'from'",
      "not both"]),
    ("scratch-without-architecture-or-from", {"fixtures/models/tiny_cdm.yaml": """\
        name: tiny_cdm
        recipe: scratch
        task: cdm_words
        train: {steps: 1}
        """, "claims/bad.yaml": claim()}, "ci",
     ["tiny_cdm.yaml:1: architecture: recipe 'scratch' needs exactly one of 'architecture'"]),
    ("from-on-pretrain", {"fixtures/models/tiny_cdm.yaml": """\
        name: tiny_cdm
        recipe: pretrain
        architecture: {n_layer: 1, n_head: 1, n_embd: 8}
        task: cdm_words
        train: {steps: 1}
        from: gpt2_local
        """, "claims/bad.yaml": claim()}, "ci",
     ["tiny_cdm.yaml:6: from: 'from' is not allowed for recipe 'pretrain' (only for finetune, scratch)"]),
    ("bad-package-path", {"claims/bad.yaml": claim({4: "  base: {recipe: load, path: 'pkg:no-dash/model'}"})}, "ci",
     ["bad.yaml:4: models.base.path: invalid package path 'pkg:no-dash/model'"]),
    ("package-path-leaves-package", {"claims/bad.yaml": claim({4: "  base: {recipe: load, path: 'pkg:a/../b'}"})},
     "ci", ["bad.yaml:4: models.base.path: invalid package path 'pkg:a/../b': the path inside the package"]),
    ("finetune-without-from", {"fixtures/models/ft_cdm.yaml": """\
        name: ft_cdm
        recipe: finetune
        task: copy
        train: {steps: 10}
        """, "claims/bad.yaml": claim({4: "  base: ft_cdm"})}, "ci",
     ["ft_cdm.yaml:1: from: missing required field 'from' for recipe 'finetune'"]),
    ("from-cycle", {
        "fixtures/models/a.yaml": "name: a\nrecipe: finetune\nfrom: b\ntask: copy\ntrain: {steps: 1}\n",
        "fixtures/models/b.yaml": "name: b\nrecipe: finetune\ntask: copy\ntrain: {steps: 1}\nfrom: a\n",
        "claims/bad.yaml": claim({4: "  base: a"})}, "ci",
     ["b.yaml:5: from: cycle in `from`: a -> b -> a"]),
    ("load-path-and-hub", {"fixtures/models/gpt2_local.yaml": """\
        name: gpt2_local
        recipe: load
        path: ../weights/gpt2
        hub: gpt2
        """, "claims/bad.yaml": claim({4: "  base: gpt2_local"})}, "ci",
     ["gpt2_local.yaml:4: hub: recipe 'load' needs exactly one of 'path'", "not both"]),
    ("train-on-load", {"claims/bad.yaml": claim(
        {4: "  base: {recipe: load, hub: gpt2, train: {steps: 3}}"})}, "ci",
     ["bad.yaml:4: models.base.train: 'train' is not allowed for recipe 'load'"]),
    ("lr-zero", {"claims/bad.yaml": claim({4: "  base: {recipe: finetune, from: tiny_cdm, task: copy, "
                                              "train: {steps: 3, lr: 0}}"})}, "ci",
     ["bad.yaml:4: models.base.train.lr: must be > 0, got 0.0"]),
    ("bad-hints", {"claims/bad.yaml": claim({4: "  base: {recipe: finetune, from: tiny_cdm, task: copy, "
                                                "train: {steps: 3, hints: {layer: 0}}}"})}, "ci",
     ["bad.yaml:4: models.base.train.hints: hints.layer is the number of blocks"]),
    ("hints-unknown-key", {"claims/bad.yaml": claim({4: "  base: {recipe: finetune, from: tiny_cdm, task: copy, "
                                                        "train: {steps: 3, hints: {layer: 1, wieght: 2}}}"})}, "ci",
     ["models.base.train.hints: hints has the keys layer (required) and weight; got ['layer', 'wieght']"]),
    ("stop-at-above-one", {"claims/bad.yaml": claim({4: "  base: {recipe: finetune, from: tiny_cdm, task: copy, "
                                                        "train: {steps: 3, stop_at: 1.5}}"})}, "ci",
     ["models.base.train.stop_at"]),
    ("fixture-name-not-stem", {"fixtures/tasks/copy.yaml": "name: copy2\ngenerator: copy_first\n",
                               "claims/bad.yaml": claim({6: "  task: copy"})}, "ci",
     ["copy.yaml:1: name: name 'copy2' must equal the file name 'copy'"]),
    ("unknown-task-arg", {"fixtures/tasks/cdm_words.yaml": "name: cdm_words\ngenerator: cdm\nargs:\n  max_numbr: 3\n",
                          "claims/bad.yaml": claim()}, "ci",
     ["cdm_words.yaml:4: args.max_numbr: unknown argument 'max_numbr' of task generator 'cdm'",
      "did you mean 'max_number'?"]),
    ("duplicate-key", {"claims/bad.yaml": claim({2: "id: c2"})}, "ci",
     ["bad.yaml:2: id: duplicate key 'id' (first at line 1)"]),
    ("yaml-syntax-error", {"claims/bad.yaml": claim({4: "  base: [tiny_cdm"})}, "ci",
     ["bad.yaml:5: invalid YAML: expected ',' or ']'"]),
    ("duplicate-claim-id", {"claims/a.yaml": claim(), "claims/b.yaml": claim()}, "ci",
     ["b.yaml:1: id: duplicate claim id 'c1' (also in", "a.yaml:1)"]),
    ("error-in-profile-overlay", {"claims/bad.yaml": claim(append="""\
        profiles:
          paper:
            data: {task: cdm_words, n: 0}
        """)}, "paper", ["bad.yaml:13: data.n: must be >= 1, got 0"]),
    ("unknown-overlay-field", {"claims/bad.yaml": claim(append="""\
        profiles:
          paper:
            statment: other
        """)}, "ci", ["bad.yaml:13: profiles.paper.statment: unknown overlay field", "allowed: models, data"]),
    ("non-mapping-top-level", {"claims/bad.yaml": "- id: c1\n- statement: s\n"}, "ci",
     ["bad.yaml:1: the top level must be a mapping of fields, got [{"]),
    ("python-object-tag", {"claims/bad.yaml": claim({2: "statement: !!python/object/apply:os.getcwd []"})}, "ci",
     ["bad.yaml:2: statement: unsupported YAML tag '!!python/object/apply:os.getcwd'"]),
    ("invalid-claim-id", {"claims/bad.yaml": claim({1: "id: Bad ID"})}, "ci", ["bad.yaml:1: id: invalid claim id"]),
    ("empty-expect", {"claims/bad.yaml": claim({10: "  []"}).replace("expect:\n  []", "expect: []")}, "ci",
     ["bad.yaml:9: expect: expected a non-empty list of checks"]),
    ("two-experiments", {"claims/bad.yaml": claim({8: "  head_ablation: {}\n  other: {}"})}, "ci",
     ["bad.yaml:7: experiment: expected one experiment", "2 keys"]),
]


@pytest.mark.parametrize("files, profile, fragments", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_files_point_to_the_offending_line(tmp_path, files, profile, fragments):
    root = write(tmp_path, {**FIXTURES, **files})
    text = errors_of(root, profile=profile)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in:\n{text}"


def test_valid_claim_loads_with_defaults(tmp_path):
    root = write(tmp_path, {**FIXTURES, "claims/good.yaml": claim(append="""\
        source: {paper: Lin 2024, arxiv: '2401.00001'}
        tags: [cdm, heads]
        """)})
    [c] = load_claims([root / "claims"])
    assert isinstance(c, ClaimSpec) and c.id == "c1" and c.profile == "ci" and c.profiles == ()
    assert c.file == str(root / "claims" / "good.yaml")
    assert c.seeds == 1 and c.tags == ("cdm", "heads") and c.source == {"paper": "Lin 2024", "arxiv": "2401.00001"}
    assert (c.data.n, c.data.split, c.data.seed) == (512, "eval", 0)
    assert c.data.task.generator == "cdm" and c.data.task.args["max_number"] == 9
    assert c.data.task.args["eval_fraction"] == 0.2  # generator default filled in
    assert c.experiment.name == "head_ablation"
    assert c.experiment.args == {"method": "mean", "metric": "accuracy", "positions": "all", "batch_size": 500,
                                 "n_control": c.experiment.args["n_control"]}
    [check] = c.expect
    assert check.name == "accuracy_at_least" and check.args == {"model": "base", "value": 0.9} and check.line == 10
    base = c.models["base"]
    assert base.name == "tiny_cdm" and base.recipe == "scratch" and base.parent is None
    assert base.architecture == {"type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": 64}
    assert base.train == TrainSpec(steps=100)  # every other training field at its default, loss "answer"
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.id = "other"  # type: ignore[misc]


def test_profile_overlay_merges_and_missing_profile_uses_base(tmp_path):
    root = write(tmp_path, {**FIXTURES, "claims/c.yaml": claim(append="""\
        profiles:
          ci: {}
          paper:
            models: {ft: ft_cdm}
            data: {n: 4000}
            seeds: 5
        """)})
    write(root, {"claims/d.yaml": claim({1: "id: c2"}, "profiles:\n  nightly: {seeds: 2}\n")})
    ci, _ = load_claims([root / "claims"])
    paper, _ = load_claims([root / "claims"], profile="paper")
    other, c2 = load_claims([root / "claims"], profile="nightly")  # only d.yaml defines it: c.yaml uses its base
    assert ci.profiles == paper.profiles == ("ci", "paper")
    assert set(ci.models) == {"base"} and ci.data.n == 512 and ci.seeds == 1
    assert set(paper.models) == {"base", "ft"} and paper.data.n == 4000 and paper.seeds == 5
    assert paper.data.task.name == "cdm_words"  # data merged, not replaced
    # fixtures apply the same profile: the task and model fixtures have `paper` overlays
    assert paper.data.task.args["max_number"] == 20 and paper.models["base"].train.steps == 3000
    assert other.profile == "nightly" and other.data.n == 512 and other.models["base"].train.steps == 100
    assert c2.seeds == 2 and other.seeds == 1


def test_profile_naming_another_experiment_replaces_it(tmp_path):
    # a one-key experiment mapping would otherwise merge into two experiments
    root = write(tmp_path, {**FIXTURES, "claims/c.yaml": claim(append="""\
        profiles:
          paper:
            experiment: {evaluate: {batch_size: 7}}
        """)})
    [c] = load_claims([root / "claims"], profile="paper")
    assert c.experiment.name == "evaluate" and c.experiment.args == {"batch_size": 7}


def test_inline_model_and_task_fixtures(tmp_path):
    root = write(tmp_path, {**FIXTURES, "claims/c.yaml": claim({
        4: "  base: {recipe: pretrain, architecture: {n_layer: 1, n_head: 2, n_embd: 8}, task: copy, "
           "train: {steps: 5}}",
        6: "  task: {generator: copy_first, args: {length: 8}}",
    })})
    [c] = load_claims([root / "claims"])
    base = c.models["base"]
    assert base.name == "c1.base" and base.file == str(root / "claims" / "c.yaml")
    assert base.train.loss == "lm"  # the pretrain default
    assert base.task.name == "copy" and base.task.args == {"length": 6}
    assert c.data.task.name == "c1.task" and c.data.task.args == {"length": 8}


def test_finetune_chain_builds_parents(tmp_path):
    root = write(tmp_path, {**FIXTURES, "fixtures/models/ft2.yaml": """\
        name: ft2
        recipe: finetune
        from: ft_cdm
        task: cdm_words
        train: {steps: 7, n_train: 100}
        """})
    m = load_model_fixture("ft2", root / "fixtures")
    assert isinstance(m, ModelSpec) and m.train.n_train == 100
    assert m.parent.name == "ft_cdm" and m.parent.train.lr == 1e-4  # unquoted 1e-4 is a float
    assert m.parent.parent.name == "tiny_cdm" and m.parent.parent.parent is None
    assert m.parent.architecture is None


def test_relative_load_path_resolves_against_the_file_that_says_it(tmp_path):
    root = write(tmp_path, {**FIXTURES, "claims/sub/c.yaml": claim({4: "  base: gpt2_local"}, """\
        profiles:
          local:
            models:
              base: {recipe: load, path: weights/here, revision: main}
        """)})
    m = load_model_fixture("gpt2_local", root / "fixtures")
    assert m.path == str(root / "fixtures" / "weights" / "gpt2")  # ../weights/gpt2 from fixtures/models/
    [c] = load_claims([root / "claims"], profile="local")
    assert c.models["base"].path == str(root / "claims" / "sub" / "weights" / "here")
    assert c.models["base"].revision == "main" and c.models["base"].hub is None


def test_package_path_is_kept_as_written_and_scratch_from_copies_a_parent(tmp_path):
    root = write(tmp_path, {**FIXTURES,
                            "fixtures/models/pkg.yaml": "name: pkg\nrecipe: load\npath: 'pkg:some_pkg.sub/model'\n",
                            "fixtures/models/twin.yaml": "name: twin\nrecipe: scratch\nfrom: pkg\ntask: copy\n"
                                                         "train: {steps: 2}\n"})
    assert load_model_fixture("pkg", root / "fixtures").path == "pkg:some_pkg.sub/model"  # not made relative
    twin = load_model_fixture("twin", root / "fixtures")
    assert twin.recipe == "scratch" and twin.architecture is None and twin.parent.name == "pkg"


def test_errors_of_several_files_are_reported_together(tmp_path):
    root = write(tmp_path, {**FIXTURES,
                            "claims/a.yaml": claim({9: "expcet:"}),
                            "claims/b.yaml": claim({1: "id: c2", 4: "  base: nope"}),
                            "claims/c.yaml": claim({1: "id: c3"})})
    with pytest.raises(SpecErrors) as exc:
        load_claims([root / "claims"])
    files = {Path(e.file).name for e in exc.value.errors}
    assert files == {"a.yaml", "b.yaml"}
    assert all(e.line is not None for e in exc.value.errors)


def test_a_broken_fixture_used_by_many_claims_is_reported_once(tmp_path):
    root = write(tmp_path, {**FIXTURES, "fixtures/tasks/copy.yaml": "name: copy\ngenerator: copy_frist\n",
                            "claims/a.yaml": claim({6: "  task: copy"}),
                            "claims/b.yaml": claim({1: "id: c2", 6: "  task: copy"})})
    with pytest.raises(SpecErrors) as exc:
        load_claims([root / "claims"])
    [err] = exc.value.errors  # not once per claim
    assert (Path(err.file).name, err.line, err.field_path) == ("copy.yaml", 2, "generator")
    assert err.suggestion == "copy_first" and "copy_first" in err.allowed


def test_unsafe_yaml_is_never_constructed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("os.getcwd", lambda: calls.append(1) or "/")
    root = write(tmp_path, {**FIXTURES, "claims/c.yaml": claim(append="x: !!python/object/apply:os.getcwd []\n"
                                                                    "y: !!python/name:os.system ''\n")})
    text = errors_of(root)
    assert "unsupported YAML tag '!!python/object/apply:os.getcwd'" in text
    assert "unsupported YAML tag '!!python/name:os.system'" in text
    assert calls == []


def test_alias_bomb_is_an_error_not_a_hang(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    root = write(tmp_path, {"claims/c.yaml": "\n".join(lines) + "\n"})
    assert "document too large" in errors_of(root)


def test_discover_and_find_fixtures_dir(tmp_path):
    root = write(tmp_path, {**FIXTURES, "claims/b/x.yml": claim(), "claims/a.yaml": claim(),
                            "claims/notes.txt": "", "claims/.hidden/h.yaml": claim()})
    assert discover([root / "claims"]) == [root / "claims/a.yaml", root / "claims/b/x.yml"]
    assert discover([root / "claims" / "a.yaml"]) == [root / "claims/a.yaml"]
    assert root / "fixtures/models/tiny_cdm.yaml" not in discover([root])  # fixtures are not claims
    with pytest.raises(SpecErrors, match="no such file or directory"):
        discover([root / "missing"])
    assert find_fixtures_dir(root / "claims" / "b" / "x.yml") == root / "fixtures"
    assert find_fixtures_dir(root / "claims" / "b") == root / "fixtures"
    assert list_fixtures(root / "fixtures") == {"models": ["ft_cdm", "gpt2_local", "tiny_cdm"],
                                                "tasks": ["cdm_words", "copy"]}


def test_load_single_fixtures_and_their_errors(tmp_path):
    root = write(tmp_path, FIXTURES)
    t = load_task_fixture("cdm_words", root / "fixtures", profile="paper")
    assert t.args["max_number"] == 20 and t.file == str(root / "fixtures/tasks/cdm_words.yaml")
    with pytest.raises(SpecErrors, match="unknown model fixture 'tiny_cmd'.*did you mean 'tiny_cdm'"):
        load_model_fixture("tiny_cmd", root / "fixtures")
    with pytest.raises(SpecErrors, match="invalid profile name"):
        load_task_fixture("copy", root / "fixtures", profile="Paper!")


def test_claim_without_fixtures_dir_names_the_problem(tmp_path):
    root = write(tmp_path, {"claims/c.yaml": claim()})
    assert "no fixtures/ directory" in errors_of(root)


def test_list_kinds_validate_items(tmp_path):
    """`ints` and `strings` parameters: items are checked one by one, with the item's path."""
    from mechcheck.registry import Param
    from mechcheck.spec.kinds import _Refs, _value
    from mechcheck.spec.yaml import _F

    f = _F([], "x.yaml")
    ints = Param("n", "ints", min=1)
    assert _value([3, 1, 2], ints, 1, "a.n", f, _Refs()) == [3, 1, 2]
    strings = Param("v", "strings", choices=("context", "choice"))
    assert _value("context", strings, 1, "a.v", f, _Refs()) == ["context"]
    assert not f.errors
    _value([1, 0], ints, 4, "a.n", f, _Refs())
    _value([2, 2], ints, 5, "a.n", f, _Refs())
    _value(["context", "choise"], strings, 6, "a.v", f, _Refs())
    messages = [str(e) for e in f.errors]
    assert "x.yaml:4: a.n[1]: expected an integer >= 1, got 0" in messages[0]
    assert "duplicate values" in messages[1]
    assert "a.v[1]: invalid value 'choise'" in messages[2] and "did you mean 'choice'?" in messages[2]
