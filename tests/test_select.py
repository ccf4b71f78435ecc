"""Claim selection: `-k` keyword expressions and `--tag` (no models, no files)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mechcheck.errors import SpecError
from mechcheck.select import claim_names, keyword_matcher, select_claims


def _claim(cid: str, file: str, *tags: str) -> SimpleNamespace:
    return SimpleNamespace(id=cid, file=file, tags=tags)


CLAIMS = [
    _claim("lin2024.finetuned_later_layers", "claims/lin2024/finetuned_later_layers.yaml", "lin2024", "ablation"),
    _claim("lin2024.both_models_solve_task", "claims/lin2024/solve.yaml", "lin2024", "behaviour"),
    _claim("toy.copy_head", "claims/toy/known.yaml", "ablation"),
    _claim("toy.clusters", "claims/toy/umap.yaml", "geometry", "Slow-Ones"),
]


def ids(keyword, tags=()):
    return [c.id for c in select_claims(CLAIMS, keyword, tags)]


def test_claim_names_are_id_stem_and_tags():
    assert claim_names(CLAIMS[2]) == ["toy.copy_head", "known", "ablation"]


@pytest.mark.parametrize("expr, expected", [
    ("toy", ["toy.copy_head", "toy.clusters"]),  # substring of the id
    ("TOY.COPY", ["toy.copy_head"]),  # case-insensitive
    ("solve", ["lin2024.both_models_solve_task"]),  # the file stem ("solve" is in the id too: both fine)
    ("known", ["toy.copy_head"]),  # only the file stem says "known"
    ("umap", ["toy.clusters"]),
    ("ablation", ["lin2024.finetuned_later_layers", "toy.copy_head"]),  # a tag
    ("slow-ones", ["toy.clusters"]),  # a tag, case-insensitive
    ("ablation and not lin2024", ["toy.copy_head"]),
    ("not ablation", ["lin2024.both_models_solve_task", "toy.clusters"]),
    ("behaviour or geometry", ["lin2024.both_models_solve_task", "toy.clusters"]),
    # not > and > or, as in pytest and Python
    ("not toy and ablation", ["lin2024.finetuned_later_layers"]),
    ("geometry or lin2024 and ablation", ["lin2024.finetuned_later_layers", "toy.clusters"]),
    ("(geometry or lin2024) and ablation", ["lin2024.finetuned_later_layers"]),
    ("not not toy", ["toy.copy_head", "toy.clusters"]),
    ("((toy))", ["toy.copy_head", "toy.clusters"]),
    ("toy and(copy)", ["toy.copy_head"]),  # parentheses need no blanks around them
    ("nothing-matches", []),
])
def test_keyword_expressions(expr, expected):
    assert ids(expr) == expected


@pytest.mark.parametrize("keyword", [None, "", "   "])
def test_no_keyword_selects_everything(keyword):
    assert ids(keyword) == [c.id for c in CLAIMS]


def test_tags_select_claims_with_any_of_them_exactly():
    assert ids(None, ["geometry", "behaviour"]) == ["lin2024.both_models_solve_task", "toy.clusters"]
    assert ids(None, ["Ablation"]) == []  # tags are names: exact, unlike -k
    assert ids(None, ["abl"]) == []


def test_tags_and_keyword_must_both_hold():
    assert ids("toy", ["ablation"]) == ["toy.copy_head"]
    assert ids("not toy", ["ablation", "geometry"]) == ["lin2024.finetuned_later_layers"]


@pytest.mark.parametrize("expr, message", [
    ("toy and", "expected a word, '(' or 'not' after 'and', got the end of the expression"),
    ("and toy", "expected a word, '(' or 'not', got 'and' at column 1"),
    ("toy copy", "expected 'and', 'or' or the end, got 'copy' at column 5"),
    ("(toy or lin2024", "the '(' at column 1 is not closed (got the end of the expression)"),
    ("toy)", "expected 'and', 'or' or the end, got ')' at column 4"),
    ("()", "expected a word, '(' or 'not' after '(', got ')' at column 2"),
    ("not", "expected a word, '(' or 'not' after 'not', got the end of the expression"),
    ("toy or or lin", "expected a word, '(' or 'not' after 'or', got 'or' at column 8"),
])
def test_malformed_expressions_are_one_line_spec_errors(expr, message):
    with pytest.raises(SpecError) as info:
        select_claims(CLAIMS, expr, [])
    err = info.value
    assert err.file == "<command line>" and err.field_path == "-k"
    assert str(err) == f"<command line>: -k: invalid keyword expression {expr!r}: {message}"


def test_a_malformed_expression_is_an_error_even_without_claims():
    with pytest.raises(SpecError):
        select_claims([], "a and", [])
    with pytest.raises(SpecError, match="--tag: a tag cannot be empty"):
        select_claims([], None, [""])


def test_matcher_takes_lowercased_names():
    match = keyword_matcher("Head and not ablation")
    assert match(["known.head", "ablat"]) and not match(["known.head", "ablation"])
