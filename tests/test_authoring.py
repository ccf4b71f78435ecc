"""The authoring aids: the generated JSON Schema agrees with the loader, and `mechcheck new` writes valid claims.

The schema must accept every file the loader accepts (under the `ci` profile and each profile the file
defines), and should reject the common mistakes. Files are read with the loader's own YAML reader, so both
see the same values (e.g. an unquoted `1e-4` is a number for both). No model is built here.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO, write, write_fixtures

from mechcheck.authoring import KINDS, json_schema, skeleton
from mechcheck.cli import main
from mechcheck.errors import SpecErrors
from mechcheck.registry import EXPERIMENTS
from mechcheck.spec import load_claims, load_model_fixture, load_task_fixture
from mechcheck.spec.yaml import _plain, parse

SHIPPED = sorted(REPO.glob("claims/**/*.yaml")) + sorted(REPO.glob("fixtures/*/*.yaml"))


@pytest.fixture(scope="module")
def validators() -> dict[str, jsonschema.Draft202012Validator]:
    return {k: jsonschema.Draft202012Validator(json_schema(k)) for k in KINDS}


def _doc(path: Path) -> dict:
    errors: list = []
    doc = parse(path, errors)
    assert not errors, errors
    return _plain(doc)


def _kind(rel: Path) -> str:
    return "claim" if rel.parts[0] == "claims" else {"models": "model", "tasks": "task"}[rel.parts[1]]


def _messages(v: jsonschema.Draft202012Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:160]}" for e in v.iter_errors(doc)]


def test_every_kind_is_a_valid_2020_12_schema() -> None:
    for kind in KINDS:  # they share their $defs: checking one against the meta-schema covers them
        schema = json_schema(kind)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$defs"] == json_schema("all")["$defs"]
    jsonschema.Draft202012Validator.check_schema(json_schema("all"))
    with pytest.raises(ValueError, match="unknown schema kind"):
        json_schema("claims")


def test_heads_selector_pattern_matches_the_loader() -> None:
    from mechcheck.registry import Param
    from mechcheck.spec.kinds import _BAD, _Refs, _value
    from mechcheck.spec.yaml import _F

    schema = jsonschema.Draft202012Validator(json_schema("claim")["$defs"]["check"]["properties"]["effect_at_least"]
                                             ["properties"]["heads"])
    for text in ["top_head", "top_1", "top_01", "top_12", "top_0", "top_00", "top_", "top_-1", "top_heads", "top_1x"]:
        loader_ok = _value(text, Param("heads", "heads"), 1, "heads", _F([], "x"), _Refs()) is not _BAD
        assert schema.is_valid(text) == loader_ok, text


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_files_validate(path: Path, validators) -> None:
    doc = _doc(path)
    for kind in (_kind(path.relative_to(REPO)), "all"):
        assert _messages(validators[kind], doc) == [], kind


def test_test_fixtures_and_doc_examples_validate(tmp_path: Path, validators) -> None:
    """The fixtures the test suite writes, and the complete files shown in docs/claim-format.md."""
    write_fixtures(tmp_path, Path("/some/checkpoint"))
    docs = [_doc(p) for p in sorted(tmp_path.rglob("*.yaml"))]
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "docs/claim-format.md").read_text(), re.S)
    for i, text in enumerate(blocks):
        doc = _doc(write(tmp_path, f"doc{i}.yaml", text))
        if {"statement", "recipe", "generator"} & set(doc):  # the rest are fragments
            docs.append(doc)
    assert len(docs) >= 8
    for doc in docs:
        assert _messages(validators["all"], doc) == [], doc


def _claim(validators, **changes) -> tuple[dict, list[str]]:
    doc = _doc(REPO / "claims/lin2024/finetuned_later_layers.yaml")
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc, _messages(validators["claim"], doc)


@pytest.mark.parametrize("changes, expected", [
    ({"expect__0": {"accuracy_at_least": {"model": "finetuned", "value": 0.9, "valu": 1}}}, "valu"),
    ({"expect__2": {"layer_centroid_higher": {"model": "finetuned", "than": "scratch", "by": "half"}}}, "half"),
    ({"colour": "red"}, "colour"),
    ({"seeds": "three"}, "three"),
    ({"seeds": 0}, "minimum"),
    ({"data__n": 1.5}, "integer"),
    ({"data__split": "test"}, "test"),
    ({"experiment": {"head_ablaton": {}}}, "head_ablaton"),
    ({"experiment": {"head_ablation": {"method": "mean", "metric": "loss"}}}, "loss"),
    # the base's `expect` is replaced by the paper overlay's (so only the overlay's must be complete)
    ({"profiles__paper__expect": [{"accuracy_at_least": {"model": "scratch"}}]}, "value"),
    ({"expect__1": {"top_heads_in_layers": {"model": "scratch", "top": 3, "layers": [0], "at_least": 1.5}}},
     "maximum"),
    ({"expect__1": {"effect_at_least": {"model": "scratch", "heads": "top_0", "value": 0.1}}}, "top_0"),
    ({"profiles__paper__statement": "overlays cannot change the statement"}, "statement"),
    ({"profiles__paper__expect": [{"accuracy_at_least": {"model": "scratch", "valu": 0.9}}]}, "valu"),
    ({"models__scratch": {"recipe": "scratch", "hub": "gpt2", "task": "cdm-words", "train": {"steps": 5},
                          "architecture": {"n_layer": 1, "n_head": 1, "n_embd": 8}}}, "hub"),
])
def test_common_mistakes_are_rejected_by_schema_and_loader(changes, expected, validators, tmp_path: Path) -> None:
    doc, messages = _claim(validators, **changes)
    assert messages and any(expected in m for m in messages), messages
    shutil.copytree(REPO / "fixtures", tmp_path / "fixtures")
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims/c.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(SpecErrors):  # a real mistake: the loader says so too, under ci or the overlay's profile
        for profile in ("ci", "paper"):
            load_claims([tmp_path / "claims/c.yaml"], profile=profile)


def test_fixture_mistakes_are_rejected(validators) -> None:
    model = _doc(REPO / "fixtures/models/lm-pretrained.yaml")  # no overlay: every field must be complete
    task = _doc(REPO / "fixtures/tasks/cdm-words.yaml")
    bad_models = [{**model, "recipe": "scrach"}, {**model, "hub": "gpt2"}, {**model, "train": {"lr": 0.1}},
                  {**model, "train": {**model["train"], "lr": 0}}, {**model, "from": "cdm-scratch"},
                  {**model, "architecture": {**model["architecture"], "n_head": "4"}},
                  {**model, "profiles": {"paper": {"recipe": "load"}}}]
    bad_tasks = [{**task, "args": {"vocab": "word"}}, {**task, "args": {"max_numbr": 9}},
                 {**task, "profiles": {"paper": {"args": {"max_number": 99}}}}, {**task, "generator": "cdn"}]
    for doc in bad_models:
        assert _messages(validators["model"], doc) and _messages(validators["all"], doc), doc
    for doc in bad_tasks:
        assert _messages(validators["task"], doc) and _messages(validators["all"], doc), doc


# ---- never stricter than the loader: one mutation at a time of shipped files, loader vs schema ------------

_VALUES = [None, 0, 2.5, "x", [[0, 0]], {"n": 5}]
_PROSE = ("statement", "description", "source", "tags")  # plain strings: covered by the negative cases above


def _mutations(doc: dict):
    def walk(v, at=()):
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, x in items:
            if k in _PROSE:
                continue
            yield at + (k,)
            yield from walk(x, at + (k,))

    for at in walk(doc):
        for value in ["<delete>", *_VALUES]:
            d = copy.deepcopy(doc)
            node = d
            for k in at[:-1]:
                node = node[k]
            if value != "<delete>":
                node[at[-1]] = copy.deepcopy(value)
            elif isinstance(node, dict):
                del node[at[-1]]
            yield d


def _loader_accepts(root: Path, rel: Path, doc: dict) -> bool:
    profiles = doc.get("profiles") if isinstance(doc.get("profiles"), dict) else {}
    try:
        for profile in dict.fromkeys(["ci", *(p for p in profiles if isinstance(p, str))]):
            if rel.parts[0] == "claims":
                load_claims([root / rel], profile=profile)
            else:
                load = load_model_fixture if rel.parts[1] == "models" else load_task_fixture
                load(rel.stem, root / "fixtures", profile)
    except SpecErrors:
        return False
    return True


@pytest.mark.parametrize("rel", ["claims/lin2024/finetuned_later_layers.yaml", "fixtures/models/cdm-finetuned.yaml",
                                 "fixtures/tasks/cdm-words.yaml"])
def test_schema_accepts_what_the_loader_accepts(rel: str, tmp_path: Path, validators) -> None:
    rel_path = Path(rel)
    for d in ("claims", "fixtures"):
        shutil.copytree(REPO / d, tmp_path / d)
    accepted = rejected_by_schema = 0
    for doc in _mutations(_doc(REPO / rel)):
        (tmp_path / rel).write_text(yaml.safe_dump(doc, sort_keys=False))
        if _loader_accepts(tmp_path, rel_path, doc):
            accepted += 1
            assert _messages(validators["all"], doc) == [], doc
        elif _messages(validators["all"], doc):
            rejected_by_schema += 1
    assert accepted >= 10 and rejected_by_schema >= 50  # both sides were exercised


# ---- skeletons and the CLI ---------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "fixtures", tmp_path / "fixtures")
    return tmp_path


def test_new_writes_a_valid_claim_for_every_experiment(project: Path, validators, capsys) -> None:
    names = EXPERIMENTS.names()
    for name in names:
        assert main(["new", str(project / "claims/new" / f"{name}.yaml"), "--experiment", name]) == 0
    assert main(["validate", str(project / "claims")]) == 0
    assert f"ok: {len(names)} claims valid" in capsys.readouterr().out
    for name in names:
        text = (project / "claims/new" / f"{name}.yaml").read_text()
        assert f"id: new.{name}" in text and "<model fixture>" not in text
        assert _messages(validators["claim"], _doc(project / "claims/new" / f"{name}.yaml")) == []


def test_skeleton_without_fixtures_has_placeholders() -> None:
    text = skeleton("head_ablation", None, "x.y", schema="../schema.json")
    assert text.startswith("# yaml-language-server: $schema=../schema.json\n")
    assert 'base: "<model fixture>"' in text and 'task: "<task fixture>"' in text
    assert yaml.safe_load(text)["experiment"] == {"head_ablation": {"method": "mean", "metric": "accuracy",
                                                                    "positions": "all", "batch_size": 500,
                                                                    "n_control": 10}}


def test_new_refuses_to_overwrite_without_force(project: Path, capsys) -> None:
    path = project / "claims/mine.yaml"
    write(project, "claims/mine.yaml", "id: keep.me\n")
    assert main(["new", str(path), "--experiment", "evaluate"]) == 2
    assert "pass --force" in capsys.readouterr().err and path.read_text() == "id: keep.me\n"
    assert main(["new", str(path), "--experiment", "evaluate", "--force"]) == 0
    assert "evaluate:" in path.read_text()


def test_new_with_an_unknown_experiment_lists_the_known_ones(project: Path, capsys) -> None:
    assert main(["new", str(project / "claims/x.yaml"), "--experiment", "head_ablaton"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'head_ablaton'" in err and "did you mean 'head_ablation'" in err
    assert all(name in err for name in EXPERIMENTS.names())
    assert not (project / "claims/x.yaml").exists()


def test_schema_command(tmp_path: Path, capsys) -> None:
    assert main(["schema", "--kind", "task"]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema("task")
    out = tmp_path / "editor" / "mechcheck.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == json_schema("all")
